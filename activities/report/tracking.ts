/**
 * The worker's part of experiment tracking (train.report_to) outside training: each evaluate
 * stage's metrics go to the trackers of the run, the report itself to the pipeline's parent
 * MLflow run, which is then marked FINISHED; that parent run opens when the pipeline starts and
 * ends FAILED or KILLED when it ends without a report. The trainer's
 * `python -m dpo_trainer.log_metrics` speaks to the trackers, so each tracker's protocol has one
 * implementation (MLflow's REST client, TensorBoard's SummaryWriter, wandb); the worker only
 * ships the files they write (event files, offline W&B runs) to the stages' storage folders.
 *
 * A tracker that is down never fails the report: its failed calls are a warning and a count
 * (ReportResult.tracking), as for training.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { log } from '@temporalio/activity';
import { keys } from '../../contracts/keys.js';
import type { PipelineTrackingInput, ReportInput } from '../../contracts/payloads.js';
import { evaluationTrackerMetrics, resolveReportTo } from '../../contracts/tracking.js';
import { trainerEnv } from '../../bridge/trainerProcess.js';
import { REPO_ROOT, type ActivityDeps } from '../../io/deps.js';
import { EventFileUploader } from '../../io/tensorboardEvents.js';

/** The activity's logger; the console where writeReport runs outside an activity (fault tests). */
function warn(message: string, fields?: Record<string, unknown>): void {
  try {
    log.warn(message, fields);
  } catch {
    console.warn(message, fields ?? '');
  }
}

/** Trackers that hold evaluation metrics (W&B: in the evaluated train stage's run). */
const EVAL_TRACKERS = ['tensorboard', 'mlflow', 'wandb'] as const;

export interface ReportTracking {
  failures: Record<string, number>;
  links: Record<string, string>;
}

export interface ReportTrackingInput {
  report: ReportInput;
  /** The report's files for the parent MLflow run, by name (report.md, report.html). */
  files: Record<string, string>;
  /** The Temporal ids of the pipeline, for a parent run this call creates. */
  workflow?: { workflowId?: string; runId?: string } | undefined;
}

