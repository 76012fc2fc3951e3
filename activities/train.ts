/**
 * train (dpo-gpu queue): stages the model and the training shards onto local disk, resumes from
 * the newest complete checkpoint in storage, spawns the Python trainer, relays its events as
 * heartbeats and uploads every checkpoint it writes (manifest last).
 */
import { createHash } from 'node:crypto';
import { readFile, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ApplicationFailure, Context, heartbeat, log } from '@temporalio/activity';
import { FailureType } from '../lib/errors.js';
import { keys, MANIFEST_FILE, parseCheckpointName } from '../lib/keys.js';
import type { TrainInput, TrainMetrics, TrainResult } from '../lib/stages.js';
import type { ActivityDeps } from './deps.js';
import { resumeChain } from './lineage.js';
import { stageModel } from './models.js';
import { stageReference } from './reference.js';
import type { ShardManifest } from './shard.js';
import { runTrainer, TrainerExit, type TrainerEvent } from './trainerProcess.js';

const HEARTBEAT_EVERY_MS = 5_000;

/** What the activity heartbeats: enough for progress displays and for the next attempt. */
export interface TrainProgress {
  stageId: string;
  step: number;
  /** Pairs per optimizer step (micro-batch x accumulation), for ETAs. */
  stepSamples: number;
  totalSteps: number | null;
  metrics: TrainMetrics;
  samplesPerSecond?: number;
  checkpointKey: string | null;
  phase: 'staging' | 'loading' | 'training' | 'uploading';
}

export async function trainModel(deps: ActivityDeps, input: TrainInput): Promise<TrainResult> {
  const ctx = Context.current();
  const started = Date.now();
  const { storage } = deps;
  const { bucket, runId } = input;
  const progress: TrainProgress = {
    stageId: input.stageId,
    step: 0,
    stepSamples:
      input.train.per_device_train_batch_size === 'auto'
        ? input.train.total_train_batch_size!
        : input.train.per_device_train_batch_size * input.train.gradient_accumulation_steps,
    totalSteps: null,
    metrics: {},
    checkpointKey: null,
    phase: 'staging',
  };
  // Heartbeat on a timer too: model loading can outlast the heartbeat timeout on its own.
  const ticker = setInterval(() => heartbeat(progress), HEARTBEAT_EVERY_MS);
  try {
    const attemptDir = join(deps.workDir, 'runs', runId, input.stageId, `attempt-${ctx.info.attempt}-${process.pid}`);
    await rm(attemptDir, { recursive: true, force: true });
    await mkdir(attemptDir, { recursive: true });

    const modelDir = await stageModel(deps, input.modelSource);
    const shardPaths = await stageShards(deps, bucket, input.shards.manifestKey, input.trainSplit);
    // This run's own checkpoints first (a retried attempt), then those of the run it resumes, and
    // that run's own resume parents (issue 7: resuming a resumed run).
    let resume = await stageNewestCheckpoint(deps, bucket, keys.checkpointsPrefix(runId, input.stageId), join(attemptDir, 'resume'));
    for (const earlier of input.resumeFromRunId && !resume ? await resumeChain(deps, bucket, input.resumeFromRunId) : []) {
      resume = await stageNewestCheckpoint(deps, bucket, keys.checkpointsPrefix(earlier, input.stageId), join(attemptDir, 'resume'));
      if (resume) break;
    }
    if (resume) {
      progress.step = resume.step;
      progress.checkpointKey = resume.key;
      log.info('resuming training from checkpoint', { runId, stage: input.stageId, step: resume.step });
    }

    const referenceFiles = input.reference ? await stageReference(deps, bucket, input.reference.manifestKey, join(attemptDir, 'reference')) : [];
    // init_from (issue 7): a fresh start loads an earlier run's adapter; a checkpoint already holds it.
    const initAdapterDir = !resume && input.initAdapter ? await stageInitAdapter(deps, input.initAdapter, join(attemptDir, 'init-adapter')) : null;

    const outputDir = join(attemptDir, 'out');
    const configPath = join(attemptDir, 'train-config.json');
    await writeFile(configPath, JSON.stringify(trainerConfig(input, modelDir, shardPaths, outputDir, resume?.dir ?? null, referenceFiles, initAdapterDir), null, 2));

    const checkpointKeys: string[] = [];
    // Learning curves (report): every step's metrics, stored with each checkpoint so a resumed
    // run keeps the curve of the steps it does not redo.
    const stepMetricsKey = keys.stepMetrics(runId, input.stageId);
    const history = resume ? await loadStepHistory(storage, bucket, [stepMetricsKey, ...(input.resumeFromRunId ? [keys.stepMetrics(input.resumeFromRunId, input.stageId)] : [])], resume.step) : [];
    let uploads = Promise.resolve();
    let finished: TrainerEvent | undefined;
    progress.phase = 'loading';
    heartbeat(progress);

    const outcome = await runTrainer({
      pythonBin: deps.pythonBin,
      module: 'dpo_trainer.train',
      configPath,
      signal: ctx.cancellationSignal,
      killAfterMs: 60_000,
      onEvent: (event) => {
        switch (event.event) {
          case 'started':
            progress.totalSteps = event.total_steps as number;
            progress.phase = 'training';
            break;
          case 'step':
            progress.step = event.step as number;
            progress.metrics = event.metrics as TrainMetrics;
            progress.samplesPerSecond = event.samples_per_second as number;
            history.push({ step: event.step as number, epoch: event.epoch as number, metrics: event.metrics as TrainMetrics });
            heartbeat(progress);
            break;
          case 'checkpoint_saved': {
            const step = event.step as number;
            const prefix = keys.checkpointPrefix(runId, input.stageId, step);
            // Uploads run in order, each with its manifest last; training does not wait for them.
            uploads = uploads.then(async () => {
              await storage.uploadDir(bucket, event.path as string, prefix, MANIFEST_FILE);
              await storage.putJson(bucket, stepMetricsKey, history.filter((h) => h.step <= step));
              checkpointKeys.push(prefix);
              progress.checkpointKey = prefix;
              heartbeat(progress);
            });
            break;
          }
          case 'finished':
            finished = event;
            break;
        }
      },
    });
    await uploads;

    if (ctx.cancellationSignal.aborted) {
      // Cancelled (by the workflow, or a worker shutting down): the trainer has checkpointed; report the cancellation.
      throw await ctx.cancelled.then(
        () => new Error('cancelled'),
        (reason: unknown) => reason,
      );
    }
    if (outcome.exitCode !== TrainerExit.Finished || !finished) throw failureFor(outcome);
    progress.phase = 'uploading';
    const adapterDir = finished.adapter_path as string;
    const finalDir = join(adapterDir, '..');
    const finalPrefix = keys.finalAdapterPrefix(runId, input.stageId);
    await storage.uploadDir(bucket, finalDir, finalPrefix, MANIFEST_FILE);
    await storage.putJson(bucket, stepMetricsKey, history);
    await rm(attemptDir, { recursive: true, force: true });
    return {
      adapterBucket: bucket,
      adapterPrefix: `${finalPrefix}adapter/`,
      finalStep: finished.step as number,
      checkpointKeys,
      resumedFromStep: resume?.step ?? null,
      metrics: (finished.metrics as TrainMetrics) ?? progress.metrics,
      trainSeconds: (Date.now() - started) / 1000,
      stepMetricsKey,
      ...(input.initAdapter && { initAdapter: `s3://${input.initAdapter.bucket}/${input.initAdapter.prefix}` }),
    };
  } finally {
    clearInterval(ticker);
  }
}

