/**
 * Qwen2.5-VL through the pipeline on the real stack (Temporal dev server, MinIO, the Python
 * trainer), on the demo data: download -> format -> tokenize -> shard -> train, with a tiny
 * random-init Qwen2.5-VL. Node tokenizes every prompt with each thumbnail's own image-token count
 * (smart_resize); the trainer checks those counts against its processor before step 1 and builds
 * the flat pixel_values, image_grid_thw and M-RoPE mask per batch, so a finished train stage
 * means Node and transformers agreed on every sample. Evaluation is not part of this run: the
 * ONNX exporter does not support Qwen2-VL yet (it refuses it by name, tested in the trainer).
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FormatManifest } from '../../activities/data/format.js';
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
  modelDir = await ensureTinyModel(0, 'qwen2_5_vl');
  const modelSource = await publishFolder(stack.deps.storage, TEST_BUCKET, 'models/tiny-qwen2.5-vl/', modelDir);
  const datasetDir = await mkdtemp(join(tmpdir(), 'dpo-qwen-'));
  await generateDemoDataset({ outDir: datasetDir, trainRows: 24, testRows: 8, seed: 21 });
  result = await runPipeline(stack, {
    name: 'qwen',
    model: { source: modelSource },
    dataset: { source: datasetDir },
    // No image_longest_edge: the default for this processor family is its max_pixels (4096).
    tokenize: { max_length: 256, max_prompt_length: 192 },
    shard: { samples_per_shard: 16 },
    train: { epochs: 1, per_device_train_batch_size: 4, gradient_accumulation_steps: 2, learning_rate: 0.002, dtype: 'float32', checkpoint_every_steps: 2, seed: 3 },
    queues: stack.queues,
    storage: { bucket: TEST_BUCKET },
    stages: [
      { id: 'download', kind: 'download' },
      { id: 'format', kind: 'format', needs: ['download'] },
      { id: 'tokenize', kind: 'tokenize', needs: ['format'] },
      { id: 'shard', kind: 'shard', needs: ['tokenize'] },
      { id: 'train', kind: 'train', needs: ['shard'] },
    ],
  });
}, 900_000);

afterAll(async () => {
  await stack?.stop();
});

describe('Qwen2.5-VL pipeline on the demo data', () => {
  it('runs every stage', () => {
    expect(result.timeline.map((t) => [t.id, t.state])).toEqual(['download', 'format', 'tokenize', 'shard', 'train'].map((s) => [s, 'done']));
  });

  it('thumbnails within the processor\'s max_pixels and keeps every row', async () => {
    const format = await stack.deps.storage.getJson<FormatManifest>(TEST_BUCKET, result.dataStages.format!.manifestKey);
    expect(format.splits.train!.rows).toBe(24);
    const tokenize = await stack.deps.storage.getJson<TokenizeManifest>(TEST_BUCKET, result.dataStages.tokenize!.manifestKey);
    expect(tokenize.splits.train!.rows).toBe(24);
    expect(tokenize.splits.train!.dropped).toEqual({});
  });

  it('expands each prompt to its own image\'s token count', async () => {
    const shards = await stack.deps.storage.getJson<ShardManifest>(TEST_BUCKET, result.dataStages.shard!.manifestKey);
    const table = readParquetTable(await stack.deps.storage.getBuffer(TEST_BUCKET, shards.splits.train!.shards[0]!.key));
    const chat = await ChatTokenizer.load(modelDir);
    const imageToken = chat.imageRelatedTokenIds;
    for (let i = 0; i < table.numRows; i++) {
      const image = table.getChild('image')!.get(i) as Uint8Array;
      const { width, height } = await sharp(image).metadata();
      expect(width! * height!).toBeLessThanOrEqual(4096);
      const prompt = Array.from(table.getChild('prompt_input_ids')!.get(i)!.toArray() as Int32Array);
      // Image pads plus <|vision_start|> and <|vision_end|>.
      expect(prompt.filter((t) => imageToken.has(t)).length).toBe(chat.imageTokensFor({ width: width!, height: height! }) + 2);
    }
  });

  it('trains with the trainer accepting every prompt for its image', () => {
    const train = result.trainings.train!;
    // 24 pairs / (4 x 2) = 3 optimizer steps.
    expect(train.finalStep).toBe(3);
    expect(train.checkpointKeys.length).toBeGreaterThanOrEqual(1);
  });
});
