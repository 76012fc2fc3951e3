/**
 * The one mapping from how a trainer process ended to a failure typed by what the workflow
 * should do: retry it (crash, preemption), replan it (out of memory) or stop and name the input.
 */
import { ApplicationFailure } from '@temporalio/common';
import { FailureType, nonRetryable, retryable } from '../contracts/errors.js';
import { TrainerExit, type TrainerOutcome } from './trainerProcess.js';

/** The trainer's own words: its typed `error` event, else the end of its stderr. */
export function trainerSaid(outcome: TrainerOutcome): string {
  if (outcome.error) return `${outcome.error.error_type}: ${outcome.error.message}`;
  return outcome.stderrTail.trim().split('\n').slice(-5).join('\n').slice(-800);
}

/** Whether running the same input again could succeed: all but a refused input (an OOM may not recur on another worker). */
export const exitIsRetryable = (outcome: TrainerOutcome): boolean => outcome.exitCode !== TrainerExit.InvalidInput;

/** `who` names the command in the message: "trainer", "reference". */
export function trainerFailure(outcome: TrainerOutcome, who: string): ApplicationFailure {
  const said = trainerSaid(outcome);
  switch (outcome.exitCode) {
    case TrainerExit.Preempted:
      return retryable(`${who} was preempted and saved a checkpoint; resuming elsewhere`, FailureType.Preempted);
    case TrainerExit.OutOfMemory:
      return nonRetryable(`${who} ran out of memory after its own backoff: ${said}`, FailureType.OutOfMemory, outcome.error);
    case TrainerExit.InvalidInput: {
      const type = outcome.error?.error_type === 'ModelLoadError' ? FailureType.ModelLoadError : FailureType.InvalidInput;
      return nonRetryable(`${who} refused its input: ${said}`, type);
    }
    default:
      return retryable(`${who} exited with ${outcome.exitCode ?? `signal ${outcome.signal}`}: ${said}`, FailureType.TrainerCrash);
  }
}
