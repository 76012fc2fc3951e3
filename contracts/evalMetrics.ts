/**
 * Evaluation metrics from per-shard partial counts, so shards score in parallel and the totals are
 * exact sums (no average of averages). Pure code: used by activities, the workflow and the report.
 */

/** Partial sums of one shard's preference pairs for one model (trainer/dpo_trainer/evaluate.py). */
export interface PreferenceCounts {
  pairs: number;
  /** Pairs with log p(chosen) > log p(rejected) under the model. */
  preferred: number;
  /** Pairs whose implicit reward beta * (logp - logp_ref) is higher for chosen. */
  rewardCorrect: number;
  rewardMarginSum: number;
  logpMarginSum: number;
}

/** The trainer evaluator's metric names (CONTRACT.md, eval_result). */
export interface EvalMetrics {
  samples: number;
  preference_accuracy: number;
  reward_accuracy: number;
  reward_margin_mean: number;
  logp_margin_mean: number;
}

export const emptyPreferenceCounts = (): PreferenceCounts => ({ pairs: 0, preferred: 0, rewardCorrect: 0, rewardMarginSum: 0, logpMarginSum: 0 });

export function addPreferenceCounts(a: PreferenceCounts, b: PreferenceCounts): PreferenceCounts {
  return {
    pairs: a.pairs + b.pairs,
    preferred: a.preferred + b.preferred,
    rewardCorrect: a.rewardCorrect + b.rewardCorrect,
    rewardMarginSum: a.rewardMarginSum + b.rewardMarginSum,
    logpMarginSum: a.logpMarginSum + b.logpMarginSum,
  };
}

/**
 * Counts of one model on a batch of pairs, given its and the reference's completion log-probs.
 * For the reference itself (policy === reference) rewards are 0 and no pair is reward-correct,
 * exactly as the trainer's evaluator reports it.
 */
export function preferenceCounts(
  policy: { chosen: number[]; rejected: number[] },
  reference: { chosen: number[]; rejected: number[] },
  beta: number,
): PreferenceCounts {
  const c = emptyPreferenceCounts();
  policy.chosen.forEach((chosen, i) => {
    const rejected = policy.rejected[i]!;
    const chosenReward = beta * (chosen - reference.chosen[i]!);
    const rejectedReward = beta * (rejected - reference.rejected[i]!);
    c.pairs += 1;
    if (chosen > rejected) c.preferred += 1;
    if (chosenReward > rejectedReward) c.rewardCorrect += 1;
    c.rewardMarginSum += chosenReward - rejectedReward;
    c.logpMarginSum += chosen - rejected;
  });
  return c;
}

export function preferenceMetrics(c: PreferenceCounts): EvalMetrics {
  const n = Math.max(c.pairs, 1);
  return {
    samples: c.pairs,
    preference_accuracy: c.preferred / n,
    reward_accuracy: c.rewardCorrect / n,
    reward_margin_mean: c.rewardMarginSum / n,
    logp_margin_mean: c.logpMarginSum / n,
  };
}

/** Confusion counts of yes/no answers with "no" as the positive class, as AMBER computes them. */
export interface YesNoCounts {
  /** truth no, answered no */
  tp: number;
  /** truth yes, answered no */
  fp: number;
  /** truth yes, answered yes */
  tn: number;
  /** truth no, answered yes */
  fn: number;
}

export const emptyYesNoCounts = (): YesNoCounts => ({ tp: 0, fp: 0, tn: 0, fn: 0 });

export function countYesNo(counts: YesNoCounts, truth: 'yes' | 'no', answer: 'yes' | 'no'): void {
  if (truth === 'no') counts[answer === 'no' ? 'tp' : 'fn'] += 1;
  else counts[answer === 'no' ? 'fp' : 'tn'] += 1;
}

export function addYesNoCounts(a: YesNoCounts, b: YesNoCounts): YesNoCounts {
  return { tp: a.tp + b.tp, fp: a.fp + b.fp, tn: a.tn + b.tn, fn: a.fn + b.fn };
}

export interface YesNoMetrics {
  questions: number;
  accuracy: number;
  precision: number;
  recall: number;
  f1: number;
  /** Share of "yes" answers: a model that always agrees scores high here and low on recall. */
  yes_ratio: number;
  /** Share of questions whose truth is "yes": where an unbiased model's yes_ratio lands. */
  truth_yes_ratio: number;
}

export function yesNoMetrics(c: YesNoCounts): YesNoMetrics {
  const n = c.tp + c.fp + c.tn + c.fn;
  const precision = c.tp + c.fp ? c.tp / (c.tp + c.fp) : 0;
  const recall = c.tp + c.fn ? c.tp / (c.tp + c.fn) : 0;
  return {
    questions: n,
    accuracy: n ? (c.tp + c.tn) / n : 0,
    precision,
    recall,
    f1: precision + recall ? (2 * precision * recall) / (precision + recall) : 0,
    yes_ratio: n ? (c.tn + c.fn) / n : 0,
    truth_yes_ratio: n ? (c.tn + c.fp) / n : 0,
  };
}

