/**
 * TRL's preference formats through the format stage's own code (the Parquet reader, layout
 * detection, vlm/formatRows.ts) against TRL itself: the same Parquet files, written by `datasets`
 * (test/fixtures/trl_formats.py), rendered in Python by maybe_extract_prompt +
 * prepare_multimodal_messages + maybe_apply_chat_template with the model's processor, then
 * tokenized by the processor with the thumbnails Node made. Prompt, chosen and rejected strings
 * and their token ids must be equal, for the demo's LLaVA, Qwen2.5-VL and Qwen3-VL (each also
 * with two images per prompt).
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { ColumnMappingSchema, FormatSchema } from '../../contracts/config.js';
import type { PreferenceLayoutName } from '../../contracts/preferenceFormat.js';
import { generateRows } from '../../datagen/demoShapes.js';
import { trainerPython } from '../../io/deps.js';
import { readRowRange } from '../../io/sourceRows.js';
import { ensureTinyModel } from '../../scripts/assets.js';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import { formatRow, type FormattedRow, type ImageFileResolver } from '../../vlm/formatRows.js';
import { defaultImageEdge, defaultMaxPixels } from '../../vlm/imageSize.js';

const exec = promisify(execFile);
const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');

interface SourceRow {
  question: string;
  chosen: string;
  rejected: string;
  images: string[];
}

interface Reference {
  prompt: string;
  chosen: string;
  rejected: string;
  prompt_input_ids: number[];
  chosen_input_ids: number[];
  rejected_input_ids: number[];
}

async function python(command: 'write' | 'reference', stdin: unknown): Promise<string> {
  const child = exec(trainerPython(), ['test/fixtures/trl_formats.py', command], { maxBuffer: 256 << 20, env: { ...process.env, OMP_NUM_THREADS: '1' } });
  child.child.stdin!.end(JSON.stringify(stdin));
  return (await child).stdout;
}

interface Case {
  name: string;
  model: 'llava' | 'qwen' | 'qwen3';
  layout: string;
  rows: SourceRow[];
  placeholder: string;
  expected: { format: PreferenceLayoutName; implicitPrompt: boolean };
}

interface Outcome {
  chat: ChatTokenizer;
  out: Awaited<ReturnType<typeof formatRow>>[];
  reference?: Reference[];
}

const QWEN_PLACEHOLDER = '<|vision_start|><|image_pad|><|vision_end|>';
const LAYOUTS = [
  ['conversational', { format: 'conversational', implicitPrompt: false }],
  ['conversational_implicit', { format: 'conversational', implicitPrompt: true }],
  ['conversational_string', { format: 'conversational', implicitPrompt: false }],
  ['standard', { format: 'standard', implicitPrompt: false }],
  ['standard_implicit', { format: 'standard', implicitPrompt: true }],
  // A prompt ending with an assistant turn: rendered continuing it (continue_final_message).
  ['conversational_prefill', { format: 'conversational', implicitPrompt: false }],
] as const;

const outcomes = new Map<string, Outcome>();

/**
 * Every case's file written by `datasets` (one Python process), formatted by the format stage's
 * code, then rendered by TRL (one more process) where Node kept every row.
 */
