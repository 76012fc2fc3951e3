/**
 * The families whose image-token count depends on each image's size, through the pipeline on the
 * real stack (Temporal dev server, MinIO, the Python trainer), on the demo data: download ->
 * format -> tokenize -> shard -> train, with a tiny random-init model of each: Qwen2.5-VL and
 * Qwen3-VL (smart_resize) and LLaVA-NeXT (anyres). Node tokenizes every prompt with each
 * thumbnail's own image-token count; the trainer checks those counts against its processor
 * before step 1 and builds the family's pixel layout (Qwen's flat patches, image_grid_thw and
 * M-RoPE mask; LLaVA-NeXT's padded tiles and image_sizes) per batch, so a finished train stage
 * means Node and transformers agreed on every sample. Then evaluate -> report: the ONNX exporter
 * cannot build these families' scoring graphs, so `evaluate.engine: auto` picks the pytorch
 * engine from the model's family up front (no export is attempted), and the report says so; it
 * still computes every metric: the held-out pairs, a small AMBER-style suite (description
 * prompts, CHAIR/Cover/Hal) and the greedy generations.
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
import { writeAmberSuite } from '../../datagen/amber.js';
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
let suitesDir: string;

beforeAll(async () => {
  stack = await startTestStack();
  datasetDir = await mkdtemp(join(tmpdir(), 'dpo-families-'));
  await generateDemoDataset({ outDir: datasetDir, trainRows: 24, testRows: 8, seed: 21 });
  // Few items, so the pytorch engine's extra forward passes stay a small share of the run.
  suitesDir = await mkdtemp(join(tmpdir(), 'dpo-families-amber-'));
  await writeAmberSuite(join(suitesDir, 'descriptions'), 0, 5, 2);
}, 300_000);

afterAll(async () => {
  await stack?.stop();
});

describe.each([
  // blockExtra: the tokens around each image's placeholders (<|vision_start|>, <|vision_end|>);
  // thumbnails: Qwen's are bounded by the processor's max_pixels, LLaVA-NeXT's by half its
  // largest grid pinpoint's edge (64 px).
  //
  // questions: yes/no questions in the suite. The tiny models' demo tokenizer has no single token
  // for "Yes" after these families' assistant openings, which the yes/no half needs, so their
  // suite is description prompts only (the yes/no half of the pytorch engine is checked against
  // the ONNX engine's on the tiny LLaVA, test/integration/pipeline.test.ts).
  { arch: 'qwen2_5_vl', family: 'Qwen2.5-VL', blockExtra: 2, fits: (w: number, h: number) => w * h <= 4096, questions: 0 },
  { arch: 'qwen3_vl', family: 'Qwen3-VL', blockExtra: 2, fits: (w: number, h: number) => w * h <= 4096, questions: 0 },
  { arch: 'llava_next', family: 'LLaVA-NeXT', blockExtra: 0, fits: (w: number, h: number) => Math.max(w, h) <= 32, questions: 0 },
] as const)('$family pipeline on the demo data', ({ arch, family, blockExtra, fits, questions }) => {
  let modelDir: string;
  let result: PipelineResult;
  let config: PipelineConfigInput;

  beforeAll(async () => {
    modelDir = await ensureTinyModel(0, arch);
    const modelSource = await publishFolder(stack.deps.storage, TEST_BUCKET, `models/tiny-${arch}/`, modelDir);
    config = {
      name: arch.replace(/_/g, '-'),
      model: { source: modelSource },
      dataset: { source: datasetDir },
      // No image_longest_edge: the family's default (max_pixels for Qwen, half the largest pinpoint for LLaVA-NeXT).
      tokenize: { max_length: 256, max_prompt_length: 192 },
      shard: { samples_per_shard: 16 },
      evaluate: { batch_size: 4, amber_suite: join(suitesDir, 'descriptions', 'amber'), generations: 2, max_new_tokens: 4 },
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

  it('thumbnails within the family\'s default bound and keeps every row', async () => {
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
      expect({ width, height, fits: fits(width!, height!) }).toEqual({ width, height, fits: true });
      const prompt = Array.from(table.getChild('prompt_input_ids')!.get(i)!.toArray() as Int32Array);
      expect(prompt.filter((t) => imageToken.has(t)).length).toBe(chat.imageTokensFor({ width: width!, height: height! }) + blockExtra);
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
    // Every metric the ONNX engine computes: nothing left out.
    expect(evaluation.notComputed).toBeUndefined();
    const stored = await stack.deps.storage.getJson<{ engine: string }>(TEST_BUCKET, evaluation.metricsKey);
    expect(stored.engine).toBe('pytorch');
  });

  it('scores the yes/no suite, the description prompts and the generations with PyTorch', () => {
    const evaluation = result.evaluations.evaluate!;
    for (const side of [evaluation.amber!.base, evaluation.amber!.trained]) {
      expect(side.overall!.questions).toBe(questions);
      for (const v of [side.overall!.accuracy, side.overall!.f1, side.overall!.yes_ratio]) expect(v).toBeGreaterThanOrEqual(0);
    }
    if (questions) expect(evaluation.shortAnswers!.base.questions).toBe(questions);
    expect(evaluation.generative!.base.descriptions).toBe(2);
    expect(evaluation.generative!.trained.descriptions).toBe(2);
    expect(evaluation.generations).toHaveLength(2);
    for (const g of evaluation.generations ?? []) {
      expect(g.question.length).toBeGreaterThan(0);
      expect(g.imageKey).toBeTruthy();
      expect(typeof g.base).toBe('string');
      expect(typeof g.trained).toBe('string');
    }
    const line = result.timeline.find((t) => t.id === 'evaluate') as { summary?: Record<string, number | string> };
    expect(line.summary).toMatchObject({ engine: 'pytorch', base_amber_f1: evaluation.amber!.base.overall!.f1 });
    expect(line.summary).not.toHaveProperty('not_computed');
  });

  it('reports the engine and every metric', async () => {
    const markdown = (await stack.deps.storage.getBuffer(TEST_BUCKET, result.reports.report!.markdownKey)).toString();
    expect(markdown).toContain(`evaluated with PyTorch (the trainer evaluator, on CPU workers): ${family} cannot be exported to ONNX`);
    expect(markdown).not.toContain('not computed by');
    expect(markdown).toContain('preference accuracy (held-out)');
    expect(markdown).toContain(`AMBER overall accuracy (${questions} questions)`);
    expect(markdown).toMatch(/CHAIR/i);
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
