/**
 * dpoTraining: one train (or sft) stage as a child workflow of dpoPipeline (docs/training-and-durability.md).
 *
 * It drives the training in segments -- `train.segment_steps` optimizer steps, or an epoch -- each
 * one `trainModel` activity on the GPU queue that resumes from the newest usable checkpoint. A
 * lost worker costs one heartbeat timeout plus at most one checkpoint interval; an out-of-memory
 * failure is replanned here (gradient checkpointing, then a smaller micro-batch with more
 * accumulation, same effective batch) and every replan shows in the history, the
 * `trainingStatus` query, the parent's status and the report. Long runs continue-as-new so the
 * history stays bounded. Pause/resume and the checkpoint interval are steered by signals; the
 * running segment reads them through the `trainingControl` query (activities/training/train.ts).
 *
 * Orchestration only: no I/O.
 */
import {
  ApplicationFailure,
  condition,
  continueAsNew,
  getExternalWorkflowHandle,
  log,
  proxyActivities,
  setHandler,
  workflowInfo,
  type ActivityOptions,
} from '@temporalio/workflow';
import type { GpuActivities } from '../activities/index.js';
import {
  pauseTrainingSignal,
  resumeTrainingSignal,
  setCheckpointIntervalSignal,
  trainingControlQuery,
  trainingReplannedSignal,
  trainingStatusQuery,
  type ReplanNotice,
} from '../contracts/messages.js';
import type { TrainingControl } from '../contracts/progress.js';
import type { TrainConfig } from '../contracts/config.js';
import { addAttempt, emptyAttempts, type StageAttempts } from '../contracts/attempts.js';
import { FailureType, hasFailureType } from '../contracts/errors.js';
import { oomGiveUpMessage, replanAfterOom } from '../contracts/policies.js';
import type { TrainInput, TrainMetrics, TrainResult, TrainSegmentResult } from '../contracts/payloads.js';

export interface TrainingInput {
  train: TrainInput;
  /** Queue, timeouts and retries of each segment activity (decided by the pipeline's stage runner). */
  activity: ActivityOptions;
  control: TrainingControl;
  /** State carried across continue-as-new. */
  carried?: TrainingCarried;
}

interface TrainingCarried {
  /** The train settings now in force (after replans). */
  train: TrainConfig;
  step: number;
  totalSteps: number | null;
  segments: number;
  replans: string[];
  checkpointKeys: string[];
  checkpointKey: string | null;
  resumedFromStep: number | null;
  trainSeconds: number;
  metrics: TrainMetrics;
  /** Segment attempts, preemptions, lost workers (optional: state carried by an older version). */
  attempts?: StageAttempts;
}

/** Segments per workflow run before continue-as-new (each adds ~10 history events). */
const DEFAULT_SEGMENTS_PER_RUN = 50;

