/**
 * Starting dpoPipeline and following it: shared by `dpo run` and `npm run demo`.
 * Progress comes from the workflow's status query (stages) and the train activity's heartbeat
 * details (step, loss), read through `describe`.
 */
import { readFile } from 'node:fs/promises';
import { ActivityFailure, ApplicationFailure, CancelledFailure, ChildWorkflowFailure, Client, Connection, TerminatedFailure, WorkflowFailedError, type WorkflowExecutionDescription, type WorkflowHandle } from '@temporalio/client';
import YAML from 'yaml';
import { formatConfigProblems, parsePipelineConfig, type PipelineConfig } from '../contracts/config.js';
import { isTrainingKind, PlanError } from '../contracts/dag.js';
import { planRun } from '../contracts/runPlan.js';
import { causeMessages, FailureType } from '../contracts/errors.js';
import { SweepError } from '../contracts/sweep.js';
import { trainingWorkflowId } from '../contracts/keys.js';
import type { RunLineage } from '../contracts/lineage.js';
import type { PipelineResult, StageTimeline, TrackingSummary } from '../contracts/payloads.js';
import type { TrainProgress } from '../contracts/progress.js';
import { temporalEnv } from '../contracts/connection.js';
import { PIPELINE_WORKFLOW, statusQuery, type PipelineStatus } from '../contracts/messages.js';

export class ConfigFileError extends Error {}

/** Reads a YAML or JSON config file and validates it, listing every problem. */
export async function loadConfigFile(path: string): Promise<{ raw: unknown; config: PipelineConfig }> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new ConfigFileError(`cannot read config file ${path}`);
  }
  let raw: unknown;
  try {
    raw = path.endsWith('.json') ? JSON.parse(text) : YAML.parse(text);
  } catch (err) {
    throw new ConfigFileError(`${path} is not valid ${path.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message}`);
  }
  return { raw, config: checkConfig(raw, path) };
}

/**
 * Validates a config the way the workflow will (schema, sweep expansion, DAG plan), so a bad one
 * starts nothing. `where` prefixes messages (the file name).
 */
export function checkConfig(raw: unknown, where?: string): PipelineConfig {
  const prefix = where ? `${where}: ` : '';
  const parsed = parsePipelineConfig(raw);
  if (!parsed.ok) throw new ConfigFileError(`${prefix}${formatConfigProblems(parsed.problems)}`);
  try {
    planRun(parsed.config);
  } catch (err) {
    if (err instanceof PlanError || err instanceof SweepError) throw new ConfigFileError(`${prefix}${err.message}`);
    throw err;
  }
  return parsed.config;
}

export async function connectClient(): Promise<Client> {
  const env = temporalEnv();
  const connection = await Connection.connect({ address: env.address, tls: env.tls, apiKey: env.apiKey });
  return new Client({ connection, namespace: env.namespace });
}

export function newRunId(name: string, now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `${name}-${stamp}`.slice(0, 128);
}

export async function startPipeline(client: Client, raw: unknown, config: PipelineConfig, runId = newRunId(config.name)) {
  return client.workflow.start(PIPELINE_WORKFLOW, {
    args: [raw],
    taskQueue: config.queues.cpu,
    workflowId: runId,
  });
}

/** Prints stage transitions and training steps until the run ends; returns its result. */
export async function followPipeline(
  handle: WorkflowHandle,
  print: (line: string) => void,
  pollMs = 1000,
): Promise<PipelineResult> {
  const seen = new Map<string, string>();
  const lastStep = new Map<string, number>();
  let lastPrint = 0;
  let plannedShown = false;
  const result = handle.result() as Promise<PipelineResult>;
  let done = false;
  void result.finally(() => (done = true)).catch(() => {});
  while (!done) {
    try {
      const status = await handle.query(statusQuery);
      if (!plannedShown) {
        plannedShown = true;
        print(`  plan: ${status.plan.map((s) => (s.needs.length ? `${s.id}(<-${s.needs.join(',')})` : s.id)).join('  ')}`);
      }
      for (const { id } of status.plan) {
        const s = status.stages[id]!;
        const key = `${s.state}${s.cached ? '-cached' : ''}`;
        if (s.state === 'pending' || seen.get(id) === key) continue;
        seen.set(id, key);
        print(describeStage(id, s));
      }
      if (status.running.some((id) => isTrainingKind(status.stages[id]?.kind)) && Date.now() - lastPrint > 2000) {
        const trainIds = status.running.filter((id) => isTrainingKind(status.stages[id]?.kind));
        for (const [activityId, progress] of await trainProgress(handle, trainIds)) {
          if (progress.step === lastStep.get(activityId)) continue;
          lastStep.set(activityId, progress.step);
          lastPrint = Date.now();
          print(describeTrainProgress(progress));
        }
      }
    } catch {
      // The workflow may not have started its first task yet, or just finished.
    }
    await Promise.race([result.catch(() => {}), new Promise((r) => setTimeout(r, pollMs))]);
  }
  return result;
}

/** Heartbeat details of every running train activity (in the stages' training child workflows), by stage and activity id. */
export async function trainProgress(handle: WorkflowHandle, trainStageIds: string[]): Promise<Map<string, TrainProgress>> {
  const out = new Map<string, TrainProgress>();
  for (const stageId of trainStageIds) {
    const child = handle.client.getHandle(trainingWorkflowId(handle.workflowId, stageId));
    const raw = (await child.describe().catch(() => null))?.raw;
    for (const a of raw?.pendingActivities ?? []) {
      const data = a.heartbeatDetails?.payloads?.[0]?.data;
      if (a.activityType?.name !== 'trainModel' || !data) continue;
      out.set(`${stageId}/${a.activityId ?? ''}`, JSON.parse(Buffer.from(data).toString('utf8')) as TrainProgress);
    }
  }
  return out;
}

