/**
 * TRL's preference formats through the whole pipeline on the real stack (Temporal dev server,
 * MinIO, the Python trainer):
 *
 *  - demo rows in TRL's conversational format, as trl-lib/rlaif-v stores them (message lists, an
 *    `images` list, written by `datasets` to data/train-00000-of-00001.parquet with only a train
 *    split), detected from the columns, held out with train[:95%] / train[95%:], trained on the
 *    demo's LLaVA, evaluated and reported (RLAIF-V's own layout is run the same way in
 *    hubDownload.test.ts);
 *  - two images per prompt on the tiny Qwen2.5-VL and LLaVA: both images carried by format,
 *    tokenize and shard (`extra_images`), each expanded to its own token count, the trainer's
 *    collate and the pytorch evaluator building their patches and grids (Qwen) or stacking them
 *    (LLaVA, whose ONNX graphs take one image a row: such held-out rows go to the pytorch engine).
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type * as arrow from 'apache-arrow';
import type { FormatManifest } from '../../activities/data/format.js';
import type { ShardManifest } from '../../activities/data/shard.js';
import { standardChain } from '../../contracts/dag.js';
import type { PipelineResult } from '../../contracts/payloads.js';
import { generateRows } from '../../datagen/demoShapes.js';
import { trainerPython } from '../../io/deps.js';
import { readParquetTable } from '../../io/parquet.js';
import { ensureTinyModel, publishFolder } from '../../scripts/assets.js';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import { dataConfig, runPipeline } from '../dataFixtures.js';
import { startTestStack, TEST_BUCKET, type TestStack } from '../harness.js';

let stack: TestStack;
const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');

/** A dataset folder holding one file in a TRL layout, written by `datasets` (test/fixtures/trl_formats.py). */
async function trlDataset(layout: string, rows: Array<{ question: string; chosen: string; rejected: string; images: string[] }>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `dpo-trl-${layout}-`));
  await mkdir(join(dir, 'data'));
  const child = promisify(execFile)(trainerPython(), ['test/fixtures/trl_formats.py', 'write'], { env: { ...process.env, OMP_NUM_THREADS: '1' } });
  child.child.stdin!.end(JSON.stringify({ files: [{ out: join(dir, 'data/train-00000-of-00001.parquet'), layout, rows }] }));
  await child;
  return dir;
}

const TRAIN = { epochs: 1, per_device_train_batch_size: 8, gradient_accumulation_steps: 1, learning_rate: 0.002, dtype: 'float32', checkpoint_every_steps: 5, seed: 3 } as const;

beforeAll(async () => {
  stack = await startTestStack();
}, 120_000);

afterAll(async () => {
  await stack?.stop();
});

describe("TRL's conversational format, held out from its only split", () => {
  let result: PipelineResult;

  beforeAll(async () => {
    const rows = (await generateRows('train', 40, 31)).map((r) => ({ question: r.question, chosen: r.chosen, rejected: r.rejected, images: [b64(r.image.bytes)] }));
    const source = await trlDataset('conversational', rows);
    result = await runPipeline(
      stack,
      dataConfig(stack, inject('modelSource'), source, {
        name: 'trl-conversational',
        dataset: { source, train_split: 'train[:95%]', eval_split: 'train[95%:]' },
        stages: standardChain(),
        train: TRAIN,
        evaluate: { batch_size: 16, generations: 1, max_new_tokens: 4 },
      }),
    );
  }, 900_000);

  it('detects the layout, renders with the chat template and keeps every row', async () => {
    const format = await stack.deps.storage.getJson<FormatManifest>(TEST_BUCKET, result.dataStages.format!.manifestKey);
    expect(format.layouts).toEqual(['conversational']);
    expect(result.dataStages.format!.summary.layout).toBe('conversational');
    expect(Object.keys(format.splits)).toEqual(['train._95pct', 'train.95pct_']);
    // 40 rows: [0, 38) to train, [38, 40) held out.
    expect(format.splits['train._95pct']!.rows).toBe(38);
    expect(format.splits['train.95pct_']!.rows).toBe(2);
    expect(format.splits['train._95pct']!.dropped).toEqual({});
    const part = readParquetTable(await stack.deps.storage.getBuffer(TEST_BUCKET, format.splits['train._95pct']!.parts[0]!.key));
    expect(part.getChild('sample_id')!.get(0)).toBe('train-0-0');
    // The demo template's user turn with its image placeholder, rendered from the message list.
    expect(part.getChild('prompt')!.get(0)).toMatch(/^USER: <image>\n/);
  });

  it('trains, evaluates on the held-out slice and reports', () => {
    expect(result.timeline.map((t) => [t.id, t.state])).toEqual(standardChain().map((s) => [s.id, 'done']));
    // 38 pairs in steps of 8.
    expect(result.trainings.train!.finalStep).toBe(5);
    expect(result.evaluations.evaluate!.trained.samples).toBe(2);
  });
});

