/**
 * The demo dataset: a visual preference set in the exact column layout of
 * openbmb/RLAIF-V-Dataset (ds_name, image {bytes, path}, question, chosen, rejected,
 * origin_dataset, origin_split, idx, image_path), written as Hub-style Parquet files
 * (`data/<split>-00000-of-00001.parquet`). Scenes of coloured shapes are drawn as SVG and rendered
 * by sharp. Questions are answerable only from the image; chosen and rejected answers come from the
 * same text distribution, so a model that ignores the image scores about 50%.
 * Deterministic by seed.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as arrow from 'apache-arrow';
import sharp from 'sharp';
import { tableFromColumns, writeParquetTable } from '../io/parquet.js';

export const COLOURS = {
  red: '#e6194b',
  green: '#3cb44b',
  blue: '#4363d8',
  yellow: '#ffe119',
  purple: '#911eb4',
  orange: '#f58231',
} as const;
export type Colour = keyof typeof COLOURS;
export const SHAPES = ['circle', 'square', 'triangle'] as const;
export type ShapeKind = (typeof SHAPES)[number];
export const COLUMNS = ['left', 'center', 'right'] as const;
export type Column = (typeof COLUMNS)[number];
const NUMBER_WORDS = ['one', 'two', 'three'] as const;

export const IMAGE_SIZE = 96;
const SHAPE_SIZE = 26;

export interface PlacedShape {
  kind: ShapeKind;
  colour: Colour;
  column: Column;
  /** centre y in pixels */
  y: number;
}

export interface DemoRow {
  ds_name: string;
  image: { bytes: Uint8Array; path: string };
  question: string;
  chosen: string;
  rejected: string;
  origin_dataset: string;
  origin_split: string;
  idx: string;
  image_path: string;
}

/** mulberry32: small, fast, deterministic. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const pick = <T>(r: () => number, items: readonly T[]): T => items[Math.floor(r() * items.length)]!;
function shuffled<T>(r: () => number, items: readonly T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

export function randomScene(r: () => number): PlacedShape[] {
  const n = 1 + Math.floor(r() * 3);
  const kinds = shuffled(r, SHAPES).slice(0, n);
  const colours = shuffled(r, Object.keys(COLOURS) as Colour[]).slice(0, n);
  const columns = shuffled(r, COLUMNS).slice(0, n);
  return kinds.map((kind, i) => ({
    kind,
    colour: colours[i]!,
    column: columns[i]!,
    y: SHAPE_SIZE / 2 + 4 + Math.floor(r() * (IMAGE_SIZE - SHAPE_SIZE - 8)),
  }));
}

export function sceneSvg(scene: PlacedShape[]): string {
  const half = SHAPE_SIZE / 2;
  const body = scene
    .map((s) => {
      const cx = (COLUMNS.indexOf(s.column) + 0.5) * (IMAGE_SIZE / 3);
      const fill = COLOURS[s.colour];
      if (s.kind === 'circle') return `<circle cx="${cx}" cy="${s.y}" r="${half}" fill="${fill}"/>`;
      if (s.kind === 'square') return `<rect x="${cx - half}" y="${s.y - half}" width="${SHAPE_SIZE}" height="${SHAPE_SIZE}" fill="${fill}"/>`;
      return `<polygon points="${cx},${s.y - half} ${cx - half},${s.y + half} ${cx + half},${s.y + half}" fill="${fill}"/>`;
    })
    .join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${IMAGE_SIZE}" height="${IMAGE_SIZE}"><rect width="100%" height="100%" fill="#e8e8e8"/>${body}</svg>`;
}

/** One question about the scene with a correct (chosen) and a wrong (rejected) answer. */
export function askQuestion(r: () => number, scene: PlacedShape[]): { question: string; chosen: string; rejected: string } {
  const roll = r();
  if (roll < 0.5) {
    const s = pick(r, scene);
    const absent = (Object.keys(COLOURS) as Colour[]).filter((c) => !scene.some((x) => x.colour === c));
    return {
      question: `What color is the ${s.kind}?`,
      chosen: `The ${s.kind} is ${s.colour}.`,
      rejected: `The ${s.kind} is ${pick(r, absent)}.`,
    };
  }
  if (roll < 0.75) {
    const wrong = NUMBER_WORDS.filter((_, i) => i + 1 !== scene.length);
    return {
      question: 'How many shapes are in the image?',
      chosen: `I count ${NUMBER_WORDS[scene.length - 1]}.`,
      rejected: `I count ${pick(r, wrong)}.`,
    };
  }
  const s = pick(r, scene);
  return {
    question: `Where is the ${s.kind}?`,
    chosen: `The ${s.kind} is on the ${s.column}.`,
    rejected: `The ${s.kind} is on the ${pick(r, COLUMNS.filter((c) => c !== s.column))}.`,
  };
}

