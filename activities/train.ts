/**
 * train (dpo-gpu queue): stages the model and the training shards onto local disk, resumes from
 * the newest complete checkpoint in storage, spawns the Python trainer, relays its events as
 * heartbeats and uploads every checkpoint it writes (manifest last).
 */
import { createHash } from 'node:crypto';
import { readFile, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ApplicationFailure, Context, heartbeat, log } from '@temporalio/activity';
import { countInterruptions, type AttemptMark, type Interruptions } from '../lib/attempts.js';
import { FailureType, hasFailureType } from '../lib/errors.js';
import { fenceName, keys, MANIFEST_FILE, parseFencedCheckpointName } from '../lib/keys.js';
import type { TrainInput, TrainMetrics, TrainResult } from '../lib/stages.js';
import type { ActivityDeps } from './deps.js';
import { resumeChain } from './lineage.js';
import { AttemptFence, FENCED_OUT, listFences, publishedWhileCurrent } from './fencing.js';
import { stageModel } from './models.js';
import { stageReference } from './reference.js';
import type { ShardManifest } from './shard.js';
import { listFilesRecursive } from './storage.js';
import { runTrainer, TrainerExit, type TrainerEvent } from './trainerProcess.js';
import { trainRunConfig, writeTrainerConfig } from '../lib/trainerConfig.js';

const HEARTBEAT_EVERY_MS = 5_000;


/**
 * What the activity heartbeats: enough for progress displays and for the next attempt (where to
 * resume; how the earlier attempts ended, lib/attempts.ts).
 */
