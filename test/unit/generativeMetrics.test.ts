/** AMBER's generative half (CHAIR, Cover, Hal) and greedy short answers, from shard counts. */
import { describe, expect, it } from 'vitest';
import {
  addGenerativeCounts,
  addShortAnswerCounts,
  describeCounts,
  emptyGenerativeCounts,
  generativeMetrics,
  mentionedObjects,
  shortAnswerMetrics,
  shortAnswerOf,
  yesNoMetrics,
} from '../../contracts/evalMetrics.js';
import { amberToParquet, readAmberSuite, amberFromParquet } from '../../io/amberSuite.js';

const truth = ['circle', 'square'];
const hallu = ['triangle', 'dog', 'car'];

describe('CHAIR-style scoring of descriptions', () => {
  it('finds whole object words, singular or plural, and nothing inside other words', () => {
    expect([...mentionedObjects('Two circles and a dog.', ['circle', 'dog', 'car'])].sort()).toEqual(['circle', 'dog']);
    expect(mentionedObjects('A scarlet cart.', ['car'])).toEqual(new Set());
  });

  it('CHAIR is the share of named objects that are absent, Cover the share of true objects named', () => {
    const faithful = describeCounts('A red circle and a blue square.', truth, hallu);
    expect(faithful).toEqual({ descriptions: 1, chairSum: 0, coverSum: 1, hallucinated: 0 });
    const hallucinating = describeCounts('A red circle and a dog and a car.', truth, hallu);
    expect(hallucinating.chairSum).toBeCloseTo(2 / 3);
    expect(hallucinating.coverSum).toBeCloseTo(1 / 2);
    expect(hallucinating.hallucinated).toBe(1);
    // Naming nothing is not a hallucination, but covers nothing either.
    expect(describeCounts('Purple.', truth, hallu)).toEqual({ descriptions: 1, chairSum: 0, coverSum: 0, hallucinated: 0 });
  });

  it('sums shards before averaging', () => {
    const a = describeCounts('A circle and a dog.', truth, hallu);
    const b = addGenerativeCounts(describeCounts('A square.', truth, hallu), describeCounts('A triangle.', truth, hallu));
    const m = generativeMetrics(addGenerativeCounts(addGenerativeCounts(emptyGenerativeCounts(), a), b));
    expect(m.descriptions).toBe(3);
    expect(m.chair).toBeCloseTo((1 / 2 + 0 + 1) / 3);
    expect(m.hal).toBeCloseTo(2 / 3);
    expect(generativeMetrics(emptyGenerativeCounts())).toEqual({ descriptions: 0, chair: 0, cover: 0, hal: 0 });
  });
});

describe('greedy short answers', () => {
  it('reads the opening yes or no of a generated answer', () => {
    expect(shortAnswerOf('Yes, there is a circle.')).toBe('yes');
    expect(shortAnswerOf(' no, the square is red.')).toBe('no');
    expect(shortAnswerOf('Nothing here.')).toBeNull();
    expect(shortAnswerOf('A red circle.')).toBeNull();
  });

  it('accuracy over summed counts', () => {
    const m = shortAnswerMetrics(addShortAnswerCounts({ questions: 3, correct: 1 }, { questions: 1, correct: 1 }));
    expect(m).toEqual({ questions: 4, short_answer_accuracy: 0.5 });
  });

  it('the yes/no metrics carry the truth\'s yes share, where an unbiased yes ratio lands', () => {
    expect(yesNoMetrics({ tp: 3, fp: 1, tn: 4, fn: 2 }).truth_yes_ratio).toBeCloseTo(5 / 10);
  });
});

describe('the suite file with its generative half', () => {
  const image = { bytes: new Uint8Array([1, 2, 3]), path: 'x.jpg' };
  it('round-trips questions and description prompts; the yes/no reader sees the questions only', () => {
    const bytes = amberToParquet({
      questions: [{ id: 'q0', image, question: 'Is there a dog in the image?', answer: 'no', kind: 'existence' }],
      descriptions: [{ id: 'd0', image, question: 'Describe the image.', truthObjects: truth, halluObjects: hallu }],
    });
    const suite = readAmberSuite(bytes, 'suite.parquet');
    expect(suite.questions.map((q) => [q.id, q.answer, q.kind])).toEqual([['q0', 'no', 'existence']]);
    expect(suite.descriptions.map((d) => [d.id, d.truthObjects, d.halluObjects])).toEqual([['d0', truth, hallu]]);
    expect(amberFromParquet(bytes, 'suite.parquet').map((q) => q.id)).toEqual(['q0']);
  });

  it('names a generative row without objects to look for', () => {
    const bytes = amberToParquet({ questions: [], descriptions: [{ id: 'd1', image, question: 'Describe the image.', truthObjects: [], halluObjects: [] }] });
    expect(() => readAmberSuite(bytes, 'suite.parquet')).toThrow(/suite.parquet row 0 \(id d1\): a generative row needs truth_objects or hallu_objects/);
  });
});
