/**
 * Orchestration overhead (results in bench/RESULTS.md): the demo pipeline's
 * wall time through Temporal vs the same stage code called directly in one process.
 *
 *   temporal: dpoPipeline started with a client, run by a real worker in this process (both
 *             queues, 4 CPU activity slots and 1 GPU slot as `npm run demo` has), timed from
 *             start to result.
 *   direct:   the same activity functions (activities/index.ts, same deps) called in the order
 *             dpoPipeline / dpoTraining / runStage call them, with the same inputs, each one in a
 *             MockActivityEnvironment (heartbeats go nowhere, no server). Fan-outs (format and
 *             tokenize chunks, evaluation shards, yes/no ranges, generations) run concurrently
 *             through a 4-slot semaphore: the parallelism the CPU worker's 4 slots give them.
 *             Training runs segment by segment like dpoTraining (one `trainModel` per segment,
 *             each spawning the trainer and resuming from the previous segment's checkpoint).
 *
 * Same config in both arms: configs/demo.yaml with a smaller generated dataset (and optionally a
 * step cap); every stage of the standard chain runs. Every run gets its own bucket (so no stage
 * output, base-model ONNX export or run manifest is reused) and its own work folder (so no staged
 * model, shard, tokenizer or export is reused); the arms alternate (temporal, direct, direct,
 * temporal, ...) so warm OS caches favour neither. Results must agree between arms (same final
 * step and checkpoints, same data-stage hashes, same evaluation metrics): a direct arm that did
 * less work would show here.
 *
 *   npx tsx bench/orchestration.ts [--train 256] [--test 96] [--amber 200] [--steps N] [--pairs 2]
 *
 * Uses the running local stack (Temporal 127.0.0.1:7233, MinIO :9000).
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import { MockActivityEnvironment } from '@temporalio/testing';
import { bundleWorkflowCode, DefaultLogger, Runtime } from '@temporalio/worker';
import { depsFromEnv, REPO_ROOT, type ActivityDeps } from '../io/deps.js';
import { createCpuActivities, createGpuActivities } from '../activities/index.js';
import { checkConfig, loadConfigFile } from '../cli/runPipeline.js';
import type { PipelineConfig } from '../contracts/config.js';
import { planToMermaid, stageSettings, type PlannedStage } from '../contracts/dag.js';
import { planRun } from '../contracts/runPlan.js';
import { configHash, type RunLineage } from '../contracts/lineage.js';
import type { EvaluateResult, PipelineResult, StageResult, StageTimeline, TrainResult } from '../contracts/payloads.js';
import { ensureDemoDataset, ensureTinyModel, publishFolder } from '../scripts/assets.js';
import { stackUp } from '../scripts/localStack.js';
import { temporalEnv } from '../contracts/connection.js';
import { createWorkers, WORKFLOWS_PATH } from '../worker/createWorkers.js';
import { PIPELINE_WORKFLOW } from '../contracts/messages.js';
import { formatSplitInput, splitLabels } from '../contracts/splitSpec.js';

const { values } = parseArgs({
  options: {
    train: { type: 'string', default: '256' },
    test: { type: 'string', default: '96' },
    amber: { type: 'string', default: '200' },
    steps: { type: 'string' },
    pairs: { type: 'string', default: '2' },
  },
});
const PAIRS = Number(values.pairs);
/** The CPU worker's activity slots (worker/createWorkers.ts default): the direct arm's parallelism. */
const CPU_SLOTS = 4;
const ASSET_BUCKET = 'dpo-bench';
process.env.OMP_NUM_THREADS = '1';

const logger = new DefaultLogger('WARN');
Runtime.install({ logger });
await stackUp();
const baseDeps = depsFromEnv();
const suffix = randomBytes(3).toString('hex');

// -- assets and config (untimed) -------------------------------------------------------------------
const modelSource = await publishFolder(baseDeps.storage, ASSET_BUCKET, 'models/tiny-llava-demo/', await ensureTinyModel());
const datasetSpec = { trainRows: Number(values.train), testRows: Number(values.test), seed: 7, amberQuestions: Number(values.amber) };
const datasetDir = await ensureDemoDataset(datasetSpec);
const datasetSource = await publishFolder(baseDeps.storage, ASSET_BUCKET, `datasets/orch-${datasetDir.split('/').pop()}/`, datasetDir);
const { raw: demo } = await loadConfigFile(join(REPO_ROOT, 'configs/demo.yaml'));