export interface TrainProgress extends AttemptMark {
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

/** Live settings the training workflow hands to a running segment (README "Durability"). */
export interface TrainingControl {
  paused: boolean;
  checkpoint_every_steps: number;
}

/**
 * One segment of a training run: from the newest usable checkpoint up to the next multiple of
 * `segmentSteps` (or to the end). Its heartbeats carry the step and the newest checkpoint key.
 */
export interface TrainSegmentInput extends TrainInput {
  /** Steps per segment; null: one epoch's worth. Segment ends are aligned to multiples of it. */
  segmentSteps: number | null;
  /** The workflow whose `trainingControl` query steers this segment (pause, checkpoint interval). */
  controlWorkflowId?: string;
  control?: TrainingControl;
}

export interface TrainSegmentResult {
  /** True when training finished: the adapter is stored. False: a segment ended at `step`. */
  done: boolean;
  step: number;
  totalSteps: number | null;
  checkpointKey: string | null;
  checkpointKeys: string[];
  resumedFromStep: number | null;
  metrics: TrainMetrics;
  trainSeconds: number;
  adapterBucket?: string;
  adapterPrefix?: string;
  /** Step metrics of every optimizer step so far (learning curves in the report). */
  stepMetricsKey?: string;
  /** s3:// location of the adapter training started from (`init_from`), when there was one. */
  initAdapter?: string;
  /** How this segment's earlier attempts ended (preempted, worker lost, failed). */
  interruptions: Interruptions;
  /** The trainer's own out-of-memory backoff in this segment: the settings it ended with. */
  backoff?: { micro_batch: number; grad_accum: number; gradient_checkpointing: boolean };
}

export async function trainModel(deps: ActivityDeps, input: TrainSegmentInput): Promise<TrainSegmentResult> {
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
    attempt: ctx.info.attempt,
    // The previous attempts' last heartbeat says how they ended (lib/attempts.ts).
    prior: countInterruptions(ctx.info.attempt, ctx.info.heartbeatDetails),
  };
  // Heartbeat on a timer too: model loading can outlast the heartbeat timeout on its own.
  const every = Math.min(HEARTBEAT_EVERY_MS, (ctx.info.heartbeatTimeoutMs ?? 4 * HEARTBEAT_EVERY_MS) / 4);
  const ticker = setInterval(() => heartbeat(progress), every);
  // Our own abort: cancellation, a newer attempt (fenced out), or a failed upload stop the trainer.
  const stop = new AbortController();
  const onCancel = () => {
    const reason = String((ctx.cancellationSignal.reason as { message?: string } | undefined)?.message ?? ctx.cancellationSignal.reason);
    // Timed out or its workflow is gone: another attempt owns the stage; nothing this trainer
    // writes could be used, so kill it now. Cancelled or a worker shutdown: let it checkpoint.
    stop.abort(/TIMED_OUT|NOT_FOUND/.test(reason) ? 'kill' : 'checkpoint');
  };
  ctx.cancellationSignal.addEventListener('abort', onCancel, { once: true });
  if (ctx.cancellationSignal.aborted) onCancel();
  let controlTimer: NodeJS.Timeout | undefined;
  try {
    const fence = new AttemptFence(storage, bucket, runId, input.stageId, ctx.info.currentAttemptScheduledTimestampMs);
    await fence.claim({ workflowId: ctx.info.workflowExecution?.workflowId, activityId: ctx.info.activityId, attempt: ctx.info.attempt });

    const attemptDir = join(deps.workDir, 'runs', runId, input.stageId, `attempt-${fenceName(fence.token)}-${process.pid}`);
    await rm(attemptDir, { recursive: true, force: true });
    await mkdir(attemptDir, { recursive: true });

    const modelDir = await stageModel(deps, input.modelSource);
    const shardPaths = await stageShards(deps, bucket, input.shards.manifestKey, input.trainSplit);
    // This run's own checkpoints first (a retried attempt, an earlier segment), then those of the
    // run it resumes, and that run's own resume parents (resuming a resumed run).
    let resume = await stageNewestCheckpoint(deps, bucket, runId, input.stageId, join(attemptDir, 'resume'));
    for (const earlier of input.resumeFromRunId && !resume ? await resumeChain(deps, bucket, input.resumeFromRunId) : []) {
      resume = await stageNewestCheckpoint(deps, bucket, earlier, input.stageId, join(attemptDir, 'resume'));
      if (resume) break;
    }
    if (resume) {
      progress.step = resume.step;
      progress.checkpointKey = resume.key;
      log.info('resuming training from checkpoint', { runId, stage: input.stageId, step: resume.step, key: resume.key });
    }

    const referenceFiles = input.reference ? await stageReference(deps, bucket, input.reference.manifestKey, join(attemptDir, 'reference')) : [];
    // init_from (issue 7): a fresh start loads an earlier run's adapter; a checkpoint already holds it.
    const initAdapterDir = !resume && input.initAdapter ? await stageInitAdapter(deps, input.initAdapter, join(attemptDir, 'init-adapter')) : null;

    const outputDir = join(attemptDir, 'out');
    const configPath = join(attemptDir, 'train-config.json');
    await writeTrainerConfig(
      configPath,
      'TrainConfig',
      trainRunConfig(input.train, { modelDir, shards: shardPaths, outputDir, resumeFrom: resume?.dir ?? null, initAdapter: initAdapterDir, referenceFiles }),
    );
    const control = new ControlFile(join(attemptDir, 'control.json'), {
      paused: input.control?.paused ?? false,
      checkpoint_every_steps: input.control?.checkpoint_every_steps ?? input.train.checkpoint_every_steps,
      stop_at_step: null,
    });
    await control.flush();
    if (input.controlWorkflowId) {
      const workflowId = input.controlWorkflowId;
      controlTimer = setInterval(() => {
        ctx.client.workflow
          .getHandle(workflowId)
          .query<TrainingControl>('trainingControl')
          .then((c) => control.update({ paused: c.paused, checkpoint_every_steps: c.checkpoint_every_steps }))
          .catch(() => {}); // no CPU worker answering right now: keep the last settings
      }, every);
    }

    const checkpointKeys: string[] = [];
    // Learning curves (report): every step's metrics, stored with each checkpoint so a resumed
    // run keeps the curve of the steps it does not redo.
    const stepMetricsKey = keys.stepMetrics(runId, input.stageId);
    const history = resume ? await loadStepHistory(storage, bucket, [stepMetricsKey, ...(input.resumeFromRunId ? [keys.stepMetrics(input.resumeFromRunId, input.stageId)] : [])], resume.step) : [];
    let uploads = Promise.resolve();
    let uploadError: unknown;
    let finished: TrainerEvent | undefined;
    let stopAtStep: number | null = null;
    let preemptedAt: number | null = null;
    let backoff: TrainSegmentResult['backoff'];
    progress.phase = 'loading';
    heartbeat(progress);

    const outcome = await runTrainer({
      pythonBin: deps.pythonBin,
      module: 'dpo_trainer.train',
      configPath,
      signal: stop.signal,
      killAfterMs: 60_000,
      extraEnv: { DPO_TRAINER_CONTROL_FILE: control.path },
      onEvent: (event) => {
        switch (event.event) {
          case 'started': {
            const total = event.total_steps as number;
            progress.totalSteps = total;
            progress.phase = 'training';
            const size = input.segmentSteps ?? Math.ceil(total / input.train.epochs);
            const end = (Math.floor((event.start_step as number) / size) + 1) * size;
            if (end < total) {
              stopAtStep = end;
              void control.update({ stop_at_step: end });
            }
            break;
          }
          case 'step':
            progress.step = event.step as number;
            progress.metrics = event.metrics as TrainMetrics;
            progress.samplesPerSecond = event.samples_per_second as number;
            history.push({ step: event.step as number, epoch: event.epoch as number, metrics: event.metrics as TrainMetrics });
            heartbeat(progress);
            break;
          case 'checkpoint_saved': {
            const step = event.step as number;
            const prefix = keys.fencedCheckpointPrefix(runId, input.stageId, step, fence.token);
            // Uploads run in order, each with its manifest last; training does not wait for them.
            uploads = uploads.then(async () => {
              if (uploadError) return;
              try {
                await publishCheckpoint(deps, bucket, event.path as string, prefix, fence, ctx.info.attempt);
                await storage.putJson(bucket, stepMetricsKey, history.filter((h) => h.step <= step));
                checkpointKeys.push(prefix);
                progress.checkpointKey = prefix;
                heartbeat(progress);
              } catch (err) {
                // Fenced out, or storage gone for longer than the retries: stop here; the next
                // attempt resumes from the newest published checkpoint.
                uploadError = err;
                stop.abort(hasFailureType(err, FENCED_OUT) ? 'kill' : 'checkpoint');
              }
            });
            break;
          }
          case 'oom_backoff':
            backoff = {
              micro_batch: event.micro_batch as number,
              grad_accum: event.grad_accum as number,
              gradient_checkpointing: event.gradient_checkpointing as boolean,
            };
            break;
          case 'preempted':
            preemptedAt = event.step as number;
            break;
          case 'finished':
            finished = event;
            break;
        }
      },
    });
    await uploads;
    if (uploadError) throw uploadError;

    if (ctx.cancellationSignal.aborted) {
      const reason = ctx.cancellationSignal.reason as { message?: string } | undefined;
      if (reason?.message === 'WORKER_SHUTDOWN' && outcome.exitCode === TrainerExit.Preempted) {
        // The worker is draining: its emergency checkpoint is stored; resume on any GPU worker.
        throw ApplicationFailure.retryable(`worker shut down; trainer checkpointed step ${preemptedAt}`, FailureType.Preempted);
      }
      // Cancelled by the workflow (or timed out): report the cancellation.
      throw await ctx.cancelled.then(
        () => new Error('cancelled'),
        (err: unknown) => err,
      );
    }
    const common = {
      interruptions: progress.prior,
      checkpointKey: progress.checkpointKey,
      checkpointKeys,
      resumedFromStep: resume?.step ?? null,
      totalSteps: progress.totalSteps,
      trainSeconds: (Date.now() - started) / 1000,
      stepMetricsKey,
      ...(backoff && { backoff }),
      ...(input.initAdapter && { initAdapter: `s3://${input.initAdapter.bucket}/${input.initAdapter.prefix}` }),
    };
    if (outcome.exitCode === TrainerExit.Preempted && stopAtStep !== null && preemptedAt !== null && preemptedAt >= stopAtStep) {
      await rm(attemptDir, { recursive: true, force: true });
      return { done: false, step: preemptedAt, metrics: progress.metrics, ...common };
    }
    if (outcome.exitCode !== TrainerExit.Finished || !finished) throw failureFor(outcome);
    progress.phase = 'uploading';
    const adapterDir = finished.adapter_path as string;
    const finalDir = join(adapterDir, '..');
    const finalPrefix = keys.finalAdapterPrefix(runId, input.stageId);
    await fence.assertCurrent('publishing the final adapter');
    await withStorageRetries(() => storage.uploadDir(bucket, finalDir, finalPrefix, MANIFEST_FILE));
    await storage.putJson(bucket, stepMetricsKey, history);
    await rm(attemptDir, { recursive: true, force: true });
    return {
      done: true,
      step: finished.step as number,
      metrics: (finished.metrics as TrainMetrics) ?? progress.metrics,
      adapterBucket: bucket,
      adapterPrefix: `${finalPrefix}adapter/`,
      ...common,
    };
  } catch (err) {
    // Say why this attempt stops, for the next one to count (a killed worker says nothing).
    progress.stopping = hasFailureType(err, FailureType.Preempted) ? 'preempted' : 'failed';
    heartbeat(progress);
    throw err;
  } finally {
    clearInterval(ticker);
    clearInterval(controlTimer);
    ctx.cancellationSignal.removeEventListener('abort', onCancel);
  }
}

