/**
 * Tools for the fault-injection suite: a GPU worker in its own process (so a test can kill -9,
 * SIGTERM or SIGSTOP it), the trainer event log it writes (DPO_TRAINER_EVENTS_FILE), and
 * storage probes for published checkpoints. Everything runs on the real services.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, inject } from 'vitest';
import { generateDemoDataset } from '../../datagen/demoShapes.js';
import { REPO_ROOT, type ActivityDeps } from '../../io/deps.js';
import { keys, MANIFEST_FILE, parseFencedCheckpointName } from '../../contracts/keys.js';
import type { PipelineConfigInput } from '../../contracts/config.js';
import { startTestStack, TEST_BUCKET, type TestStack } from '../harness.js';

const exec = promisify(execFile);

export interface GpuWorkerProcess {
  child: ChildProcess;
  pid: number;
  output: () => string;
  exited: Promise<number | null>;
}

/** `node --import tsx worker/main.ts --queues gpu` on the test's queues, one process (no tsx wrapper). */
export async function startGpuWorker(opts: {
  queues: { cpu: string; gpu: string };
  workDir: string;
  eventsFile: string;
  env?: Record<string, string>;
}): Promise<GpuWorkerProcess> {
  await mkdir(opts.workDir, { recursive: true });
  const child = spawn(process.execPath, ['--import', 'tsx', 'worker/main.ts', '--queues', 'gpu'], {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      DPO_CPU_QUEUE: opts.queues.cpu,
      DPO_GPU_QUEUE: opts.queues.gpu,
      DPO_WORK_DIR: opts.workDir,
      DPO_TRAINER_EVENTS_FILE: opts.eventsFile,
      OMP_NUM_THREADS: '1',
      ...opts.env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (b: Buffer) => (out = (out + b.toString()).slice(-20_000)));
  child.stderr!.on('data', (b: Buffer) => (out = (out + b.toString()).slice(-20_000)));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  await waitFor(() => out.includes('worker: connected'), 60_000, 'GPU worker start');
  return { child, pid: child.pid!, output: () => out, exited };
}

export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 150));
  }
  throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}`);
}

export interface LoggedEvent {
  pid: number;
  event: string;
  time: number;
  step?: number;
  start_step?: number;
  [key: string]: unknown;
}

export async function readEvents(file: string): Promise<LoggedEvent[]> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as LoggedEvent);
}

/** Per trainer process, in start order: the step it started from and the last step it completed. */
export function trainerRuns(events: LoggedEvent[]): Array<{ pid: number; startStep: number; lastStep: number; startedAt: number; firstStepAt?: number; exit?: string }> {
  const runs = new Map<number, { pid: number; startStep: number; lastStep: number; startedAt: number; firstStepAt?: number; exit?: string }>();
  for (const e of events) {
    if (e.event === 'started') runs.set(e.pid, { pid: e.pid, startStep: e.start_step!, lastStep: e.start_step!, startedAt: e.time });
    const run = runs.get(e.pid);
    if (!run) continue;
    if (e.event === 'step') {
      run.lastStep = e.step!;
      run.firstStepAt ??= e.time;
    }
    if (e.event === 'preempted' || e.event === 'finished' || e.event === 'error') run.exit = e.event;
  }
  return [...runs.values()];
}

/** Published checkpoints of a stage: those with a manifest in storage. */
export async function publishedCheckpoints(deps: ActivityDeps, bucket: string, runId: string, stageId: string) {
  const prefix = keys.checkpointsPrefix(runId, stageId);
  return (await deps.storage.list(bucket, prefix))
    .filter((o) => o.key.endsWith(`/${MANIFEST_FILE}`))
    .map((o) => ({ prefix: o.key.slice(0, -MANIFEST_FILE.length), ...parseFencedCheckpointName(o.key.slice(prefix.length).split('/')[0]!)! }))
    .sort((a, b) => a.step - b.step);
}

/** Trainer processes still alive whose command line names this work folder. */
export async function trainerPids(workDir: string): Promise<number[]> {
  try {
    const { stdout } = await exec('pgrep', ['-f', `dpo_trainer.train --config ${workDir}`]);
    return stdout.split('\n').filter(Boolean).map(Number);
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
}

export async function adapterSha256(deps: ActivityDeps, bucket: string, adapterPrefix: string): Promise<string> {
  const bytes = await deps.storage.getBuffer(bucket, `${adapterPrefix}adapter_model.safetensors`);
  return createHash('sha256').update(bytes).digest('hex');
}

/** download -> format -> tokenize -> shard -> train: no evaluation, to keep fault runs short. */
export function faultPipelineConfig(opts: {
  datasetDir: string;
  modelSource: string;
  queues: { cpu: string; gpu: string };
  bucket: string;
  train: Record<string, unknown>;
  heartbeat?: string;
}): PipelineConfigInput {
  return {
    name: 'faults',
    model: { source: opts.modelSource },
    dataset: { source: opts.datasetDir },
    format: { image_longest_edge: 48 },
    tokenize: { max_length: 128, max_prompt_length: 96 },
    shard: { samples_per_shard: 64 },
    train: {
      epochs: 1,
      per_device_train_batch_size: 4,
      gradient_accumulation_steps: 1,
      learning_rate: 0.002,
      dtype: 'float32',
      seed: 5,
      ...opts.train,
    },
    queues: opts.queues,
    storage: { bucket: opts.bucket },
    stages: [
      { id: 'download', kind: 'download', needs: [] },
      { id: 'format', kind: 'format', needs: ['download'] },
      { id: 'tokenize', kind: 'tokenize', needs: ['format'] },
      { id: 'shard', kind: 'shard', needs: ['tokenize'] },
      {
        id: 'train',
        kind: 'train',
        needs: ['shard'],
        timeouts: { heartbeat: opts.heartbeat ?? '10s' },
        retry: { initial_interval: '1s', maximum_interval: '2s', maximum_attempts: 20 },
      },
    ],
  } as PipelineConfigInput;
}

export const workRoot = (name: string) => join(REPO_ROOT, '.dpo/test-work', name);

/** What a fault-test file shares between its tests (useFaultSuite). */
export interface FaultSuite {
  stack: TestStack;
  /** The 64-pair demo dataset (16 steps at micro-batch 4). */
  datasetDir: string;
  /** faultPipelineConfig on this suite's dataset and queues, the test model and bucket. */
  config(train?: Record<string, unknown>, heartbeat?: string): PipelineConfigInput;
  /** A GPU worker process on this suite's queues; killed when the file ends if still running. */
  startWorker(name: string, eventsFile: string, env?: Record<string, string>): Promise<GpuWorkerProcess>;
}

/**
 * One fault-test file's setup and teardown: a test stack whose GPU tasks go only to worker
 * processes the tests start (so they can kill them), the demo dataset, and the cleanup of every
 * such worker (resumed first, in case a test left it SIGSTOPped). Read its fields inside tests.
 */
export function useFaultSuite(): FaultSuite {
  const workers: GpuWorkerProcess[] = [];
  const suite: FaultSuite = {
    stack: undefined as unknown as TestStack,
    datasetDir: '',
    config: (train = {}, heartbeat) =>
      faultPipelineConfig({ datasetDir: suite.datasetDir, modelSource: inject('modelSource'), queues: suite.stack.queues, bucket: TEST_BUCKET, train, heartbeat }),
    startWorker: async (name, eventsFile, env = {}) => {
      const w = await startGpuWorker({ queues: suite.stack.queues, workDir: workRoot(name), eventsFile, env });
      workers.push(w);
      return w;
    },
  };
  beforeAll(async () => {
    suite.stack = await startTestStack({ serveGpu: false });
    suite.datasetDir = await mkdtemp(join(tmpdir(), 'dpo-faults-'));
    await generateDemoDataset({ outDir: suite.datasetDir, trainRows: 64, testRows: 8, seed: 21 });
  });
  afterAll(async () => {
    for (const w of workers) {
      w.child.kill('SIGCONT');
      w.child.kill('SIGKILL');
    }
    await suite.stack?.stop();
  });
  return suite;
}

/** SIGTERM (a drain: the trainer checkpoints) and wait for the worker to exit. */
export async function stopWorker(w: GpuWorkerProcess): Promise<void> {
  w.child.kill('SIGTERM');
  await w.exited;
}
