/**
 * Builds the workers a host runs: the `dpo` queue (workflows + CPU stages) and/or the `dpo-gpu`
 * queue (training, one trainer at a time per worker). Used by worker/main.ts and by tests.
 */
import { resolve } from 'node:path';
import { Worker as Thread } from 'node:worker_threads';
import { NativeConnection, Worker } from '@temporalio/worker';
import { createCpuActivities, createGpuActivities } from '../activities/index.js';
import { REPO_ROOT, type ActivityDeps } from '../io/deps.js';
import type { TemporalEnv } from '../contracts/connection.js';
import { jpegDecoder, jpegFastPathEnabled } from '../vlm/jpegDecode.js';

export interface WorkerPlan {
  temporal: TemporalEnv;
  queues: { cpu: string; gpu: string };
  serve: { cpu: boolean; gpu: boolean };
  deps: ActivityDeps;
  /** Trainers this host runs at once: one per GPU (default 1). */
  gpuSlots?: number;
  /** CPU-stage activities (data chunks, evaluation) this host runs at once (default 4). */
  cpuSlots?: number;
  /** Reuse a prebuilt workflow bundle (tests build it once). */
  workflowBundle?: { code: string };
}

export const WORKFLOWS_PATH = resolve(REPO_ROOT, 'workflows/index.ts');

/**
 * The workflow bundle, built in a worker thread: webpack leaves ~40 MB of its state reachable in
 * the isolate that bundles, which would double the heap every major GC of this long-lived process
 * marks (and the data stages' image buffers trigger many).
 */
export function bundleWorkflowsInThread(): Promise<{ code: string }> {
  const thread = new Thread(new URL('./bundleWorkflows.mjs', import.meta.url), { workerData: { workflowsPath: WORKFLOWS_PATH } });
  return new Promise((done, fail) => {
    thread.once('message', (code: string) => done({ code }));
    thread.once('error', fail);
    thread.once('exit', (exitCode) => fail(new Error(`the workflow bundler thread exited with code ${exitCode} before it sent the bundle`)));
  });
}

export async function createWorkers(plan: WorkerPlan): Promise<{ workers: Worker[]; connection: NativeConnection }> {
  // The format stage's thumbnails need the JPEG decoder addon: a worker without it says so (and
  // how to fix it) before it polls, rather than fail every format chunk later.
  if (plan.serve.cpu && jpegFastPathEnabled()) jpegDecoder();
  const connection = await NativeConnection.connect({
    address: plan.temporal.address,
    tls: plan.temporal.tls,
    apiKey: plan.temporal.apiKey,
  });
  const workers: Worker[] = [];
  const namespace = plan.temporal.namespace;
  if (plan.serve.cpu) {
    workers.push(
      await Worker.create({
        connection,
        namespace,
        taskQueue: plan.queues.cpu,
        workflowBundle: plan.workflowBundle ?? (await bundleWorkflowsInThread()),
        activities: createCpuActivities(plan.deps),
        // Data stages are CPU-heavy (sharp, tokenization) and fan out in chunks: each worker takes
        // as many chunks as it has slots (DPO_CPU_SLOTS), so more workers means more parallel chunks.
        maxConcurrentActivityTaskExecutions: plan.cpuSlots ?? 4,
        shutdownGraceTime: '30 seconds',
      }),
    );
  }
  if (plan.serve.gpu) {
    workers.push(
      await Worker.create({
        connection,
        namespace,
        taskQueue: plan.queues.gpu,
        activities: createGpuActivities(plan.deps),
        // One trainer per GPU: a host with several GPUs sets gpuSlots (DPO_GPU_SLOTS).
        maxConcurrentActivityTaskExecutions: plan.gpuSlots ?? 1,
        // Lets the trainer write its emergency checkpoint when the worker is told to stop.
        shutdownGraceTime: '45 seconds',
      }),
    );
  }
  return { workers, connection };
}