/** The control file the trainer polls each step (trainer/CONTRACT.md), written atomically. */
class ControlFile {
  private writing = Promise.resolve();
  constructor(
    readonly path: string,
    private state: TrainingControl & { stop_at_step: number | null },
  ) {}

  update(change: Partial<TrainingControl & { stop_at_step: number | null }>): Promise<void> {
    const next = { ...this.state, ...change };
    if (JSON.stringify(next) === JSON.stringify(this.state)) return this.writing;
    this.state = next;
    return this.flush();
  }

  flush(): Promise<void> {
    const body = JSON.stringify(this.state);
    this.writing = this.writing.then(async () => {
      const tmp = `${this.path}.tmp`;
      await writeFile(tmp, body);
      await rename(tmp, this.path);
    });
    return this.writing;
  }
}

/**
 * Uploads one checkpoint folder: files first, then -- if this attempt still holds the fence --
 * the manifest, extended with the attempt that wrote it.
 */
async function publishCheckpoint(deps: ActivityDeps, bucket: string, dir: string, prefix: string, fence: AttemptFence, attempt: number) {
  await fence.assertCurrent('uploading a checkpoint');
  const files = (await listFilesRecursive(dir)).filter((f) => f !== MANIFEST_FILE);
  for (const rel of files) await withStorageRetries(() => deps.storage.putFile(bucket, prefix + rel, join(dir, ...rel.split('/'))));
  const manifest = JSON.parse(await readFile(join(dir, MANIFEST_FILE), 'utf8')) as Record<string, unknown>;
  await fence.assertCurrent('publishing a checkpoint manifest');
  await withStorageRetries(() => deps.storage.putJson(bucket, prefix + MANIFEST_FILE, { ...manifest, fence: { token: fence.token, attempt } }));
}

