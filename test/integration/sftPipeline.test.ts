/**
 * Supervised fine-tuning before DPO on the real stack (the RLAIF-V recipe's order): download ->
 * format -> tokenize -> shard -> sft -> train (from the SFT model) -> evaluate -> report. The sft
 * stage trains on the chosen answers with TRL SFTTrainer's metrics and stores its adapter merged
 * into the base; the DPO stage starts from that model and is referenced to it; evaluation scores
 * the DPO adapter against the SFT model; the report shows both training stages.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { generateDemoDataset } from '../../datagen/demoShapes.js';
import type { PipelineConfigInput } from '../../contracts/config.js';
import type { PipelineResult } from '../../contracts/payloads.js';
import type { StepRecord } from '../../contracts/progress.js';
import { PIPELINE_WORKFLOW } from '../../contracts/messages.js';
import { splitLabel } from '../../contracts/splitSpec.js';
import { startTestStack, TEST_BUCKET, uniqueId, type TestStack } from '../harness.js';

let stack: TestStack;
let datasetDir: string;
let sftDatasetDir: string;

beforeAll(async () => {
  stack = await startTestStack();
  datasetDir = await mkdtemp(join(tmpdir(), 'dpo-sft-'));
  await generateDemoDataset({ outDir: datasetDir, trainRows: 48, testRows: 16, seed: 31 });
  sftDatasetDir = await mkdtemp(join(tmpdir(), 'dpo-sft-data-'));
  await generateDemoDataset({ outDir: sftDatasetDir, trainRows: 40, testRows: 8, seed: 32 });
});

afterAll(async () => {
  await stack?.stop();
});

const stages: PipelineConfigInput['stages'] = [
  { id: 'download', kind: 'download' },
  { id: 'format', kind: 'format', needs: ['download'] },
  { id: 'tokenize', kind: 'tokenize', needs: ['format'] },
  { id: 'shard', kind: 'shard', needs: ['tokenize'] },
  // SFT's usual higher learning rate; the rest (dtype, batch, LoRA) comes from the train section.
  { id: 'sft', kind: 'sft', needs: ['shard'], params: { learning_rate: 0.005, max_steps: 4, checkpoint_every_steps: 2 } },
  { id: 'train', kind: 'train', needs: ['shard', 'sft'] },
  { id: 'evaluate', kind: 'evaluate', needs: ['shard', 'train'] },
  { id: 'report', kind: 'report', needs: ['evaluate'] },
];

function run(id: string, runStages: PipelineConfigInput['stages']): Promise<PipelineResult> {
  return stack.client.workflow.execute(PIPELINE_WORKFLOW, {
    taskQueue: stack.queues.cpu,
    workflowId: id,
    args: [
      {
        name: 'sft-then-dpo',
        model: { source: inject('modelSource') },
        dataset: { source: datasetDir },
        format: { image_longest_edge: 48 },
        tokenize: { max_length: 128, max_prompt_length: 96 },
        train: { max_steps: 3, per_device_train_batch_size: 8, gradient_accumulation_steps: 1, learning_rate: 0.002, dtype: 'float32', checkpoint_every_steps: 50, seed: 3 },
        evaluate: { batch_size: 16, generations: 0 },
        queues: stack.queues,
        storage: { bucket: TEST_BUCKET },
        stages: runStages,
      } satisfies PipelineConfigInput,
    ],
  });
}

describe('sft -> train (from the SFT model) -> evaluate -> report', () => {
  const runId = uniqueId('sft');
  let result: PipelineResult;
  const curve = async (stageId: string) => stack.deps.storage.getJson<StepRecord[]>(TEST_BUCKET, result.trainings[stageId]!.stepMetricsKey!);

  beforeAll(async () => {
    result = await run(runId, stages);
  });

  it('runs every stage', () => {
    expect(result.timeline.map((t) => [t.id, t.kind, t.state])).toEqual(stages.map((s) => [s.id, s.kind, 'done']));
  });

  it("trains the sft stage on the chosen answers, with TRL SFTTrainer's metric names", async () => {
    const sft = result.trainings.sft!;
    expect(sft.objective).toBe('sft');
    expect(sft.finalStep).toBe(4);
    expect(sft.checkpointKeys).toHaveLength(2);
    const steps = await curve('sft');
    expect(steps.map((s) => s.step)).toEqual([1, 2, 3, 4]);
    for (const s of steps) {
      expect(Object.keys(s.metrics).sort()).toEqual(['entropy', 'grad_norm', 'learning_rate', 'loss', 'mean_token_accuracy', 'num_tokens']);
    }
    expect(steps.map((s) => s.metrics.num_tokens)).toEqual([...steps.map((s) => s.metrics.num_tokens!)].sort((a, b) => a - b));
    expect(steps.at(-1)!.metrics.loss).toBeLessThan(steps[0]!.metrics.loss!);
  });

  it('stores the SFT adapter merged into the base, a model folder with its processor files', async () => {
    const sft = result.trainings.sft!;
    expect(sft.modelPrefix).toBe(sft.adapterPrefix.replace(/adapter\/$/, 'model/'));
    const files = (await stack.deps.storage.list(TEST_BUCKET, sft.modelPrefix!)).map((o) => o.key.slice(sft.modelPrefix!.length));
    expect(files).toEqual(expect.arrayContaining(['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'preprocessor_config.json']));
    // The final folder's manifest (written last) covers the merged model too.
    const manifest = await stack.deps.storage.getJson<{ files: Array<{ path: string }> }>(TEST_BUCKET, `${sft.modelPrefix!.replace(/model\/$/, '')}manifest.json`);
    expect(manifest.files.map((f) => f.path)).toContain('model/model.safetensors');
  });

  it('starts the DPO stage from the SFT model, which is also its reference', async () => {
    const sft = result.trainings.sft!;
    const train = result.trainings.train!;
    const sftModel = `s3://${TEST_BUCKET}/${sft.modelPrefix}`;
    expect(train.baseModelSource).toBe(sftModel);
    expect(train.objective).toBeUndefined();
    const steps = await curve('train');
    expect(Object.keys(steps[0]!.metrics)).toEqual(expect.arrayContaining(['rewards/chosen', 'rewards/margins', 'logps/chosen']));
    // Step 1 scores the fresh adapter (LoRA B = 0): policy and reference are the same model, so
    // the implicit rewards are exactly 0. Were the reference the base and the policy the SFT
    // model, they would not be.
    expect(steps[0]!.metrics['rewards/chosen']).toBe(0);
    expect(steps[0]!.metrics['rewards/rejected']).toBe(0);
    const adapterConfig = await stack.deps.storage.getJson<{ base_model_name_or_path: string }>(TEST_BUCKET, `${train.adapterPrefix}adapter_config.json`);
    expect(adapterConfig.base_model_name_or_path).toBe(sftModel);
  });

  it('evaluates the DPO adapter against the SFT model', () => {
    const evaluation = result.evaluations.evaluate!;
    expect(evaluation.adapter).toBe(`s3://${TEST_BUCKET}/${result.trainings.train!.adapterPrefix}`);
    expect([evaluation.base.samples, evaluation.trained.samples]).toEqual([16, 16]);
  });

  it('reports the sft stage in the timeline and as a training with its loss curve', async () => {
    const markdown = (await stack.deps.storage.getBuffer(TEST_BUCKET, result.reports.report!.markdownKey)).toString();
    expect(markdown).toMatch(/\| sft \| sft \| done \|/);
    expect(markdown).toContain('### sft');
    expect(markdown).toContain('- objective: sft (supervised fine-tuning on the chosen answers)');
    expect(markdown).toContain(`- merged model: \`s3://${TEST_BUCKET}/${result.trainings.sft!.modelPrefix}\``);
    expect(markdown).toContain('![SFT loss (NLL per assistant token)](');
    expect(markdown).toContain(`- started from (and referenced to): \`s3://${TEST_BUCKET}/${result.trainings.sft!.modelPrefix}\``);
  });
});

describe('sft on a separate dataset: its own download -> format -> tokenize -> shard chain', () => {
  let result: PipelineResult;

  beforeAll(async () => {
    result = await run(uniqueId('sft-data'), [
      ...stages.slice(0, 4),
      // The DPO chain above is cached from the first run; this one reads another dataset, sliced.
      { id: 'download-sft', kind: 'download', params: { dataset: { source: sftDatasetDir, train_split: 'train[:24]', eval_split: 'test' } } },
      { id: 'format-sft', kind: 'format', needs: ['download-sft'] },
      { id: 'tokenize-sft', kind: 'tokenize', needs: ['format-sft'] },
      { id: 'shard-sft', kind: 'shard', needs: ['tokenize-sft'] },
      { id: 'sft', kind: 'sft', needs: ['shard-sft'], params: { learning_rate: 0.005, max_steps: 3 } },
      { id: 'train', kind: 'train', needs: ['shard', 'sft'], params: { max_steps: 2 } },
    ]);
  });

  it("trains the sft stage on the other dataset's rows and DPO on the config's, from the SFT model", async () => {
    expect(result.timeline.every((t) => t.state === 'done')).toBe(true);
    expect(result.timeline.filter((t) => t.cached).map((t) => t.id)).toEqual(['download', 'format', 'tokenize', 'shard']);
    const format = await stack.deps.storage.getJson<{ splits: Record<string, { rows: number }> }>(TEST_BUCKET, result.dataStages['format-sft']!.manifestKey);
    expect(format.splits[splitLabel('train[:24]')]!.rows).toBe(24);
    // 24 rows, 8 per step: 3 steps are one epoch over the SFT dataset.
    const steps = await stack.deps.storage.getJson<StepRecord[]>(TEST_BUCKET, result.trainings.sft!.stepMetricsKey!);
    expect(steps.at(-1)!.epoch).toBe(1);
    expect(result.trainings.train!.baseModelSource).toBe(`s3://${TEST_BUCKET}/${result.trainings.sft!.modelPrefix}`);
  });
});