function describeStage(id: string, s: PipelineStatus['stages'][string]): string {
  const pad = id.padEnd(10);
  if (s.state === 'running') return `  ${pad} running...`;
  if (s.state === 'failed') return `  ${pad} FAILED: ${s.error ?? ''}`;
  if (s.state === 'skipped') return `  ${pad} skipped (a stage it needs failed)`;
  const seconds = s.startedAt && s.finishedAt ? ` in ${((s.finishedAt - s.startedAt) / 1000).toFixed(1)}s` : '';
  const summary = s.summary
    ? `  ${Object.entries(s.summary).map(([k, v]) => `${k}=${typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(4) : v}`).join(' ')}`
    : '';
  return `  ${pad} ${s.cached ? 'cached' : 'done'}${seconds}${summary}`;
}

export function describeTrainProgress(p: TrainProgress): string {
  const of = p.totalSteps ? `/${p.totalSteps}` : '';
  const m = p.metrics;
  const metric = (name: string) => (m[name] !== undefined ? ` ${name}=${m[name]!.toFixed(4)}` : '');
  const rate = p.samplesPerSecond ? ` ${p.samplesPerSecond.toFixed(1)} samples/s` : '';
  const eta = p.totalSteps && p.samplesPerSecond && p.stepSamples ? ` eta ${Math.round(((p.totalSteps - p.step) * p.stepSamples) / p.samplesPerSecond)}s` : '';
  return `  ${p.stageId.padEnd(10)} step ${p.step}${of}${metric('loss')}${metric('rewards/accuracies')}${metric('rewards/margins')}${metric('mean_token_accuracy')}${rate}${eta}`;
}

/** What `dpo status` shows of a run that has ended. */
export interface ClosedRunStatus {
  runId: string;
  /** COMPLETED, FAILED, CANCELLED, TERMINATED, TIMED_OUT. */
  status: string;
  /** A completed run's stages in plan order (from its result). */
  plan?: Array<{ id: string; kind: string; needs: string[] }>;
  stages?: Record<string, StageTimeline>;
  lineage: RunLineage | null;
  /** Where each train stage's experiment-tracker runs are (train.report_to), by stage id. */
  tracking?: Record<string, TrackingSummary>;
  /** Why a run that did not complete ended, and what to do next. */
  error?: string;
  hint?: string;
}

/**
 * The status of a run that has ended, from its result (or failure) and memo. Not the status query:
 * that would make a worker replay the whole history, and waits for one when none polls the queue.
 */
export async function closedRunStatus(handle: WorkflowHandle, description: WorkflowExecutionDescription): Promise<ClosedRunStatus> {
  const lineage = (description.memo?.lineage ?? null) as RunLineage | null;
  const base = { runId: handle.workflowId, status: description.status.name, lineage };
  try {
    const result = (await handle.result()) as PipelineResult;
    return {
      ...base,
      plan: result.timeline.map((s) => ({ id: s.id, kind: s.kind, needs: s.needs })),
      stages: Object.fromEntries(result.timeline.map((s) => [s.id, s])),
      lineage: result.lineage ?? lineage,
      tracking: Object.fromEntries(Object.entries(result.trainings).flatMap(([id, t]) => (t.tracking ? [[id, t.tracking]] : []))),
    };
  } catch (err) {
    return { ...base, error: describeFailure(err), hint: failureHint(handle.workflowId, err) };
  }
}

export function describeFailure(err: unknown): string {
  if (err instanceof WorkflowFailedError) return causeMessages(err.cause).join('\n  caused by: ') || err.message;
  return (err as Error).message ?? String(err);
}

/** Failures of the run's input: a new run with a fixed config or dataset helps, a resume does not. */
const INPUT_FAILURES: string[] = [FailureType.InvalidConfig, FailureType.InvalidDataset, FailureType.ModelLoadError, FailureType.InvalidInput];

/**
 * Activities of the stages from reference and training on: a resume reuses what came before them
 * (cached data stages, the reference log-probs, training checkpoints) and starts there.
 */
const RESUMABLE_ACTIVITIES = new Set([
  'computeReference',
  'trainModel',
  'prepareEvaluation',
  'scorePreferenceShard',
  'scorePreferenceShardTorch',
  'scoreAmberShard',
  'scoreAmberShardTorch',
  'generateExamplesTorch',
  'generateExamples',
  'finishEvaluation',
  'writeReport',
]);

/**
 * Whether `dpo resume` can help after this failure: it failed in or after the reference or train
 * stage (where checkpoints and cached stages exist), and not because of its input (config, dataset,
 * model), which a resume would feed in again unchanged. A cancelled or terminated run is resumable
 * wherever it stopped: it was stopped from outside, not by what it ran.
 */
export function resumeCanHelp(err: unknown): boolean {
  let resumable = false;
  for (let e: unknown = err; e instanceof Error; e = (e as { cause?: unknown }).cause) {
    if (e instanceof ApplicationFailure && e.type && INPUT_FAILURES.includes(e.type)) return false;
    if (e instanceof CancelledFailure || e instanceof TerminatedFailure) resumable = true;
    if (e instanceof ChildWorkflowFailure && e.workflowType === 'dpoTraining') resumable = true;
    if (e instanceof ActivityFailure && RESUMABLE_ACTIVITIES.has(e.activityType)) resumable = true;
  }
  return resumable;
}

/** The hint printed under a failed run. */
export function failureHint(runId: string, err: unknown): string {
  const logs = `\`dpo logs ${runId}\` shows what happened`;
  if (resumeCanHelp(err)) return `${logs}; \`dpo resume ${runId}\` continues from its checkpoints`;
  return `${logs}; fix the cause and start a new run with \`dpo run\``;
}
