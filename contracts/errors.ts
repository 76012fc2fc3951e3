/**
 * Failure types, named by what the caller should do: fix the input, replan, or retry. Activities
 * and the io/ helpers they call raise `ApplicationFailure`s with these types (through
 * `nonRetryable` and `retryable` below, so no other module builds failures by hand); retry
 * policies list the non-retryable ones.
 */
import { ApplicationFailure } from '@temporalio/common';

export const FailureType = {
  /** Fix the config; nothing ran. */
  InvalidConfig: 'InvalidConfig',
  /** Fix the dataset (missing column, too many bad rows); nothing stored was changed. */
  InvalidDataset: 'InvalidDataset',
  /** The model folder is missing or unusable. */
  ModelLoadError: 'ModelLoadError',
  /** The trainer rejected its input (config, shard, dtype). */
  InvalidInput: 'InvalidInput',
  /** The trainer ran out of memory after its own backoff; the workflow may replan. */
  OutOfMemory: 'OutOfMemory',
  /** SIGTERM reached the trainer and it checkpointed: retry anywhere, resume from there. */
  Preempted: 'Preempted',
  /** The trainer process died without a typed error (crash, signal): retry anywhere. */
  TrainerCrash: 'TrainerCrash',
  /** A newer attempt holds the stage's fence: this one must stop publishing; Temporal retries it. */
  FencedOut: 'FencedOut',
  /** The trainer's events break the shared schema: the worker and trainer versions disagree. */
  TrainerProtocolError: 'TrainerProtocolError',
  /** Storage or the Hub answered with a transient error: retry. */
  Transient: 'Transient',
} as const;
export type FailureType = (typeof FailureType)[keyof typeof FailureType];

/** Failures no retry can fix: the workflow fails fast (or replans, for OOM). */
export const NON_RETRYABLE_FAILURES: FailureType[] = [
  FailureType.InvalidConfig,
  FailureType.InvalidDataset,
  FailureType.ModelLoadError,
  FailureType.InvalidInput,
  FailureType.OutOfMemory,
  FailureType.TrainerProtocolError,
];

/** A failure no retry can fix, typed by what the user must change. */
export function nonRetryable(message: string, type: FailureType, ...details: unknown[]): ApplicationFailure {
  return ApplicationFailure.nonRetryable(message, type, ...details);
}

/** A failure the activity's retry policy retries (a crash, a preemption, a transient error). */
export function retryable(message: string, type: FailureType = FailureType.Transient): ApplicationFailure {
  return ApplicationFailure.retryable(message, type);
}

/** Messages of an error and of each of its causes, outermost first (Temporal nests failures). */
export function causeMessages(err: unknown): string[] {
  const parts: string[] = [];
  for (let e: unknown = err; e instanceof Error; e = (e as { cause?: unknown }).cause) {
    if (e.message) parts.push(e.message);
  }
  return parts;
}

/** Whether the error, or any cause Temporal wrapped it in, is an ApplicationFailure of `type`. */
export function hasFailureType(err: unknown, type: string): boolean {
  for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) {
    if (e instanceof ApplicationFailure && e.type === type) return true;
  }
  return false;
}
