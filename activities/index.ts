/**
 * The activities a worker registers, bound to their host's dependencies. Workflows import the
 * type only (`typeof activities`), so none of this reaches the workflow bundle.
 */
import type { ActivityDeps } from './deps.js';
import { downloadDataset } from './download.js';
import { evaluateModel } from './evaluate.js';
import { formatDataset } from './format.js';
import { recordRun, resolveInitFrom } from './lineage.js';
import { writeReport } from './report.js';
import { shardDataset } from './shard.js';
import { tokenizeDataset } from './tokenize.js';
import { trainModel } from './train.js';

type Bound<F> = F extends (deps: ActivityDeps, ...args: infer A) => infer R ? (...args: A) => R : never;
const bind = <F extends (deps: ActivityDeps, ...args: never[]) => unknown>(f: F, deps: ActivityDeps) =>
  ((...args: never[]) => f(deps, ...args)) as Bound<F>;

export function createCpuActivities(deps: ActivityDeps) {
  return {
    downloadDataset: bind(downloadDataset, deps),
    formatDataset: bind(formatDataset, deps),
    tokenizeDataset: bind(tokenizeDataset, deps),
    shardDataset: bind(shardDataset, deps),
    evaluateModel: bind(evaluateModel, deps),
    writeReport: bind(writeReport, deps),
    // Run lifecycle (issue 7): init_from and the run manifest.
    resolveInitFrom: bind(resolveInitFrom, deps),
    recordRun: bind(recordRun, deps),
  };
}

export function createGpuActivities(deps: ActivityDeps) {
  return { trainModel: bind(trainModel, deps) };
}

export type CpuActivities = ReturnType<typeof createCpuActivities>;
export type GpuActivities = ReturnType<typeof createGpuActivities>;
export type Activities = CpuActivities & GpuActivities;
