/**
 * Qwen2.5-VL and Qwen3-VL through the pipeline on the real stack (Temporal dev server, MinIO, the
 * Python trainer), on the demo data: download -> format -> tokenize -> shard -> train, with a tiny
 * random-init model of each family. Node tokenizes every prompt with each thumbnail's own image-token count
 * (smart_resize); the trainer checks those counts against its processor before step 1 and builds
 * the flat pixel_values, image_grid_thw and M-RoPE mask per batch, so a finished train stage
 * means Node and transformers agreed on every sample. Then evaluate -> report: the ONNX exporter
 * cannot build Qwen2-VL's M-RoPE positions, so `evaluate.engine: auto` picks the pytorch engine
 * from the model's family up front (no export is attempted), and the report says so.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FormatManifest } from '../../activities/data/format.js';
import type { ShardManifest } from '../../activities/data/shard.js';
import type { TokenizeManifest } from '../../activities/data/tokenize.js';
import { keys } from '../../contracts/keys.js';
import type { PipelineResult } from '../../contracts/payloads.js';
import { generateDemoDataset } from '../../datagen/demoShapes.js';
import { readParquetTable } from '../../io/parquet.js';
import { ensureTinyModel, publishFolder } from '../../scripts/assets.js';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import { startTestStack, TEST_BUCKET, uniqueId, type TestStack } from '../harness.js';
import type { PipelineConfigInput } from '../../contracts/config.js';
import { PIPELINE_WORKFLOW } from '../../contracts/messages.js';
import { standardChain } from '../../contracts/dag.js';
import { runPipeline } from '../dataFixtures.js';

let stack: TestStack;
let datasetDir: string;

beforeAll(async () => {
  stack = await startTestStack();
  datasetDir = await mkdtemp(join(tmpdir(), 'dpo-qwen-'));
  await generateDemoDataset({ outDir: datasetDir, trainRows: 24, testRows: 8, seed: 21 });
}, 300_000);

afterAll(async () => {
  await stack?.stop();
});

describe.each([
  { arch: 'qwen2_5_vl', family: 'Qwen2.5-VL' },
  { arch: 'qwen3_vl', family: 'Qwen3-VL' },
] as const)('$family pipeline on the demo data', ({ arch, family }) => {
  let modelDir: string;
  let result: PipelineResult;
  let config: PipelineConfigInput;

  beforeAll(async () => {
    modelDir = await ensureTinyModel(0, arch);
    const modelSource = await publishFolder(stack.deps.storage, TEST_BUCKET, `models/tiny-${arch}/`, modelDir);
    config = {
      name: 'qwen',
      model: { source: modelSource },
      dataset: { source: datasetDir },
      // No image_longest_edge: the default for this processor family is its max_pixels (4096).
      tokenize: { max_length: 256, max_prompt_length: 192 },
      shard: { samples_per_shard: 16 },
      evaluate: { batch_size: 4 },
      train: { epochs: 1, per_device_train_batch_size: 4, gradient_accumulation_steps: 2, learning_rate: 0.002, dtype: 'float32', checkpoint_every_steps: 2, seed: 3 },
      queues: stack.queues,
      storage: { bucket: TEST_BUCKET },
      // No `stages`: the standard chain, download -> ... -> evaluate -> report.
    };
    result = await runPipeline(stack, config);
  }, 900_000);

  it('runs every stage', () => {
    expect(result.timeline.map((t) => [t.id, t.state])).toEqual(['download', 'format', 'tokenize', 'shard', 'train', 'evaluate', 'report'].map((s) => [s, 'done']));
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

  it('evaluates with the pytorch engine, chosen from the model family, with the same metric names', async () => {
    const evaluation = result.evaluations.evaluate!;
    expect(evaluation.engine).toBe('pytorch');
    expect(evaluation.engineReason).toContain(`${family} cannot be exported to ONNX`);
    expect(evaluation.onnx).toBeUndefined();
    // Nothing was exported: no DPO-policy export under the run's evaluate folder.
    expect(await stack.deps.storage.list(TEST_BUCKET, keys.policyOnnxPrefix(result.runId, 'evaluate'))).toEqual([]);
    for (const side of [evaluation.base, evaluation.trained]) {
      expect(Object.keys(side).sort()).toEqual(['logp_margin_mean', 'preference_accuracy', 'reward_accuracy', 'reward_margin_mean', 'samples']);
      expect(side.samples).toBe(8);
    }
    expect(evaluation.base.reward_margin_mean).toBe(0);
    expect(evaluation.trained.reward_margin_mean).not.toBe(0);
    // The default config asks for generations, which only the ONNX engine makes: named, not dropped.
    expect(evaluation.notComputed).toEqual([expect.stringMatching(/^generations /)]);
    const stored = await stack.deps.storage.getJson<{ engine: string }>(TEST_BUCKET, evaluation.metricsKey);
    expect(stored.engine).toBe('pytorch');
  });

  it('reports the engine and what it did not compute', async () => {
    const markdown = (await stack.deps.storage.getBuffer(TEST_BUCKET, result.reports.report!.markdownKey)).toString();
    expect(markdown).toContain(`evaluated with PyTorch (the trainer evaluator, on CPU workers): ${family} cannot be exported to ONNX`);
    expect(markdown).toContain('not computed by pytorch: generations');
    expect(markdown).toContain('preference accuracy (held-out)');
  });

  it('refuses evaluate.engine onnx as a config error naming the field', async () => {
    const err = await stack.client.workflow
      .execute(PIPELINE_WORKFLOW, {
        taskQueue: stack.queues.cpu,
        workflowId: uniqueId(`${arch}-onnx`),
        args: [
          {
            ...config,
            evaluate: { ...config.evaluate, engine: 'onnx' },
            stages: [
              ...standardChain().slice(0, 4),
              { id: 'adapter', kind: 'adapter', params: { source: `s3://${TEST_BUCKET}/${result.trainings.train!.adapterPrefix}` } },
              { id: 'evaluate', kind: 'evaluate', needs: ['shard', 'adapter'] },
            ],
          },
        ],
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    let cause: unknown = (err as WorkflowFailedError).cause;
    while (cause && !(cause instanceof ApplicationFailure)) cause = (cause as { cause?: unknown }).cause;
    expect((cause as ApplicationFailure).type).toBe('InvalidConfig');
    expect((cause as ApplicationFailure).message).toContain(`stage "evaluate": evaluate.engine: onnx cannot score ${family}`);
  });
});
