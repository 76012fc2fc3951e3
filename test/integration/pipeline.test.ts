/**
 * End to end on the real stack: the Temporal dev server, MinIO, the Python trainer. A small
 * pipeline is started with the real Temporal CLI and must store every stage's output, train,
 * checkpoint, evaluate and report; bad rows are counted by reason; no secret reaches the history.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { FormatManifest } from '../../activities/data/format.js';
import type { ShardManifest } from '../../activities/data/shard.js';
import { storageEnvFromProcess } from '../../io/storage.js';
import { writeAmberSuite } from '../../datagen/amber.js';
import { generateDemoDataset } from '../../datagen/demoShapes.js';
import type { PipelineTrackingInput, ReportResult } from '../../contracts/payloads.js';
import type { PipelineConfigInput } from '../../contracts/config.js';
import type { PipelineResult } from '../../contracts/payloads.js';
import { toolPath } from '../../scripts/localStack.js';
import { startTestStack, TEST_BUCKET, uniqueId, type TestStack } from '../harness.js';
import { PIPELINE_WORKFLOW } from '../../contracts/messages.js';
import { keys } from '../../contracts/keys.js';
import { temporalEnv } from '../../contracts/connection.js';

const exec = promisify(execFile);
let stack: TestStack;
let datasetDir: string;
// The run reports to TensorBoard and to an MLflow server that is down (nothing listens on
// port 9): training must not care, and the token in the worker's environment must not leak.
const MLFLOW_TOKEN = 'mlflow-e2e-token-5f3a9c0d7e1b';

beforeAll(async () => {
  process.env.MLFLOW_TRACKING_URI = 'http://127.0.0.1:9';
  process.env.MLFLOW_TRACKING_TOKEN = MLFLOW_TOKEN;
  stack = await startTestStack();
  datasetDir = await mkdtemp(join(tmpdir(), 'dpo-e2e-'));
  await generateDemoDataset({
    outDir: datasetDir,
    trainRows: 96,
    testRows: 32,
    seed: 11,
    // Three bad rows in the training split, one per drop reason the issue names.
    corrupt: (split, rows) => {
      if (split !== 'train') return rows;
      const [a, b, c] = rows.slice(0, 3).map((r) => structuredClone(r));
      a!.image = { ...a!.image, bytes: a!.image.bytes.slice(0, 40) };
      b!.chosen = '   ';
      c!.rejected = c!.chosen;
      return [...rows, a!, b!, c!];
    },
  });
  await writeAmberSuite(datasetDir, 18, 5);
});

afterAll(async () => {
  await stack?.stop();
});

function smallConfig(overrides: Partial<PipelineConfigInput> = {}): PipelineConfigInput {
  return {
    name: 'e2e',
    model: { source: inject('modelSource') },
    dataset: { source: datasetDir },
    format: { image_longest_edge: 48 },
    tokenize: { max_length: 128, max_prompt_length: 96 },
    shard: { samples_per_shard: 40 },
    train: {
      epochs: 1,
      per_device_train_batch_size: 8,
      gradient_accumulation_steps: 1,
      learning_rate: 0.002,
      dtype: 'float32',
      checkpoint_every_steps: 5,
      seed: 3,
      report_to: ['tensorboard', 'mlflow'],
    },
    evaluate: { batch_size: 16, amber_suite: join(datasetDir, 'amber'), amber_questions_per_shard: 10, generations: 2, max_new_tokens: 4 },
    queues: stack.queues,
    storage: { bucket: TEST_BUCKET },
    ...overrides,
  };
}

describe('dpoPipeline end to end', () => {
  const runId = uniqueId('e2e');
  let result: PipelineResult;

  it('starts from the real Temporal CLI and completes', async () => {
    const inputFile = join(datasetDir, 'run.json');
    await writeFile(inputFile, JSON.stringify(smallConfig()));
    await exec(toolPath('temporal'), [
      'workflow', 'start',
      '--type', 'dpoPipeline',
      '--task-queue', stack.queues.cpu,
      '--workflow-id', runId,
      '--input-file', inputFile,
      '--address', temporalEnv().address,
    ]);
    result = await stack.client.workflow.getHandle(runId).result();
    expect(result.runId).toBe(runId);
    expect(Object.keys(result.dataStages)).toEqual(['download', 'format', 'tokenize', 'shard']);
    expect(result.timeline.map((t) => t.state)).toEqual(Array(7).fill('done'));
  });

  it('counts the bad rows by reason and keeps the rest', async () => {
    const format = result.dataStages.format!;
    const manifest = await stack.deps.storage.getJson<FormatManifest>(TEST_BUCKET, format.manifestKey);
    expect(manifest.splits.train!.inputRows).toBe(99);
    expect(manifest.splits.train!.rows).toBe(96);
    expect(manifest.splits.train!.dropped).toEqual({ image_decode_failed: 1, empty_chosen: 1, chosen_equals_rejected: 1 });
    expect(manifest.splits.test!.rows).toBe(32);
    expect(manifest.splits.test!.dropped).toEqual({});
  });

  it('stores shards whose manifest matches their bytes', async () => {
    const shard = result.dataStages.shard!;
    const manifest = await stack.deps.storage.getJson<ShardManifest>(TEST_BUCKET, shard.manifestKey);
    expect(manifest.splits.train!.rows).toBe(96);
    expect(manifest.splits.train!.shards.map((s) => s.rows)).toEqual([40, 40, 16]);
    for (const entry of manifest.splits.train!.shards) {
      const bytes = await stack.deps.storage.getBuffer(TEST_BUCKET, entry.key);
      expect(createHash('sha256').update(bytes).digest('hex')).toBe(entry.sha256);
    }
  });

  it('trains, checkpoints with manifests and stores a loadable adapter', async () => {
    const train = result.trainings.train!;
    // 96 pairs / batch 8 = 12 optimizer steps; checkpoints every 5.
    expect(train.finalStep).toBe(12);
    expect(train.checkpointKeys.length).toBeGreaterThanOrEqual(2);
    for (const key of train.checkpointKeys) {
      expect(await stack.deps.storage.exists(TEST_BUCKET, `${key}manifest.json`)).toBe(true);
      expect(await stack.deps.storage.exists(TEST_BUCKET, `${key}adapter/adapter_config.json`)).toBe(true);
    }
    const adapterFiles = (await stack.deps.storage.list(TEST_BUCKET, train.adapterPrefix)).map((o) => o.key.split('/').pop());
    expect(adapterFiles).toEqual(expect.arrayContaining(['adapter_config.json', 'adapter_model.safetensors']));
    for (const name of ['loss', 'rewards/chosen', 'rewards/rejected', 'rewards/accuracies', 'rewards/margins']) {
      expect(Number.isFinite(train.metrics[name])).toBe(true);
    }
  });

  it('evaluates base and trained models with onnxruntime-node on the held-out split', async () => {
    const evaluation = result.evaluations.evaluate!;
    const { base, trained } = evaluation;
    expect(evaluation.engine).toBe('onnxruntime-node');
    expect(base.samples).toBe(32);
    expect(trained.samples).toBe(32);
    for (const m of [base, trained]) {
      expect(m.preference_accuracy).toBeGreaterThanOrEqual(0);
      expect(m.preference_accuracy).toBeLessThanOrEqual(1);
    }
    // The base model is its own reference: its implicit rewards are exactly zero.
    expect(base.reward_margin_mean).toBe(0);
    // Training moved the policy away from the reference.
    expect(trained.reward_margin_mean).not.toBe(0);
    const stored = await stack.deps.storage.getJson<{ base: unknown; trained: unknown }>(TEST_BUCKET, evaluation.metricsKey);
    expect(stored.trained).toEqual(trained);
  });

  it('agrees with the pytorch engine on the same shards and adapter, the yes/no suite and generations included', async () => {
    const evaluation = result.evaluations.evaluate!;
    // An evaluation-only run of the trained adapter (the data stages are cached), scored by the
    // trainer's PyTorch evaluator instead of onnxruntime-node.
    const torchRun: PipelineResult = await stack.client.workflow.execute(PIPELINE_WORKFLOW, {
      taskQueue: stack.queues.cpu,
      workflowId: uniqueId('e2e-torch'),
      args: [
        smallConfig({
          stages: [
            { id: 'download', kind: 'download' },
            { id: 'format', kind: 'format', needs: ['download'] },
            { id: 'tokenize', kind: 'tokenize', needs: ['format'] },
            { id: 'shard', kind: 'shard', needs: ['tokenize'] },
            { id: 'adapter', kind: 'adapter', params: { source: `s3://${TEST_BUCKET}/${result.trainings.train!.adapterPrefix}` } },
            { id: 'evaluate', kind: 'evaluate', needs: ['shard', 'adapter'], params: { engine: 'pytorch' } },
            { id: 'report', kind: 'report', needs: ['evaluate'] },
          ],
        }),
      ],
    });
    const torch = torchRun.evaluations.evaluate!;
    expect(torch.engine).toBe('pytorch');
    expect(torch.onnx).toBeUndefined();
    for (const [ort, ref] of [[evaluation.base, torch.base], [evaluation.trained, torch.trained]] as const) {
      expect(ort.samples).toBe(ref.samples);
      expect(ort.preference_accuracy).toBe(ref.preference_accuracy);
      expect(ort.reward_accuracy).toBe(ref.reward_accuracy);
      expect(ort.reward_margin_mean).toBeCloseTo(ref.reward_margin_mean, 4);
      expect(ort.logp_margin_mean).toBeCloseTo(ref.logp_margin_mean, 3);
    }
    // The yes/no suite (p("Yes") vs p("No"), short answers, descriptions) and the greedy
    // generations: the same answers from PyTorch as from the ONNX graphs, counted by the same code.
    expect(torch.notComputed).toBeUndefined();
    expect(torch.amber).toEqual(evaluation.amber);
    expect(torch.shortAnswers).toEqual(evaluation.shortAnswers);
    expect(torch.generative).toEqual(evaluation.generative);
    const answers = (g: typeof evaluation.generations) => (g ?? []).map(({ sampleId, question, chosen, base, trained }) => ({ sampleId, question, chosen, base, trained }));
    expect(torch.generations).toHaveLength(2);
    expect(answers(torch.generations)).toEqual(answers(evaluation.generations));
    const line = torchRun.timeline.find((t) => t.id === 'evaluate') as { summary?: Record<string, number | string> };
    expect(line.summary).toMatchObject({ engine: 'pytorch', base_amber_f1: evaluation.amber!.base.overall!.f1 });
    expect(line.summary).not.toHaveProperty('not_computed');
    const markdown = (await stack.deps.storage.getBuffer(TEST_BUCKET, torchRun.reports.report!.markdownKey)).toString();
    expect(markdown).toContain('evaluated with PyTorch (the trainer evaluator, on CPU workers): stage "evaluate" params.engine is pytorch');
    expect(markdown).not.toContain('not computed by');
  });

  it('scores the AMBER-style yes/no suite, overall and per question kind', () => {
    const amber = result.evaluations.evaluate!.amber!;
    for (const side of [amber.base, amber.trained]) {
      expect(Object.keys(side).sort()).toEqual(['attribute', 'existence', 'overall', 'relation']);
      expect(side.overall!.questions).toBe(18);
      expect(side.existence!.questions + side.attribute!.questions + side.relation!.questions).toBe(18);
      for (const m of Object.values(side)) for (const v of [m.accuracy, m.precision, m.recall, m.f1]) expect(v).toBeGreaterThanOrEqual(0);
    }
  });

  it('publishes a final report: Markdown, HTML, learning curves, timeline, manifest last', async () => {
    const report: ReportResult = result.reports.report!;
    const get = async (key: string) => (await stack.deps.storage.getBuffer(TEST_BUCKET, key)).toString();
    const markdown = await get(report.markdownKey);
    expect(markdown).toContain('preference accuracy (held-out)');
    expect(markdown).toContain('AMBER overall F1');
    expect(markdown).toMatch(/\| relation \| \d+ \| /);
    expect(markdown).toContain('Greedy answers, base vs DPO');
    expect(markdown).toContain(result.trainings.train!.adapterPrefix);
    expect(markdown).toContain('```mermaid');
    expect(markdown).toMatch(/\| evaluate \| evaluate \| done \|/);
    const html = await get(report.htmlKey!);
    expect(html).toContain('<table>');
    expect(html).toContain('data:image/jpeg;base64,');
    const manifest = await stack.deps.storage.getJson<{ files: Array<{ key: string }> }>(TEST_BUCKET, report.manifestKey!);
    const charts = manifest.files.map((f) => f.key).filter((k) => k.endsWith('.png'));
    expect(charts.map((k) => k.split('/').pop())).toEqual(expect.arrayContaining(['train-loss.png', 'train-rewards-accuracies.png', 'train-rewards-margins.png']));
    const png = await stack.deps.storage.getBuffer(TEST_BUCKET, charts[0]!);
    expect(png.subarray(1, 4).toString()).toBe('PNG');
    for (const chart of charts) expect(markdown).toContain(chart.split('/').pop());
    expect(result.evaluations.evaluate!.generations).toHaveLength(2);
  });

  it('shows every stage activity in `temporal workflow show`, and no secret in the history', async () => {
    const show = async (id: string) =>
      (await exec(toolPath('temporal'), ['workflow', 'show', '--workflow-id', id, '--address', temporalEnv().address, '--output', 'json'])).stdout;
    // Training runs in a child workflow (workflows/training.ts): its segments are trainModel activities.
    const stdout = (await show(runId)) + (await show(`${runId}.train.train`));
    for (const activity of ['downloadDataset', 'formatDataset', 'tokenizeDataset', 'shardDataset', 'dpoTraining', 'trainModel', 'prepareEvaluation', 'scorePreferenceShard', 'scoreAmberShard', 'generateExamples', 'finishEvaluation', 'writeReport', 'trackPipelineRun']) {
      expect(stdout).toContain(activity);
    }
    const history =
      JSON.stringify(await stack.client.workflow.getHandle(runId).fetchHistory()) +
      JSON.stringify(await stack.client.workflow.getHandle(`${runId}.train.train`).fetchHistory());
    const { secretKey, accessKey } = storageEnvFromProcess();
    expect(history).not.toContain(secretKey);
    expect(history).not.toContain(Buffer.from(secretKey).toString('base64'));
    expect(stdout).not.toContain(secretKey);
    expect(history).not.toContain(accessKey);
    // Tracking: the token stays in the worker; the down MLflow server is counted in the train
    // segment's result, and the TensorBoard event files are stored with the stage.
    const payloads = await payloadTexts([runId, `${runId}.train.train`]);
    expect([history, stdout, ...payloads].join('\n')).not.toContain(MLFLOW_TOKEN);
    const parsed = payloads.map((p) => {
      try {
        return JSON.parse(p) as { tracking?: { failures: Record<string, number> } } | null;
      } catch {
        return null; // a payload that is not JSON (binary/null)
      }
    });
    const summaries = parsed.flatMap((r) => (r?.tracking ? [r.tracking] : []));
    expect(summaries.length).toBeGreaterThan(0);
    for (const tracking of summaries) {
      expect(tracking.failures.tensorboard).toBe(0);
      expect(tracking.failures.mlflow).toBeGreaterThan(0);
    }
    expect((await stack.deps.storage.list(TEST_BUCKET, keys.tensorboardPrefix(runId, 'train'))).length).toBeGreaterThan(0);
    // Links both ways: the stage's result and its report say where its tracker runs are (the
    // down MLflow server's run never existed, so it has no page to link).
    const events = `s3://${TEST_BUCKET}/${keys.tensorboardPrefix(runId, 'train')}`;
    expect(result.trainings.train!.tracking!.links).toEqual({ tensorboard: events });
    expect((await stack.client.workflow.getHandle(runId).describe()).memo?.trackerLinks).toEqual({ train: { tensorboard: events } });
    const markdown = (await stack.deps.storage.getBuffer(TEST_BUCKET, result.reports.report!.markdownKey)).toString();
    expect(markdown).toMatch(new RegExp(`^- experiment tracking: tensorboard: ${escapeRegExp(events)} \\(\`dpo tensorboard ${runId}\`\\); mlflow: no run, \\d+ failed calls?$`, 'm'));
    // The report sent the evaluation too: event files beside the train stage's, MLflow counted.
    expect(result.reports.report!.tracking?.failures).toMatchObject({ tensorboard: 0, mlflow: expect.any(Number) });
    expect(result.reports.report!.tracking!.failures.mlflow).toBeGreaterThan(0);
    expect((await stack.deps.storage.list(TEST_BUCKET, keys.tensorboardPrefix(runId, 'evaluate'))).length).toBeGreaterThan(0);
  });

  it('reuses every data stage when the same inputs run again', async () => {
    const again: PipelineResult = await stack.client.workflow.execute(PIPELINE_WORKFLOW, {
      taskQueue: stack.queues.cpu,
      workflowId: uniqueId('e2e-again'),
      args: [smallConfig({ train: { ...smallConfig().train, max_steps: 2, checkpoint_every_steps: 50 } })],
    });
    expect(Object.values(again.dataStages).map((s) => s.cached)).toEqual([true, true, true, true]);
    expect(Object.values(again.dataStages).map((s) => s.hash)).toEqual(Object.values(result.dataStages).map((s) => s.hash));
    expect(again.trainings.train!.finalStep).toBe(2);
    // The base model's ONNX export is a content-addressed stage output: exported once.
    expect(result.evaluations.evaluate!.baseExportCached).toBeTypeOf('boolean');
    expect(again.evaluations.evaluate!.baseExportCached).toBe(true);
  });
});

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('bad input', () => {
  it('refuses an invalid config before any stage runs, listing every problem', async () => {
    const workflowId = uniqueId('bad-config');
    const bad = { ...smallConfig(), name: '../escape', train: { beta: -1, loss_type: 'dpo' }, surprise: true };
    const err = await stack.client.workflow
      .execute(PIPELINE_WORKFLOW, { taskQueue: stack.queues.cpu, workflowId, args: [bad] })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause;
    expect(cause).toBeInstanceOf(ApplicationFailure);
    expect((cause as ApplicationFailure).type).toBe('InvalidConfig');
    const message = (cause as ApplicationFailure).message;
    expect(message).toContain('4 problems');
    for (const path of ['name:', 'train.beta:', 'train.loss_type:', '(root): unknown key "surprise"']) expect(message).toContain(path);
    const history = await stack.client.workflow.getHandle(workflowId).fetchHistory();
    const scheduled = history.events?.filter((e) => e.activityTaskScheduledEventAttributes) ?? [];
    expect(scheduled).toHaveLength(0);
  });

  it('fails with ModelLoadError naming the stage and the model when the adapter cannot be exported', async () => {
    // An "adapter" whose config names a base it does not fit: PEFT refuses it at export time.
    const prefix = `${uniqueId('broken-adapter')}/adapter/`;
    await stack.deps.storage.putBuffer(TEST_BUCKET, `${prefix}adapter_config.json`, JSON.stringify({ peft_type: 'LORA', r: 4, target_modules: ['no_such_module'] }));
    await stack.deps.storage.putBuffer(TEST_BUCKET, `${prefix}adapter_model.safetensors`, 'not safetensors');
    const workflowId = uniqueId('bad-adapter');
    const err = await stack.client.workflow
      .execute(PIPELINE_WORKFLOW, {
        taskQueue: stack.queues.cpu,
        workflowId,
        args: [
          smallConfig({
            evaluate: { batch_size: 16, generations: 0 },
            stages: [
              { id: 'download', kind: 'download' },
              { id: 'format', kind: 'format', needs: ['download'] },
              { id: 'tokenize', kind: 'tokenize', needs: ['format'] },
              { id: 'shard', kind: 'shard', needs: ['tokenize'] },
              { id: 'adapter', kind: 'adapter', params: { source: `s3://${TEST_BUCKET}/${prefix}` } },
              { id: 'eval-broken', kind: 'evaluate', needs: ['shard', 'adapter'] },
            ],
          }),
        ],
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    let cause: unknown = (err as WorkflowFailedError).cause;
    while (cause && !(cause instanceof ApplicationFailure)) cause = (cause as { cause?: unknown }).cause;
    expect((cause as ApplicationFailure).type).toBe('ModelLoadError');
    expect((cause as ApplicationFailure).message).toContain('stage "eval-broken": cannot export');
    expect((cause as ApplicationFailure).message).toContain(`with adapter s3://${TEST_BUCKET}/${prefix}`);
    // report_to names mlflow: the pipeline's parent run was opened at the start and ended FAILED.
    const history = await stack.client.workflow.getHandle(workflowId).fetchHistory();
    const tracked = (history.events ?? []).flatMap((e) => {
      const scheduled = e.activityTaskScheduledEventAttributes;
      if (scheduled?.activityType?.name !== 'trackPipelineRun') return [];
      return [(JSON.parse(Buffer.from(scheduled.input!.payloads![0]!.data!).toString()) as PipelineTrackingInput).status];
    });
    expect(tracked).toEqual(['RUNNING', 'FAILED']);
  });

  it('fails with InvalidDataset naming a missing column', async () => {
    const err = await stack.client.workflow
      .execute(PIPELINE_WORKFLOW, {
        taskQueue: stack.queues.cpu,
        workflowId: uniqueId('bad-column'),
        args: [smallConfig({ dataset: { source: datasetDir, columns: { chosen: 'preferred' } } })],
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    let cause: unknown = (err as WorkflowFailedError).cause;
    while (cause && !(cause instanceof ApplicationFailure)) cause = (cause as { cause?: unknown }).cause;
    expect((cause as ApplicationFailure).type).toBe('InvalidDataset');
    expect((cause as ApplicationFailure).message).toContain('no column "preferred" (dataset.columns.chosen)');
  });
});

/** Every payload of the runs' histories as text (JSON-encoded payloads carry bytes). */
async function payloadTexts(workflowIds: string[]): Promise<string[]> {
  const texts: string[] = [];
  const collect = (value: unknown): void => {
    if (!value || typeof value !== 'object') return;
    const payload = value as { data?: Uint8Array; metadata?: unknown };
    if (payload.data instanceof Uint8Array && payload.metadata) texts.push(Buffer.from(payload.data).toString('utf8'));
    else for (const child of Object.values(value)) collect(child);
  };
  for (const id of workflowIds) collect(await stack.client.workflow.getHandle(id).fetchHistory());
  return texts;
}