/** configs/demo.yaml on the smaller dataset; only bucket and queues differ between runs. */
function runConfig(bucket: string, queues: { cpu: string; gpu: string }): Record<string, unknown> {
  // The standard chain on the bench's own dataset: demo.yaml's sft chain reads the demo's SFT set,
  // which this bench does not publish.
  const { stages: _stages, ...d } = demo as Record<string, Record<string, unknown>>;
  const raw = {
    ...d,
    name: 'orchestration-bench',
    model: { ...d.model, source: modelSource },
    dataset: { ...d.dataset, source: datasetSource },
    train: { ...d.train, ...(values.steps && { max_steps: Number(values.steps) }) },
    evaluate: { ...d.evaluate, amber_suite: `${datasetSource}/amber` },
    storage: { bucket },
    queues,
  };
  checkConfig(raw, 'orchestration bench config');
  return raw;
}

// The workflow bundle is built once, outside the timings (a deployed worker has it prebuilt too).
const bundle = await bundleWorkflowCode({ workflowsPath: WORKFLOWS_PATH, logger });
const client = new Client({ connection: await Connection.connect({ address: temporalEnv().address }) });

interface ArmRun {
  arm: 'temporal' | 'direct';
  seconds: number;
  /** What must agree between the arms. */
  fingerprint: Record<string, unknown>;
  stageSeconds: Record<string, number>;
}

/** A fresh bucket and work folder per run: nothing cached by an earlier run is reused. */
async function freshRun(arm: ArmRun['arm'], i: number) {
  const tag = `orch-${suffix}-${arm[0]}${i}`;
  const bucket = `dpo-bench-${tag}`;
  await baseDeps.storage.ensureBucket(bucket);
  const deps: ActivityDeps = { ...baseDeps, workDir: join(REPO_ROOT, '.dpo/bench-work', tag) };
  const queues = { cpu: `bench-cpu-${tag}`, gpu: `bench-gpu-${tag}` };
  return { runId: `bench-${tag}`, bucket, deps, queues, raw: runConfig(bucket, queues) };
}

function fingerprintOf(result: Pick<PipelineResult, 'dataStages' | 'trainings' | 'evaluations'>): Record<string, unknown> {
  const train = result.trainings.train!;
  const ev = result.evaluations.evaluate!;
  return {
    hashes: Object.fromEntries(Object.entries(result.dataStages).map(([id, s]) => [id, s.hash])),
    cached: Object.values(result.dataStages).some((s) => s.cached) || ev.baseExportCached === true,
    finalStep: train.finalStep,
    checkpoints: train.checkpointKeys.length,
    loss: train.metrics.loss,
    base: ev.base.preference_accuracy,
    dpo: ev.trained.preference_accuracy,
    amber: ev.amber?.trained.overall?.f1 ?? null,
    generations: ev.generations?.map((g) => g.trained),
  };
}

// -- arm 1: through Temporal ------------------------------------------------------------------------
async function viaTemporal(i: number): Promise<ArmRun> {
  const run = await freshRun('temporal', i);
  const { workers, connection } = await createWorkers({
    temporal: temporalEnv(),
    queues: run.queues,
    serve: { cpu: true, gpu: true },
    deps: run.deps,
    workflowBundle: { code: bundle.code },
  });
  const running = Promise.all(workers.map((w) => w.run()));
  try {
    const t0 = performance.now();
    const result: PipelineResult = await client.workflow.execute(PIPELINE_WORKFLOW, { taskQueue: run.queues.cpu, workflowId: run.runId, args: [run.raw] });
    const seconds = (performance.now() - t0) / 1000;
    const stageSeconds = Object.fromEntries(result.timeline.map((t) => [t.id, (t.finishedAt! - t.startedAt!) / 1000]));
    return { arm: 'temporal', seconds, fingerprint: fingerprintOf(result), stageSeconds };
  } finally {
    for (const w of workers) w.shutdown();
    await running;
    await connection.close();
    await rm(run.deps.workDir, { recursive: true, force: true });
  }
}

// -- arm 2: the same activities called directly ---------------------------------------------------
/** At most `n` calls at once, like a worker's activity slots. */
function semaphore(n: number) {
  let free = n;
  const waiting: Array<() => void> = [];
  return async <T>(f: () => Promise<T>): Promise<T> => {
    if (free > 0) free--;
    else await new Promise<void>((r) => waiting.push(r));
    try {
      return await f();
    } finally {
      const next = waiting.shift();
      if (next) next();
      else free++;
    }
  };
}