beforeAll(async () => {
  const dir = await mkdtemp(join(tmpdir(), 'dpo-trl-formats-'));
  const demo = await generateRows('parity', 6, 11);
  const rows: SourceRow[] = demo.map((r) => ({ question: r.question, chosen: r.chosen, rejected: r.rejected, images: [b64(r.image.bytes)] }));
  // Awkward text: unicode, tabs, newlines, leading and trailing spaces.
  rows.push({ question: 'Unicode: émoji 🦄, CJK 漢字,\ttabs\nand newlines?', chosen: '  leading and trailing  ', rejected: 'x', images: rows[0]!.images });
  const twoImages = (shift: number) => rows.map((r, i) => ({ ...r, images: [...r.images, rows[(i + shift) % rows.length]!.images[0]!] }));
  const cases: Case[] = [
    ...LAYOUTS.flatMap(([layout, expected]) => [
      { name: `llava ${layout}`, model: 'llava' as const, layout, rows, placeholder: '<image>', expected },
      { name: `qwen ${layout}`, model: 'qwen' as const, layout, rows, placeholder: QWEN_PLACEHOLDER, expected },
    ]),
    { name: 'qwen two images conversational', model: 'qwen', layout: 'conversational', rows: twoImages(2), placeholder: QWEN_PLACEHOLDER, expected: LAYOUTS[0][1] },
    { name: 'qwen two images standard', model: 'qwen', layout: 'standard', rows: twoImages(3), placeholder: QWEN_PLACEHOLDER, expected: LAYOUTS[3][1] },
    // Qwen3-VL: the same processor logic with its own settings and template.
    { name: 'qwen3 conversational', model: 'qwen3', layout: 'conversational', rows, placeholder: QWEN_PLACEHOLDER, expected: LAYOUTS[0][1] },
    { name: 'qwen3 two images conversational', model: 'qwen3', layout: 'conversational', rows: twoImages(2), placeholder: QWEN_PLACEHOLDER, expected: LAYOUTS[0][1] },
    { name: 'llava two images', model: 'llava', layout: 'conversational', rows: twoImages(1), placeholder: '<image>', expected: LAYOUTS[0][1] },
    // Standard prompts without a placeholder for their one image.
    { name: 'qwen no placeholder', model: 'qwen', layout: 'standard_implicit', rows: rows.slice(0, 2), placeholder: '', expected: LAYOUTS[4][1] },
  ];
  const models = { llava: await ensureTinyModel(), qwen: await ensureTinyModel(0, 'qwen2_5_vl'), qwen3: await ensureTinyModel(0, 'qwen3_vl') };
  const paths = cases.map((_, i) => join(dir, `case-${i}.parquet`));
  await python('write', { files: cases.map((c, i) => ({ out: paths[i], layout: c.layout, placeholder: c.placeholder, rows: c.rows })) });
  for (const [i, c] of cases.entries()) outcomes.set(c.name, await formatFile(models[c.model], paths[i]!, c.expected));
  const kept = cases.map((c, i) => ({ c, i })).filter(({ c }) => outcomes.get(c.name)!.out.every((r) => !('reason' in r)));
  const reference = JSON.parse(
    await python('reference', {
      jobs: kept.map(({ c, i }) => ({ model_dir: models[c.model], path: paths[i], images: (outcomes.get(c.name)!.out as FormattedRow[]).map((r) => r.images.map(b64)) })),
    }),
  ) as { jobs: Array<{ rows: Reference[] }> };
  kept.forEach(({ c }, j) => (outcomes.get(c.name)!.reference = reference.jobs[j]!.rows));

  // The two-image conversational rows again as JSONL, their images files beside it.
  const jsonl = join(dir, 'jsonl');
  await mkdir(join(jsonl, 'images'), { recursive: true });
  const two = cases.find((c) => c.name === 'qwen two images conversational')!.rows;
  const lines = await Promise.all(
    two.map(async (r, i) => {
      const images = await Promise.all(r.images.map(async (b, k) => (await writeFile(join(jsonl, 'images', `${i}-${k}.jpg`), Buffer.from(b, 'base64')), `images/${i}-${k}.jpg`)));
      const user = { role: 'user', content: [...images.map(() => ({ type: 'image' })), { type: 'text', text: r.question }] };
      return JSON.stringify({ prompt: [user], chosen: [{ role: 'assistant', content: r.chosen }], rejected: [{ role: 'assistant', content: r.rejected }], images });
    }),
  );
  await writeFile(join(jsonl, 'train.jsonl'), `${lines.join('\n')}\n`);
  const resolve = async (relative: string) => readFile(join(jsonl, relative)).catch(() => null);
  outcomes.set('qwen two images jsonl', await formatFile(models.qwen, join(jsonl, 'train.jsonl'), LAYOUTS[0][1], resolve));
}, 600_000);

/** Formats one Parquet file with the format stage's code. */
async function formatFile(modelDir: string, path: string, expected: { format: PreferenceLayoutName; implicitPrompt: boolean }, resolve?: ImageFileResolver): Promise<Outcome> {
  const chat = await ChatTokenizer.load(modelDir);
  const format = resolve ? 'jsonl' : 'parquet';
  const { layout, rows: raw } = await readRowRange({ path, format, sourcePath: `train.${format}`, idPrefix: 'train-0', offset: 0, limit: 1000 }, ColumnMappingSchema.parse({}));
  expect(layout).toMatchObject(expected);
  const defaults = FormatSchema.parse({});
  const options = {
    edge: await defaultImageEdge(modelDir),
    maxOutputPixels: await defaultMaxPixels(modelDir),
    maxPixels: defaults.max_image_pixels,
    jpegQuality: defaults.jpeg_quality,
  };
  return { chat, out: await Promise.all(raw.map((row) => formatRow(row, layout, chat, options, resolve))) };
}

