/**
 * dpoPipeline: plans the config's DAG of stages (the standard chain
 * download -> format -> tokenize -> shard -> train -> evaluate -> report when it declares none)
 * and runs it, starting every stage whose dependencies are done, so independent branches run in
 * parallel. A failed stage stops what depends on it; independent branches finish; then the run
 * fails listing every failed stage.
 *
 * Orchestration only: every stage is an activity (workflows/stageRunners.ts), payloads are object
 * keys and summaries. The input is the JSON form of a pipeline config.
 */
import { ApplicationFailure, getExternalWorkflowHandle, isCancellation, log, setHandler, workflowInfo } from '@temporalio/workflow';
import { finishLineage, noteDatasetRevision, noteTrackerLinks, startLineage } from './lineage.js';
import { formatConfigProblems, parsePipelineConfig, type PipelineConfig } from '../contracts/config.js';
import { PlanError, planToMermaid, type PipelinePlan, type PlannedStage } from '../contracts/dag.js';
import { planRun } from '../contracts/runPlan.js';
import { storageRunId } from '../contracts/lineage.js';
import { SweepError, sweepRows, type SweepBranch } from '../contracts/sweep.js';
import { addAttempt } from '../contracts/attempts.js';
import { causeMessages, FailureType } from '../contracts/errors.js';
import { isSafeKeySegment } from '../contracts/keys.js';
import type { PipelineResult, StageTimeline, TrackerLinks } from '../contracts/payloads.js';
import { runStage, type RunContext, type StageOutput } from './stageRunners.js';
import {
  pauseTrainingSignal,
  resumeTrainingSignal,
  setCheckpointIntervalSignal,
  statusQuery,
  trainingReplannedSignal,
  type PipelineStatus,
} from '../contracts/messages.js';

export async function dpoPipeline(input: unknown): Promise<PipelineResult> {
  const config = validateInput(input);
  // Scheduled runs' workflow ids end in a timestamp with ":" (see storageRunId).
  const runId = storageRunId(workflowInfo().workflowId);
  if (!isSafeKeySegment(runId)) {
    throw ApplicationFailure.nonRetryable(
      `workflow id "${runId}" cannot name a run's storage folder: use 1-128 letters, digits, ".", "_" or "-"`,
      FailureType.InvalidConfig,
    );
  }
  const { plan, branches } = planOrFail(config);
  const status: PipelineStatus = {
    runId,
    name: config.name,
    plan: plan.stages.map((s) => ({ id: s.id, kind: s.kind, needs: s.needs })),
    mermaid: planToMermaid(plan),
    running: [],
    stages: Object.fromEntries(plan.stages.map((s) => [s.id, { id: s.id, kind: s.kind, needs: s.needs, state: 'pending' }])),
  };
  const outputs = new Map<string, StageOutput>();
  const failures = new Map<string, unknown>();
  const trackerLinks: TrackerLinks = {};
  const ctx: RunContext = {
    runId,
    config,
    plan,
    outputs,
    timeline: () => Object.values(status.stages),
    noteReplan: (stageId, change) => (status.stages[stageId]!.replans ??= []).push(change),
    noteAttempt: (stageId, attempt) => addAttempt(status.stages[stageId]!, attempt),
    sweepBranches: branches,
    training: { paused: false, checkpointEverySteps: null, children: new Set() },
  };
  // Registered before the first await, with everything it reads declared: a query may arrive
  // while the lineage activities below are still running (or waiting for a worker).
  setHandler(statusQuery, () => ({ ...status, training: { paused: ctx.training.paused, checkpointEverySteps: ctx.training.checkpointEverySteps } }));
  // Training controls: kept for train stages not started yet, forwarded to the running ones.
  const forward = (send: (id: string) => Promise<void>) => {
    for (const id of ctx.training.children) send(id).catch((err) => log.warn('could not forward a training signal', { id, error: String(err) }));
  };
  setHandler(pauseTrainingSignal, () => {
    ctx.training.paused = true;
    forward((id) => getExternalWorkflowHandle(id).signal(pauseTrainingSignal));
  });
  setHandler(resumeTrainingSignal, () => {
    ctx.training.paused = false;
    forward((id) => getExternalWorkflowHandle(id).signal(resumeTrainingSignal));
  });
  setHandler(setCheckpointIntervalSignal, (steps: number) => {
    if (!Number.isInteger(steps) || steps <= 0) return void log.warn('ignoring a checkpoint interval that is not a positive integer', { steps });
    ctx.training.checkpointEverySteps = steps;
    forward((id) => getExternalWorkflowHandle(id).signal(setCheckpointIntervalSignal, steps));
  });
  setHandler(trainingReplannedSignal, ({ stageId, change }) => {
    if (status.stages[stageId]) ctx.noteReplan(stageId, change);
  });

  // Lineage: parent run, schedule, config hash as memo + search attributes; init_from.
  const { lineage, modelSource } = await startLineage(config, runId, plan);
  ctx.initFromRun = lineage.initFromRun ?? undefined;
  ctx.modelSource = modelSource;
  ctx.lineage = lineage;

  // Start every stage whose dependencies are done; a stage whose dependency failed is skipped.
  const inFlight = new Map<string, Promise<void>>();
  const settled = (id: string) => outputs.has(id) || failures.has(id) || status.stages[id]!.state === 'skipped';
  while (plan.stages.some((s) => !settled(s.id))) {
    for (const stage of plan.stages) {
      if (settled(stage.id) || inFlight.has(stage.id)) continue;
      if (stage.needs.some((n) => failures.has(n) || status.stages[n]!.state === 'skipped')) {
        status.stages[stage.id]!.state = 'skipped';
        continue;
      }
      if (stage.needs.every((n) => outputs.has(n))) inFlight.set(stage.id, execute(stage));
    }
    if (inFlight.size) await Promise.race(inFlight.values());
  }

  async function execute(stage: PlannedStage): Promise<void> {
    const entry = status.stages[stage.id]!;
    Object.assign(entry, { state: 'running', startedAt: Date.now() });
    status.running.push(stage.id);
    try {
      const output = await runStage(ctx, stage);
      outputs.set(stage.id, output);
      Object.assign(entry, { state: 'done', finishedAt: Date.now(), cached: output.cached, summary: output.summary }, output.attempts);
      // The lineage's dataset is config.dataset.source (a download of another source, e.g. a separate SFT dataset, is not it).
      const otherSource = (stage.params.dataset as { source?: unknown } | undefined)?.source;
      if (stage.kind === 'download' && output.data && (otherSource === undefined || otherSource === config.dataset.source)) noteDatasetRevision(lineage, output.data);
      if (output.train?.tracking) noteTrackerLinks(trackerLinks, stage.id, output.train.tracking);
    } catch (err) {
      failures.set(stage.id, err);
      Object.assign(entry, { state: 'failed', finishedAt: Date.now(), error: describeError(err) });
    } finally {
      status.running = status.running.filter((id) => id !== stage.id);
      inFlight.delete(stage.id);
    }
  }

  await finishLineage(config, lineage, failures.size ? 'failed' : 'completed', [...failures.values()].some(isCancellation));
  if (failures.size) throw failureOf(failures, status);
  const result = collectResult(runId, config, plan, outputs, Object.values(status.stages));
  if (branches.length) result.sweep = sweepRows(branches, Object.fromEntries(plan.stages.map((s) => [s.id, s.kind])), result.trainings, result.evaluations);
  return { ...result, lineage };
}