/** AMBER counts of one model: overall and per question kind. */
export type AmberCounts = Record<string, YesNoCounts>;

export function addAmberCounts(a: AmberCounts, b: AmberCounts): AmberCounts {
  const out: AmberCounts = { ...a };
  for (const [kind, c] of Object.entries(b)) out[kind] = addYesNoCounts(out[kind] ?? emptyYesNoCounts(), c);
  return out;
}

export function amberMetrics(c: AmberCounts): Record<string, YesNoMetrics> {
  const overall = Object.values(c).reduce(addYesNoCounts, emptyYesNoCounts());
  return { overall: yesNoMetrics(overall), ...Object.fromEntries(Object.entries(c).sort().map(([k, v]) => [k, yesNoMetrics(v)])) };
}

/** Counts back from the trainer evaluator's means (its eval_result), so its shards sum like the ONNX engine's. */
export function countsFromMetrics(m: EvalMetrics): PreferenceCounts {
  return {
    pairs: m.samples,
    preferred: Math.round(m.preference_accuracy * m.samples),
    rewardCorrect: Math.round(m.reward_accuracy * m.samples),
    rewardMarginSum: m.reward_margin_mean * m.samples,
    logpMarginSum: m.logp_margin_mean * m.samples,
  };
}

/**
 * AMBER's generative half, per model: greedy descriptions scored against each image's objects.
 * Sums over descriptions, so shards add up exactly.
 */
export interface GenerativeCounts {
  descriptions: number;
  /** Sum over descriptions of (named hallucinated objects / named objects); 0 for a description naming none. */
  chairSum: number;
  /** Sum over descriptions of (named true objects / true objects). */
  coverSum: number;
  /** Descriptions that name at least one hallucinated object. */
  hallucinated: number;
}

/** AMBER's generative metric names: CHAIR, Cover, Hal. */
export interface GenerativeMetrics {
  descriptions: number;
  /** Mean share of a description's named objects that are not in the image (lower is better). */
  chair: number;
  /** Mean share of the image's objects that the description names (guards against saying nothing). */
  cover: number;
  /** Share of descriptions that name at least one object that is not there. */
  hal: number;
}

export const emptyGenerativeCounts = (): GenerativeCounts => ({ descriptions: 0, chairSum: 0, coverSum: 0, hallucinated: 0 });

/** Object words a text names, as whole words (singular or plural), out of `vocabulary`. */
export function mentionedObjects(text: string, vocabulary: readonly string[]): Set<string> {
  const words = new Set(text.toLowerCase().match(/[a-z]+/g) ?? []);
  return new Set(vocabulary.filter((o) => words.has(o.toLowerCase()) || words.has(`${o.toLowerCase()}s`)));
}

/** One description's counts: `truth` are the objects in the image, `hallu` those it could wrongly name. */
export function describeCounts(text: string, truth: readonly string[], hallu: readonly string[]): GenerativeCounts {
  const named = mentionedObjects(text, [...truth, ...hallu]);
  const wrong = [...named].filter((o) => hallu.includes(o)).length;
  const right = [...named].filter((o) => truth.includes(o)).length;
  return { descriptions: 1, chairSum: named.size ? wrong / named.size : 0, coverSum: truth.length ? right / truth.length : 0, hallucinated: wrong ? 1 : 0 };
}

export function addGenerativeCounts(a: GenerativeCounts, b: GenerativeCounts): GenerativeCounts {
  return { descriptions: a.descriptions + b.descriptions, chairSum: a.chairSum + b.chairSum, coverSum: a.coverSum + b.coverSum, hallucinated: a.hallucinated + b.hallucinated };
}

export function generativeMetrics(c: GenerativeCounts): GenerativeMetrics {
  const n = Math.max(c.descriptions, 1);
  return { descriptions: c.descriptions, chair: c.chairSum / n, cover: c.coverSum / n, hal: c.hallucinated / n };
}

/** Greedy (generated) answers to the yes/no questions: correct when the answer opens with the truth. */
export interface ShortAnswerCounts {
  questions: number;
  correct: number;
}

export interface ShortAnswerMetrics {
  questions: number;
  /** Share of greedy answers whose first word is the right "yes" or "no". */
  short_answer_accuracy: number;
}

export const emptyShortAnswerCounts = (): ShortAnswerCounts => ({ questions: 0, correct: 0 });

/** "yes" or "no" when a generated answer opens with it ("Yes, there is a circle."), else null. */
export function shortAnswerOf(text: string): 'yes' | 'no' | null {
  const first = /^\W*(yes|no)\b/i.exec(text)?.[1]?.toLowerCase();
  return first === 'yes' || first === 'no' ? first : null;
}

export function addShortAnswerCounts(a: ShortAnswerCounts, b: ShortAnswerCounts): ShortAnswerCounts {
  return { questions: a.questions + b.questions, correct: a.correct + b.correct };
}

export function shortAnswerMetrics(c: ShortAnswerCounts): ShortAnswerMetrics {
  return { questions: c.questions, short_answer_accuracy: c.questions ? c.correct / c.questions : 0 };
}
