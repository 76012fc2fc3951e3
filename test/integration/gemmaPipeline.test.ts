/**
 * Gemma 3 through the pipeline on the real stack (Temporal dev server, MinIO, the Python
 * trainer), on the demo data: download -> format -> tokenize -> shard -> train, with a tiny
 * random-init Gemma3ForConditionalGeneration. Node renders Gemma's turns (bos from the template,
 * not the tokenizer) and expands every `<start_of_image>` into the processor's block of soft
 * tokens; the trainer checks each prompt's soft-token count against mm_tokens_per_image before
 * step 1 and builds the pixels and the bidirectional image mask (token_type_ids) per batch, so a
 * finished train stage means Node and transformers agreed on every sample. Then evaluate ->
 * report: the ONNX exporter cannot express Gemma 3's bidirectional image mask, so
 * `evaluate.engine: auto` picks the pytorch engine from the model's family up front.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ShardManifest } from '../../activities/data/shard.js';
import type { TokenizeManifest } from '../../activities/data/tokenize.js';
import type { PipelineResult } from '../../contracts/payloads.js';
import { generateDemoDataset } from '../../datagen/demoShapes.js';
import { readParquetTable } from '../../io/parquet.js';
import { ensureTinyModel, publishFolder } from '../../scripts/assets.js';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import { startTestStack, TEST_BUCKET, type TestStack } from '../harness.js';
import { runPipeline } from '../dataFixtures.js';

let stack: TestStack;
let modelDir: string;
let result: PipelineResult;

beforeAll(async () => {
  stack = await startTestStack();
  modelDir = await ensureTinyModel(0, 'gemma3');
  const modelSource = await publishFolder(stack.deps.storage, TEST_BUCKET, 'models/tiny-gemma3/', modelDir);
  const datasetDir = await mkdtemp(join(tmpdir(), 'dpo-gemma3-'));
  await generateDemoDataset({ outDir: datasetDir, trainRows: 24, testRows: 8, seed: 23 });
  result = await runPipeline(stack, {
    name: 'gemma3',
    model: { source: modelSource },
    dataset: { source: datasetDir },
    tokenize: { max_length: 256, max_prompt_length: 192 },
    shard: { samples_per_shard: 16 },
    train: { epochs: 1, per_device_train_batch_size: 4, gradient_accumulation_steps: 2, learning_rate: 0.002, dtype: 'float32', checkpoint_every_steps: 2, seed: 3 },
    evaluate: { batch_size: 4, generations: 0 },
    queues: stack.queues,
    storage: { bucket: TEST_BUCKET },
    // No `stages`: the standard chain, download -> ... -> evaluate -> report.
  });
}, 900_000);

afterAll(async () => {
  await stack?.stop();
});

describe('Gemma 3 pipeline on the demo data', () => {
  it('runs every stage and keeps every row', async () => {
    expect(result.timeline.map((t) => [t.id, t.state])).toEqual(['download', 'format', 'tokenize', 'shard', 'train', 'evaluate', 'report'].map((s) => [s, 'done']));
    const tokenize = await stack.deps.storage.getJson<TokenizeManifest>(TEST_BUCKET, result.dataStages.tokenize!.manifestKey);
    expect(tokenize.splits.train!.rows).toBe(24);
    expect(tokenize.splits.train!.dropped).toEqual({});
  });

  it('stores thumbnails no larger than the processor keeps and one whole image block per prompt', async () => {
    const shards = await stack.deps.storage.getJson<ShardManifest>(TEST_BUCKET, result.dataStages.shard!.manifestKey);
    const table = readParquetTable(await stack.deps.storage.getBuffer(TEST_BUCKET, shards.splits.train!.shards[0]!.key));
    const chat = await ChatTokenizer.load(modelDir);
    const bos = table.getChild('prompt_input_ids')!.get(0)!.toArray()[0];
    for (let i = 0; i < table.numRows; i++) {
      const { width, height } = await sharp(table.getChild('image')!.get(i) as Uint8Array).metadata();
      // The processor resizes to 32 x 32; the default thumbnail edge is half that.
      expect(Math.max(width!, height!)).toBeLessThanOrEqual(32);
      const prompt = Array.from(table.getChild('prompt_input_ids')!.get(i)!.toArray() as Int32Array);
      // 16 soft tokens plus <start_of_image> and <end_of_image>; one bos, from the template.
      expect(prompt.filter((t) => chat.imageRelatedTokenIds.has(t)).length).toBe(chat.imageTokenCount + 2);
      expect(prompt.filter((t) => t === bos).length).toBe(1);
    }
  });

  it('trains with the trainer accepting every prompt for its image', () => {
    const train = result.trainings.train!;
    // 24 pairs / (4 x 2) = 3 optimizer steps.
    expect(train.finalStep).toBe(3);
    expect(train.checkpointKeys.length).toBeGreaterThanOrEqual(1);
  });

  it('evaluates base and DPO model with the pytorch engine, chosen from the family, and reports why', async () => {
    const evaluation = result.evaluations.evaluate!;
    expect(evaluation.engine).toBe('pytorch');
    expect(evaluation.engineReason).toContain('Gemma 3 cannot be exported to ONNX');
    for (const side of [evaluation.base, evaluation.trained]) expect(side.samples).toBe(8);
    // The base model is its own reference; training moved the policy away from it.
    expect(evaluation.base.reward_margin_mean).toBe(0);
    expect(evaluation.trained.reward_margin_mean).not.toBe(0);
    expect(evaluation.notComputed ?? []).toEqual([]); // no AMBER suite or generations were asked for
    const markdown = (await stack.deps.storage.getBuffer(TEST_BUCKET, result.reports.report!.markdownKey)).toString();
    expect(markdown).toContain('evaluated with PyTorch (the trainer evaluator, on CPU workers): Gemma 3 cannot be exported to ONNX');
  });
});
