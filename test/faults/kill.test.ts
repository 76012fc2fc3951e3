/**
 * Lost and preempted GPU workers, on the real stack: kill -9 three times in one run; SIGTERM
 * (the emergency checkpoint is used, no step redone). The GPU worker is its own process.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { writeReport } from '../../activities/report/report.js';
import { parsePipelineConfig } from '../../contracts/config.js';
import type { PipelineResult } from '../../contracts/payloads.js';
import { TEST_BUCKET, uniqueId } from '../harness.js';
import {
  adapterSha256,
  publishedCheckpoints,
  readEvents,
  stopWorker,
  trainerPids,
  trainerRuns,
  useFaultSuite,
  waitFor,
  workRoot,
} from './faultKit.js';
import { PIPELINE_WORKFLOW } from '../../contracts/messages.js';
import type { StepRecord } from '../../contracts/progress.js';
import { trainerPython } from '../../io/deps.js';
import { pullRunEvents } from '../../io/tensorboardEvents.js';

const EVERY = 3; // checkpoint interval (steps)
const STEPS = 16; // 64 pairs / micro-batch 4
const suite = useFaultSuite();

const config = (train: Record<string, unknown> = {}) => suite.config({ checkpoint_every_steps: EVERY, segment_steps: 8, ...train });

/** Steps slowed to 0.5 s, so a kill lands mid-training. */
const gpuWorker = (name: string, eventsFile: string, env: Record<string, string> = {}) =>
  suite.startWorker(name, eventsFile, { DPO_FAULT_SLEEP_PER_STEP: '0.5', ...env });

