/**
 * Records the workflow histories that test/replay/ replays against the current workflow code:
 * a demo-like run (every stage kind of the standard chain, a training child that continues as
 * new) and a faulted run (the trainer runs out of memory and backs off in process, the child
 * adopts the new memory settings and signals its pipeline). Each workflow run -- the pipeline
 * and every run of its training child -- is written as one binary protobuf History (the SDK's
 * JSON history converter fails on this install's duplicated protobufjs copies), and
 * `index.json` says which workflow id each file replays as.
 *
 * Re-record only on purpose: when a workflow change is meant to be incompatible with runs in
 * flight (docs/architecture.md, "Upgrading workers"), and after a deployment has drained them.
 *
 *   npx tsx scripts/recordReplayHistories.ts        (starts the local stack if it is not up)
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import proto from '@temporalio/proto';
import { temporalEnv } from '../contracts/connection.js';
import type { PipelineConfigInput } from '../contracts/config.js';
import { trainingWorkflowId } from '../contracts/keys.js';
import { PIPELINE_WORKFLOW } from '../contracts/messages.js';
import { generateDemoDataset } from '../datagen/demoShapes.js';
import { depsFromEnv, REPO_ROOT } from '../io/deps.js';
import { bundleWorkflowsInThread, createWorkers } from '../worker/createWorkers.js';
import { ensureTinyModel, publishFolder } from './assets.js';
import { stackUp } from './localStack.js';

export const HISTORIES_DIR = join(REPO_ROOT, 'test/replay/histories');
const BUCKET = 'dpo-replay';

function config(name: string, datasetDir: string, modelSource: string, queues: { cpu: string; gpu: string }, train: Record<string, unknown>): PipelineConfigInput {
  return {
    name,
    model: { source: modelSource },
    dataset: { source: datasetDir },
    format: { image_longest_edge: 48 },
    tokenize: { max_length: 128, max_prompt_length: 96 },
    shard: { samples_per_shard: 32 },
    train: { epochs: 1, per_device_train_batch_size: 4, gradient_accumulation_steps: 1, learning_rate: 0.002, dtype: 'float32', seed: 5, ...train },
    evaluate: { generations: 2, max_new_tokens: 4 },
    queues,
    storage: { bucket: BUCKET },
  } as PipelineConfigInput;
}

/** Every run of the workflow (continue-as-new chains included), oldest first. */
async function runsOf(client: Client, workflowId: string): Promise<string[]> {
  const runs: Array<{ runId: string; start: number }> = [];
  for await (const w of client.workflow.list({ query: `WorkflowId = '${workflowId}'` })) runs.push({ runId: w.runId, start: w.startTime.getTime() });
  return runs.sort((a, b) => a.start - b.start).map((r) => r.runId);
}

/** One recorded history: its file under HISTORIES_DIR and the workflow id it replays as. */
export interface RecordedHistory {
  file: string;
  workflowId: string;
}

const History = proto.temporal.api.history.v1.History;

async function record(client: Client, handle: WorkflowHandle, name: string): Promise<RecordedHistory[]> {
  const written: RecordedHistory[] = [];
  const save = async (workflowId: string, label: string) => {
    const runIds = await runsOf(client, workflowId);
    for (const [i, runId] of runIds.entries()) {
      const history = await client.workflow.getHandle(workflowId, runId).fetchHistory();
      const file = `${name}.${label}${runIds.length > 1 ? `.run${i + 1}` : ''}.binpb`;
      await writeFile(join(HISTORIES_DIR, file), History.encode(History.fromObject(history)).finish());
      written.push({ file, workflowId });
    }
  };
  await save(handle.workflowId, 'pipeline');
  await save(trainingWorkflowId(handle.workflowId, 'train'), 'training');
  return written;
}

async function main(): Promise<void> {
  await stackUp((line) => console.log(`stack: ${line}`));
  const deps = { ...depsFromEnv(), workDir: join(REPO_ROOT, '.dpo/replay-work') };
  const modelSource = await publishFolder(deps.storage, BUCKET, 'models/tiny-llava/', await ensureTinyModel());
  const datasetDir = await mkdtemp(join(tmpdir(), 'dpo-replay-'));
  await generateDemoDataset({ outDir: datasetDir, trainRows: 48, testRows: 16, seed: 11 });
  const suffix = Date.now().toString(36);
  const queues = { cpu: `replay-cpu-${suffix}`, gpu: `replay-gpu-${suffix}` };
  const { workers, connection } = await createWorkers({ temporal: temporalEnv(), queues, serve: { cpu: true, gpu: true }, deps, workflowBundle: await bundleWorkflowsInThread() });
  const running = Promise.all(workers.map((w) => w.run()));
  const client = new Client({ connection: await Connection.connect({ address: temporalEnv().address }) });
  await rm(HISTORIES_DIR, { recursive: true, force: true });
  await mkdir(HISTORIES_DIR, { recursive: true });
  try {
    // Demo-like: 12 steps in segments of 4, one segment per child run (two continue-as-new).
    const demo = await client.workflow.start(PIPELINE_WORKFLOW, {
      taskQueue: queues.cpu,
      workflowId: `replay-demo-${suffix}`,
      args: [config('replay-demo', datasetDir, modelSource, queues, { segment_steps: 4, segments_per_workflow_run: 1, checkpoint_every_steps: 2 })],
    });
    await demo.result();
    const recorded = await record(client, demo, 'demo');
    // Faulted: out of memory above micro-batch 1; the trainer backs off, the child adopts it.
    process.env.DPO_FAULT_OOM_ABOVE_MICRO_BATCH = '1';
    const faulted = await client.workflow.start(PIPELINE_WORKFLOW, {
      taskQueue: queues.cpu,
      workflowId: `replay-oom-${suffix}`,
      args: [config('replay-oom', datasetDir, modelSource, queues, { per_device_train_batch_size: 2, gradient_accumulation_steps: 2 })],
    });
    await faulted.result();
    delete process.env.DPO_FAULT_OOM_ABOVE_MICRO_BATCH;
    recorded.push(...(await record(client, faulted, 'oom-backoff')));
    await writeFile(join(HISTORIES_DIR, 'index.json'), `${JSON.stringify(recorded, null, 2)}\n`);
    for (const r of recorded) console.log(`recorded ${r.file} (${r.workflowId})`);
  } finally {
    for (const w of workers) w.shutdown();
    await running;
    await connection.close();
    await client.connection.close();
    await rm(datasetDir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().then(
    () => process.exit(0),
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
}
