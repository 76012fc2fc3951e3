/**
 * The `reference` stage on the real stack (Temporal, MinIO, the Python trainer): computed once on
 * the gpu queue and reused from the stage cache by a later run over the same model, shards and
 * length settings. (Training with the stored files is covered by trainer/tests/test_reference.py;
 * a train stage here would add a trainer process, ~45 s on 2 cores, beyond this file's budget.)
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { generateDemoDataset } from '../../datagen/demoShapes.js';
import type { PipelineConfigInput } from '../../contracts/config.js';
import { startTestStack, TEST_BUCKET, uniqueId, type TestStack } from '../harness.js';
import { PIPELINE_WORKFLOW, statusQuery, type PipelineStatus } from '../../contracts/messages.js';

let stack: TestStack;
let datasetDir: string;

beforeAll(async () => {
  stack = await startTestStack();
  datasetDir = await mkdtemp(join(tmpdir(), 'dpo-reference-'));
  await generateDemoDataset({ outDir: datasetDir, trainRows: 24, testRows: 8, seed: 5 });
});

afterAll(async () => {
  await stack?.stop();
});

function config(stages: PipelineConfigInput['stages']): PipelineConfigInput {
  return {
    name: 'reference',
    model: { source: inject('modelSource') },
    dataset: { source: datasetDir },
    format: { image_longest_edge: 48 },
    tokenize: { max_length: 128, max_prompt_length: 96 },
    train: { max_steps: 2, per_device_train_batch_size: 8, gradient_accumulation_steps: 1, dtype: 'float32', precompute_ref_log_probs: true },
    queues: stack.queues,
    storage: { bucket: TEST_BUCKET },
    stages,
  };
}

const dataAndReference = [
  { id: 'download', kind: 'download' },
  { id: 'format', kind: 'format', needs: ['download'] },
  { id: 'tokenize', kind: 'tokenize', needs: ['format'] },
  { id: 'shard', kind: 'shard', needs: ['tokenize'] },
  { id: 'reference', kind: 'reference', needs: ['shard'], params: { batch_size: 16 } },
];

async function run(stages: PipelineConfigInput['stages']): Promise<PipelineStatus> {
  const workflowId = uniqueId('reference');
  await stack.client.workflow.execute(PIPELINE_WORKFLOW, { taskQueue: stack.queues.cpu, workflowId, args: [config(stages)] });
  return stack.client.workflow.getHandle(workflowId).query(statusQuery);
}

describe('reference stage', () => {
  let first: PipelineStatus;

  beforeAll(async () => {
    first = await run(dataAndReference);
  });

  it('computes the reference log-probs on the gpu queue and stores them content-addressed', async () => {
    expect(first.stages.reference).toMatchObject({ state: 'done', kind: 'reference', cached: false, summary: { samples: 24 } });
    const stored = (await stack.deps.storage.list(TEST_BUCKET, 'stages/reference/')).map((o) => o.key);
    expect(stored.some((k) => /^stages\/reference\/[0-9a-f]{32}\/logps\/ref_logps\.parquet$/.test(k))).toBe(true);
    expect(stored.some((k) => /^stages\/reference\/[0-9a-f]{32}\/manifest\.json$/.test(k))).toBe(true);
  });

  it('is reused by a later run over the same model, shards and lengths', async () => {
    const again = await run(dataAndReference);
    expect(again.stages.reference).toMatchObject({ state: 'done', cached: true, summary: { samples: 24 } });
  });
});
