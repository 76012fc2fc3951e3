/**
 * What a run shows of itself on the real stack (Temporal dev server, MinIO): the status query
 * answers from the run's first moment (while its lineage is still being recorded).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { generateDemoDataset } from '../datagen/demoShapes.js';
import type { PipelineConfigInput } from '../lib/config.js';
import { temporalEnv } from '../worker/connection.js';
import type { PipelineStatus } from '../workflows/pipeline.js';
import { startTestStack, TEST_BUCKET, uniqueId, type TestStack } from './harness.js';

let stack: TestStack | undefined;
let dir: string;

beforeAll(async () => {
  stack = await startTestStack({ serveGpu: false });
  dir = await mkdtemp(join(tmpdir(), 'dpo-run-status-'));
  await generateDemoDataset({ outDir: join(dir, 'data'), trainRows: 8, testRows: 4, seed: 3 });
});

afterAll(async () => {
  await stack?.stop();
});

function config(extra: Partial<PipelineConfigInput> = {}): PipelineConfigInput {
  return {
    name: 'run-status',
    model: { source: inject('modelSource') },
    dataset: { source: join(dir, 'data') },
    format: { image_longest_edge: 48 },
    tokenize: { max_length: 128, max_prompt_length: 96 },
    queues: stack!.queues,
    storage: { bucket: TEST_BUCKET },
    ...extra,
  };
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const scheduled = async (handle: WorkflowHandle, activityType: string) =>
  ((await handle.fetchHistory()).events ?? []).some((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === activityType);

describe('status query', () => {
  it('answers while the run is still recording its lineage', async () => {
    // A worker with workflows and no activities: the run waits at its first activity (recordRun).
    const queue = `test-wf-only-${randomBytes(4).toString('hex')}`;
    const connection = await NativeConnection.connect({ address: temporalEnv().address });
    const worker = await Worker.create({ connection, taskQueue: queue, workflowBundle: { code: await readFile(inject('workflowBundlePath'), 'utf8') } });
    const running = worker.run();
    const workflowId = uniqueId('status-early');
    try {
      const handle = await stack!.client.workflow.start('dpoPipeline', {
        taskQueue: queue,
        workflowId,
        args: [config({ queues: { cpu: queue, gpu: `${queue}-gpu` } })],
      });
      await until('recordRun to be scheduled', () => scheduled(handle, 'recordRun'));
      const status = await handle.query<PipelineStatus>('status');
      expect(status.plan.map((s) => s.id)).toEqual(['download', 'format', 'tokenize', 'shard', 'train', 'evaluate', 'report']);
      expect(status.running).toEqual([]);
      expect(Object.values(status.stages).map((s) => s.state)).toEqual(Array(7).fill('pending'));
      expect(status.training).toEqual({ paused: false, checkpointEverySteps: null });
      await handle.terminate('test: the status query answered');
    } finally {
      worker.shutdown();
      await running;
      await connection.close();
    }

  });
});

