/**
 * The hint under a failed run: `dpo resume` only where it can help. The failures are built the way
 * the client hands them over (WorkflowFailedError -> child workflow / activity -> application).
 */
import { ActivityFailure, ApplicationFailure, CancelledFailure, ChildWorkflowFailure, TerminatedFailure, WorkflowFailedError } from '@temporalio/client';
import { RetryState } from '@temporalio/common';
import { describe, expect, it } from 'vitest';
import { FailureType } from '../../contracts/errors.js';
import { failureHint, resumeCanHelp } from '../../cli/runPipeline.js';

const runFailed = (cause: Error) => new WorkflowFailedError('Workflow execution failed', cause, RetryState.NON_RETRYABLE_FAILURE);
const activity = (type: string, cause: Error, retry: RetryState = RetryState.MAXIMUM_ATTEMPTS_REACHED) =>
  new ActivityFailure('Activity task failed', type, '1', retry, 'worker', cause);
const inTraining = (cause: Error) =>
  new ChildWorkflowFailure('default', { workflowId: 'run/train', runId: 'r' }, 'dpoTraining', RetryState.NON_RETRYABLE_FAILURE, cause);
const transient = () => ApplicationFailure.retryable('connection reset', 'Error');
const input = (type: string) => ApplicationFailure.nonRetryable(`bad ${type}`, type);

describe('failure hint', () => {
  it('offers no resume for config, dataset, model and download failures', () => {
    const noResume = {
      'the config (workflow)': runFailed(input(FailureType.InvalidConfig)),
      'a missing dataset column': runFailed(activity('downloadDataset', input(FailureType.InvalidDataset), RetryState.NON_RETRYABLE_FAILURE)),
      'a Hub repo that does not exist': runFailed(activity('downloadDataset', input(FailureType.InvalidConfig), RetryState.NON_RETRYABLE_FAILURE)),
      'a download out of retries': runFailed(activity('downloadDataset', transient())),
      'a format chunk out of retries': runFailed(activity('formatChunk', transient())),
      'recording the run (before any stage)': runFailed(activity('recordRun', transient())),
      'a model that does not load in training': runFailed(inTraining(activity('trainModel', input(FailureType.ModelLoadError), RetryState.NON_RETRYABLE_FAILURE))),
      'a trainer that rejects its input': runFailed(inTraining(activity('trainModel', input(FailureType.InvalidInput), RetryState.NON_RETRYABLE_FAILURE))),
      'not a run failure at all': new Error('connection lost'),
    };
    for (const [what, err] of Object.entries(noResume)) expect(resumeCanHelp(err), what).toBe(false);
    const hint = failureHint('run-1', noResume['a missing dataset column']);
    expect(hint).toContain('`dpo logs run-1`');
    expect(hint).not.toContain('dpo resume');
  });

  it('offers a resume for failures in or after the reference and train stages, and for cancelled or terminated runs', () => {
    const resume = {
      'a trainer crash out of retries': runFailed(inTraining(activity('trainModel', transient()))),
      'out of memory after every replan': runFailed(inTraining(input(FailureType.OutOfMemory))),
      'the reference pass': runFailed(activity('computeReference', transient())),
      'evaluation': runFailed(activity('scorePreferenceShard', transient())),
      'the report': runFailed(activity('writeReport', transient())),
      'several stages, the first a train stage': runFailed(
        ApplicationFailure.create({ message: '2 stages failed', type: 'StagesFailed', nonRetryable: true, cause: inTraining(activity('trainModel', transient())) }),
      ),
      'a cancelled run': runFailed(new CancelledFailure('Workflow canceled')),
      'a terminated run': runFailed(new TerminatedFailure('Workflow execution terminated')),
    };
    for (const [what, err] of Object.entries(resume)) expect(resumeCanHelp(err), what).toBe(true);
    expect(failureHint('run-1', resume['a trainer crash out of retries'])).toContain('`dpo resume run-1` continues from its checkpoints');
  });
});