describe('fault injection: lost and preempted GPU workers', () => {
  let reference: PipelineResult;

  it('an uninterrupted run (the reference)', async () => {
    const suffix = randomBytes(3).toString('hex');
    const w = await gpuWorker(`ref-${suffix}`, join(suite.datasetDir, `ref-${suffix}.jsonl`));
    reference = await suite.stack.client.workflow.execute(PIPELINE_WORKFLOW, { taskQueue: suite.stack.queues.cpu, workflowId: uniqueId('faults-ref'), args: [config()] });
    await stopWorker(w);
    expect(reference.trainings.train!.finalStep).toBe(STEPS);
  });

  it('kill -9 of the GPU worker three times: completes, same adapter, at most one interval redone per kill, each step once in TensorBoard', async () => {
    const suffix = randomBytes(3).toString('hex');
    const workName = `kill-${suffix}`;
    const eventsFile = join(suite.datasetDir, `kill-${suffix}.jsonl`);
    const runId = uniqueId('faults-kill');
    let worker = await gpuWorker(workName, eventsFile);
    const handle = await suite.stack.client.workflow.start(PIPELINE_WORKFLOW, { taskQueue: suite.stack.queues.cpu, workflowId: runId, args: [config({ report_to: 'tensorboard' })] });
    const kills: Array<{ newestPublished: number }> = [];
    // Targets stay clear of the segment ends (steps 8 and 16): a trainer that reaches its segment's
    // end exits normally, and a kill just after would hit a worker with no trainer running.
    for (const target of [1, 5, 12]) {
      // Kill at a random moment after step `target` has run (steps take >= 0.5 s here).
      await waitFor(async () => trainerRuns(await readEvents(eventsFile)).some((r) => r.lastStep >= target), 180_000, `step ${target}`);
      await new Promise((r) => setTimeout(r, Math.random() * 500));
      worker.child.kill('SIGKILL');
      await worker.exited;
      const published = await publishedCheckpoints(suite.stack.deps, TEST_BUCKET, runId, 'train');
      kills.push({ newestPublished: published.at(-1)?.step ?? 0 });
      // The trainer dies with its worker (trainer/dpo_trainer/watchdog.py).
      await waitFor(async () => (await trainerPids(workRoot(workName))).length === 0, 5_000, 'orphaned trainer to exit');
      worker = await gpuWorker(workName, eventsFile);
    }
    const result: PipelineResult = await handle.result();
    const train = result.trainings.train!;
    await stopWorker(worker);
    expect(train.finalStep).toBe(STEPS);
    expect(await adapterSha256(suite.stack.deps, TEST_BUCKET, train.adapterPrefix)).toBe(
      await adapterSha256(suite.stack.deps, TEST_BUCKET, reference.trainings.train!.adapterPrefix),
    );
    // Each killed trainer's successor resumed from the newest published checkpoint: at most one
    // interval behind the last step the killed one completed.
    const runs = trainerRuns(await readEvents(eventsFile));
    const killed = runs.filter((r) => !r.exit);
    expect(killed).toHaveLength(3);
    for (const [i, dead] of killed.entries()) {
      const next = runs[runs.indexOf(dead) + 1]!;
      expect(next.startStep).toBeGreaterThanOrEqual(kills[i]!.newestPublished);
      expect(dead.lastStep - next.startStep).toBeLessThanOrEqual(EVERY);
      expect(dead.lastStep - next.startStep).toBeGreaterThanOrEqual(0);
    }
    // The timeline counts the three lost workers as retries of the train stage, none a preemption,
    // and the report shows them.
    expect(train.attempts).toMatchObject({ activities: 2, retries: 3, workerLosses: 3, preemptions: 0 });
    const row = await reportTrainRow(runId, result);
    expect(row.retries).toBe('3 (3 workers lost)');
    expect(row.preemptions).toBe('0');
    expect(result.timeline.find((t) => t.id === 'format')).toMatchObject({ retries: 0 });

    // TensorBoard (its own reader, as `dpo tensorboard` pulls the files): every step once, in
    // order, with the values of the stored learning curve, across the attempts' event files.
    const logDir = await mkdtemp(join(tmpdir(), 'dpo-tb-'));
    expect(await pullRunEvents(suite.stack.deps.storage, TEST_BUCKET, runId, logDir)).toEqual(['train']);
    const { stdout } = await promisify(execFile)(trainerPython(), ['test/fixtures/tensorboard_scalars.py', logDir]);
    const shown = (JSON.parse(stdout) as Record<string, Record<string, Array<[number, number]>>>)[`${runId}/train`]!;
    const curve = await suite.stack.deps.storage.getJson<StepRecord[]>(TEST_BUCKET, train.stepMetricsKey!);
    for (const tag of ['train/loss', 'train/rewards/margins', 'train/learning_rate', 'train/grad_norm', 'train/epoch']) {
      expect(shown[tag]!.map(([step]) => step), tag).toEqual(Array.from({ length: STEPS }, (_, i) => i + 1));
    }
    for (const [i, [, loss]] of shown['train/loss']!.entries()) expect(loss).toBeCloseTo(curve[i]!.metrics.loss!, 5);
    // `dpo tensorboard` serves the same curve: the CLI pulls the run and starts TensorBoard.
    const port = await freePort();
    const cli = spawn(process.execPath, ['--import', 'tsx', 'cli/dpo.ts', 'tensorboard', runId, '--bucket', TEST_BUCKET, '--dir', await mkdtemp(join(tmpdir(), 'dpo-tb-cli-')), '--port', String(port)], { stdio: 'ignore' });
    const exited = new Promise((done) => cli.once('exit', done));
    try {
      const url = `http://127.0.0.1:${port}/data/plugin/scalars/scalars?run=${encodeURIComponent(`${runId}/train`)}&tag=${encodeURIComponent('train/loss')}`;
      let served: Array<[number, number, number]> = [];
      await waitFor(async () => {
        const response = await fetch(url).catch(() => null);
        if (!response?.ok) return false;
        served = (await response.json()) as typeof served;
        return true;
      }, 90_000, 'TensorBoard to serve the run');
      expect(served.map(([, step]) => step)).toEqual(shown['train/loss']!.map(([step]) => step));
    } finally {
      cli.kill('SIGTERM');
      await exited;
    }
  });

  it('SIGTERM of the GPU worker: the emergency checkpoint is used and no step is redone', async () => {
    const suffix = randomBytes(3).toString('hex');
    const eventsFile = join(suite.datasetDir, `term-${suffix}.jsonl`);
    const runId = uniqueId('faults-term');
    let worker = await gpuWorker(`term-${suffix}`, eventsFile);
    const handle = await suite.stack.client.workflow.start(PIPELINE_WORKFLOW, { taskQueue: suite.stack.queues.cpu, workflowId: runId, args: [config()] });
    await waitFor(async () => trainerRuns(await readEvents(eventsFile)).some((r) => r.lastStep >= 4), 180_000, 'step 4');
    worker.child.kill('SIGTERM');
    expect(await worker.exited).toBe(0); // drained: the activity reported before the worker exited
    expect(await trainerPids(workRoot(`term-${suffix}`))).toEqual([]);
    worker = await gpuWorker(`term2-${suffix}`, eventsFile);
    const result: PipelineResult = await handle.result();
    await stopWorker(worker);
    expect(result.trainings.train!.finalStep).toBe(STEPS);
    const events = await readEvents(eventsFile);
    const preempted = events.find((e) => e.event === 'preempted' && e.step! < 8)!;
    expect(preempted).toBeDefined();
    const runs = trainerRuns(events);
    const stopped = runs.find((r) => r.pid === preempted.pid)!;
    const next = runs[runs.indexOf(stopped) + 1]!;
    // The emergency checkpoint holds the last completed step, and the retry starts right there.
    expect(preempted.step).toBe(stopped.lastStep);
    expect(next.startStep).toBe(stopped.lastStep);
    // One preemption, no lost worker: in the run's timeline and in its report (Markdown and HTML).
    expect(result.timeline.find((t) => t.id === 'train')).toMatchObject({ activities: 2, retries: 1, preemptions: 1, workerLosses: 0 });
    const row = await reportTrainRow(runId, result);
    expect(row).toMatchObject({ retries: '1 (1 preempted)', preemptions: '1', replans: '0' });
  });
});

