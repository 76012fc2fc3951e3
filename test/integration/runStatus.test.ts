/**
 * What a run shows of itself on the real stack (Temporal dev server, MinIO): the status query
 * answers from the run's first moment (while its lineage is still being recorded), and `dpo status`
 * answers for an ended run from its result and memo when no worker polls its queue any more. A run
 * that fails fast here also checks that the standard chain plans its reference stage, that its own
 * fresh bucket is created, and that its hint offers no resume.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { WorkflowHandle } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { REPO_ROOT } from '../../io/deps.js';
import { describeFailure, failureHint, resumeCanHelp, type ClosedRunStatus } from '../../cli/runPipeline.js';
import { generateDemoDataset } from '../../datagen/demoShapes.js';
import type { PipelineConfigInput } from '../../contracts/config.js';
import { temporalEnv } from '../../contracts/connection.js';
import { PIPELINE_WORKFLOW, statusQuery } from '../../contracts/messages.js';
import { startTestStack, TEST_BUCKET, uniqueId, type TestStack } from '../harness.js';

const exec = promisify(execFile);
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

async function dpo(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'cli/dpo.ts'), ...args], { cwd: REPO_ROOT });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
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
      const handle = await stack!.client.workflow.start(PIPELINE_WORKFLOW, {
        taskQueue: queue,
        workflowId,
        args: [config({ queues: { cpu: queue, gpu: `${queue}-gpu` } })],
      });
      await until('recordRun to be scheduled', () => scheduled(handle, 'recordRun'));
      const status = await handle.query(statusQuery);
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

    // Now closed, and no worker polls its queue: `dpo status` answers from the run itself.
    const started = Date.now();
    const { code, stdout } = await dpo('status', workflowId, '--json');
    const elapsed = Date.now() - started;
    expect(code).toBe(0);
    const closed = JSON.parse(stdout) as ClosedRunStatus;
    expect(closed).toMatchObject({ runId: workflowId, status: 'TERMINATED' });
    // A terminated run's failure is the reason it was given.
    expect(closed.error).toBe('test: the status query answered');
    expect(closed.hint).toContain(`dpo resume ${workflowId}`);
    expect(closed.lineage?.configHash).toMatch(/^[0-9a-f]+$/);
    expect(stdout).not.toContain('no worker polls');
    console.log(`dpo status of a terminated run with no worker: ${elapsed} ms`);
  });
});

describe('an ended run', () => {
  const failedRun = uniqueId('status-failed');
  const completedRun = uniqueId('status-done');
  const freshBucket = `dpo-fresh-${randomBytes(4).toString('hex')}`;
  let failure: unknown;

  beforeAll(async () => {
    const s = stack!;
    // The standard chain with precompute_ref_log_probs, a bucket that does not exist yet, and a
    // dataset folder that does not exist: recordRun creates the bucket, download fails at once.
    failure = await s.client.workflow
      .execute(PIPELINE_WORKFLOW, {
        taskQueue: s.queues.cpu,
        workflowId: failedRun,
        args: [config({ dataset: { source: join(dir, 'no-such-folder') }, train: { precompute_ref_log_probs: true }, storage: { bucket: freshBucket } })],
      })
      .then(() => null, (err: unknown) => err);
    const dataOnly = [
      { id: 'download', kind: 'download' },
      { id: 'format', kind: 'format', needs: ['download'] },
      { id: 'tokenize', kind: 'tokenize', needs: ['format'] },
      { id: 'shard', kind: 'shard', needs: ['tokenize'] },
    ];
    await s.client.workflow.execute(PIPELINE_WORKFLOW, { taskQueue: s.queues.cpu, workflowId: completedRun, args: [config({ stages: dataOnly })] });
  });

  it('failed at its download, after planning the reference stage and creating its bucket', async () => {
    const s = stack!;
    expect(failure).not.toBeNull();
    expect(describeFailure(failure)).toContain('dataset.source');
    expect(resumeCanHelp(failure)).toBe(false);
    expect(failureHint(failedRun, failure)).not.toContain('dpo resume');
    // A worker still polls: the closed run's status query replays it.
    const status = await s.client.workflow.getHandle(failedRun).query(statusQuery);
    expect(status.plan).toContainEqual({ id: 'reference', kind: 'reference', needs: ['shard'] });
    expect(status.plan).toContainEqual({ id: 'train', kind: 'train', needs: ['shard', 'reference'] });
    expect(status.stages.download!.state).toBe('failed');
    expect(await s.deps.storage.client.bucketExists(freshBucket)).toBe(true);
    expect(await s.deps.storage.exists(freshBucket, `runs/${failedRun}/run.json`)).toBe(true);
  });

  it('`dpo status` answers from its result and memo once no worker polls its queue', async () => {
    await stack!.stop();
    stack = undefined;

    const failed = await dpo('status', failedRun, '--json');
    expect(failed.code).toBe(0);
    const f = JSON.parse(failed.stdout) as ClosedRunStatus;
    expect(f).toMatchObject({ runId: failedRun, status: 'FAILED' });
    expect(f.error).toContain('dataset.source');
    expect(f.hint).not.toContain('dpo resume');
    expect(f.lineage?.runId).toBe(failedRun);

    const done = await dpo('status', completedRun, '--json');
    expect(done.code).toBe(0);
    const d = JSON.parse(done.stdout) as ClosedRunStatus;
    expect(d).toMatchObject({ runId: completedRun, status: 'COMPLETED' });
    expect(d.plan!.map((s) => s.id)).toEqual(['download', 'format', 'tokenize', 'shard']);
    expect(Object.values(d.stages!).map((s) => s.state)).toEqual(['done', 'done', 'done', 'done']);
    expect(d.lineage?.datasetRevision).toBeTruthy();

    const text = await dpo('status', completedRun);
    expect(text.stdout).toContain(`run ${completedRun}: COMPLETED`);
    expect(text.stdout).toMatch(/shard\s+shard\s+done/);
    expect(text.stdout).not.toContain('no worker polls');
  });
});