async function direct(i: number): Promise<ArmRun> {
  const run = await freshRun('direct', i);
  const config: PipelineConfig = checkConfig(run.raw);
  const cpu = createCpuActivities(run.deps);
  const gpu = createGpuActivities(run.deps);
  const cpuSlot = semaphore(CPU_SLOTS);
  const gpuSlot = semaphore(1);
  /** One activity call in its own mocked Context, with the heartbeat timeout the workflow gives it. */
  const call = <A extends unknown[], R>(name: string, f: (...args: A) => Promise<R>, heartbeatTimeoutMs: number | undefined, slot = cpuSlot) =>
    (...args: A): Promise<R> =>
      slot(() => {
        const now = Date.now();
        const env = new MockActivityEnvironment(
          {
            activityType: name,
            activityId: `${name}-${now}`,
            workflowType: PIPELINE_WORKFLOW,
            workflowExecution: { workflowId: run.runId, runId: run.runId },
            taskQueue: run.queues.cpu,
            heartbeatTimeoutMs,
            // The fence token of a train attempt: later segments must get larger ones.
            scheduledTimestampMs: now,
            currentAttemptScheduledTimestampMs: now,
          },
          { logger },
        );
        return env.run(f, ...args);
      });
  const DATA_HB = 120_000; // DATA_STAGE_OPTIONS in workflows/stageRunners.ts
  const TRAIN_HB = 20_000; // TRAIN_OPTIONS
  const a = Object.fromEntries(Object.entries(cpu).map(([k, f]) => [k, call(k, f as never, k === 'resolveInitFrom' || k === 'recordRun' ? undefined : DATA_HB)])) as unknown as typeof cpu;
  const trainModel = call('trainModel', gpu.trainModel, TRAIN_HB, gpuSlot);

  const { runId } = run;
  const bucket = config.storage.bucket;
  const modelSource = config.model.source;
  const { plan } = planRun(config);
  const stage = (kind: string): PlannedStage => plan.stages.find((s) => s.kind === kind)!;
  const timeline: Array<StageTimeline & { summary?: Record<string, number | string> }> = plan.stages.map((s) => ({ id: s.id, kind: s.kind, needs: s.needs, state: 'pending' }));
  const timed = async <T extends object>(id: string, body: () => Promise<T>): Promise<T> => {
    const entry = timeline.find((t) => t.id === id)!;
    Object.assign(entry, { state: 'running', startedAt: Date.now() });
    const out = (await body()) as T & { summary?: Record<string, number | string>; cached?: boolean };
    Object.assign(entry, { state: 'done', finishedAt: Date.now(), cached: out.cached, summary: out.summary ?? entry.summary });
    return out;
  };

  const t0 = performance.now();
  // startLineage (workflows/lineage.ts): the run manifest exists from the start.
  const lineage: RunLineage = {
    runId,
    name: config.name,
    model: config.model.source,
    dataset: config.dataset.source,
    datasetRevision: null,
    configHash: configHash(config),
    parentRun: null,
    parentRelation: null,
    initFromRun: null,
    schedule: null,
  };
  await a.recordRun({ bucket, lineage, outcome: 'running' });

  const download = await timed('download', () => a.downloadDataset({ bucket, dataset: config.dataset }));
  lineage.datasetRevision = String(download.summary.revision ?? download.hash);

  const format = await timed('format', async () => {
    const settings = stageSettings(config, 'format', stage('format').params);
    const p = await a.formatDataset({
      bucket,
      upstream: download,
      modelSource,
      format: settings,
      columns: config.dataset.columns,
      ...formatSplitInput(config.dataset),
      limits: { train: config.dataset.max_train_samples, eval: config.dataset.max_eval_samples },
    });
    if (p.cached) throw new Error('format: cached output in a fresh bucket');
    const chunks = await Promise.all(
      p.chunks.map((chunk) =>
        a.formatChunk({ bucket, modelSource, hash: p.hash, imageLongestEdge: p.imageLongestEdge, format: settings, columns: config.dataset.columns, filesPrefix: p.filesPrefix, chunk }),
      ),
    );
    const labels = splitLabels(config.dataset);
      const splits = [labels.train, labels.eval];
    return a.formatFinish({ bucket, hash: p.hash, imageLongestEdge: p.imageLongestEdge, format: settings, splits, chunks });
  });

  const tokens = await timed('tokenize', async () => {
    const settings = stageSettings(config, 'tokenize', stage('tokenize').params);
    const p = await a.tokenizeDataset({ bucket, upstream: format, modelSource, tokenize: settings });
    if (p.cached) throw new Error('tokenize: cached output in a fresh bucket');
    const chunks = await Promise.all(p.chunks.map((chunk) => a.tokenizeChunk({ bucket, modelSource, hash: p.hash, tokenize: settings, chunk })));
    return a.tokenizeFinish({ bucket, hash: p.hash, imageTokenCount: p.imageTokenCount, splits: p.splits, chunks });
  });

  const shards = await timed('shard', () => a.shardDataset({ bucket, upstream: tokens, shard: stageSettings(config, 'shard', stage('shard').params) }));

  // dpoTraining (workflows/training.ts): one trainModel per segment until done.
  const train = await timed('train', async (): Promise<TrainResult & { summary: Record<string, number | string> }> => {
    const settings = stageSettings(config, 'train', stage('train').params);
    const control = { paused: false, checkpoint_every_steps: settings.checkpoint_every_steps };
    const checkpointKeys: string[] = [];
    let trainSeconds = 0;
    let resumedFromStep: number | null = null;
    for (let segment = 1; ; segment++) {
      const r = await trainModel({
        runId,
        stageId: 'train',
        bucket,
        modelSource,
        shards,
        trainSplit: splitLabels(config.dataset).train,
        train: { ...settings, checkpoint_every_steps: control.checkpoint_every_steps },
        segmentSteps: settings.segment_steps,
        control: { ...control },
      });
      if (r.backoff) throw new Error('the trainer backed off (out of memory): the arms would differ');
      checkpointKeys.push(...r.checkpointKeys);
      trainSeconds += r.trainSeconds;
      if (segment === 1) resumedFromStep = r.resumedFromStep;
      if (r.done) {
        return {
          adapterBucket: r.adapterBucket!,
          adapterPrefix: r.adapterPrefix!,
          finalStep: r.step,
          checkpointKeys,
          resumedFromStep,
          metrics: r.metrics,
          trainSeconds,
          replans: [],
          ...(r.stepMetricsKey && { stepMetricsKey: r.stepMetricsKey }),
          finalMemorySettings: {
            per_device_train_batch_size: settings.per_device_train_batch_size,
            gradient_accumulation_steps: settings.gradient_accumulation_steps,
            gradient_checkpointing: settings.gradient_checkpointing,
          },
          summary: { step: r.step, ...r.metrics },
        };
      }
    }
  });

  // runStage 'evaluate' (workflows/stageRunners.ts): prepare, then every scoring activity at once.
  const evaluation = await timed('evaluate', async (): Promise<EvaluateResult & { summary?: undefined }> => {
    const settings = stageSettings(config, 'evaluate', stage('evaluate').params);
    const beta = stageSettings(config, 'train', stage('train').params).beta;
    const p = await a.prepareEvaluation({
      runId,
      stageId: 'evaluate',
      bucket,
      modelSource,
      shards,
      evalSplit: splitLabels(config.dataset).eval,
      adapterBucket: train.adapterBucket,
      adapterPrefix: train.adapterPrefix,
      evaluate: settings,
      imageLongestEdge: stageSettings(config, 'format', {}).image_longest_edge,
    });
    // The bench model (LLaVA) always exports: the ONNX engine.
    const scoring = { bucket, modelSource, onnx: p.onnx!, threads: settings.ort_threads, batchSize: settings.batch_size };
    const [preference, amber, generations] = await Promise.all([
      Promise.all(p.preferenceShards.map((shard) => a.scorePreferenceShard({ ...scoring, shard, beta }))),
      p.amber ? Promise.all(p.amber.ranges.map((range) => a.scoreAmberShard({ ...scoring, suiteKey: p.amber!.key, range }))) : Promise.resolve(null),
      settings.generations > 0 && p.preferenceShards.length
        ? a.generateExamples({ ...scoring, runId, stageId: 'evaluate', shard: p.preferenceShards[0]!, count: settings.generations, maxNewTokens: settings.max_new_tokens })
        : Promise.resolve([]),
    ]);
    const adapterUri = `s3://${train.adapterBucket}/${train.adapterPrefix}`;
    const e = await a.finishEvaluation({ runId, stageId: 'evaluate', bucket, adapter: adapterUri, onnx: p.onnx, baseExportCached: p.baseExportCached, preference, amber, generations });
    // The summary the pipeline's status (and so the report's timeline) shows for this stage.
    timeline.find((t) => t.id === 'evaluate')!.summary = {
      base_accuracy: e.base.preference_accuracy,
      dpo_accuracy: e.trained.preference_accuracy,
      ...(e.amber && { base_amber_f1: e.amber.base.overall!.f1, dpo_amber_f1: e.amber.trained.overall!.f1 }),
      base_export: p.baseExportCached ? 'cached' : 'exported',
    };
    return e;
  });

  await timed('report', async () => {
    const states = Object.fromEntries(timeline.map((t) => [t.id, t.cached ? 'cached' : t.state]));
    const dataStages: Record<string, StageResult> = { download, format, tokenize: tokens, shard: shards };
    const { summary: _s, ...trainResult } = train;
    return a.writeReport({
      runId,
      stageId: 'report',
      bucket,
      config,
      dagMermaid: planToMermaid(plan, states),
      timeline,
      dataStages,
      trainings: { train: trainResult },
      evaluations: { evaluate: evaluation },
    });
  });
  // finishLineage: the manifest says how the run ended.
  await a.recordRun({ bucket, lineage, outcome: 'completed' });
  const seconds = (performance.now() - t0) / 1000;

  await rm(run.deps.workDir, { recursive: true, force: true });
  const stageSeconds = Object.fromEntries(timeline.map((t) => [t.id, (t.finishedAt! - t.startedAt!) / 1000]));
  const { summary: _s, ...trainResult } = train;
  return {
    arm: 'direct',
    seconds,
    fingerprint: fingerprintOf({ dataStages: { download, format, tokenize: tokens, shard: shards }, trainings: { train: trainResult }, evaluations: { evaluate: evaluation } }),
    stageSeconds,
  };
}

