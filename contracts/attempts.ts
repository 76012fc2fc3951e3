/**
 * Attempts, retries, preemptions and lost workers of a stage, for its line in the run's timeline
 * (status query, report). Pure: used by activities, by the workflow bundle and by the report.
 *
 * A failed attempt cannot return anything, so the counts come from what succeeds after it:
 * - every activity returns the attempt that produced its result (`attempt`, Temporal's
 *   info.attempt: 1 = first try; activities/index.ts adds it to object results, a list result --
 *   generateExamples -- counts as a first try); retries = attempts - activities, summed over
 *   every activity of the stage (plan, chunks, finish of a fan-out stage);
 * - a training segment's attempt heartbeats an `AttemptMark` (its own attempt number, what its
 *   earlier attempts were, and -- just before it throws -- why it stops); the next attempt reads
 *   the last mark (info.heartbeatDetails) and tells a preemption (the worker drained on SIGTERM
 *   and the trainer checkpointed) from a lost worker (no mark of why: killed, host gone, timed out).
 */

/** How the earlier attempts of one training segment ended. */
export interface Interruptions {
  /** Worker shutdown (SIGTERM drain): the trainer checkpointed and the attempt failed `Preempted`. */
  preempted: number;
  /** The attempt vanished without saying why: worker killed (-9), host lost, heartbeat timeout. */
  lost: number;
  /** The attempt failed and said so (trainer crash, storage outage): an ordinary retry. */
  failed: number;
}

export type StopReason = 'preempted' | 'failed';

/** What a training attempt puts in its heartbeat details, for the attempt after it. */
export interface AttemptMark {
  attempt: number;
  /** How attempts 1 .. attempt-1 of this activity ended. */
  prior: Interruptions;
  /** Set just before the attempt throws. */
  stopping?: StopReason;
}

/** Per stage: attempts of its activities in all (fan-out stages: summed over every chunk). */
export interface StageAttempts {
  /** Activities the stage ran to a result (a fan-out stage runs several; training one per segment). */
  activities: number;
  /** Their attempts in all. */
  attempts: number;
  /** attempts - activities: the failed attempts Temporal retried. */
  retries: number;
  /** Train stages: retries after a worker shutdown (SIGTERM drain, emergency checkpoint). */
  preemptions?: number;
  /** Train stages: retries after a worker vanished (kill -9, host lost) or an attempt timed out. */
  workerLosses?: number;
}

export const NO_INTERRUPTIONS: Interruptions = { preempted: 0, lost: 0, failed: 0 };

function isMark(value: unknown): value is AttemptMark {
  const v = value as Partial<AttemptMark> | null | undefined;
  return !!v && typeof v.attempt === 'number' && !!v.prior && typeof v.prior.preempted === 'number';
}

/**
 * How attempts 1 .. attempt-1 ended, from the last heartbeat details any of them recorded.
 * Attempts after the one that wrote the mark never heartbeated: they were lost too.
 */
export function countInterruptions(attempt: number, lastDetails: unknown): Interruptions {
  if (attempt <= 1) return { ...NO_INTERRUPTIONS };
  if (!isMark(lastDetails) || lastDetails.attempt >= attempt) return { ...NO_INTERRUPTIONS, lost: attempt - 1 };
  const counts = { ...lastDetails.prior };
  if (lastDetails.stopping === 'preempted') counts.preempted++;
  else if (lastDetails.stopping === 'failed') counts.failed++;
  else counts.lost++;
  counts.lost += attempt - 1 - lastDetails.attempt;
  return counts;
}

export function emptyAttempts(train = false): StageAttempts {
  return { activities: 0, attempts: 0, retries: 0, ...(train && { preemptions: 0, workerLosses: 0 }) };
}

/**
 * Adds one activity's result to `tally` (a stage's timeline line counts in place; missing counts
 * are zero). `attempt` is unknown for an activity that failed for good (the workflow caught it,
 * e.g. an out-of-memory replan): it counts as one attempt.
 */
export function addAttempt(tally: Partial<StageAttempts>, attempt: number | undefined, interruptions?: Interruptions): void {
  const n = typeof attempt === 'number' && attempt >= 1 ? attempt : 1;
  tally.activities = (tally.activities ?? 0) + 1;
  tally.attempts = (tally.attempts ?? 0) + n;
  tally.retries = tally.attempts - tally.activities;
  if (interruptions) {
    tally.preemptions = (tally.preemptions ?? 0) + interruptions.preempted;
    tally.workerLosses = (tally.workerLosses ?? 0) + interruptions.lost;
  }
}

/**
 * The timeline's cells for one stage: retries (with why, when known) and preemptions. Empty for a
 * stage that ran no activity (pending, skipped, an external adapter).
 */
export function attemptCells(t: Partial<StageAttempts>): { retries: string; preemptions: string } {
  if (!t.activities) return { retries: '', preemptions: '' };
  const retries = t.retries ?? 0;
  const preempted = t.preemptions ?? 0;
  const lost = t.workerLosses ?? 0;
  const other = retries - preempted - lost;
  const why = [
    preempted ? `${preempted} preempted` : '',
    lost ? `${lost} worker${lost > 1 ? 's' : ''} lost` : '',
    other > 0 && (preempted || lost) ? `${other} failed` : '',
  ].filter(Boolean);
  return {
    retries: `${retries}${why.length ? ` (${why.join(', ')})` : ''}`,
    preemptions: t.preemptions === undefined ? '' : String(preempted),
  };
}