export async function dpoTraining(input: TrainingInput): Promise<TrainResult> {
  const stageId = input.train.stageId;
  const control: TrainingControl = { ...input.control };
  const state: TrainingCarried = input.carried ?? {
    train: input.train.train,
    step: 0,
    totalSteps: null,
    segments: 0,
    replans: [],
    checkpointKeys: [],
    checkpointKey: null,
    resumedFromStep: null,
    trainSeconds: 0,
    metrics: {},
  };
  const attempts = (state.attempts ??= emptyAttempts(true));
  setHandler(trainingControlQuery, () => control);
  setHandler(trainingStatusQuery, () => ({
    stageId,
    step: state.step,
    totalSteps: state.totalSteps,
    segments: state.segments,
    paused: control.paused,
    checkpointEverySteps: control.checkpoint_every_steps,
    checkpointKey: state.checkpointKey,
    replans: state.replans,
    microBatch: state.train.per_device_train_batch_size,
    gradientAccumulation: state.train.gradient_accumulation_steps,
    gradientCheckpointing: state.train.gradient_checkpointing,
    attempts,
  }));
  setHandler(pauseTrainingSignal, () => void (control.paused = true));
  setHandler(resumeTrainingSignal, () => void (control.paused = false));
  setHandler(setCheckpointIntervalSignal, (steps: number) => {
    if (Number.isInteger(steps) && steps > 0) control.checkpoint_every_steps = steps;
    else log.warn('ignoring a checkpoint interval that is not a positive integer', { steps });
  });

  /** The trainer backed off in its own process: later segments start from what worked. */
  async function adoptBackoff(b: NonNullable<TrainSegmentResult['backoff']>): Promise<void> {
    const t = state.train;
    if (b.micro_batch === t.per_device_train_batch_size && b.gradient_checkpointing === t.gradient_checkpointing) return;
    // A split that does not keep the effective batch exact could not resume this run's checkpoints.
    const effective = t.per_device_train_batch_size === 'auto' ? t.total_train_batch_size : t.per_device_train_batch_size * t.gradient_accumulation_steps;
    if (b.micro_batch * b.grad_accum !== effective) return;
    const change =
      `trainer backed off in process: micro-batch ${t.per_device_train_batch_size} -> ${b.micro_batch}, ` +
      `gradient accumulation ${t.gradient_accumulation_steps} -> ${b.grad_accum}` +
      (b.gradient_checkpointing && !t.gradient_checkpointing ? ', gradient checkpointing on' : '');
    state.train = { ...t, per_device_train_batch_size: b.micro_batch, gradient_accumulation_steps: b.grad_accum, gradient_checkpointing: b.gradient_checkpointing };
    state.replans.push(change);
    await notifyParent({ stageId, change });
  }

  const acts = proxyActivities<GpuActivities>(input.activity);
  for (let segmentsThisRun = 0; ; ) {
    // Pause between segments (a running segment pauses between steps through its control file).
    await condition(() => !control.paused);
    try {
      const r = await acts.trainModel({
        ...input.train,
        train: { ...state.train, checkpoint_every_steps: control.checkpoint_every_steps },
        segmentSteps: state.train.segment_steps,
        controlWorkflowId: workflowInfo().workflowId,
        control: { ...control },
      });
      addAttempt(attempts, r.attempt, r.interruptions);
      state.segments++;
      segmentsThisRun++;
      state.step = r.step;
      state.totalSteps = r.totalSteps;
      state.checkpointKeys.push(...r.checkpointKeys);
      state.checkpointKey = r.checkpointKey ?? state.checkpointKey;
      if (state.segments === 1) state.resumedFromStep = r.resumedFromStep;
      state.trainSeconds += r.trainSeconds;
      state.metrics = r.metrics;
      if (r.backoff) await adoptBackoff(r.backoff);
      if (r.done) {
        return {
          adapterBucket: r.adapterBucket!,
          adapterPrefix: r.adapterPrefix!,
          ...(r.modelPrefix && { modelPrefix: r.modelPrefix }),
          ...(input.train.objective === 'sft' && { objective: 'sft' as const }),
          finalStep: r.step,
          checkpointKeys: state.checkpointKeys,
          resumedFromStep: state.resumedFromStep,
          metrics: r.metrics,
          trainSeconds: state.trainSeconds,
          replans: state.replans,
          attempts,
          ...(r.stepMetricsKey && { stepMetricsKey: r.stepMetricsKey }),
          ...(r.initAdapter && { initAdapter: r.initAdapter }),
          finalMemorySettings: {
            per_device_train_batch_size: state.train.per_device_train_batch_size,
            gradient_accumulation_steps: state.train.gradient_accumulation_steps,
            gradient_checkpointing: state.train.gradient_checkpointing,
          },
        };
      }
    } catch (err) {
      if (!hasFailureType(err, FailureType.OutOfMemory)) throw err;
      addAttempt(attempts, undefined);
      // The trainer backed off in its own process and still ran out of memory: restart it from
      // the last checkpoint with a smaller footprint and the same effective batch.
      const plan = replanAfterOom(state.train);
      if (!plan) throw ApplicationFailure.nonRetryable(oomGiveUpMessage(stageId, state.replans, state.train), FailureType.OutOfMemory);
      log.warn('out of memory: replanning the train stage', { stage: stageId, change: plan.change });
      state.replans.push(plan.change);
      state.train = plan.next;
      await notifyParent({ stageId, change: plan.change });
    }
    const segmentsPerRun = state.train.segments_per_workflow_run ?? DEFAULT_SEGMENTS_PER_RUN;
    if (segmentsThisRun >= segmentsPerRun || workflowInfo().continueAsNewSuggested) {
      await continueAsNew<typeof dpoTraining>({ ...input, control, carried: state });
    }
  }
}

async function notifyParent(notice: ReplanNotice): Promise<void> {
  const parent = workflowInfo().parent;
  if (!parent) return;
  try {
    await getExternalWorkflowHandle(parent.workflowId, parent.runId).signal(trainingReplannedSignal, notice);
  } catch (err) {
    log.warn('could not tell the pipeline about a replan', { error: String(err) });
  }
}