// -- the runs: alternating order, pairs of (temporal, direct) then (direct, temporal) ---------------
const runs: ArmRun[] = [];
/** Time outside every stage (the chain is linear): run start/finish, lineage records, hand-offs. */
const glue = (r: ArmRun) => r.seconds - Object.values(r.stageSeconds).reduce((a, b) => a + b, 0);
const fmt = (r: ArmRun) =>
  `${r.arm.padEnd(8)} ${r.seconds.toFixed(1).padStart(6)} s   between stages ${glue(r).toFixed(2)} s   stages: ${Object.entries(r.stageSeconds).map(([id, s]) => `${id} ${s.toFixed(1)}`).join(', ')}`;
console.log(
  `orchestration bench: ${datasetSpec.trainRows} train / ${datasetSpec.testRows} test rows, ${datasetSpec.amberQuestions} yes/no questions, ` +
    `train ${values.steps ? `max_steps ${values.steps}` : 'epochs as demo.yaml'}; ${PAIRS} pair(s) of runs`,
);
for (let p = 0; p < PAIRS; p++) {
  const order = p % 2 === 0 ? (['temporal', 'direct'] as const) : (['direct', 'temporal'] as const);
  for (const arm of order) {
    const r = arm === 'temporal' ? await viaTemporal(p) : await direct(p);
    runs.push(r);
    console.log(`  ${fmt(r)}`);
  }
}

