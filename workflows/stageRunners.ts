/**
 * How each stage kind runs: which activity, on which queue, with which timeouts and retries, and
 * what it hands to the stages that need it. Orchestration only (no I/O): bundled into workflows.
 */
import { executeChild, proxyActivities, type ActivityOptions } from '@temporalio/workflow';
import type { Activities } from '../activities/index.js';
import { planToMermaid, STAGE_KINDS, stageSettings, type PipelinePlan, type PlannedStage } from '../lib/dag.js';
import { NON_RETRYABLE_FAILURES } from '../lib/errors.js';
import type { PipelineConfig } from '../lib/config.js';
import type { EvaluateResult, ReportResult, StageResult, StageTimeline, TrainResult } from '../lib/stages.js';
import { trainingWorkflowId } from '../lib/keys.js';
import { dpoTraining } from './training.js';

/** What a finished stage hands on: one of these is set, by the artifact its kind produces. */
export interface StageOutput {
  data?: StageResult;
  train?: TrainResult;
  /** An adapter that came from outside the run (`adapter` stages). */
  adapter?: { bucket: string; prefix: string };
  evaluation?: EvaluateResult;
  report?: ReportResult;
  cached?: boolean;
  summary?: Record<string, number | string>;
}

export interface RunContext {
  runId: string;
  config: PipelineConfig;
  plan: PipelinePlan;
  outputs: Map<string, StageOutput>;
  timeline: () => StageTimeline[];
  /** Records a change the workflow made to a running stage's plan (shown in status and report). */
  noteReplan: (stageId: string, change: string) => void;
  /** Pause and checkpoint interval for training children, and the ones running now. */
  training: { paused: boolean; checkpointEverySteps: number | null; children: Set<string> };
}

/** Data stages: minutes of CPU work, heartbeating per chunk. Bad data fails fast. */
const DATA_STAGE_OPTIONS: ActivityOptions = {
  startToCloseTimeout: '30 minutes',
  heartbeatTimeout: '2 minutes',
  retry: {
    initialInterval: '2 seconds',
    backoffCoefficient: 2,
    maximumInterval: '1 minute',
    maximumAttempts: 5,
    nonRetryableErrorTypes: NON_RETRYABLE_FAILURES,
  },
};

/**
 * One training segment: up to hours on a GPU. The activity heartbeats every few seconds and per
 * step, so a 20 s heartbeat timeout notices a dead worker well under a minute; a retry resumes
 * from the newest complete checkpoint, so a lost worker costs one checkpoint interval.
 */
const TRAIN_OPTIONS: ActivityOptions = {
  startToCloseTimeout: '24 hours',
  heartbeatTimeout: '20 seconds',
  retry: {
    initialInterval: '1 second',
    backoffCoefficient: 2,
    maximumInterval: '30 seconds',
    maximumAttempts: 10,
    nonRetryableErrorTypes: NON_RETRYABLE_FAILURES,
  },
};

/** Activity options for one stage: its kind's defaults, then the stage's own overrides. */
function activityOptionsFor(ctx: RunContext, stage: PlannedStage): ActivityOptions {
  const spec = STAGE_KINDS[stage.kind];
  const base = stage.kind === 'train' ? TRAIN_OPTIONS : DATA_STAGE_OPTIONS;
  const options: ActivityOptions = {
    ...base,
    taskQueue: stage.queue ?? ctx.config.queues[spec.queue],
    startToCloseTimeout: (stage.timeouts?.start_to_close ?? base.startToCloseTimeout) as ActivityOptions['startToCloseTimeout'],
    heartbeatTimeout: (stage.timeouts?.heartbeat ?? base.heartbeatTimeout) as ActivityOptions['heartbeatTimeout'],
    retry: {
      ...base.retry,
      ...(stage.retry?.maximum_attempts !== undefined && { maximumAttempts: stage.retry.maximum_attempts }),
      ...(stage.retry?.initial_interval !== undefined && { initialInterval: stage.retry.initial_interval as '1s' }),
      ...(stage.retry?.maximum_interval !== undefined && { maximumInterval: stage.retry.maximum_interval as '1s' }),
    },
  };
  return options;
}

function activitiesFor(ctx: RunContext, stage: PlannedStage) {
  return proxyActivities<Activities>(activityOptionsFor(ctx, stage));
}

