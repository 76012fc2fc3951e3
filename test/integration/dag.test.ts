/**
 * The DAG on the real stack: independent branches run at the same time; a failing branch stops
 * only what depends on it, the other branch's outputs are stored and reported, and the run fails
 * listing the failed stage. Planning errors start nothing.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { generateDemoDataset } from '../../datagen/demoShapes.js';
import type { PipelineConfigInput } from '../../contracts/config.js';
import { startTestStack, TEST_BUCKET, uniqueId, type TestStack } from '../harness.js';
import { PIPELINE_WORKFLOW, TRAINING_WORKFLOW, statusQuery } from '../../contracts/messages.js';

let stack: TestStack;
let datasetDir: string;

beforeAll(async () => {
  // Two trainer slots: the two train branches can run at the same time on this worker.
  stack = await startTestStack({ gpuSlots: 2 });
  datasetDir = await mkdtemp(join(tmpdir(), 'dpo-dag-'));
  await generateDemoDataset({ outDir: datasetDir, trainRows: 48, testRows: 16, seed: 21 });
});

afterAll(async () => {
  await stack?.stop();
});

function dagConfig(stages: PipelineConfigInput['stages']): PipelineConfigInput {
  return {
    name: 'dag',
    model: { source: inject('modelSource') },
    dataset: { source: datasetDir },
    format: { image_longest_edge: 48 },
    tokenize: { max_length: 128, max_prompt_length: 96 },
    train: { max_steps: 3, per_device_train_batch_size: 8, gradient_accumulation_steps: 1, learning_rate: 0.002, dtype: 'float32', checkpoint_every_steps: 50 },
    evaluate: { batch_size: 16 },
    queues: stack.queues,
    storage: { bucket: TEST_BUCKET },
    stages,
  };
}

const dataStages = [
  { id: 'download', kind: 'download' },
  { id: 'format', kind: 'format', needs: ['download'] },
  { id: 'tokenize', kind: 'tokenize', needs: ['format'] },
  { id: 'shard', kind: 'shard', needs: ['tokenize'] },
];

describe('a DAG with two branches, one failing', () => {
  const runId = uniqueId('dag');
  let failure: unknown;

  beforeAll(async () => {
    failure = await stack.client.workflow
      .execute(PIPELINE_WORKFLOW, {
        taskQueue: stack.queues.cpu,
        workflowId: runId,
        args: [
          dagConfig([
            ...dataStages,
            { id: 'train-ok', kind: 'train', needs: ['shard'], params: { beta: 0.1 } },
            // No module has this name: the trainer refuses its input, the branch fails.
            { id: 'train-bad', kind: 'train', needs: ['shard'], params: { lora: { target_modules: ['no_such_module'] } }, retry: { maximum_attempts: 1 } },
            { id: 'eval-ok', kind: 'evaluate', needs: ['shard', 'train-ok'] },
            { id: 'eval-bad', kind: 'evaluate', needs: ['shard', 'train-bad'] },
            { id: 'report', kind: 'report', needs: ['eval-ok'] },
          ]),
        ],
      })
      .catch((e: unknown) => e);
  });

  it('fails the run naming the failed stage, after the other branch finished', async () => {
    expect(failure).toBeInstanceOf(WorkflowFailedError);
    const status = await stack.client.workflow.getHandle(runId).query(statusQuery);
    const states = Object.fromEntries(Object.entries(status.stages).map(([id, s]) => [id, s.state]));
    expect(states).toEqual({
      download: 'done', format: 'done', tokenize: 'done', shard: 'done',
      'train-ok': 'done', 'train-bad': 'failed', 'eval-ok': 'done', 'eval-bad': 'skipped', report: 'done',
    });
    expect(status.mermaid).toContain('s_train_ok --> s_eval_ok');
  });

  it('stores and reports the surviving branch', async () => {
    const prefix = `runs/${runId}/`;
    const keys = (await stack.deps.storage.list(TEST_BUCKET, prefix)).map((o) => o.key.slice(prefix.length));
    expect(keys).toEqual(expect.arrayContaining(['train-ok/final/adapter/adapter_config.json', 'eval-ok/metrics.json', 'report/report.md']));
    expect(keys.some((k) => k.startsWith('train-bad/final/'))).toBe(false);
    const report = (await stack.deps.storage.getBuffer(TEST_BUCKET, `${prefix}report/report.md`)).toString();
    expect(report).toContain('eval-ok');
    expect(report).toMatch(/\| train-bad \| train \| failed \|/);
  });

  it('ran the two train branches at the same time', async () => {
    const history = await stack.client.workflow.getHandle(runId).fetchHistory();
    const events = history.events ?? [];
    const seconds = (t: { seconds?: unknown; nanos?: number | null } | null | undefined) => Number(t?.seconds ?? 0) + (t?.nanos ?? 0) / 1e9;
    const spans = new Map<string, { start?: number; end?: number }>();
    const scheduled = new Map<number, string>();
    for (const e of events) {
      const id = Number(e.eventId);
      // Each train stage is a dpoTraining child workflow (workflows/training.ts).
      const attrs = e.startChildWorkflowExecutionInitiatedEventAttributes;
      if (attrs?.workflowType?.name === TRAINING_WORKFLOW) {
        const input = JSON.parse(Buffer.from(attrs.input!.payloads![0]!.data!).toString()) as { train: { stageId: string } };
        scheduled.set(id, input.train.stageId);
      }
      const started = e.childWorkflowExecutionStartedEventAttributes;
      if (started && scheduled.has(Number(started.initiatedEventId))) spans.set(scheduled.get(Number(started.initiatedEventId))!, { start: seconds(e.eventTime) });
      const ended = e.childWorkflowExecutionCompletedEventAttributes ?? e.childWorkflowExecutionFailedEventAttributes;
      if (ended && scheduled.has(Number(ended.initiatedEventId))) spans.get(scheduled.get(Number(ended.initiatedEventId))!)!.end = seconds(e.eventTime);
    }
    const ok = spans.get('train-ok')!;
    const bad = spans.get('train-bad')!;
    expect(ok.start).toBeLessThan(bad.end!);
    expect(bad.start).toBeLessThan(ok.end!);
  });
});

describe('planning errors', () => {
  it('fail the run before anything starts, naming the stage', async () => {
    const workflowId = uniqueId('dag-bad-plan');
    const err = await stack.client.workflow
      .execute(PIPELINE_WORKFLOW, {
        taskQueue: stack.queues.cpu,
        workflowId,
        args: [dagConfig([...dataStages, { id: 'train', kind: 'train', needs: ['format'] }, { id: 'loop', kind: 'report', needs: ['loop'] }])],
      })
      .catch((e: unknown) => e);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('InvalidConfig');
    expect(cause.message).toContain('stage "train" (train) needs a stage that produces shards');
    expect(cause.message).toContain('stage "loop": needs itself');
    const history = await stack.client.workflow.getHandle(workflowId).fetchHistory();
    expect(history.events?.filter((e) => e.activityTaskScheduledEventAttributes)).toHaveLength(0);
  });
});
