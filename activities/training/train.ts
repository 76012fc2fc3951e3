/**
 * train (dpo-gpu queue): stages the model and the training shards onto local disk, resumes from
 * the newest complete checkpoint in storage, spawns the Python trainer, relays its events as
 * heartbeats and uploads every checkpoint it writes (manifest last).
 */
import { readFile, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ApplicationFailure, Context, heartbeat, log } from '@temporalio/activity';
import { countInterruptions } from '../../contracts/attempts.js';
import { FailureType, hasFailureType } from '../../contracts/errors.js';
import { fenceName, keys, MANIFEST_FILE } from '../../contracts/keys.js';
import type { TrainMetrics, TrainSegmentInput, TrainSegmentResult } from '../../contracts/payloads.js';
import type { StepRecord, TrainingControl, TrainProgress } from '../../contracts/progress.js';
import type { ActivityDeps } from '../../io/deps.js';
import { resumeChain } from '../run/lineage.js';
import { AttemptFence } from '../../io/fencing.js';
import { stageModel } from '../../io/models.js';
import { listFilesRecursive } from '../../io/files.js';
import { stageInitAdapter, stageReference, stageShards } from '../../io/staging.js';
import { stageNewestCheckpoint, withStorageRetries } from '../../io/checkpoints.js';
import { runTrainer, TrainerExit, type TrainerEvent } from '../../bridge/trainerProcess.js';
import { trainerFailure } from '../../bridge/trainerFailure.js';
import { startHeartbeatTicker } from '../heartbeat.js';
import { trainingControlQuery } from '../../contracts/messages.js';
import { trainRunConfig, writeTrainerConfig } from '../../bridge/trainerConfig.js';
import { nameAdapterBase } from '../../io/adapterCard.js';
import { baseModelId, renderModelCard, type ModelCardInput } from '../../contracts/modelCard.js';
import { COMMIT_SHA, isHubModelSource, parseHubRef } from '../../contracts/hubRepo.js';
import { lineageTags, resolveReportTo } from '../../contracts/tracking.js';
import { EventFileUploader } from '../../io/tensorboardEvents.js';

