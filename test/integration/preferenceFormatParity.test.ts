/**
 * TRL's preference formats through the format stage's own code (the Parquet reader, layout
 * detection, vlm/formatRows.ts) against TRL itself: the same Parquet files, written by `datasets`
 * (test/fixtures/trl_formats.py), rendered in Python by maybe_extract_prompt +
 * prepare_multimodal_messages + maybe_apply_chat_template with the model's processor, then
 * tokenized by the processor with the thumbnails Node made. Prompt, chosen and rejected strings
 * and their token ids must be equal, for the demo's LLaVA and for Qwen2.5-VL (which also takes
 * two images per prompt).
 */
import { execFile } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
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
import { formatRow, type FormattedRow } from '../../vlm/formatRows.js';
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

async function python(args: string[], stdin: unknown): Promise<string> {
  const child = exec(trainerPython(), ['test/fixtures/trl_formats.py', ...args], { maxBuffer: 256 << 20, env: { ...process.env, OMP_NUM_THREADS: '1' } });
  child.child.stdin!.end(JSON.stringify(stdin));
  return (await child).stdout;
}

let dir: string;
let rows: SourceRow[];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dpo-trl-formats-'));
  const demo = await generateRows('parity', 6, 11);
  rows = demo.map((r) => ({ question: r.question, chosen: r.chosen, rejected: r.rejected, images: [b64(r.image.bytes)] }));
  // Awkward text: unicode, newlines, leading and trailing spaces.
  rows.push({ question: 'Unicode: émoji 🦄, CJK 漢字,\ttabs\nand newlines?', chosen: '  leading and trailing  ', rejected: 'x', images: rows[0]!.images });
}, 120_000);

/** Formats one Parquet file with the format stage's code; every row must be kept. */
async function formatFile(modelDir: string, path: string, expected: { format: PreferenceLayoutName; implicitPrompt: boolean }) {
  const chat = await ChatTokenizer.load(modelDir);
  const { layout, rows: raw } = await readRowRange({ path, format: 'parquet', sourcePath: 'train.parquet', idPrefix: 'train-0', offset: 0, limit: 1000 }, ColumnMappingSchema.parse({}));
  expect(layout).toMatchObject(expected);
  const defaults = FormatSchema.parse({});
  const options = {
    edge: await defaultImageEdge(modelDir),
    maxOutputPixels: await defaultMaxPixels(modelDir),
    maxPixels: defaults.max_image_pixels,
    jpegQuality: defaults.jpeg_quality,
  };
  const out = await Promise.all(raw.map((row) => formatRow(row, layout, chat, options)));
  return { chat, out };
}

async function expectParity(modelDir: string, layout: string, source: SourceRow[], expected: { format: PreferenceLayoutName; implicitPrompt: boolean }, placeholder: string) {
  const path = join(dir, `${layout}-${source.length}-${modelDir.split('/').pop()}.parquet`);
  await python(['write', path, layout, '--placeholder', placeholder], { rows: source });
  const { chat, out } = await formatFile(modelDir, path, expected);
  for (const r of out) expect(r).not.toHaveProperty('reason');
  const formatted = out as FormattedRow[];
  const reference = (JSON.parse(await python(['reference', modelDir, path], { images: formatted.map((r) => r.images.map(b64)) })) as { rows: Reference[] }).rows;
  expect(reference).toHaveLength(formatted.length);
  for (const [i, r] of formatted.entries()) {
    const ref = reference[i]!;
    expect({ prompt: r.prompt, chosen: r.chosen, rejected: r.rejected }).toEqual({ prompt: ref.prompt, chosen: ref.chosen, rejected: ref.rejected });
    const sizes = chat.needsImageSizes ? await Promise.all(r.images.map(async (b) => sharp(b).metadata().then(({ width, height }) => ({ width: width!, height: height! })))) : undefined;
    expect(chat.encodePrompt(r.prompt, sizes)).toEqual(ref.prompt_input_ids);
    expect(chat.encodeCompletion(r.chosen)).toEqual(ref.chosen_input_ids);
    expect(chat.encodeCompletion(r.rejected)).toEqual(ref.rejected_input_ids);
  }
  return formatted;
}

const LAYOUTS = [
  ['conversational', { format: 'conversational', implicitPrompt: false }],
  ['conversational_implicit', { format: 'conversational', implicitPrompt: true }],
  ['conversational_string', { format: 'conversational', implicitPrompt: false }],
  ['standard', { format: 'standard', implicitPrompt: false }],
  ['standard_implicit', { format: 'standard', implicitPrompt: true }],
] as const;

describe('TRL preference formats: the format stage renders what TRL renders', () => {
  describe('the demo LLaVA', () => {
    for (const [layout, expected] of LAYOUTS) {
      it(`${layout}`, async () => {
        await expectParity(await ensureTinyModel(), layout, rows, expected, '<image>');
      }, 120_000);
    }

    it('drops two-image rows, counted by reason and naming the family', async () => {
      const modelDir = await ensureTinyModel();
      const path = join(dir, 'llava-two.parquet');
      await python(['write', path, 'conversational'], { rows: rows.map((r, i) => ({ ...r, images: [...r.images, rows[(i + 1) % rows.length]!.images[0]!] })) });
      const { out } = await formatFile(modelDir, path, { format: 'conversational', implicitPrompt: false });
      for (const r of out) expect(r).toMatchObject({ reason: 'multi_image_unsupported', detail: expect.stringContaining('llava model family takes one image') });
    }, 120_000);
  });

  describe('Qwen2.5-VL', () => {
    const qwenPlaceholder = '<|vision_start|><|image_pad|><|vision_end|>';
    for (const [layout, expected] of LAYOUTS) {
      it(`${layout}`, async () => {
        await expectParity(await ensureTinyModel(0, 'qwen2_5_vl'), layout, rows, expected, qwenPlaceholder);
      }, 120_000);
    }

    it('takes two images per prompt, each expanded for its own size', async () => {
      const two = rows.map((r, i) => ({ ...r, images: [...r.images, rows[(i + 2) % rows.length]!.images[0]!] }));
      const formatted = await expectParity(await ensureTinyModel(0, 'qwen2_5_vl'), 'conversational', two, { format: 'conversational', implicitPrompt: false }, qwenPlaceholder);
      for (const r of formatted) expect(r.images).toHaveLength(2);
      const standard = await expectParity(await ensureTinyModel(0, 'qwen2_5_vl'), 'standard', two, { format: 'standard', implicitPrompt: false }, qwenPlaceholder);
      for (const r of standard) expect(r.images).toHaveLength(2);
    }, 180_000);
  });

  it('drops a row whose placeholders and images differ in number, as TRL refuses it', async () => {
    const modelDir = await ensureTinyModel(0, 'qwen2_5_vl');
    // Standard prompts without a placeholder for their one image.
    const path = join(dir, 'mismatch.parquet');
    await python(['write', path, 'standard_implicit', '--placeholder', ''], { rows: rows.slice(0, 2) });
    const { out } = await formatFile(modelDir, path, { format: 'standard', implicitPrompt: true });
    for (const r of out) expect(r).toMatchObject({ reason: 'image_count_mismatch', detail: '0 image placeholders, 1 images' });
  }, 120_000);
});
