/**
 * The one "plan this config" function: the stages it declares (or the standard chain), a sweep's
 * branches copied out, then the DAG planned and checked. The workflow, `dpo validate`/`dpo run`
 * and the benchmarks all call it, so they agree on what a config runs. Throws PlanError or
 * SweepError listing every problem.
 */
import type { PipelineConfig } from './config.js';
import { configStages, planPipeline, type PipelinePlan } from './dag.js';
import { expandSweep, type SweepBranch } from './sweep.js';

export function planRun(config: PipelineConfig): { plan: PipelinePlan; branches: SweepBranch[] } {
  // A sweep copies the train branches before planning, so shared data stages are planned once.
  const { decls, branches } = expandSweep(configStages(config), config.sweep);
  return { plan: planPipeline(decls, config), branches };
}