export async function runStage(ctx: RunContext, stage: PlannedStage): Promise<StageOutput> {
  const acts = activitiesFor(ctx, stage);
  const { config, runId } = ctx;
  const bucket = config.storage.bucket;
  const modelSource = config.model.source;
  const input = (artifact: 'dataset' | 'formatted' | 'tokens' | 'shards' | 'adapter' | 'metrics') =>
    (stage.inputs[artifact] ?? []).map((id) => ctx.outputs.get(id)!);
  const data = (artifact: 'dataset' | 'formatted' | 'tokens' | 'shards') => input(artifact)[0]!.data!;
  const dataOutput = (r: StageResult): StageOutput => ({ data: r, cached: r.cached, summary: r.summary });

  switch (stage.kind) {
    case 'download':
      return dataOutput(await acts.downloadDataset({ bucket, dataset: config.dataset }));
    case 'format':
      return dataOutput(
        await acts.formatDataset({
          bucket,
          upstream: data('dataset'),
          modelSource,
          format: stageSettings(config, 'format', stage.params),
          columns: config.dataset.columns,
          splits: { train: config.dataset.train_split, eval: config.dataset.eval_split },
          limits: { train: config.dataset.max_train_samples, eval: config.dataset.max_eval_samples },
        }),
      );
    case 'tokenize':
      return dataOutput(
        await acts.tokenizeDataset({ bucket, upstream: data('formatted'), modelSource, tokenize: stageSettings(config, 'tokenize', stage.params) }),
      );
    case 'shard':
      return dataOutput(await acts.shardDataset({ bucket, upstream: data('tokens'), shard: stageSettings(config, 'shard', stage.params) }));
    case 'train': {
      // A child workflow drives the training in segments and replans after out-of-memory
      // failures (workflows/training.ts); its replans reach this run's status by signal.
      const train = stageSettings(config, 'train', stage.params);
      const workflowId = trainingWorkflowId(runId, stage.id);
      ctx.training.children.add(workflowId);
      try {
        const result = await executeChild(dpoTraining, {
          workflowId,
          args: [
            {
              train: {
                runId,
                stageId: stage.id,
                bucket,
                modelSource,
                shards: data('shards'),
                trainSplit: config.dataset.train_split,
                train,
                resumeFromRunId: config.resume_from_run,
              },
              activity: activityOptionsFor(ctx, stage),
              control: {
                paused: ctx.training.paused,
                checkpoint_every_steps: ctx.training.checkpointEverySteps ?? train.checkpoint_every_steps,
              },
            },
          ],
        });
        return { train: result, summary: { step: result.finalStep, ...result.metrics } };
      } finally {
        ctx.training.children.delete(workflowId);
      }
    }
    case 'adapter': {
      const m = /^s3:\/\/([^/]+)\/(.+?)\/?$/.exec(String(stage.params.source))!;
      return { adapter: { bucket: m[1]!, prefix: `${m[2]}/` } };
    }
    case 'evaluate': {
      const from = input('adapter')[0]!;
      const adapter = from.train ? { bucket: from.train.adapterBucket, prefix: from.train.adapterPrefix } : from.adapter!;
      const beta = from.train ? stageSettings(config, 'train', adapterStage(ctx, stage).params).beta : config.train.beta;
      const settings = stageSettings(config, 'evaluate', stage.params);
      const evaluation = await acts.evaluateModel({
        runId,
        stageId: stage.id,
        bucket,
        modelSource,
        shards: data('shards'),
        evalSplit: config.dataset.eval_split,
        adapterBucket: adapter.bucket,
        adapterPrefix: adapter.prefix,
        batchSize: settings.batch_size,
        beta,
      });
      return {
        evaluation,
        summary: { base_accuracy: evaluation.base.preference_accuracy, dpo_accuracy: evaluation.trained.preference_accuracy },
      };
    }
    case 'report': {
      const evaluations = Object.fromEntries((stage.inputs.metrics ?? []).map((id) => [id, ctx.outputs.get(id)!.evaluation!]));
      const trainings: Record<string, TrainResult> = {};
      const dataStages: Record<string, StageResult> = {};
      for (const [id, out] of ctx.outputs) {
        if (out.train) trainings[id] = out.train;
        if (out.data) dataStages[id] = out.data;
      }
      const report = await acts.writeReport({
        runId,
        stageId: stage.id,
        bucket,
        config,
        dagMermaid: planToMermaidWithStates(ctx),
        timeline: ctx.timeline(),
        dataStages,
        trainings,
        evaluations,
      });
      return { report };
    }
  }
}

/** The stage that produced the adapter an evaluate stage scores. */
function adapterStage(ctx: RunContext, stage: PlannedStage): PlannedStage {
  const id = stage.inputs.adapter![0]!;
  return ctx.plan.stages.find((s) => s.id === id)!;
}

function planToMermaidWithStates(ctx: RunContext): string {
  const states = Object.fromEntries(ctx.timeline().map((t) => [t.id, t.cached ? 'cached' : t.state]));
  return planToMermaid(ctx.plan, states);
}