function trainerConfig(input: TrainInput, modelDir: string, shards: string[], outputDir: string, resumeFrom: string | null, referenceFiles: string[], initAdapter: string | null = null) {
  const t = input.train;
  return {
    model_dir: modelDir,
    train_shards: shards,
    output_dir: outputDir,
    resume_from: resumeFrom,
    init_adapter: initAdapter,
    seed: t.seed,
    epochs: t.epochs,
    max_steps: t.max_steps,
    per_device_train_batch_size: t.per_device_train_batch_size,
    gradient_accumulation_steps: t.gradient_accumulation_steps,
    ...(t.total_train_batch_size !== undefined && { total_train_batch_size: t.total_train_batch_size }),
    learning_rate: t.learning_rate,
    lr_scheduler_type: t.lr_scheduler_type,
    warmup_ratio: t.warmup_ratio,
    weight_decay: t.weight_decay,
    max_grad_norm: t.max_grad_norm,
    beta: t.beta,
    loss_type: t.loss_type,
    label_smoothing: t.label_smoothing,
    lora: t.lora,
    dtype: t.dtype,
    gradient_checkpointing: t.gradient_checkpointing,
    checkpoint_every_steps: t.checkpoint_every_steps,
    log_every_steps: 1,
    device: 'auto',
    preemption_grace_seconds: 30,
    precompute_ref_log_probs: referenceFiles.length > 0,
    ref_log_probs_files: referenceFiles,
  };
}