/** Node's strings and ids equal TRL's and the processor's, row by row. */
async function expectParity(name: string, images: number) {
  const { chat, out, reference } = outcomes.get(name)!;
  for (const r of out) expect(r).not.toHaveProperty('reason');
  const formatted = out as FormattedRow[];
  expect(reference).toHaveLength(formatted.length);
  for (const [i, r] of formatted.entries()) {
    const ref = reference![i]!;
    expect(r.images).toHaveLength(images);
    expect({ prompt: r.prompt, chosen: r.chosen, rejected: r.rejected }).toEqual({ prompt: ref.prompt, chosen: ref.chosen, rejected: ref.rejected });
    const sizes = chat.needsImageSizes ? await Promise.all(r.images.map(async (b) => sharp(b).metadata().then(({ width, height }) => ({ width: width!, height: height! })))) : undefined;
    expect(chat.encodePrompt(r.prompt, sizes)).toEqual(ref.prompt_input_ids);
    expect(chat.encodeCompletion(r.chosen)).toEqual(ref.chosen_input_ids);
    expect(chat.encodeCompletion(r.rejected)).toEqual(ref.rejected_input_ids);
  }
}

describe('TRL preference formats: the format stage renders what TRL renders', () => {
  for (const model of ['llava', 'qwen'] as const) {
    for (const [layout] of LAYOUTS) it(`${model}: ${layout}`, () => expectParity(`${model} ${layout}`, 1));
  }

  it('Qwen2.5-VL takes two images per prompt, each expanded for its own size', async () => {
    await expectParity('qwen two images conversational', 2);
    await expectParity('qwen two images standard', 2);
  });

  it('Qwen3-VL: one and two images per prompt', async () => {
    await expectParity('qwen3 conversational', 1);
    await expectParity('qwen3 two images conversational', 2);
  });

  it('reads the same rows from JSONL, images named by paths beside it', () => {
    const parquet = outcomes.get('qwen two images conversational')!.out as FormattedRow[];
    const jsonl = outcomes.get('qwen two images jsonl')!.out;
    expect(jsonl).toHaveLength(parquet.length);
    jsonl.forEach((r, i) => {
      expect(r).not.toHaveProperty('reason');
      const { prompt, chosen, rejected, images } = r as FormattedRow;
      expect({ prompt, chosen, rejected }).toEqual({ prompt: parquet[i]!.prompt, chosen: parquet[i]!.chosen, rejected: parquet[i]!.rejected });
      expect(images.map(b64)).toEqual(parquet[i]!.images.map(b64));
    });
  });

  it('renders a multi-turn shape TRL does: the prompt ends at the generation prompt', () => {
    const { out } = outcomes.get('qwen conversational')!;
    const r = out[0] as FormattedRow;
    // Qwen's template opens with its default system turn; the prompt ends where the answer starts.
    expect(r.prompt).toMatch(/^<\|im_start\|>system\n[\s\S]*<\|vision_start\|><\|image_pad\|><\|vision_end\|>[\s\S]*<\|im_start\|>assistant\n$/);
    expect(r.chosen).toMatch(/<\|im_end\|>\n$/);
    // A final assistant turn is continued: the prompt stops right after its text.
    for (const model of ['llava', 'qwen']) expect((outcomes.get(`${model} conversational_prefill`)!.out[0] as FormattedRow).prompt).toMatch(/Answer:$/);
  });

  it('LLaVA takes two images per prompt, each filling its own block', () => expectParity('llava two images', 2));

  it('drops a row whose placeholders and images differ in number, which TRL refuses', () => {
    for (const r of outcomes.get('qwen no placeholder')!.out) expect(r).toMatchObject({ reason: 'image_count_mismatch', detail: '0 image placeholders, 1 images' });
  });
});