const reference = JSON.stringify(runs[0]!.fingerprint);
const mismatched = runs.filter((r) => JSON.stringify(r.fingerprint) !== reference);
console.log(`results: ${JSON.stringify(runs[0]!.fingerprint)}`);
if (mismatched.length) {
  console.log(`WARNING: ${mismatched.length} run(s) disagree with the first: ${mismatched.map((r) => JSON.stringify(r.fingerprint)).join(' | ')}`);
} else console.log('all runs agree on data-stage hashes, final step, checkpoints and evaluation metrics');

const sum = (arm: ArmRun['arm']) => runs.filter((r) => r.arm === arm).reduce((s, r) => s + r.seconds, 0);
const temporal = sum('temporal');
const directS = sum('direct');
const perPair = runs.length >= 2 ? Array.from({ length: PAIRS }, (_, p) => {
  const [x, y] = [runs[2 * p]!, runs[2 * p + 1]!];
  const t = x.arm === 'temporal' ? x : y;
  const d = x.arm === 'direct' ? x : y;
  return `${((100 * (t.seconds - d.seconds)) / d.seconds).toFixed(1)}%`;
}) : [];
console.log(`total: temporal ${temporal.toFixed(1)} s, direct ${directS.toFixed(1)} s over ${PAIRS} run(s) each`);
console.log(`orchestration overhead: ${((100 * (temporal - directS)) / directS).toFixed(1)}% (per pair: ${perPair.join(', ')}); goal < 5%`);

await client.connection.close();
process.exit(mismatched.length ? 1 : 0);
