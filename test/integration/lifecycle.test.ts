/**
 * Run lifecycle on the real stack (Temporal dev server, MinIO, the Python trainer), driven through
 * the `dpo` CLI where users drive it: resume after a forced trainer failure reuses every data stage
 * (asserted from the history) and continues from the checkpoint; a two-branch sweep shares its data
 * stages; a schedule triggered twice runs twice, the second run starting from the first's adapter;
 * bad input (unknown run, unknown sweep field, invalid cron) is one line and starts nothing.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { WorkflowHandle } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { REPO_ROOT } from '../../io/deps.js';
import { generateDemoDataset } from '../../datagen/demoShapes.js';
import type { PipelineConfigInput } from '../../contracts/config.js';
import { lineageKeys, storageRunId, type RunLineage } from '../../contracts/lineage.js';
import type { PipelineResult } from '../../contracts/payloads.js';
import { startTestStack, TEST_BUCKET, uniqueId, type TestStack } from '../harness.js';

const exec = promisify(execFile);
let stack: TestStack;
let dir: string;

const DATA_ACTIVITIES = ['downloadDataset', 'formatDataset', 'tokenizeDataset', 'shardDataset'];

beforeAll(async () => {
  // Two trainer slots: sweep branches train at the same time.
  stack = await startTestStack({ gpuSlots: 2 });
  dir = await mkdtemp(join(tmpdir(), 'dpo-lifecycle-'));
  await generateDemoDataset({ outDir: join(dir, 'data'), trainRows: 32, testRows: 16, seed: 31 });
});

afterAll(async () => {
  await stack?.stop();
});

/** download -> format -> tokenize -> shard -> train; 32 pairs / batch 4 = 8 steps. */
function lifecycleConfig(extra: Partial<PipelineConfigInput> = {}): PipelineConfigInput {
  return {
    name: 'lifecycle',
    model: { source: inject('modelSource') },
    dataset: { source: join(dir, 'data') },
    format: { image_longest_edge: 48 },
    tokenize: { max_length: 128, max_prompt_length: 96 },
    shard: { samples_per_shard: 40 },
    train: { per_device_train_batch_size: 4, gradient_accumulation_steps: 1, learning_rate: 0.005, dtype: 'float32', checkpoint_every_steps: 3, seed: 5 },
    evaluate: { batch_size: 16 },
    queues: stack.queues,
    storage: { bucket: TEST_BUCKET },
    stages: [
      { id: 'download', kind: 'download' },
      { id: 'format', kind: 'format', needs: ['download'] },
      { id: 'tokenize', kind: 'tokenize', needs: ['format'] },
      { id: 'shard', kind: 'shard', needs: ['tokenize'] },
      // One attempt: the forced trainer crash fails the run instead of being retried.
      { id: 'train', kind: 'train', needs: ['shard'], retry: { maximum_attempts: 1 } },
    ],
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

async function writeConfig(name: string, config: unknown): Promise<string> {
  const path = join(dir, `${name}.json`);
  await writeFile(path, JSON.stringify(config));
  return path;
}

/** Activity type -> the decoded results of its completed tasks, from the workflow history. */
async function activityResults(handle: WorkflowHandle): Promise<Map<string, unknown[]>> {
  const history = await handle.fetchHistory();
  const typeOf = new Map<string, string>();
  const out = new Map<string, unknown[]>();
  for (const e of history.events ?? []) {
    const s = e.activityTaskScheduledEventAttributes;
    if (s) typeOf.set(String(e.eventId), s.activityType!.name!);
    const c = e.activityTaskCompletedEventAttributes;
    if (c?.result?.payloads?.[0]?.data?.length) {
      const type = typeOf.get(String(c.scheduledEventId))!;
      out.set(type, [...(out.get(type) ?? []), JSON.parse(Buffer.from(c.result!.payloads![0]!.data!).toString())]);
    }
  }
  return out;
}

/** Inputs of every `type` activity the run scheduled, its training child workflows' included. */
async function scheduledInputs(handle: WorkflowHandle, type: string): Promise<Array<Record<string, unknown>>> {
  const events = (await handle.fetchHistory()).events ?? [];
  const own = events
    .map((e) => e.activityTaskScheduledEventAttributes)
    .filter((s) => s?.activityType?.name === type)
    .map((s) => JSON.parse(Buffer.from(s!.input!.payloads![0]!.data!).toString()) as Record<string, unknown>);
  const children = events.map((e) => e.startChildWorkflowExecutionInitiatedEventAttributes?.workflowId).filter((id): id is string => !!id);
  for (const id of children) own.push(...(await scheduledInputs(handle.client.getHandle(id), type)));
  return own;
}

describe('resume', () => {
  const failedRun = uniqueId('lc-crash');
  let resumedRun: string;

  it('a run whose trainer crashes at step 8 fails after checkpoints at steps 3 and 6', async () => {
    process.env.DPO_FAULT_CRASH_AT_STEP = '8';
    try {
      const { code, stderr } = await dpo('run', await writeConfig('crash', lifecycleConfig()), '--run-id', failedRun);
      expect(code).toBe(1);
      expect(stderr).toContain(`run ${failedRun} failed`);
    } finally {
      delete process.env.DPO_FAULT_CRASH_AT_STEP;
    }
    const keys = (await stack.deps.storage.list(TEST_BUCKET, `runs/${failedRun}/train/checkpoints/`)).map((o) => o.key);
    // Checkpoint folders carry their attempt's fence token (docs/training-and-durability.md).
    expect(keys.some((k) => new RegExp(`^runs/${failedRun}/train/checkpoints/step-00000006(\\.f\\d+)?/manifest\\.json$`).test(k))).toBe(true);
  });

  it('`dpo resume` reuses every data stage and continues from step 6 with a smaller micro-batch', async () => {
    resumedRun = uniqueId('lc-resumed');
    const { code, stdout } = await dpo(
      'resume', failedRun, '--run-id', resumedRun,
      '--set', 'train.per_device_train_batch_size=2', '--set', 'train.gradient_accumulation_steps=2',
    );
    expect(code).toBe(0);
    expect(stdout).toContain(`resuming ${failedRun} as ${resumedRun}`);
    const handle = stack.client.workflow.getHandle(resumedRun);
    const result: PipelineResult = await handle.result();
    expect(result.trainings.train!.resumedFromStep).toBe(6);
    expect(result.trainings.train!.finalStep).toBe(8);
    expect(result.lineage).toMatchObject({ parentRun: failedRun, parentRelation: 'resume', initFromRun: null });
    expect(await stack.deps.storage.getJson(TEST_BUCKET, lineageKeys.runManifest(failedRun))).toMatchObject({ outcome: 'failed' });

    // From the history: each data activity ran once and reported a cache hit (no work redone).
    const results = await activityResults(handle);
    for (const type of DATA_ACTIVITIES) {
      expect(results.get(type)).toHaveLength(1);
      // format and tokenize plan their chunks first: a cache hit returns the stored output at once.
      const result = results.get(type)![0] as { cached: boolean | { cached: boolean } };
      expect(result.cached === true || (typeof result.cached === 'object' && result.cached.cached)).toBe(true);
    }
    // The trainer was asked for the override and started from the old run's checkpoint.
    const [train] = await scheduledInputs(handle, 'trainModel');
    expect(train).toMatchObject({ resumeFromRunId: failedRun, train: { per_device_train_batch_size: 2, gradient_accumulation_steps: 2 } });
    expect(await stack.deps.storage.exists(TEST_BUCKET, `runs/${resumedRun}/train/final/adapter/adapter_config.json`)).toBe(true);
  });

  it('`dpo logs` shows the failed run\'s crash and `dpo resume` refuses runs it cannot resume', async () => {
    const logs = await dpo('logs', failedRun);
    expect(logs.code).toBe(0);
    expect(logs.stdout).toMatch(/train\s+failed\s+trainer exited with 1/);

    const missing = await dpo('resume', 'no-such-run-xyz');
    expect(missing.code).toBe(4);
    expect(missing.stderr.trim().split('\n')[0]).toBe('dpo: no run "no-such-run-xyz"');
    expect(missing.stdout).toBe('');

    const completed = await dpo('resume', resumedRun);
    expect(completed.code).toBe(2);
    expect(completed.stderr).toContain('is completed: nothing to resume');
  });
});

describe('sweep', () => {
  const runId = uniqueId('lc-sweep');
  let result: PipelineResult;

  it('two branches share the data stages and end in one comparison table', async () => {
    const config = lifecycleConfig({
      train: { ...lifecycleConfig().train, max_steps: 2, checkpoint_every_steps: 50 },
      sweep: { 'train.beta': [0.05, 0.5] },
      stages: [
        ...lifecycleConfig().stages!.slice(0, 4),
        { id: 'train', kind: 'train', needs: ['shard'] },
        { id: 'evaluate', kind: 'evaluate', needs: ['shard', 'train'] },
        { id: 'report', kind: 'report', needs: ['evaluate'] },
      ],
    });
    const { code, stdout } = await dpo('run', await writeConfig('sweep', config), '--run-id', runId);
    expect(code).toBe(0);
    expect(stdout).toContain('sweep (one row per branch):');
    expect(stdout).toMatch(/beta-0\.05\s+0\.05\s+2\s/);
    expect(stdout).toMatch(/beta-0\.5\s+0\.5\s+2\s/);
    result = await stack.client.workflow.getHandle(runId).result();
    expect(result.sweep!.map((r) => [r.branch, r.trainStage, r.evaluateStage])).toEqual([
      ['beta-0.05', 'train-beta-0.05', 'evaluate-beta-0.05'],
      ['beta-0.5', 'train-beta-0.5', 'evaluate-beta-0.5'],
    ]);
    for (const row of result.sweep!) expect(row.heldOutAccuracy).toBeGreaterThanOrEqual(0);
  });

  it('planned and ran each data stage once, and trained each branch with its beta', async () => {
    const handle = stack.client.workflow.getHandle(runId);
    for (const type of DATA_ACTIVITIES) expect(await scheduledInputs(handle, type)).toHaveLength(1);
    const trains = await scheduledInputs(handle, 'trainModel');
    expect(trains.map((t) => [t.stageId, (t.train as { beta: number }).beta]).sort()).toEqual([
      ['train-beta-0.05', 0.05],
      ['train-beta-0.5', 0.5],
    ]);
    const report = (await stack.deps.storage.getBuffer(TEST_BUCKET, result.reports.report!.markdownKey)).toString();
    expect(report).toContain('## Sweep');
    expect(report).toContain('| branch | train.beta | steps | loss | train acc | held-out acc | margin |');
  });

  it('a sweep over an unknown field is one line naming it, and starts nothing', async () => {
    const runIdBad = uniqueId('lc-badsweep');
    const path = await writeConfig('badsweep', lifecycleConfig({ sweep: { 'train.betaa': [0.1] } }));
    const { code, stdout, stderr } = await dpo('run', path, '--run-id', runIdBad);
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr).toContain('sweep.train.betaa: unknown sweep field "train.betaa"');
    await expect(stack.client.workflow.getHandle(runIdBad).describe()).rejects.toThrow();
  });
});

describe('schedule', () => {
  const scheduleId = uniqueId('lc-nightly');

  afterAll(async () => {
    await stack.client.schedule.getHandle(scheduleId).delete().catch(() => {});
  });

  /** Waits until the schedule has started `n` runs, and returns the workflow id of the n-th. */
  async function nthRun(n: number): Promise<string> {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const d = await stack.client.schedule.getHandle(scheduleId).describe();
      if (d.info.recentActions.length >= n) return d.info.recentActions[n - 1]!.action.workflow.workflowId;
      if (Date.now() > deadline) throw new Error(`schedule ${scheduleId} did not start run ${n}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  it('an invalid cron is one line and creates nothing', async () => {
    const path = await writeConfig('sched', lifecycleConfig({ init_from: 'previous' }));
    const { code, stderr } = await dpo('schedule', 'create', path, '--id', scheduleId, '--cron', '0 25 * * *');
    expect(code).toBe(2);
    expect(stderr.trim()).toBe('dpo: --cron "0 25 * * *": hour field "25": 25 is outside 0-23');
    const describe = await dpo('schedule', 'describe', scheduleId);
    expect(describe.code).toBe(4);
  });

  it('triggered twice, runs twice; the second run starts from the first run\'s adapter', async () => {
    // One optimizer step each: a fresh LoRA starts equal to the reference (margin exactly 0).
    const config = lifecycleConfig({ init_from: 'previous', train: { ...lifecycleConfig().train, max_steps: 1, checkpoint_every_steps: 50 } });
    // A cron far from now: only the triggers start runs during the test.
    const created = await dpo('schedule', 'create', await writeConfig('sched', config), '--id', scheduleId, '--cron', '0 0 1 1 *');
    expect(created.code).toBe(0);
    const listed = await dpo('schedule', 'list', '--json');
    expect(JSON.parse(listed.stdout)).toEqual(expect.arrayContaining([expect.objectContaining({ scheduleId, overlap: 'skip', spec: 'cron "0 0 1 1 *"' })]));

    expect((await dpo('schedule', 'trigger', scheduleId)).code).toBe(0);
    const first: PipelineResult = await stack.client.workflow.getHandle(await nthRun(1)).result();
    expect((await dpo('schedule', 'trigger', scheduleId)).code).toBe(0);
    const secondId = await nthRun(2);
    const second: PipelineResult = await stack.client.workflow.getHandle(secondId).result();

    expect(first.lineage).toMatchObject({ schedule: scheduleId, parentRun: null });
    expect(first.trainings.train!.metrics['rewards/margins']).toBe(0);
    expect(second.lineage).toMatchObject({ schedule: scheduleId, parentRun: first.runId, parentRelation: 'init_from', initFromRun: first.runId });
    expect(second.trainings.train!.initAdapter).toBe(`s3://${TEST_BUCKET}/runs/${first.runId}/train/final/adapter/`);
    // It really started from that adapter: its first step already prefers what the first run learned.
    expect(second.trainings.train!.metrics['rewards/margins']).not.toBe(0);
    expect(second.lineage!.datasetRevision).toBe(first.lineage!.datasetRevision);
    expect(second.lineage!.configHash).toBe(first.lineage!.configHash);
    expect(second.runId).toBe(storageRunId(secondId));

    // Lineage in the run manifest, and findable by search attributes (as in the Web UI).
    const manifest = await stack.deps.storage.getJson<RunLineage & { outcome: string }>(TEST_BUCKET, lineageKeys.runManifest(second.runId));
    expect(manifest).toMatchObject({ parentRun: first.runId, schedule: scheduleId, outcome: 'completed' });
    const query = `DpoSchedule = "${scheduleId}" AND DpoParentRun = "${first.runId}" AND ExecutionStatus = "Completed" AND DpoModel = "${inject('modelSource')}"`;
    let found: string[] = [];
    for (let i = 0; i < 20 && found.length === 0; i++) {
      found = [];
      for await (const w of stack.client.workflow.list({ query })) found.push(w.workflowId);
      if (!found.length) await new Promise((r) => setTimeout(r, 500));
    }
    expect(found).toEqual([secondId]);
  });
});