/**
 * Writes the run's report from its result (the fault runs have no evaluate/report stage, to stay
 * short) to storage, then reads the train stage's timeline row back from report.md and report.html.
 */
async function reportTrainRow(runId: string, result: PipelineResult): Promise<{ retries: string; preemptions: string; replans: string }> {
  const parsed = parsePipelineConfig(config());
  if (!parsed.ok) throw new Error('fault config does not parse');
  const report = await writeReport(suite.stack.deps, {
    runId,
    stageId: 'report',
    bucket: TEST_BUCKET,
    config: parsed.config,
    dagMermaid: 'flowchart LR',
    timeline: result.timeline,
    dataStages: result.dataStages,
    trainings: result.trainings,
    evaluations: {},
  });
  const markdown = (await suite.stack.deps.storage.getBuffer(TEST_BUCKET, report.markdownKey)).toString('utf8');
  const header = markdown.split('\n').find((l) => l.startsWith('| stage | kind |'))!.split(' | ');
  const cells = markdown.split('\n').find((l) => l.startsWith('| train | train |'))!.split(' | ');
  const cell = (name: string) => cells[header.indexOf(name)]!.trim();
  const html = (await suite.stack.deps.storage.getBuffer(TEST_BUCKET, report.htmlKey!)).toString('utf8');
  expect(html).toContain(`<td>train</td><td>train</td><td>done</td><td></td>`);
  expect(html).toContain(`<th>preemptions</th>`);
  expect(html).toContain(`<td>${cell('retries')}</td><td>${cell('preemptions')}</td>`);
  return { retries: cell('retries'), preemptions: cell('preemptions'), replans: cell('OOM replans') };
}

/** A port nothing listens on right now (for a TensorBoard the test starts). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const { port } = server.address() as { port: number };
  await new Promise((done) => server.close(done));
  return port;
}