/** How often a running segment reads its controls: as often as it heartbeats. */
const CONTROL_POLL_MS = 5_000;

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
    // The previous attempts' last heartbeat says how they ended (contracts/attempts.ts).
    prior: countInterruptions(ctx.info.attempt, ctx.info.heartbeatDetails),
  };
  // Heartbeat on a timer too: model loading can outlast the heartbeat timeout on its own.
  const stopTicker = startHeartbeatTicker(progress);
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
    const shardPaths = await stageShards(deps, { bucket, manifestKey: input.shards.manifestKey, split: input.trainSplit });
    // This run's own checkpoints first (a retried attempt, an earlier segment), then those of the
    // run it resumes, and that run's own resume parents (resuming a resumed run).
    let resume = await stageNewestCheckpoint(deps, { bucket, runId, stageId: input.stageId, dir: join(attemptDir, 'resume'), warn: (message, fields) => log.warn(message, fields) });
    for (const earlier of input.resumeFromRunId && !resume ? await resumeChain(deps, bucket, input.resumeFromRunId) : []) {
      resume = await stageNewestCheckpoint(deps, { bucket, runId: earlier, stageId: input.stageId, dir: join(attemptDir, 'resume'), warn: (message, fields) => log.warn(message, fields) });
      if (resume) break;
    }
    if (resume) {
      progress.step = resume.step;
      progress.checkpointKey = resume.key;
      log.info('resuming training from checkpoint', { runId, stage: input.stageId, step: resume.step, key: resume.key });
    }

    const referenceFiles = input.reference ? await stageReference(deps, { bucket, manifestKey: input.reference.manifestKey, dir: join(attemptDir, 'reference') }) : [];
    // init_from: a fresh start loads an earlier run's adapter; a checkpoint already holds it.
    const initAdapterDir = !resume && input.initAdapter ? await stageInitAdapter(deps, input.initAdapter, join(attemptDir, 'init-adapter')) : null;

    const outputDir = join(attemptDir, 'out');
    const configPath = join(attemptDir, 'train-config.json');
    // report_to: the trainer writes the trackers; TensorBoard's event files travel with the
    // checkpoints into the stage's storage folder. A failed upload is a warning, never a failure.
    const tracking = {
      // Absent in runs started before the option; MLflow's server comes from the worker's env.
      reportTo: resolveReportTo(input.train.report_to ?? 'none', { mlflow: Boolean(process.env.MLFLOW_TRACKING_URI) }),
      loggingDir: join(outputDir, 'runs'),
      runName: `${runId}/${input.stageId}`,
      tags: lineageTags({
        run_id: runId,
        stage: input.stageId,
        temporal_workflow_id: ctx.info.workflowExecution?.workflowId,
        temporal_run_id: ctx.info.workflowExecution?.runId,
        resumed_from_run: input.resumeFromRunId,
      }),
    };
    const uploaders = [
      ...(tracking.reportTo.includes('tensorboard') ? [new EventFileUploader(storage, bucket, tracking.loggingDir, keys.tensorboardPrefix(runId, input.stageId))] : []),
      // W&B offline runs (offline-run-*/), kept with the stage's outputs for `wandb sync`.
      ...(tracking.reportTo.includes('wandb') ? [new EventFileUploader(storage, bucket, join(outputDir, 'wandb'), keys.wandbPrefix(runId, input.stageId), (rel) => rel.includes('/'))] : []),
    ];
    let trackingUploadFailures = 0;
    const uploadEvents = async () => {
      for (const uploader of uploaders) {
        try {
          await uploader.upload();
        } catch (err) {
          trackingUploadFailures++;
          log.warn('could not upload tracker files; retrying at the next checkpoint', { error: String(err) });
        }
      }
    };
    await writeTrainerConfig(
      configPath,
      'TrainConfig',
      trainRunConfig(input.train, {
        modelDir,
        shards: shardPaths,
        outputDir,
        resumeFrom: resume?.dir ?? null,
        initAdapter: initAdapterDir,
        referenceFiles,
        tracking,
        objective: input.objective ?? 'dpo',
        mergeModel: input.mergeModel ?? false,
      }),
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
          .query(trainingControlQuery)
          .then((c) => control.update({ paused: c.paused, checkpoint_every_steps: c.checkpoint_every_steps }))
          .catch(() => {}); // no CPU worker answering right now: keep the last settings
      }, Math.min(CONTROL_POLL_MS, (ctx.info.heartbeatTimeoutMs ?? 4 * CONTROL_POLL_MS) / 4));
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
    let trackerSummary: { failures: Record<string, number>; seconds: number } | undefined;
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
                // The curve and the tracker files first: once the manifest is out, a successor may
                // resume past these steps and never log them again. Steps stored beyond a
                // checkpoint that never got published are dropped on resume (and purged by
                // TensorBoard), so this order loses nothing either way. A fenced-out worker
                // stops here rather than overwrite the current holder's curve with a shorter one.
                await fence.assertCurrent('storing the learning curve');
                await storage.putJson(bucket, stepMetricsKey, history.filter((h) => h.step <= step));
                await uploadEvents();
                await publishCheckpoint(deps, bucket, event.path as string, prefix, fence, ctx.info.attempt);
                checkpointKeys.push(prefix);
                progress.checkpointKey = prefix;
                heartbeat(progress);
              } catch (err) {
                // Fenced out, or storage gone for longer than the retries: stop here; the next
                // attempt resumes from the newest published checkpoint.
                uploadError = err;
                stop.abort(hasFailureType(err, FailureType.FencedOut) ? 'kill' : 'checkpoint');
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
            trackerSummary = event.tracking as typeof trackerSummary;
            break;
          case 'finished':
            finished = event;
            trackerSummary = event.tracking as typeof trackerSummary;
            break;
        }
      },
    });
    await uploads;
    await uploadEvents(); // whatever the outcome: the curves up to where the trainer stopped
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
      ...(tracking.reportTo.length && {
        tracking: { failures: trackerSummary?.failures ?? {}, uploadFailures: trackingUploadFailures, seconds: trackerSummary?.seconds ?? 0 },
      }),
      ...(input.initAdapter && { initAdapter: `s3://${input.initAdapter.bucket}/${input.initAdapter.prefix}` }),
    };
    if (outcome.exitCode === TrainerExit.Preempted && stopAtStep !== null && preemptedAt !== null && preemptedAt >= stopAtStep) {
      await rm(attemptDir, { recursive: true, force: true });
      return { done: false, step: preemptedAt, metrics: progress.metrics, ...common };
    }
    if (outcome.exitCode !== TrainerExit.Finished || !finished) throw trainerFailure(outcome, 'trainer');
    progress.phase = 'uploading';
    const adapterDir = finished.adapter_path as string;
    const finalDir = join(adapterDir, '..');
    const finalPrefix = keys.finalAdapterPrefix(runId, input.stageId);
    await nameAdapterBase(finalDir, adapterBase(input.modelSource), renderModelCard(trainCard(input, finished.step as number, backoff)));
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
      // final/model/ travelled with final/ (the trainer wrote it inside the same atomic folder).
      ...(finished.model_path !== undefined && { modelPrefix: `${finalPrefix}model/` }),
      ...common,
    };
  } catch (err) {
    // Say why this attempt stops, for the next one to count (a killed worker says nothing).
    progress.stopping = hasFailureType(err, FailureType.Preempted) ? 'preempted' : 'failed';
    heartbeat(progress);
    throw err;
  } finally {
    stopTicker();
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

/** The stored curve of the first of `candidates` that exists, cut at the resumed step. */
async function loadStepHistory(storage: ActivityDeps['storage'], bucket: string, candidates: string[], upToStep: number): Promise<StepRecord[]> {
  for (const key of candidates) {
    if (await storage.exists(bucket, key)) return (await storage.getJson<StepRecord[]>(bucket, key)).filter((h) => h.step <= upToStep);
  }
  return [];
}

/** The base an adapter names: the Hub id and pinned commit, or the s3:// / local source as written. */
function adapterBase(modelSource: string): { id: string; revision: string | null } {
  if (!isHubModelSource(modelSource)) return { id: modelSource, revision: null };
  const { revision } = parseHubRef(modelSource, 'model.source', { bare: true, kind: 'model' });
  return { id: baseModelId(modelSource), revision: COMMIT_SHA.test(revision) ? revision : null };
}

/** The card written with the adapter (the report stage adds the evaluation to its own copy). */
function trainCard(input: TrainSegmentInput, steps: number, backoff: TrainSegmentResult['backoff']): ModelCardInput {
  const card = input.card;
  return {
    name: card?.name ?? input.runId,
    runId: input.runId,
    stageId: input.stageId,
    modelSource: card?.modelSource ?? input.modelSource,
    modelRevision: card?.modelRevision ?? adapterBase(input.modelSource).revision,
    dataset: card?.dataset ?? { source: 'unknown', revision: null, trainSplit: input.trainSplit, evalSplit: 'unknown' },
    train: input.train,
    ...(input.objective === 'sft' && { objective: 'sft' as const }),
    steps,
    memory: {
      per_device_train_batch_size: backoff?.micro_batch ?? input.train.per_device_train_batch_size,
      gradient_accumulation_steps: backoff?.grad_accum ?? input.train.gradient_accumulation_steps,
    },
  };
}
