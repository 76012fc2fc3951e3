/**
 * The report's experiment tracking against a real MLflow server (PyPI's, from the tools cache,
 * started here with SQLite and proxied file artifacts) and the stack's MinIO: the evaluation's
 * metrics in an evaluate run nested in the pipeline's parent run, the report as the parent's
 * artifact, the parent FINISHED, the event files beside the train stages' in storage, an offline
 * W&B run beside the train stage's; the parent run's start and unsuccessful end, also through a
 * real pipeline on the Temporal dev server that fails; and a server that is down is a count,
 * never a failure.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { logReportToTrackers, trackPipelineRun } from '../../activities/report/tracking.js';
import { keys } from '../../contracts/keys.js';
import type { EvaluateResult, ReportInput, TrainResult } from '../../contracts/payloads.js';
import { depsFromEnv } from '../../io/deps.js';
import { toolPath } from '../../scripts/localStack.js';
import { startTestStack, TEST_BUCKET, uniqueId } from '../harness.js';
import { generateDemoDataset } from '../../datagen/demoShapes.js';
import { PIPELINE_WORKFLOW } from '../../contracts/messages.js';

const freePort = () =>
  new Promise<number>((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });

const evaluation: EvaluateResult = {
  base: { samples: 8, preference_accuracy: 0.5, reward_accuracy: 0, reward_margin_mean: 0, logp_margin_mean: 0.1 },
  trained: { samples: 8, preference_accuracy: 0.625, reward_accuracy: 0.75, reward_margin_mean: 0.125, logp_margin_mean: 0.3 },
  amber: {
    base: { existence: { questions: 4, accuracy: 0.5, precision: 0.5, recall: 0.5, f1: 0.5, yes_ratio: 0.75, truth_yes_ratio: 0.5 } },
    trained: { existence: { questions: 4, accuracy: 0.75, precision: 1, recall: 0.5, f1: 0.667, yes_ratio: 0.5, truth_yes_ratio: 0.5 } },
  },
  generative: { base: { descriptions: 2, chair: 0.5, cover: 0.25, hal: 1 }, trained: { descriptions: 2, chair: 0.25, cover: 0.5, hal: 0.5 } },
  metricsKey: 'runs/x/evaluate/metrics.json',
  adapter: `s3://${TEST_BUCKET}/runs/x/train/adapter/`,
};

function reportInput(runId: string): ReportInput {
  const train = { adapterBucket: TEST_BUCKET, adapterPrefix: 'runs/x/train/adapter/', finalStep: 6 } as TrainResult;
  // Only what the tracking part reads; the rest of a report's input is the report's.
  return { runId, stageId: 'report', bucket: TEST_BUCKET, config: { train: { report_to: ['tensorboard', 'mlflow', 'wandb'] } }, trainings: { train }, evaluations: { evaluate: evaluation } } as unknown as ReportInput;
}

async function api(uri: string, name: string, body: unknown): Promise<any> {
  const response = await fetch(`${uri}/api/2.0/mlflow/${name}`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  expect(response.status).toBe(200);
  return response.json();
}

describe('the report logs the evaluation to the trackers', () => {
  let server: ChildProcess;
  let uri: string;
  let root: string;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'mlflow-'));
    const port = await freePort();
    uri = `http://127.0.0.1:${port}`;
    server = spawn(toolPath('mlflow'), ['server', '--host', '127.0.0.1', '--port', String(port), '--workers', '1',
      '--backend-store-uri', `sqlite:///${root}/mlflow.db`, '--serve-artifacts', '--artifacts-destination', `file://${root}/artifacts`], { stdio: 'ignore', detached: true });
    for (const deadline = Date.now() + 180_000; ; await new Promise((r) => setTimeout(r, 500))) {
      if (await fetch(`${uri}/health`).then((r) => r.ok, () => false)) break;
      if (Date.now() > deadline) throw new Error('the MLflow server did not start');
    }
  });

  afterAll(async () => {
    if (server?.pid) process.kill(-server.pid, 'SIGTERM');
    await rm(root, { recursive: true, force: true });
  });

  it('nests an evaluate run in the parent, logs the report there and finishes it', async () => {
    process.env.MLFLOW_TRACKING_URI = uri;
    process.env.MLFLOW_EXPERIMENT_NAME = 'dpo-report-test';
    const deps = depsFromEnv();
    const runId = uniqueId('report-tracking');
    const tracking = await logReportToTrackers(deps, { report: reportInput(runId), files: { 'report.md': '# r\n' }, workflow: { workflowId: 'wf', runId: 'r1' } });
    expect(tracking?.failures).toEqual({ mlflow: 0, tensorboard: 0, wandb: 0 });

    const { experiment } = await (await fetch(`${uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=dpo-report-test`)).json();
    const { runs } = await api(uri, 'runs/search', { experiment_ids: [experiment.experiment_id], filter: `tags.\`dpo.run_id\` = '${runId}'` });
    const tag = (run: any, key: string) => run.data.tags.find((t: any) => t.key === key)?.value;
    const parent = runs.find((r: any) => tag(r, 'dpo.kind') === 'pipeline');
    const evaluate = runs.find((r: any) => tag(r, 'dpo.kind') === 'evaluate');
    expect(parent.info.status).toBe('FINISHED');
    expect(tag(parent, 'dpo.temporal_workflow_id')).toBe('wf');
    expect(tracking?.links.mlflow).toContain(`/runs/${parent.info.run_id}`);
    expect(tag(evaluate, 'mlflow.parentRunId')).toBe(parent.info.run_id);
    expect(tag(evaluate, 'dpo.evaluates')).toBe('train');
    const metrics = Object.fromEntries(evaluate.data.metrics.map((m: any) => [m.key, [m.step, m.value]]));
    expect(metrics['eval/dpo/rewards/accuracies']).toEqual([6, 0.75]);
    expect(metrics['eval/base/amber/existence/yes_ratio']).toEqual([6, 0.75]);
    expect(metrics['eval/dpo/amber/generative/chair']).toEqual([6, 0.25]);
    const artifacts = await (await fetch(`${uri}/api/2.0/mlflow/artifacts/list?run_id=${parent.info.run_id}&path=report`)).json();
    expect(artifacts.files.map((f: any) => f.path)).toEqual(['report/report.md']);

    const events = await deps.storage.list(TEST_BUCKET, keys.tensorboardPrefix(runId, 'evaluate'));
    expect(events.some((o) => o.key.split('/').at(-1)!.startsWith('events.out.tfevents.'))).toBe(true);
    // W&B, offline here: an offline run of the train stage's W&B run, beside that stage's own.
    const wandb = (await deps.storage.list(TEST_BUCKET, keys.wandbPrefix(runId, 'train'))).map((o) => o.key.slice(keys.wandbPrefix(runId, 'train').length));
    expect(wandb.some((rel) => /^offline-run-\d{8}_\d{6}-[0-9a-f]{16}\/run-[0-9a-f]{16}\.wandb$/.test(rel))).toBe(true);
  });

  it('opens the pipeline\'s parent run at its start and ends it, with the runs left open, when it fails', async () => {
    process.env.MLFLOW_TRACKING_URI = uri;
    process.env.MLFLOW_EXPERIMENT_NAME = 'dpo-lifecycle-test';
    const deps = depsFromEnv();
    const runId = uniqueId('pipeline-tracking');
    const input = { runId, reportTo: ['mlflow'] as const, workflow: { workflowId: 'wf-l', runId: 'r-l' } };
    const opened = await trackPipelineRun(deps, { ...input, reportTo: [...input.reportTo], status: 'RUNNING' });
    expect(opened?.failures).toEqual({ mlflow: 0 });
    const { experiment } = await (await fetch(`${uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=dpo-lifecycle-test`)).json();
    const search = async () => (await api(uri, 'runs/search', { experiment_ids: [experiment.experiment_id], filter: `tags.\`dpo.run_id\` = '${runId}'` })).runs ?? [];
    const [parent] = await search();
    expect(parent.info.status).toBe('RUNNING');
    expect(opened?.links.mlflow).toContain(`/runs/${parent.info.run_id}`);

    const ended = await trackPipelineRun(deps, { ...input, reportTo: [...input.reportTo], status: 'FAILED' });
    expect(ended?.failures).toEqual({ mlflow: 0 });
    expect((await search()).map((r: any) => [r.info.run_id, r.info.status])).toEqual([[parent.info.run_id, 'FAILED']]);
    // Without mlflow in report_to there is nothing to open.
    expect(await trackPipelineRun(deps, { ...input, reportTo: ['tensorboard'], status: 'RUNNING' })).toBeUndefined();
  });

  it('opens the parent run when a pipeline starts, links it in the memo, and ends it FAILED with the pipeline', async () => {
    process.env.MLFLOW_TRACKING_URI = uri;
    process.env.MLFLOW_EXPERIMENT_NAME = 'dpo-pipeline-failed-test';
    const datasetDir = await mkdtemp(join(tmpdir(), 'dpo-tracking-'));
    await generateDemoDataset({ outDir: datasetDir, trainRows: 8, testRows: 4, seed: 3 });
    const stack = await startTestStack({ serveGpu: false });
    try {
      const workflowId = uniqueId('tracked-failure');
      // A column the dataset does not have: the format stage fails, before any training.
      const err = await stack.client.workflow.execute(PIPELINE_WORKFLOW, {
        taskQueue: stack.queues.cpu,
        workflowId,
        args: [{
          name: 'tracked-failure',
          model: { source: inject('modelSource') },
          dataset: { source: datasetDir, columns: { chosen: 'preferred' } },
          train: { report_to: ['mlflow'] },
          queues: stack.queues,
          storage: { bucket: TEST_BUCKET },
          stages: [{ id: 'download', kind: 'download' }, { id: 'format', kind: 'format', needs: ['download'] }],
        }],
      }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      const { experiment } = await (await fetch(`${uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=dpo-pipeline-failed-test`)).json();
      const { runs } = await api(uri, 'runs/search', { experiment_ids: [experiment.experiment_id], filter: `tags.\`dpo.run_id\` = '${workflowId}'` });
      expect(runs.map((r: any) => r.info.status)).toEqual(['FAILED']);
      const memo = (await stack.client.workflow.getHandle(workflowId).describe()).memo as { pipelineTrackerLinks?: Record<string, string> };
      expect(memo.pipelineTrackerLinks?.mlflow).toContain(`/runs/${runs[0].info.run_id}`);
    } finally {
      await stack.stop();
      await rm(datasetDir, { recursive: true, force: true });
    }
  });

  it('counts the calls a down server failed and goes on', async () => {
    process.env.MLFLOW_TRACKING_URI = `http://127.0.0.1:${await freePort()}`;
    const tracking = await logReportToTrackers(depsFromEnv(), { report: reportInput(uniqueId('report-down')), files: { 'report.md': '# r\n' } });
    expect(tracking?.failures.mlflow).toBeGreaterThan(0);
    expect(tracking?.failures.tensorboard).toBe(0);
  });
});
