/**
 * Every name a client, a worker or another workflow uses to reach a workflow: the workflow types,
 * their queries and signals, and the state those queries return. Callers import these
 * definitions; none of them spells a name as a string.
 */
import { defineQuery, defineSignal } from '@temporalio/workflow';
import type { StageAttempts } from './attempts.js';
import type { StageTimeline } from './payloads.js';
import type { TrainingControl } from './progress.js';

/** Workflow type names, as registered by the workflows bundle (workflows/index.ts). */
export const PIPELINE_WORKFLOW = 'dpoPipeline';
export const TRAINING_WORKFLOW = 'dpoTraining';

/** What `status` answers while a pipeline runs (and what `dpo status` prints). */
export interface PipelineStatus {
  runId: string;
  name: string;
  /** The planned DAG: stages in dependency order with what they need. */
  plan: Array<{ id: string; kind: string; needs: string[] }>;
  mermaid: string;
  /** Ids of the stages running now. */
  running: string[];
  /** Training controls in force (signals pauseTraining / resumeTraining / setCheckpointInterval). */
  training?: { paused: boolean; checkpointEverySteps: number | null };
  stages: Record<string, StageTimeline & { summary?: Record<string, number | string> }>;
}

/** What `trainingStatus` answers for one train stage's child workflow. */
export interface TrainingStatus {
  stageId: string;
  step: number;
  totalSteps: number | null;
  segments: number;
  paused: boolean;
  checkpointEverySteps: number;
  checkpointKey: string | null;
  replans: string[];
  /** 'auto' until the trainer has picked it (per_device_train_batch_size: auto). */
  microBatch: number | 'auto';
  gradientAccumulation: number;
  gradientCheckpointing: boolean;
  attempts: StageAttempts;
}

/** Sent by a training child to its pipeline on every out-of-memory replan. */
export interface ReplanNotice {
  stageId: string;
  change: string;
}

// dpoPipeline
export const statusQuery = defineQuery<PipelineStatus>('status');

// dpoTraining (the pipeline accepts the three controls too and forwards them to its children)
export const trainingStatusQuery = defineQuery<TrainingStatus>('trainingStatus');
/** Read by the running train activity between steps (pause, checkpoint interval). */
export const trainingControlQuery = defineQuery<TrainingControl>('trainingControl');
export const pauseTrainingSignal = defineSignal('pauseTraining');
export const resumeTrainingSignal = defineSignal('resumeTraining');
export const setCheckpointIntervalSignal = defineSignal<[number]>('setCheckpointInterval');
export const trainingReplannedSignal = defineSignal<[ReplanNotice]>('trainingReplanned');
