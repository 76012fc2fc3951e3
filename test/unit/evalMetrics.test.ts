/** Evaluation metrics from shard counts: AMBER's yes/no formulas and exact sums over shards. */
import { describe, expect, it } from 'vitest';
import {
  addAmberCounts,
  addPreferenceCounts,
  amberMetrics,
  countYesNo,
  emptyYesNoCounts,
  preferenceCounts,
  preferenceMetrics,
  yesNoMetrics,
} from '../../contracts/evalMetrics.js';

describe('AMBER-style yes/no metrics ("no" is the positive class)', () => {
  it('counts and scores as AMBER does', () => {
    const c = emptyYesNoCounts();
    // truth no: 3 answered no (tp), 1 answered yes (fn); truth yes: 4 answered yes (tn), 2 answered no (fp)
    for (const [truth, answer, n] of [['no', 'no', 3], ['no', 'yes', 1], ['yes', 'yes', 4], ['yes', 'no', 2]] as const) {
      for (let i = 0; i < n; i++) countYesNo(c, truth, answer);
    }
    expect(c).toEqual({ tp: 3, fn: 1, tn: 4, fp: 2 });
    const m = yesNoMetrics(c);
    expect(m.accuracy).toBeCloseTo(7 / 10);
    expect(m.precision).toBeCloseTo(3 / 5);
    expect(m.recall).toBeCloseTo(3 / 4);
    expect(m.f1).toBeCloseTo((2 * 0.6 * 0.75) / 1.35);
    expect(m.yes_ratio).toBeCloseTo(5 / 10);
  });

  it('a model that always says yes has zero recall and F1, not NaN', () => {
    const c = emptyYesNoCounts();
    countYesNo(c, 'no', 'yes');
    countYesNo(c, 'yes', 'yes');
    expect(yesNoMetrics(c)).toMatchObject({ accuracy: 0.5, precision: 0, recall: 0, f1: 0, yes_ratio: 1 });
  });

  it('sums shards per kind before computing ratios, and reports overall', () => {
    const a = { existence: { tp: 1, fp: 0, tn: 1, fn: 0 } };
    const b = { existence: { tp: 0, fp: 1, tn: 0, fn: 1 }, relation: { tp: 2, fp: 0, tn: 0, fn: 0 } };
    const m = amberMetrics(addAmberCounts(a, b));
    expect(Object.keys(m)).toEqual(['overall', 'existence', 'relation']);
    expect(m.existence!.accuracy).toBe(0.5);
    expect(m.overall!.questions).toBe(6);
    expect(m.overall!.accuracy).toBeCloseTo(4 / 6);
  });
});

describe('preference metrics', () => {
  it('matches the trainer evaluator: the reference itself has zero rewards', () => {
    const policy = { chosen: [-1, -5, -2], rejected: [-2, -4, -2] };
    const reference = { chosen: [-1.5, -4, -3], rejected: [-1.5, -4, -1] };
    const base = preferenceMetrics(preferenceCounts(reference, reference, 0.1));
    expect(base).toMatchObject({ samples: 3, reward_accuracy: 0, reward_margin_mean: 0 });
    const shard1 = preferenceCounts({ chosen: policy.chosen.slice(0, 2), rejected: policy.rejected.slice(0, 2) }, { chosen: reference.chosen.slice(0, 2), rejected: reference.rejected.slice(0, 2) }, 0.1);
    const shard2 = preferenceCounts({ chosen: policy.chosen.slice(2), rejected: policy.rejected.slice(2) }, { chosen: reference.chosen.slice(2), rejected: reference.rejected.slice(2) }, 0.1);
    const trained = preferenceMetrics(addPreferenceCounts(shard1, shard2));
    // chosen > rejected: pair 0 only (pair 2 ties)
    expect(trained.preference_accuracy).toBeCloseTo(1 / 3);
    // rewards chosen 0.05, -0.1, 0.1; rejected -0.05, 0, -0.1 -> margins 0.1, -0.1, 0.2
    expect(trained.reward_accuracy).toBeCloseTo(2 / 3);
    expect(trained.reward_margin_mean).toBeCloseTo(0.2 / 3);
    expect(trained.logp_margin_mean).toBeCloseTo((1 - 1 + 0) / 3);
  });
});
