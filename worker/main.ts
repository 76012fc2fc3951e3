/**
 * `npm run worker`: polls the `dpo` queue (workflows and CPU stages) and the `dpo-gpu` queue
 * (training). `--queues cpu`, `--queues gpu` or DPO_WORKER_QUEUES=cpu,gpu choose what this host
 * serves; DPO_CPU_QUEUE / DPO_GPU_QUEUE rename the queues. SIGINT/SIGTERM drain and exit.
 */
import { parseArgs } from 'node:util';
import { depsFromEnv } from '../io/deps.js';
import { preemptRunningTrainers } from '../bridge/trainerProcess.js';
import { DEFAULT_QUEUES, temporalEnv } from '../contracts/connection.js';
import { createWorkers } from './createWorkers.js';
import { JpegDecoderUnavailableError } from '../vlm/jpegDecode.js';

const { values } = parseArgs({ options: { queues: { type: 'string' } } });
const served = new Set((values.queues ?? process.env.DPO_WORKER_QUEUES ?? 'cpu,gpu').split(',').map((s) => s.trim()));
for (const q of served) {
  if (q !== 'cpu' && q !== 'gpu') {
    console.error(`worker: unknown queue kind "${q}" in --queues (expected cpu, gpu or cpu,gpu)`);
    process.exit(2);
  }
}

if (served.has('gpu')) {
  // Preemption notice (SIGTERM) or Ctrl-C: trainers checkpoint now, while the worker drains
  // (shutdownGraceTime); their activities then fail as Preempted and resume on any GPU worker.
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => void preemptRunningTrainers());
}

const temporal = temporalEnv();
const { workers, connection } = await createWorkers({
  temporal,
  queues: DEFAULT_QUEUES,
  serve: { cpu: served.has('cpu'), gpu: served.has('gpu') },
  deps: depsFromEnv(),
  gpuSlots: Number(process.env.DPO_GPU_SLOTS ?? 1),
  cpuSlots: Number(process.env.DPO_CPU_SLOTS ?? 4),
}).catch((err: unknown) => {
  if (!(err instanceof JpegDecoderUnavailableError)) throw err;
  console.error(`worker: ${err.message}`);
  process.exit(2);
});
console.log(
  `worker: connected to ${temporal.address} (namespace ${temporal.namespace}); serving ` +
    [served.has('cpu') && `"${DEFAULT_QUEUES.cpu}" (workflows, CPU stages)`, served.has('gpu') && `"${DEFAULT_QUEUES.gpu}" (training)`]
      .filter(Boolean)
      .join(' and '),
);
await Promise.all(workers.map((w) => w.run()));
await connection.close();