/** Storage restarts take seconds: retry a few times before failing the attempt (retryable). */
async function withStorageRetries<T>(op: () => Promise<T>, tries = 6): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await op();
    } catch (err) {
      if (i >= tries || hasFailureType(err, FENCED_OUT)) throw err;
      await new Promise((r) => setTimeout(r, 500 * 2 ** i));
    }
  }
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
 * The newest checkpoint whose manifest exists, whose files match it, and which its attempt
 * published while it still held the stage's fence (activities/fencing.ts). Anything newer but
 * incomplete (no manifest, a truncated file) or written by a fenced-out attempt is skipped.
 */
export async function stageNewestCheckpoint(
  deps: ActivityDeps,
  bucket: string,
  runId: string,
  stageId: string,
  dir: string,
): Promise<{ step: number; key: string; dir: string } | null> {
  const checkpointsPrefix = keys.checkpointsPrefix(runId, stageId);
  const [objects, fences] = await Promise.all([
    deps.storage.list(bucket, checkpointsPrefix),
    listFences(deps.storage, bucket, runId, stageId),
  ]);
  const complete = objects
    .filter((o) => o.key.endsWith(`/${MANIFEST_FILE}`))
    .map((o) => ({ prefix: o.key.slice(0, -MANIFEST_FILE.length), writtenAt: o.lastModified?.getTime() }))
    .map((c) => ({ ...c, name: parseFencedCheckpointName(c.prefix.split('/').at(-2) ?? '') }))
    .filter((c): c is typeof c & { name: { step: number; token: number | null } } => c.name !== undefined)
    .sort((a, b) => b.name.step - a.name.step || (b.name.token ?? 0) - (a.name.token ?? 0));
  for (const candidate of complete) {
    if (!publishedWhileCurrent(candidate.name.token, candidate.writtenAt, fences)) {
      log.warn('skipping a checkpoint published after a newer attempt took over', { key: candidate.prefix });
      continue;
    }
    const local = join(dir, `step-${candidate.name.step}`);
    await rm(local, { recursive: true, force: true });
    await withStorageRetries(() => deps.storage.downloadPrefix(bucket, candidate.prefix, local));
    if (await checkpointIntact(local)) return { step: candidate.name.step, key: candidate.prefix, dir: local };
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