export async function generateRows(split: string, count: number, seed: number): Promise<DemoRow[]> {
  const r = rng(seed);
  const rows: DemoRow[] = [];
  for (let i = 0; i < count; i++) {
    const scene = randomScene(r);
    const qa = askQuestion(r, scene);
    const path = `shapes/${split}/${String(i).padStart(6, '0')}.jpg`;
    const bytes = await sharp(Buffer.from(sceneSvg(scene))).jpeg({ quality: 92 }).toBuffer();
    rows.push({
      ds_name: 'demo-shapes',
      image: { bytes, path },
      ...qa,
      origin_dataset: 'dpo-vlm demo generator',
      origin_split: JSON.stringify({ split, seed, scene }),
      idx: `${split}-${i}`,
      image_path: path,
    });
  }
  return rows;
}

/** Parquet metadata that lets `datasets` decode the image column as an Image feature. */
const HF_FEATURES = JSON.stringify({
  info: {
    features: {
      ds_name: { dtype: 'string', _type: 'Value' },
      image: { _type: 'Image' },
      question: { dtype: 'string', _type: 'Value' },
      chosen: { dtype: 'string', _type: 'Value' },
      rejected: { dtype: 'string', _type: 'Value' },
      origin_dataset: { dtype: 'string', _type: 'Value' },
      origin_split: { dtype: 'string', _type: 'Value' },
      idx: { dtype: 'string', _type: 'Value' },
      image_path: { dtype: 'string', _type: 'Value' },
    },
  },
});

export function rowsToParquet(rows: DemoRow[]): Uint8Array {
  const str = (values: unknown[]) => ({ type: new arrow.Utf8(), values });
  const imageType = new arrow.Struct([new arrow.Field('bytes', new arrow.Binary(), true), new arrow.Field('path', new arrow.Utf8(), true)]);
  const table = tableFromColumns(
    {
      ds_name: str(rows.map((r) => r.ds_name)),
      image: { type: imageType, values: rows.map((r) => r.image) },
      question: str(rows.map((r) => r.question)),
      chosen: str(rows.map((r) => r.chosen)),
      rejected: str(rows.map((r) => r.rejected)),
      origin_dataset: str(rows.map((r) => r.origin_dataset)),
      origin_split: str(rows.map((r) => r.origin_split)),
      idx: str(rows.map((r) => r.idx)),
      image_path: str(rows.map((r) => r.image_path)),
    },
    { huggingface: HF_FEATURES },
  );
  // 100-row groups, as `datasets` writes image datasets.
  return writeParquetTable(table, { rowGroupRows: 100, incompressible: ['image.bytes'] });
}

export interface GenerateOptions {
  outDir: string;
  trainRows: number;
  testRows: number;
  seed: number;
  /** Extra rows mutated to be invalid, for tests of the drop accounting. */
  corrupt?: (split: string, rows: DemoRow[]) => DemoRow[];
}

/** Writes data/train-00000-of-00001.parquet and data/test-00000-of-00001.parquet. */
export async function generateDemoDataset(opts: GenerateOptions): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  await mkdir(join(opts.outDir, 'data'), { recursive: true });
  for (const [split, count, seed] of [
    ['train', opts.trainRows, opts.seed],
    ['test', opts.testRows, opts.seed + 1_000_003],
  ] as const) {
    let rows = await generateRows(split, count, seed);
    if (opts.corrupt) rows = opts.corrupt(split, rows);
    const path = join(opts.outDir, 'data', `${split}-00000-of-00001.parquet`);
    await writeFile(path, rowsToParquet(rows));
    out[split] = path;
  }
  return out;
}
