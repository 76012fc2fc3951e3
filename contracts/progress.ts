/**
 * What a running train segment reports and is steered by: its heartbeat details (read by the CLI
 * and by the next attempt), the live controls the training workflow hands it, and the stored
 * per-step curve the report draws.
 */
import type { AttemptMark } from './attempts.js';

/** Training metrics by TRL's names (loss, rewards/accuracies, ...). */
export type TrainMetrics = Record<string, number>;

/**
 * What the train activity heartbeats: enough for progress displays and for the next attempt
 * (where to resume; how the earlier attempts ended, contracts/attempts.ts).
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

/** Live settings the training workflow hands to a running segment (docs/training-and-durability.md). */
export interface TrainingControl {
  paused: boolean;
  checkpoint_every_steps: number;
}

/** One optimizer step's metrics, as the trainer's `step` event reports them. */
export interface StepRecord {
  step: number;
  epoch: number;
  metrics: TrainMetrics;
}
