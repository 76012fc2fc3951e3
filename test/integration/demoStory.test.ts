/**
 * The demo's story on the real stack, reduced: SFT on captions that hallucinate (a separate SFT
 * dataset, its own data chain), DPO from the SFT model on faithful-vs-hallucinated pairs, evaluate
 * on held-out pairs and the AMBER-style suite (yes/no and CHAIR-scored descriptions), report. Fixed
 * seed; asserts the directions the demo promises (never a value): DPO prefers the faithful answers
 * more often, answers the yes/no questions better with a "Yes" ratio closer to the truth's,
 * hallucinates less in its greedy descriptions, and gets more greedy short answers right.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { writeAmberSuite } from '../../datagen/amber.js';
import { generateStoryDatasets } from '../../datagen/demoStory.js';
import type { PipelineConfigInput } from '../../contracts/config.js';
import type { PipelineResult } from '../../contracts/payloads.js';
import { PIPELINE_WORKFLOW } from '../../contracts/messages.js';
import { startTestStack, TEST_BUCKET, uniqueId, type TestStack } from '../harness.js';

/** configs/demo.yaml's recipe on less data and fewer steps. */
const STORY_TEST = {
  seed: 7,
  sftRows: 1500,
  trainPairs: 800,
  testPairs: 120,
  amberQuestions: 90,
  amberDescriptions: 48,
  config: (at: { model: string; pairs: string; sft: string; suite: string }): Omit<PipelineConfigInput, 'queues' | 'storage'> => ({
    name: 'demo-story-test',
    model: { source: at.model },
    dataset: { source: at.pairs },
    format: { image_longest_edge: 48 },
    tokenize: { max_length: 128, max_prompt_length: 96 },
    train: {
      epochs: 2,
      per_device_train_batch_size: 16,
      gradient_accumulation_steps: 1,
      learning_rate: 0.001,
      beta: 0.1,
      loss_type: ['sigmoid', 'sft'],
      lora: { r: 16, alpha: 32, dropout: 0, target_modules: 'all-linear' },
      dtype: 'float32',
      checkpoint_every_steps: 1000,
      seed: 42,
    },
    evaluate: { batch_size: 32, amber_suite: at.suite, generations: 0 },
    stages: [
      { id: 'download-sft', kind: 'download', params: { dataset: { source: at.sft } } },
      { id: 'format-sft', kind: 'format', needs: ['download-sft'] },
      { id: 'tokenize-sft', kind: 'tokenize', needs: ['format-sft'] },
      { id: 'shard-sft', kind: 'shard', needs: ['tokenize-sft'] },
      { id: 'sft', kind: 'sft', needs: ['shard-sft'], params: { learning_rate: 0.002, epochs: 3, lora: { r: 32, alpha: 64, dropout: 0, target_modules: 'all-linear' } } },
      { id: 'download', kind: 'download' },
      { id: 'format', kind: 'format', needs: ['download'] },
      { id: 'tokenize', kind: 'tokenize', needs: ['format'] },
      { id: 'shard', kind: 'shard', needs: ['tokenize'] },
      { id: 'train', kind: 'train', needs: ['shard', 'sft'] },
      { id: 'evaluate', kind: 'evaluate', needs: ['shard', 'train'] },
      { id: 'report', kind: 'report', needs: ['evaluate'] },
    ],
  }),
};

let stack: TestStack;
let dir: string;

beforeAll(async () => {
  stack = await startTestStack();
  dir = await mkdtemp(join(tmpdir(), 'dpo-story-'));
  await generateStoryDatasets({ outDir: dir, sftRows: STORY_TEST.sftRows, sftTestRows: 16, trainPairs: STORY_TEST.trainPairs, testPairs: STORY_TEST.testPairs, seed: STORY_TEST.seed });
  await writeAmberSuite(join(dir, 'dpo'), STORY_TEST.amberQuestions, STORY_TEST.seed + 2_000_003, STORY_TEST.amberDescriptions);
});

afterAll(async () => {
  await stack?.stop();
});

describe('the demo story, reduced: sft -> DPO -> evaluate -> report', () => {
  let result: PipelineResult;

  beforeAll(async () => {
    const config = STORY_TEST.config({ model: inject('modelSource'), pairs: join(dir, 'dpo'), sft: join(dir, 'sft'), suite: join(dir, 'dpo', 'amber') });
    result = await stack.client.workflow.execute(PIPELINE_WORKFLOW, {
      taskQueue: stack.queues.cpu,
      workflowId: uniqueId('story'),
      args: [{ ...config, queues: stack.queues, storage: { bucket: TEST_BUCKET } } satisfies PipelineConfigInput],
    });
  });

  it('runs every stage, the SFT chain on its own dataset', () => {
    expect(result.timeline.every((t) => t.state === 'done')).toBe(true);
    expect(result.timeline.map((t) => t.kind)).toEqual(expect.arrayContaining(['sft', 'train', 'evaluate', 'report']));
  });

  it('DPO prefers the faithful answers more often than the SFT model does', () => {
    const e = result.evaluations.evaluate!;
    expect(e.trained.preference_accuracy).toBeGreaterThan(e.base.preference_accuracy);
  });

  it('answers the yes/no questions better, with a "Yes" ratio closer to the truth', () => {
    const { base, trained } = result.evaluations.evaluate!.amber!;
    expect(trained.overall!.accuracy).toBeGreaterThan(base.overall!.accuracy);
    expect(trained.overall!.f1).toBeGreaterThan(base.overall!.f1);
    const truth = base.overall!.truth_yes_ratio;
    expect(Math.abs(trained.overall!.yes_ratio - truth)).toBeLessThan(Math.abs(base.overall!.yes_ratio - truth));
  });

  it('hallucinates less in greedy descriptions and gets more greedy short answers right', () => {
    const e = result.evaluations.evaluate!;
    expect(e.generative!.base.descriptions).toBe(STORY_TEST.amberDescriptions);
    expect(e.generative!.trained.chair).toBeLessThan(e.generative!.base.chair);
    expect(e.shortAnswers!.trained.short_answer_accuracy).toBeGreaterThan(e.shortAnswers!.base.short_answer_accuracy);
  });

  it('reports the table first, then examples where the two models answer differently', async () => {
    const markdown = (await stack.deps.storage.getBuffer(TEST_BUCKET, result.reports.report!.markdownKey)).toString();
    const table = markdown.indexOf('## Evaluation: base vs DPO');
    const examples = markdown.indexOf('## Examples: base vs DPO');
    expect(table).toBeGreaterThan(-1);
    expect(examples).toBeGreaterThan(table);
    expect(markdown).toContain('CHAIR of greedy descriptions');
    expect(markdown).toContain('greedy short answers correct');
    const shown = result.evaluations.evaluate!.amberExamples!;
    expect(shown.length).toBeGreaterThan(0);
    for (const x of shown) {
      expect(x.base).not.toBe(x.trained);
      expect(markdown).toContain(x.imageKey!.split('/').pop());
    }
  });
});
