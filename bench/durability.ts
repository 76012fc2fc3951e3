/**
 * Durability figures (docs/training-and-durability.md; results in bench/RESULTS.md):
 *
 *   A. checkpoint overhead: a demo-shaped run (micro-batch 16, LoRA r16) through the real
 *      pipeline; from the trainer's own events, the time each checkpoint save holds up training
 *      over the time of the steps between two checkpoints, extrapolated to the demo's interval.
 *   B. recovery: one run whose GPU worker is killed -9 KILLS times at random steps; per kill,
 *      kill -> the next trainer's first step (split into: kill -> retry's trainer started, which
 *      holds the heartbeat timeout, and model load -> first step), and steps redone.
 *
 *   npx tsx bench/durability.ts [--kills 10] [--heartbeat 20s]
 *
 * Uses the running local stack (127.0.0.1:7233, MinIO :9000), its own bucket and task queues, a
 * CPU worker in this process and the GPU worker as a child process (test/faults/faultKit.ts).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { depsFromEnv } from '../io/deps.js';
import { listFences } from '../io/fencing.js';
import { generateDemoDataset } from '../datagen/demoShapes.js';
import type { PipelineResult } from '../contracts/payloads.js';
import { ensureTinyModel, publishFolder } from '../scripts/assets.js';
import { stackUp } from '../scripts/localStack.js';
import { faultPipelineConfig, readEvents, startGpuWorker, trainerRuns, waitFor, workRoot } from '../test/faults/faultKit.js';
import { temporalEnv } from '../contracts/connection.js';
import { createWorkers } from '../worker/createWorkers.js';
import { PIPELINE_WORKFLOW } from '../contracts/messages.js';

const { values } = parseArgs({ options: { kills: { type: 'string', default: '10' }, heartbeat: { type: 'string', default: '20s' } } });
const KILLS = Number(values.kills);
const BUCKET = 'dpo-bench';
process.env.OMP_NUM_THREADS = '1';

Runtime.install({ logger: new DefaultLogger('WARN') });
await stackUp();
const deps = depsFromEnv();
await deps.storage.ensureBucket(BUCKET);
const modelSource = await publishFolder(deps.storage, BUCKET, 'models/tiny-llava/', await ensureTinyModel());
const suffix = randomBytes(3).toString('hex');
const queues = { cpu: `bench-cpu-${suffix}`, gpu: `bench-gpu-${suffix}` };
const { workers, connection } = await createWorkers({ temporal: temporalEnv(), queues, serve: { cpu: true, gpu: false }, deps });
const running = Promise.all(workers.map((w) => w.run()));
const client = new Client({ connection: await Connection.connect({ address: temporalEnv().address }) });
const dir = await mkdtemp(join(tmpdir(), 'dpo-bench-'));
await generateDemoDataset({ outDir: dir, trainRows: 160, testRows: 8, seed: 31 });
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

// -- A. checkpoint overhead --------------------------------------------------------------------
{
  const eventsFile = join(dir, 'ckpt.jsonl');
  const gpu = await startGpuWorker({ queues, workDir: workRoot(`bench-ckpt-${suffix}`), eventsFile });
  const config = faultPipelineConfig({
    datasetDir: dir, modelSource, queues, bucket: BUCKET, heartbeat: values.heartbeat,
    train: { epochs: 3, per_device_train_batch_size: 16, lora: { r: 16, alpha: 32 }, checkpoint_every_steps: 5, learning_rate: 0.001 },
  });
  await client.workflow.execute(PIPELINE_WORKFLOW, { taskQueue: queues.cpu, workflowId: `bench-ckpt-${suffix}`, args: [config] });
  gpu.child.kill('SIGTERM');
  await gpu.exited;
  const events = await readEvents(eventsFile);
  const steps = events.filter((e) => e.event === 'step');
  const saves = events.filter((e) => e.event === 'checkpoint_saved');
  const at = (s: number) => steps.find((e) => e.step === s)!.time;
  const stepGaps = steps.slice(1).filter((e) => !saves.some((c) => c.step === e.step! - 1)).map((e) => e.time - at(e.step! - 1));
  const saveTimes = saves.filter((c) => steps.some((e) => e.step === c.step)).map((c) => c.time - at(c.step!));
  const stepS = median(stepGaps);
  const saveS = median(saveTimes);
  console.log(`A. steps: ${steps.length}, median step ${(stepS * 1000).toFixed(0)} ms; checkpoint save (trainer blocked) median ${(saveS * 1000).toFixed(0)} ms over ${saveTimes.length} saves`);
  for (const interval of [5, 100]) {
    console.log(`   checkpoint share at every ${interval} steps: ${((100 * saveS) / (interval * stepS + saveS)).toFixed(2)}%`);
  }
}

// -- B. recovery after kill -9 -------------------------------------------------------------------
{
  const eventsFile = join(dir, 'kills.jsonl');
  const work = workRoot(`bench-kill-${suffix}`);
  const env = { DPO_FAULT_SLEEP_PER_STEP: '0.3' };
  let gpu = await startGpuWorker({ queues, workDir: work, eventsFile, env });
  const every = 5;
  const config = faultPipelineConfig({
    datasetDir: dir, modelSource, queues, bucket: BUCKET, heartbeat: values.heartbeat,
    train: { epochs: 2, checkpoint_every_steps: every },
  });
  const handle = await client.workflow.start(PIPELINE_WORKFLOW, { taskQueue: queues.cpu, workflowId: `bench-kill-${suffix}`, args: [config] });
  const killedAt: number[] = [];
  for (let i = 0; i < KILLS; i++) {
    // Wait until the current trainer has done 2-6 steps, then kill its worker.
    const want = 2 + Math.floor(Math.random() * 5);
    await waitFor(async () => {
      const runs = trainerRuns(await readEvents(eventsFile));
      const cur = runs.at(-1);
      return runs.length === i + 1 && !!cur && cur.lastStep - cur.startStep >= want;
    }, 600_000, `kill ${i + 1}`);
    gpu.child.kill('SIGKILL');
    killedAt.push(Date.now() / 1000);
    await gpu.exited;
    gpu = await startGpuWorker({ queues, workDir: work, eventsFile, env });
  }
  const result: PipelineResult = await handle.result();
  gpu.child.kill('SIGTERM');
  await gpu.exited;
  const runs = trainerRuns(await readEvents(eventsFile));
  const fences = await listFences(deps.storage, BUCKET, `bench-kill-${suffix}`, 'train');
  console.log(`B. ${KILLS} kills, heartbeat timeout ${values.heartbeat}, checkpoint every ${every} steps; final step ${result.trainings.train!.finalStep}`);
  console.log('   kill | kill->retry started (s) | retry started->model loaded (s) | loaded->first step (s) | kill->steps flowing (s) | steps redone');
  const rows: number[][] = [];
  for (let i = 0; i < KILLS; i++) {
    const dead = runs[i]!;
    const next = runs[i + 1]!;
    // The retry's fence is written by the activity as it starts (server clock, same machine).
    const retry = fences.find((f) => f.writtenAt / 1000 > killedAt[i]!)!.writtenAt / 1000;
    const row = [retry - killedAt[i]!, next.startedAt - retry, next.firstStepAt! - next.startedAt, next.firstStepAt! - killedAt[i]!, dead.lastStep - next.startStep];
    rows.push(row);
    console.log(`   ${i + 1} | ${row.slice(0, 4).map((x) => x.toFixed(1)).join(' | ')} | ${row[4]}`);
  }
  const col = (j: number) => rows.map((r) => r[j]!);
  console.log(`   median kill->retry started ${median(col(0)).toFixed(1)} s; median kill->steps flowing ${median(col(3)).toFixed(1)} s (max ${Math.max(...col(3)).toFixed(1)}); steps redone median ${median(col(4))}, max ${Math.max(...col(4))} (interval ${every})`);
}

for (const w of workers) w.shutdown();
await running;
await connection.close();
process.exit(0);