function validateInput(input: unknown): PipelineConfig {
  const parsed = parsePipelineConfig(input);
  if (!parsed.ok) {
    // Fails the workflow before any stage runs, listing every problem with its path.
    throw ApplicationFailure.nonRetryable(formatConfigProblems(parsed.problems), FailureType.InvalidConfig, parsed.problems);
  }
  return parsed.config;
}

function planOrFail(config: PipelineConfig): { plan: PipelinePlan; branches: SweepBranch[] } {
  try {
    return planRun(config);
  } catch (err) {
    if (err instanceof PlanError) throw ApplicationFailure.nonRetryable(err.message, FailureType.InvalidConfig, err.problems);
    if (err instanceof SweepError) throw ApplicationFailure.nonRetryable(err.message, FailureType.InvalidConfig);
    throw err;
  }
}

/** One failure is rethrown as is (its cause chain intact); several are listed together. */
function failureOf(failures: Map<string, unknown>, status: PipelineStatus): unknown {
  if (failures.size === 1) return [...failures.values()][0];
  const lines = [...failures.keys()].map((id) => `  - ${id}: ${status.stages[id]!.error}`);
  return ApplicationFailure.create({
    message: `${failures.size} stages failed:\n${lines.join('\n')}`,
    type: 'StagesFailed',
    nonRetryable: true,
    cause: [...failures.values()][0] as Error,
    details: [Object.fromEntries([...failures.keys()].map((id) => [id, status.stages[id]!.error]))],
  });
}

function describeError(err: unknown): string {
  return causeMessages(err).join(': ') || String(err);
}

function collectResult(
  runId: string,
  config: PipelineConfig,
  plan: PipelinePlan,
  outputs: Map<string, StageOutput>,
  timeline: StageTimeline[],
): PipelineResult {
  const result: PipelineResult = { runId, bucket: config.storage.bucket, timeline, dataStages: {}, trainings: {}, evaluations: {}, reports: {} };
  for (const stage of plan.stages) {
    const out = outputs.get(stage.id)!;
    if (out.data) result.dataStages[stage.id] = out.data;
    if (out.train) result.trainings[stage.id] = out.train;
    if (out.evaluation) result.evaluations[stage.id] = out.evaluation;
    if (out.report) result.reports[stage.id] = out.report;
  }
  return result;
}