export async function logReportToTrackers(deps: ActivityDeps, input: ReportTrackingInput): Promise<ReportTracking | undefined> {
  const { report } = input;
  const reportTo = resolveReportTo(report.config.train.report_to ?? 'none', { mlflow: Boolean(process.env.MLFLOW_TRACKING_URI) })
    .filter((name): name is (typeof EVAL_TRACKERS)[number] => (EVAL_TRACKERS as readonly string[]).includes(name));
  // Nothing to send: no evaluation, and no parent MLflow run to give the report to.
  if (!reportTo.length || (!Object.keys(report.evaluations).length && !reportTo.includes('mlflow'))) return undefined;
  await mkdir(deps.workDir, { recursive: true });
  const dir = await mkdtemp(join(deps.workDir, 'report-tracking-'));
  try {
    const reportDir = join(dir, 'report');
    await mkdir(reportDir, { recursive: true });
    for (const [name, body] of Object.entries(input.files)) await writeFile(join(reportDir, name), body);
    const adapters = Object.entries(report.trainings).map(([id, t]) => ({ id, t, at: `s3://${t.adapterBucket}/${t.adapterPrefix}` }));
    const evaluations = Object.fromEntries(Object.entries(report.evaluations).map(([stage, e]) => {
      // The train stage it evaluated: eval metrics sit at its last step, as TRL logs them.
      const trained = adapters.find((a) => e.adapter.replace(/\/$/, '') === a.at.replace(/\/$/, ''));
      const tags: Record<string, string> = trained ? { evaluates: trained.id } : {};
      return [stage, { metrics: evaluationTrackerMetrics(e), step: trained?.t.finalStep ?? 0, tags }];
    }));
    const lineage = { run_id: report.runId, temporal_workflow_id: input.workflow?.workflowId, temporal_run_id: input.workflow?.runId };
    const tags = Object.fromEntries(Object.entries(lineage).filter(([, v]) => v));
    const tensorboardDir = join(dir, 'tensorboard');
    const wandbDir = join(dir, 'wandb');
    const answer = await logMetrics(deps.pythonBin, dir, reportTo, {
      report_to: reportTo,
      run_id: report.runId,
      tags,
      evaluations,
      tensorboard_dir: tensorboardDir,
      wandb_dir: wandbDir,
      artifacts: [{ dir: reportDir, path: 'report' }],
      status: 'FINISHED',
    });
    if (!answer) return { failures: Object.fromEntries(reportTo.map((name) => [name, 1])), links: {} };
    if (reportTo.includes('tensorboard')) {
      for (const stage of Object.keys(evaluations)) {
        try {
          // Beside the train stages' runs: `dpo tensorboard <runId>` shows <runId>/<evaluate stage>.
          await new EventFileUploader(deps.storage, report.bucket, join(tensorboardDir, stage), keys.tensorboardPrefix(report.runId, stage)).upload();
        } catch (err) {
          answer.failures.tensorboard = (answer.failures.tensorboard ?? 0) + 1;
          warn('could not upload the evaluation event files', { stage, error: String(err) });
        }
      }
    }
    if (reportTo.includes('wandb')) {
      for (const trained of new Set(Object.values(evaluations).map((e) => e.tags.evaluates).filter((id): id is string => Boolean(id)))) {
        try {
          // Beside the stage's own offline runs: `wandb sync` in time order appends the evaluation.
          await new EventFileUploader(deps.storage, report.bucket, join(wandbDir, trained, 'wandb'), keys.wandbPrefix(report.runId, trained), (rel) => rel.includes('/')).upload();
        } catch (err) {
          answer.failures.wandb = (answer.failures.wandb ?? 0) + 1;
          warn('could not upload the evaluation\'s W&B run', { stage: trained, error: String(err) });
        }
      }
    }
    if (Object.values(answer.failures).some((n) => n > 0)) warn('some tracker calls failed; the report goes on', { failures: answer.failures });
    return answer;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The pipeline's parent MLflow run: opened (RUNNING) when the pipeline starts, so that every
 * stage and sweep branch nests under the one run instead of racing to create it, and ended
 * (FAILED, KILLED) with the runs its stages left open when the pipeline ends without a report
 * (the report marks it FINISHED). Trackers other than MLflow have no pipeline-level run.
 */
export async function trackPipelineRun(deps: ActivityDeps, input: PipelineTrackingInput): Promise<ReportTracking | undefined> {
  if (!resolveReportTo(input.reportTo, { mlflow: Boolean(process.env.MLFLOW_TRACKING_URI) }).includes('mlflow')) return undefined;
  await mkdir(deps.workDir, { recursive: true });
  const dir = await mkdtemp(join(deps.workDir, 'pipeline-tracking-'));
  try {
    const lineage = { run_id: input.runId, temporal_workflow_id: input.workflow.workflowId, temporal_run_id: input.workflow.runId };
    const answer = await logMetrics(deps.pythonBin, dir, ['mlflow'], { report_to: ['mlflow'], run_id: input.runId, tags: lineage, status: input.status });
    if (answer?.failures.mlflow) warn('could not update the pipeline\'s MLflow run; the run goes on', { status: input.status, failures: answer.failures });
    return answer ?? { failures: { mlflow: 1 }, links: {} };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** `python -m dpo_trainer.log_metrics` on one request; undefined (and a warning) when it could not run. */
async function logMetrics(pythonBin: string, dir: string, reportTo: string[], request: Record<string, unknown>): Promise<ReportTracking | undefined> {
  const requestPath = join(dir, 'request.json');
  await writeFile(requestPath, JSON.stringify(request));
  try {
    return JSON.parse(await runLogMetrics(pythonBin, requestPath)) as ReportTracking;
  } catch (err) {
    warn('could not reach the trackers; the run goes on', { trackers: reportTo, error: String(err) });
    return undefined;
  }
}

/** The command's one JSON line; its warnings (stderr) go to the worker's log. */
function runLogMetrics(pythonBin: string, requestPath: string): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(pythonBin, ['-m', 'dpo_trainer.log_metrics', requestPath], { cwd: REPO_ROOT, env: trainerEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
    child.on('error', reject);
    child.on('close', (code) => {
      for (const line of stderr.split('\n').filter((l) => l.startsWith('warning:'))) warn(line);
      if (code === 0) resolvePromise(stdout.trim().split('\n').at(-1) ?? '{}');
      else reject(new Error(`log_metrics exited ${code}: ${stderr.slice(-1000)}`));
    });
  });
}
