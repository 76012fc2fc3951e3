/**
 * The activities a worker registers, bound to their host's dependencies. Workflows import the
 * type only (`typeof activities`), so none of this reaches the workflow bundle.
 */
import { Context } from '@temporalio/activity';
import type { ActivityDeps } from '../io/deps.js';
import { downloadDataset } from './data/download.js';
import { finishEvaluation, generateExamples, prepareEvaluation, scoreAmberShard, scorePreferenceShard } from './evaluation/evaluate.js';
import { generateExamplesTorch, scoreAmberShardTorch, scorePreferenceShardTorch } from './evaluation/torchScoring.js';
import { formatChunk, formatDataset, formatFinish } from './data/format.js';
import { computeReference } from './training/reference.js';
import { recordRun, resolveInitFrom, resolveModelSource } from './run/lineage.js';
import { writeReport } from './report/report.js';
import { trackPipelineRun } from './report/tracking.js';
import { publishAdapter } from './publish/publish.js';
import { shardDataset } from './data/shard.js';
import { tokenizeChunk, tokenizeDataset, tokenizeFinish } from './data/tokenize.js';
import { trainModel } from './training/train.js';

/** An object result also says which attempt produced it (the run's timeline counts retries: contracts/attempts.ts). */
type WithAttempt<T> = T extends readonly unknown[] ? T : T extends object ? T & { attempt?: number } : T;
type Bound<F> = F extends (deps: ActivityDeps, ...args: infer A) => Promise<infer R> ? (...args: A) => Promise<WithAttempt<R>> : never;
const bind = <F extends (deps: ActivityDeps, ...args: never[]) => Promise<unknown>>(f: F, deps: ActivityDeps) =>
  (async (...args: never[]) => withAttempt(await f(deps, ...args))) as Bound<F>;

function withAttempt<T>(result: T): T {
  if (!result || typeof result !== 'object' || Array.isArray(result)) return result;
  let attempt: number;
  try {
    attempt = Context.current().info.attempt;
  } catch {
    return result; // called outside an activity (a benchmark calling the function directly)
  }
  return { ...result, attempt };
}

export function createCpuActivities(deps: ActivityDeps) {
  return {
    downloadDataset: bind(downloadDataset, deps),
    formatDataset: bind(formatDataset, deps),
    formatChunk: bind(formatChunk, deps),
    formatFinish: bind(formatFinish, deps),
    tokenizeDataset: bind(tokenizeDataset, deps),
    tokenizeChunk: bind(tokenizeChunk, deps),
    tokenizeFinish: bind(tokenizeFinish, deps),
    shardDataset: bind(shardDataset, deps),
    prepareEvaluation: bind(prepareEvaluation, deps),
    scorePreferenceShard: bind(scorePreferenceShard, deps),
    scorePreferenceShardTorch: bind(scorePreferenceShardTorch, deps),
    scoreAmberShard: bind(scoreAmberShard, deps),
    generateExamples: bind(generateExamples, deps),
    scoreAmberShardTorch: bind(scoreAmberShardTorch, deps),
    generateExamplesTorch: bind(generateExamplesTorch, deps),
    finishEvaluation: bind(finishEvaluation, deps),
    writeReport: bind(writeReport, deps),
    publishAdapter: bind(publishAdapter, deps),
    // Run lifecycle: init_from, the Hub model's revision, the run manifest, the parent MLflow run.
    resolveInitFrom: bind(resolveInitFrom, deps),
    resolveModelSource: bind(resolveModelSource, deps),
    recordRun: bind(recordRun, deps),
    trackPipelineRun: bind(trackPipelineRun, deps),
  };
}

export function createGpuActivities(deps: ActivityDeps) {
  return { trainModel: bind(trainModel, deps), computeReference: bind(computeReference, deps) };
}

export type CpuActivities = ReturnType<typeof createCpuActivities>;
export type GpuActivities = ReturnType<typeof createGpuActivities>;
export type Activities = CpuActivities & GpuActivities;