/** Maps the trainer's exit status to a failure typed by what the workflow should do. */
function failureFor(outcome: Awaited<ReturnType<typeof runTrainer>>): Error {
  const said = outcome.error ? `${outcome.error.error_type}: ${outcome.error.message}` : outcome.stderrTail.trim().split('\n').slice(-5).join('\n');
  switch (outcome.exitCode) {
    case TrainerExit.Preempted:
      return ApplicationFailure.retryable('trainer was preempted and saved a checkpoint; resuming elsewhere', FailureType.Preempted);
    case TrainerExit.OutOfMemory:
      return ApplicationFailure.nonRetryable(`trainer ran out of memory after its own backoff: ${said}`, FailureType.OutOfMemory, outcome.error);
    case TrainerExit.InvalidInput: {
      const type = outcome.error?.error_type === 'ModelLoadError' ? FailureType.ModelLoadError : FailureType.InvalidInput;
      return ApplicationFailure.nonRetryable(`trainer refused its input: ${said}`, type);
    }
    default:
      return ApplicationFailure.retryable(
        `trainer exited with ${outcome.exitCode ?? `signal ${outcome.signal}`}: ${said}`,
        'TrainerCrash',
      );
  }
}

/** init_from (issue 7): downloads the adapter folder training starts from. */
async function stageInitAdapter(deps: ActivityDeps, from: { bucket: string; prefix: string }, dir: string): Promise<string> {
  await rm(dir, { recursive: true, force: true });
  const files = await deps.storage.downloadPrefix(from.bucket, from.prefix, dir);
  if (!files.some((f) => f.endsWith('adapter_config.json'))) {
    throw ApplicationFailure.nonRetryable(`init_from: s3://${from.bucket}/${from.prefix} holds no PEFT adapter (adapter_config.json)`, FailureType.InvalidConfig);
  }
  return dir;
}

/** Downloads the split's shards into a content-addressed local cache, checking their sha256. */
export async function stageShards(deps: ActivityDeps, bucket: string, manifestKey: string, split: string): Promise<string[]> {
  const manifest = await deps.storage.getJson<ShardManifest>(bucket, manifestKey);
  const entry = manifest.splits[split];
  if (!entry) throw ApplicationFailure.nonRetryable(`shard manifest has no split "${split}"`, FailureType.InvalidDataset);
  const paths: string[] = [];
  for (const shard of entry.shards) {
    const path = join(deps.workDir, 'shards', `${shard.sha256}.parquet`);
    const ok = await readFile(path).then((b) => sha256(b) === shard.sha256, () => false);
    if (!ok) {
      await deps.storage.downloadFile(bucket, shard.key, path);
      if (sha256(await readFile(path)) !== shard.sha256) {
        await rm(path, { force: true });
        throw ApplicationFailure.retryable(`shard ${shard.key} failed its sha256 check after download`);
      }
    }
    paths.push(path);
  }
  return paths;
}

interface CheckpointManifest {
  step: number;
  files: Array<{ path: string; sha256: string }>;
}

/**
 * The newest checkpoint whose manifest exists and whose files match it. Anything newer but
 * incomplete (no manifest, a truncated file) is skipped, never used (DESIGN invariant 3).
 */
export async function stageNewestCheckpoint(
  deps: ActivityDeps,
  bucket: string,
  checkpointsPrefix: string,
  dir: string,
): Promise<{ step: number; key: string; dir: string } | null> {
  const objects = await deps.storage.list(bucket, checkpointsPrefix);
  const complete = objects
    .filter((o) => o.key.endsWith(`/${MANIFEST_FILE}`))
    .map((o) => o.key.slice(0, -MANIFEST_FILE.length))
    .map((prefix) => ({ prefix, step: parseCheckpointName(prefix.split('/').at(-2) ?? '') }))
    .filter((c): c is { prefix: string; step: number } => c.step !== undefined)
    .sort((a, b) => b.step - a.step);
  for (const candidate of complete) {
    const local = join(dir, `step-${candidate.step}`);
    await rm(local, { recursive: true, force: true });
    await deps.storage.downloadPrefix(bucket, candidate.prefix, local);
    if (await checkpointIntact(local)) return { step: candidate.step, key: candidate.prefix, dir: local };
    log.warn('skipping a checkpoint whose files do not match its manifest', { key: candidate.prefix });
  }
  return null;
}

async function checkpointIntact(dir: string): Promise<boolean> {
  try {
    const manifest = JSON.parse(await readFile(join(dir, MANIFEST_FILE), 'utf8')) as CheckpointManifest;
    for (const file of manifest.files) {
      if (sha256(await readFile(join(dir, file.path))) !== file.sha256) return false;
    }
    return true;
  } catch {
    return false;
  }
}

function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

/** One optimizer step's metrics, as the trainer's `step` event reports them. */
export interface StepRecord {
  step: number;
  epoch: number;
  metrics: TrainMetrics;
}

/** The stored curve of the first of `candidates` that exists, cut at the resumed step. */
async function loadStepHistory(storage: ActivityDeps['storage'], bucket: string, candidates: string[], upToStep: number): Promise<StepRecord[]> {
  for (const key of candidates) {
    if (await storage.exists(bucket, key)) return (await storage.getJson<StepRecord[]>(bucket, key)).filter((h) => h.step <= upToStep);
  }
  return [];
}
