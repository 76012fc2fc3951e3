import { describe, expect, it } from 'vitest';
import { timelineRows } from '../../activities/report/report.js';
import { addAttempt, attemptCells, countInterruptions, emptyAttempts, type AttemptMark } from '../../contracts/attempts.js';
import type { StageTimeline, TrainResult } from '../../contracts/payloads.js';

const none = { preempted: 0, lost: 0, failed: 0 };
const mark = (attempt: number, stopping?: AttemptMark['stopping'], prior = none): AttemptMark => ({ attempt, prior, ...(stopping && { stopping }) });

describe('countInterruptions: how the earlier attempts of a training segment ended', () => {
  it('a first attempt has none, whatever the details', () => {
    expect(countInterruptions(1, undefined)).toEqual(none);
    expect(countInterruptions(1, mark(1, 'preempted'))).toEqual(none);
  });

  it('the previous attempt marked a preemption or a failure before it threw', () => {
    expect(countInterruptions(2, mark(1, 'preempted'))).toEqual({ ...none, preempted: 1 });
    expect(countInterruptions(2, mark(1, 'failed'))).toEqual({ ...none, failed: 1 });
  });

  it('a previous attempt that heartbeated but never said why it stopped lost its worker', () => {
    expect(countInterruptions(2, mark(1))).toEqual({ ...none, lost: 1 });
  });

  it('adds to what the previous attempt knew about the ones before it', () => {
    expect(countInterruptions(4, mark(3, 'preempted', { preempted: 1, lost: 1, failed: 0 }))).toEqual({ preempted: 2, lost: 1, failed: 0 });
  });

  it('attempts after the last mark never heartbeated: lost (a mark of an older attempt is not theirs)', () => {
    // Attempt 1 was preempted; attempt 2 died before its first heartbeat; attempt 3 counts both.
    expect(countInterruptions(3, mark(1, 'preempted'))).toEqual({ preempted: 1, lost: 1, failed: 0 });
    expect(countInterruptions(3, undefined)).toEqual({ ...none, lost: 2 });
    // Details of another shape (an older worker's progress without a mark) say nothing.
    expect(countInterruptions(2, { step: 3, phase: 'training' })).toEqual({ ...none, lost: 1 });
  });
});

describe('addAttempt and attemptCells', () => {
  it('sums attempts over a fan-out stage: retries = attempts - activities', () => {
    const t = emptyAttempts();
    for (const attempt of [1, 3, 1, 2]) addAttempt(t, attempt);
    expect(t).toEqual({ activities: 4, attempts: 7, retries: 3 });
    expect(attemptCells(t)).toEqual({ retries: '3', preemptions: '' });
  });

  it('a train stage says why it retried; an activity that failed for good counts once', () => {
    const t = emptyAttempts(true);
    addAttempt(t, 4, { preempted: 1, lost: 2, failed: 0 });
    addAttempt(t, undefined); // out of memory: the workflow replanned
    addAttempt(t, 2, { preempted: 0, lost: 0, failed: 1 });
    expect(t).toEqual({ activities: 3, attempts: 7, retries: 4, preemptions: 1, workerLosses: 2 });
    expect(attemptCells(t)).toEqual({ retries: '4 (1 preempted, 2 workers lost, 1 failed)', preemptions: '1' });
    expect(attemptCells({ activities: 1, attempts: 2, retries: 1, preemptions: 0, workerLosses: 1 })).toEqual({ retries: '1 (1 worker lost)', preemptions: '0' });
  });

  it('counts in place into a timeline line that has no counts yet', () => {
    const line: { id: string; activities?: number; attempts?: number; retries?: number } = { id: 'format' };
    addAttempt(line, 2);
    addAttempt(line, 1);
    expect(line).toEqual({ id: 'format', activities: 2, attempts: 3, retries: 1 });
  });

  it('a stage that ran no activity has empty cells', () => {
    expect(attemptCells({})).toEqual({ retries: '', preemptions: '' });
  });
});

describe('the report timeline', () => {
  const train: TrainResult = {
    adapterBucket: 'b',
    adapterPrefix: 'p/',
    finalStep: 16,
    checkpointKeys: [],
    resumedFromStep: null,
    metrics: {},
    trainSeconds: 1,
    replans: ['gradient checkpointing on'],
    attempts: { activities: 2, attempts: 4, retries: 2, preemptions: 1, workerLosses: 1 },
  };
  const timeline: StageTimeline[] = [
    { id: 'format', kind: 'format', needs: [], state: 'done', activities: 6, attempts: 7, retries: 1, startedAt: 1000, finishedAt: 3000 },
    { id: 'train', kind: 'train', needs: ['format'], state: 'done', replans: train.replans, ...train.attempts },
    { id: 'evaluate', kind: 'evaluate', needs: ['train'], state: 'skipped' },
  ];

  it('shows retries, preemptions and OOM replans per stage', () => {
    const rows = timelineRows({ timeline, dataStages: {}, trainings: { train } });
    expect(rows.map((r) => [r.stage, r.retries, r.preemptions, r.replans])).toEqual([
      ['format', '1', '', ''],
      ['train', '2 (1 preempted, 1 worker lost)', '1', '1'],
      ['evaluate', '', '', ''],
    ]);
    expect(rows[1]!.notes).toContain('out-of-memory replans: gradient checkpointing on');
  });

  it("takes a train stage's counts from its result when the timeline line lacks them", () => {
    const bare = timeline.map((t) => (t.id === 'train' ? { id: 'train', kind: 'train', needs: [], state: 'done' as const } : t));
    expect(timelineRows({ timeline: bare, dataStages: {}, trainings: { train } })[1]).toMatchObject({ retries: '2 (1 preempted, 1 worker lost)', preemptions: '1', replans: '1' });
  });
});
