/**
 * The activities a worker registers, bound to their host's dependencies. Workflows import the
 * type only (`typeof activities`), so none of this reaches the workflow bundle.
 */
import type { ActivityDeps } from './deps.js';
import { downloadDataset } from './download.js';
import { finishEvaluation, generateExamples, prepareEvaluation, scoreAmberShard, scorePreferenceShard } from './evaluate.js';
import { formatChunk, formatDataset, formatFinish } from './format.js';
import { computeReference } from './reference.js';
import { recordRun, resolveInitFrom } from './lineage.js';
import { writeReport } from './report.js';
import { shardDataset } from './shard.js';
import { tokenizeChunk, tokenizeDataset, tokenizeFinish } from './tokenize.js';
import { trainModel } from './train.js';

type Bound<F> = F extends (deps: ActivityDeps, ...args: infer A) => infer R ? (...args: A) => R : never;
const bind = <F extends (deps: ActivityDeps, ...args: never[]) => unknown>(f: F, deps: ActivityDeps) =>
  ((...args: never[]) => f(deps, ...args)) as Bound<F>;

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
    scoreAmberShard: bind(scoreAmberShard, deps),
    generateExamples: bind(generateExamples, deps),
    finishEvaluation: bind(finishEvaluation, deps),
    writeReport: bind(writeReport, deps),
    // Run lifecycle (issue 7): init_from and the run manifest.
    resolveInitFrom: bind(resolveInitFrom, deps),
    recordRun: bind(recordRun, deps),
  };
}

export function createGpuActivities(deps: ActivityDeps) {
  return { trainModel: bind(trainModel, deps), computeReference: bind(computeReference, deps) };
}

export type CpuActivities = ReturnType<typeof createCpuActivities>;
export type GpuActivities = ReturnType<typeof createGpuActivities>;
export type Activities = CpuActivities & GpuActivities;
