/** Real workers on the shared stack, one pair of task queues per test file. */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { Runtime, type Worker } from '@temporalio/worker';
import { inject } from 'vitest';
import { depsFromEnv, REPO_ROOT, type ActivityDeps } from '../io/deps.js';
import { temporalEnv } from '../contracts/connection.js';
import { createWorkers } from '../worker/createWorkers.js';

export const TEST_BUCKET = 'dpo-test';

let runtimeInstalled = false;

export interface TestStack {
  client: Client;
  queues: { cpu: string; gpu: string };
  deps: ActivityDeps;
  stop: () => Promise<void>;
}

export async function startTestStack(options: { gpuSlots?: number; serveGpu?: boolean } = {}): Promise<TestStack> {
  if (!runtimeInstalled) {
    // Keep test output readable: only warnings and errors from the SDK.
    Runtime.install({ logger: new (await import('@temporalio/worker')).DefaultLogger('WARN') });
    runtimeInstalled = true;
  }
  const suffix = randomBytes(4).toString('hex');
  const queues = { cpu: `test-cpu-${suffix}`, gpu: `test-gpu-${suffix}` };
  const deps = { ...depsFromEnv(), workDir: join(REPO_ROOT, '.dpo/test-work', suffix) };
  const code = await readFile(inject('workflowBundlePath'), 'utf8');
  const { workers, connection } = await createWorkers({
    temporal: temporalEnv(),
    queues,
    // Fault tests run the GPU worker as a separate process (test/faults/) so they can kill it.
    serve: { cpu: true, gpu: options.serveGpu ?? true },
    deps,
    workflowBundle: { code },
    gpuSlots: options.gpuSlots,
  });
  const running = Promise.all(workers.map((w: Worker) => w.run()));
  const clientConnection = await Connection.connect({ address: temporalEnv().address });
  const client = new Client({ connection: clientConnection });
  return {
    client,
    queues,
    deps,
    stop: async () => {
      for (const w of workers) w.shutdown();
      await running;
      await connection.close();
      await clientConnection.close();
    },
  };
}

export function uniqueId(prefix: string): string {
  return `${prefix}-${Date.now()}-${randomBytes(3).toString('hex')}`;
}