describe.each([
  { arch: 'qwen2_5_vl', name: 'Qwen2.5-VL', engineReason: 'Qwen2.5-VL cannot be exported to ONNX' },
  { arch: 'llava', name: 'LLaVA', engineReason: 'held-out rows with 2 images cannot be scored through ONNX' },
] as const)('two images per prompt on $name', ({ arch, engineReason }) => {
  let result: PipelineResult;
  let modelDir: string;

  beforeAll(async () => {
    modelDir = await ensureTinyModel(0, arch);
    const modelSource = await publishFolder(stack.deps.storage, TEST_BUCKET, `models/tiny-${arch}/`, modelDir);
    const demo = await generateRows('train', 21, 41);
    // Each prompt compares its scene with the next one's; the first row has one image, so a
    // batch mixes one- and two-image rows, and every held-out row has two.
    const rows = demo.map((r, i) => ({
      question: r.question,
      chosen: r.chosen,
      rejected: r.rejected,
      images: i > 0 ? [b64(r.image.bytes), b64(demo[(i + 1) % demo.length]!.image.bytes)] : [b64(r.image.bytes)],
    }));
    const source = await trlDataset('conversational', rows);
    result = await runPipeline(
      stack,
      dataConfig(stack, modelSource, source, {
        name: `trl-two-images-${arch}`,
        dataset: { source, format: 'conversational', train_split: 'train[:80%]', eval_split: 'train[80%:]' },
        // The default thumbnail for this family: its max_pixels.
        format: {},
        tokenize: { max_length: 384, max_prompt_length: 320 },
        stages: standardChain(),
        train: { ...TRAIN, per_device_train_batch_size: 4, gradient_accumulation_steps: 2 },
        evaluate: { batch_size: 4 },
      }),
    );
  }, 900_000);

  it('carries both images through format, tokenize and shard, each expanded for its own size', async () => {
    const format = await stack.deps.storage.getJson<FormatManifest>(TEST_BUCKET, result.dataStages.format!.manifestKey);
    expect(format.splits['train._80pct']!.rows).toBe(17);
    expect(format.splits['train._80pct']!.dropped).toEqual({});
    const shards = await stack.deps.storage.getJson<ShardManifest>(TEST_BUCKET, result.dataStages.shard!.manifestKey);
    expect(shards.splits['train._80pct']!.rows).toBe(17);
    const chat = await ChatTokenizer.load(modelDir);
    const table = readParquetTable(await stack.deps.storage.getBuffer(TEST_BUCKET, shards.splits['train._80pct']!.shards[0]!.key));
    const imageTokenId = chat.encodePrompt(chat.family!.imageToken, [{ width: 28, height: 28 }]).at(-1);
    let twoImageRows = 0;
    for (let i = 0; i < table.numRows; i++) {
      const extra = Array.from(table.getChild('extra_images')!.get(i) as arrow.Vector) as Uint8Array[];
      const images = [table.getChild('image')!.get(i) as Uint8Array, ...extra];
      if (images.length === 2) twoImageRows++;
      let expected = 0;
      for (const image of images) {
        const { width, height } = await sharp(image).metadata();
        expected += chat.imageTokensFor({ width: width!, height: height! });
      }
      const prompt = Array.from(table.getChild('prompt_input_ids')!.get(i)!.toArray() as Int32Array);
      expect(prompt.filter((t) => t === imageTokenId).length).toBe(expected);
    }
    expect(twoImageRows).toBe(16);
  });

  it('trains and evaluates with the trainer building every image\'s patches', () => {
    expect(result.timeline.map((t) => [t.id, t.state])).toEqual(standardChain().map((s) => [s.id, 'done']));
    // 17 pairs / (4 x 2) = 3 optimizer steps.
    expect(result.trainings.train!.finalStep).toBe(3);
    expect(result.evaluations.evaluate!.engine).toBe('pytorch');
    expect(result.evaluations.evaluate!.engineReason).toContain(engineReason);
    expect(result.evaluations.evaluate!.trained.samples).toBe(4);
  });
});
