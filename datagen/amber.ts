/**
 * An AMBER-style discriminative hallucination suite for the demo scenes (AMBER: Wang et al. 2023,
 * "An LLM-free Multi-dimensional Benchmark for MLLMs Hallucination Evaluation"): yes/no questions
 * about an image with ground truth, of three kinds --
 *   existence  "Is there a triangle in the image?"  (absent shapes and objects never drawn: dog, car...)
 *   attribute  "Is the circle red?"
 *   relation   "Is the square to the left of the circle?"
 * -- about half of them answered "no", which is where hallucinating models fail.
 *
 * Written as one Parquet file, `amber/amber-00000-of-00001.parquet`, next to the demo dataset:
 * columns id, image {bytes, path}, question, answer ("yes" | "no"), kind. Deterministic by seed.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as arrow from 'apache-arrow';
import sharp from 'sharp';
import { readParquetTable, tableFromColumns, writeParquetTable } from '../io/parquet.js';
import { COLOURS, COLUMNS, rng, randomScene, sceneSvg, SHAPES, type Colour, type PlacedShape } from './demoShapes.js';

export const AMBER_KINDS = ['existence', 'attribute', 'relation'] as const;
export type AmberKind = (typeof AMBER_KINDS)[number];

export interface AmberQuestion {
  id: string;
  image: { bytes: Uint8Array; path: string };
  question: string;
  answer: 'yes' | 'no';
  kind: AmberKind;
}

/** Objects that never appear in a demo scene: asking about them probes hallucination. */
const NEVER_DRAWN = ['dog', 'car', 'cat', 'tree', 'person'];

const pick = <T>(r: () => number, items: readonly T[]): T => items[Math.floor(r() * items.length)]!;

function existence(r: () => number, scene: PlacedShape[]): Omit<AmberQuestion, 'id' | 'image'> {
  const absent = SHAPES.filter((s) => !scene.some((x) => x.kind === s));
  if (r() < 0.5) return { question: `Is there a ${pick(r, scene).kind} in the image?`, answer: 'yes', kind: 'existence' };
  const object = absent.length && r() < 0.6 ? pick(r, absent) : pick(r, NEVER_DRAWN);
  return { question: `Is there a ${object} in the image?`, answer: 'no', kind: 'existence' };
}

function attribute(r: () => number, scene: PlacedShape[]): Omit<AmberQuestion, 'id' | 'image'> {
  const s = pick(r, scene);
  if (r() < 0.5) return { question: `Is the ${s.kind} ${s.colour}?`, answer: 'yes', kind: 'attribute' };
  const other = (Object.keys(COLOURS) as Colour[]).filter((c) => c !== s.colour);
  return { question: `Is the ${s.kind} ${pick(r, other)}?`, answer: 'no', kind: 'attribute' };
}

function relation(r: () => number, scene: PlacedShape[]): Omit<AmberQuestion, 'id' | 'image'> | null {
  if (scene.length < 2) return null;
  const i = Math.floor(r() * scene.length);
  let j = Math.floor(r() * (scene.length - 1));
  if (j >= i) j++;
  const [x, y] = [scene[i]!, scene[j]!];
  const side = r() < 0.5 ? 'left' : 'right';
  const xi = COLUMNS.indexOf(x.column);
  const yi = COLUMNS.indexOf(y.column);
  const truth = side === 'left' ? xi < yi : xi > yi;
  return { question: `Is the ${x.kind} to the ${side} of the ${y.kind}?`, answer: truth ? 'yes' : 'no', kind: 'relation' };
}

/** `count` questions, cycling through the kinds, one fresh scene each. */
export async function generateAmberSuite(count: number, seed: number): Promise<AmberQuestion[]> {
  const r = rng(seed);
  const out: AmberQuestion[] = [];
  for (let i = 0; out.length < count; i++) {
    const scene = randomScene(r);
    const kind = AMBER_KINDS[i % AMBER_KINDS.length]!;
    const qa = kind === 'existence' ? existence(r, scene) : kind === 'attribute' ? attribute(r, scene) : relation(r, scene);
    if (!qa) continue;
    const path = `amber/${String(out.length).padStart(6, '0')}.jpg`;
    const bytes = await sharp(Buffer.from(sceneSvg(scene))).jpeg({ quality: 92 }).toBuffer();
    out.push({ id: `amber-${out.length}`, image: { bytes, path }, ...qa });
  }
  return out;
}

export const AMBER_FILE = 'amber/amber-00000-of-00001.parquet';

export function amberToParquet(questions: AmberQuestion[]): Uint8Array {
  const str = (values: unknown[]) => ({ type: new arrow.Utf8(), values });
  const imageType = new arrow.Struct([new arrow.Field('bytes', new arrow.Binary(), true), new arrow.Field('path', new arrow.Utf8(), true)]);
  return writeParquetTable(
    tableFromColumns({
      id: str(questions.map((q) => q.id)),
      image: { type: imageType, values: questions.map((q) => q.image) },
      question: str(questions.map((q) => q.question)),
      answer: str(questions.map((q) => q.answer)),
      kind: str(questions.map((q) => q.kind)),
    }),
  );
}

/** Reads a suite file; every row is checked, and a bad one is named with its field. */
export function amberFromParquet(bytes: Uint8Array, source: string): AmberQuestion[] {
  const table = readParquetTable(bytes);
  for (const column of ['id', 'image', 'question', 'answer', 'kind']) {
    if (!table.schema.fields.some((f) => f.name === column)) throw new Error(`${source}: no column "${column}" (expected id, image, question, answer, kind)`);
  }
  return table.toArray().map((row: Record<string, unknown>, i) => {
    const r = row as { id: string; image: { bytes: Uint8Array; path: string } | null; question: string; answer: string; kind: string };
    const where = `${source} row ${i} (id ${String(r.id)})`;
    if (r.answer !== 'yes' && r.answer !== 'no') throw new Error(`${where}: answer must be "yes" or "no", got ${JSON.stringify(r.answer)}`);
    if (!AMBER_KINDS.includes(r.kind as AmberKind)) throw new Error(`${where}: kind must be one of ${AMBER_KINDS.join(', ')}, got ${JSON.stringify(r.kind)}`);
    const image = r.image as unknown as { toJSON?: () => unknown } | null;
    const plain = (image && typeof image.toJSON === 'function' ? image.toJSON() : image) as { bytes: Uint8Array; path: string } | null;
    if (!plain?.bytes?.length) throw new Error(`${where}: image has no bytes`);
    return { id: String(r.id), image: { bytes: plain.bytes, path: plain.path }, question: String(r.question), answer: r.answer, kind: r.kind as AmberKind };
  });
}

export async function writeAmberSuite(outDir: string, count: number, seed: number): Promise<string> {
  const path = join(outDir, AMBER_FILE);
  await mkdir(join(outDir, 'amber'), { recursive: true });
  await writeFile(path, amberToParquet(await generateAmberSuite(count, seed)));
  return path;
}
