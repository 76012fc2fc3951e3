/**
 * How each stage kind runs: which activity, on which queue, with which timeouts and retries, and
 * what it hands to the stages that need it. Orchestration only (no I/O): bundled into workflows.
 */
import { executeChild, patched, proxyActivities, type ActivityOptions } from '@temporalio/workflow';
import type { Activities } from '../activities/index.js';
import { planToMermaid, STAGE_KINDS, stageDataset, stageSettings, upstreamStage, type PipelinePlan, type PlannedStage } from '../contracts/dag.js';
import type { StageAttempts } from '../contracts/attempts.js';
import { NON_RETRYABLE_FAILURES } from '../contracts/errors.js';
import type { PipelineConfig } from '../contracts/config.js';
import { sweepRows, type SweepBranch } from '../contracts/sweep.js';
import type { EvaluateResult, EvaluationPlan, ReportResult, ScoreShardInput, StageResult, StageTimeline, TrainResult } from '../contracts/payloads.js';
import { keys, trainingWorkflowId } from '../contracts/keys.js';
import { dpoTraining } from './training.js';
import { formatSplitInput, splitLabels } from '../contracts/splitSpec.js';
import type { RunLineage } from '../contracts/lineage.js';

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
  /** Attempts counted by the stage itself (train: its child workflow's segments, contracts/attempts.ts). */
  attempts?: StageAttempts;
}

export interface RunContext {
  runId: string;
  config: PipelineConfig;
  plan: PipelinePlan;
  outputs: Map<string, StageOutput>;
  timeline: () => StageTimeline[];
  /** Records that one of the stage's activities returned, produced by its `attempt`-th attempt. */
  noteAttempt: (stageId: string, attempt: number | undefined) => void;
  /** Records a change the workflow made to a running stage's plan (shown in status and report). */
  noteReplan: (stageId: string, change: string) => void;
  /** A sweep's branches: the report ends in their comparison table. */
  sweepBranches?: SweepBranch[];
  /** What the stages read as the model: config.model.source, a Hub one pinned to its commit sha. */
  modelSource?: string;
  /** The run's lineage (model and dataset revisions, filled in as they become known). */
  lineage?: RunLineage;
  /** init_from: train stages start from this run's final adapter of the same stage id. */
  initFromRun?: string;
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

/** The reference pass: one forward pass over the train shards on a GPU, no checkpoints. */
const REFERENCE_OPTIONS: ActivityOptions = { ...DATA_STAGE_OPTIONS, startToCloseTimeout: '12 hours' };

/** Activity options for one stage: its kind's defaults, then the stage's own overrides. */
function activityOptionsFor(ctx: RunContext, stage: PlannedStage): ActivityOptions {
  const spec = STAGE_KINDS[stage.kind];
  const base = stage.kind === 'train' || stage.kind === 'sft' ? TRAIN_OPTIONS : stage.kind === 'reference' ? REFERENCE_OPTIONS : DATA_STAGE_OPTIONS;
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

/**
 * The stage's activities; each result's `attempt` (activities/index.ts) is counted for the
 * stage's timeline line and taken off, so payloads stay what the stages exchange.
 */
function activitiesFor(ctx: RunContext, stage: PlannedStage): Activities {
  const acts = proxyActivities<Activities>(activityOptionsFor(ctx, stage));
  return new Proxy(acts, {
    get(target, name: string) {
      const call = target[name as keyof Activities] as (...args: unknown[]) => Promise<unknown>;
      return async (...args: unknown[]) => {
        const result = await call(...args);
        let attempt: number | undefined;
        if (result && typeof result === 'object' && 'attempt' in result) {
          attempt = (result as { attempt?: number }).attempt;
          delete (result as { attempt?: number }).attempt;
        }
        ctx.noteAttempt(stage.id, attempt);
        return result;
      };
    },
  });
}

export async function runStage(ctx: RunContext, stage: PlannedStage): Promise<StageOutput> {
  const acts = activitiesFor(ctx, stage);
  const { config, runId } = ctx;
  const bucket = config.storage.bucket;
  const modelSource = ctx.modelSource ?? config.model.source;
  const input = (artifact: 'dataset' | 'formatted' | 'tokens' | 'shards' | 'reference' | 'adapter' | 'model' | 'metrics' | 'report') =>
    (stage.inputs[artifact] ?? []).map((id) => ctx.outputs.get(id)!);
  // The dataset section behind the stage's data (its download stage's params.dataset over config.dataset).
  const dataset = stageDataset(ctx.plan, config, stage);
  // The model the stage starts from: an sft stage's merged model when it consumes one, else model.source.
  const startModel = stage.inputs.model ? mergedModelSource(input('model')[0]!) : modelSource;
  const data = (artifact: 'dataset' | 'formatted' | 'tokens' | 'shards') => input(artifact)[0]!.data!;
  const dataOutput = (r: StageResult): StageOutput => ({ data: r, cached: r.cached, summary: r.summary });

  switch (stage.kind) {
    case 'download':
      return dataOutput(await acts.downloadDataset({ bucket, dataset }));
    case 'format': {
      // Plan, then every chunk as its own activity (spread over all CPU workers; each worker's
      // slot count bounds its share), then finish: duplicates across chunks, drop share, manifest.
      const format = stageSettings(config, 'format', stage.params);
      const plan = await acts.formatDataset({
        bucket,
        upstream: data('dataset'),
        modelSource,
        format,
        columns: dataset.columns,
        datasetFormat: dataset.format,
        ...formatSplitInput(dataset),
        limits: { train: dataset.max_train_samples, eval: dataset.max_eval_samples },
      });
      if (plan.cached) return dataOutput(plan.cached);
      const { hash, imageLongestEdge, filesPrefix } = plan;
      const chunks = await Promise.all(
        plan.chunks.map((chunk) =>
          acts.formatChunk({ bucket, modelSource, hash, imageLongestEdge, format, columns: dataset.columns, datasetFormat: dataset.format, filesPrefix, chunk }),
        ),
      );
      const labels = splitLabels(dataset);
      const splits = [labels.train, labels.eval];
      return dataOutput(await acts.formatFinish({ bucket, hash, imageLongestEdge, format, splits, chunks }));
    }
    case 'tokenize': {
      const tokenize = stageSettings(config, 'tokenize', stage.params);
      const plan = await acts.tokenizeDataset({ bucket, upstream: data('formatted'), modelSource, tokenize });
      if (plan.cached) return dataOutput(plan.cached);
      const chunks = await Promise.all(
        plan.chunks.map((chunk) => acts.tokenizeChunk({ bucket, modelSource, hash: plan.hash, tokenize, chunk })),
      );
      return dataOutput(
        await acts.tokenizeFinish({ bucket, hash: plan.hash, imageTokenCount: plan.imageTokenCount, splits: plan.splits, chunks }),
      );
    }
    case 'shard':
      return dataOutput(await acts.shardDataset({ bucket, upstream: data('tokens'), shard: stageSettings(config, 'shard', stage.params) }));
    case 'reference': {
      // Scored in the dtype of the train stage(s) that use it (the config's train section).
      const train = config.train;
      const { batch_size: batchSize } = STAGE_KINDS.reference.params.parse(stage.params);
      return dataOutput(
        await acts.computeReference({
          bucket,
          modelSource: startModel,
          shards: data('shards'),
          trainSplit: splitLabels(dataset).train,
          batchSize,
          dtype: train.dtype,
          paddingFree: train.padding_free,
          lengths: config.tokenize,
        }),
      );
    }
    case 'sft':
    case 'train': {
      // A child workflow drives the training in segments and replans after out-of-memory
      // failures (workflows/training.ts); its replans reach this run's status by signal. An sft
      // stage is the same loop with the sft objective; it merges its adapter into the base only
      // when a later stage consumes that model.
      const sft = stage.kind === 'sft';
      const train = sft ? stageSettings(config, 'sft', stage.params) : stageSettings(config, 'train', stage.params);
      const mergeModel = sft && ctx.plan.stages.some((s) => s.inputs.model?.includes(stage.id));
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
                modelSource: startModel,
                shards: data('shards'),
                trainSplit: splitLabels(dataset).train,
                train,
                ...(sft && { objective: 'sft' as const, mergeModel }),
                resumeFromRunId: config.resume_from_run,
                ...(stage.inputs.reference && { reference: input('reference')[0]!.data! }),
                card: {
                  name: config.name,
                  // A train stage on an sft model names that model (its adapter applies to it).
                  modelSource: stage.inputs.model ? startModel : config.model.source,
                  modelRevision: stage.inputs.model ? null : (ctx.lineage?.modelRevision ?? null),
                  dataset: {
                    source: dataset.source,
                    revision: dataset.source === config.dataset.source ? (ctx.lineage?.datasetRevision ?? null) : null,
                    trainSplit: dataset.train_split,
                    evalSplit: dataset.eval_split,
                  },
                },
                ...(ctx.initFromRun && { initAdapter: { bucket, prefix: `${keys.finalAdapterPrefix(ctx.initFromRun, stage.id)}adapter/` } }),
              },
              activity: activityOptionsFor(ctx, stage),
              control: {
                paused: ctx.training.paused,
                checkpoint_every_steps: ctx.training.checkpointEverySteps ?? train.checkpoint_every_steps,
              },
            },
          ],
        });
        const trained = stage.inputs.model ? { ...result, baseModelSource: startModel } : result;
        return { train: trained, summary: { step: result.finalStep, ...result.metrics }, ...(result.attempts && { attempts: result.attempts }) };
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
      const adapterUri = `s3://${adapter.bucket}/${adapter.prefix}`;
      // The adapter's own base: the sft model a train stage started from, else model.source.
      const evalBase = from.train?.baseModelSource ?? modelSource;
      // Export both models once, then score every shard (held-out pairs, yes/no suite) in
      // parallel activities: more CPU workers, shorter evaluation.
      const plan = await acts.prepareEvaluation({
        runId,
        stageId: stage.id,
        bucket,
        modelSource: evalBase,
        shards: data('shards'),
        evalSplit: splitLabels(dataset).eval,
        adapterBucket: adapter.bucket,
        adapterPrefix: adapter.prefix,
        evaluate: settings,
        // Sized like the images this run's format stage produced (its params override config.format).
        imageLongestEdge: stageSettings(config, 'format', upstreamStage(ctx.plan, stage, 'format')?.params ?? {}).image_longest_edge,
        engineField: 'engine' in stage.params ? `stage "${stage.id}" params.engine` : 'evaluate.engine',
      });
      // The plan names the engine (from the model's family); plans without one are ONNX.
      const [preference, amber, generations] =
        plan.engine === 'pytorch'
          ? await scoreWithPytorch(acts, { runId, stageId: stage.id, bucket, modelSource: evalBase, adapterBucket: adapter.bucket, adapterPrefix: adapter.prefix, batchSize: settings.batch_size }, plan, { beta, settings })
          : await scoreWithOnnx(acts, { bucket, modelSource: evalBase, onnx: plan.onnx!, threads: settings.ort_threads, batchSize: settings.batch_size }, plan, { runId, stageId: stage.id, beta, settings });
      const evaluation = await acts.finishEvaluation({
        runId,
        stageId: stage.id,
        bucket,
        adapter: adapterUri,
        onnx: plan.onnx,
        baseExportCached: plan.baseExportCached,
        ...(plan.engine && { engine: plan.engine }),
        ...(plan.engineReason && { engineReason: plan.engineReason }),
        ...(plan.notComputed && { notComputed: plan.notComputed }),
        preference,
        amber,
        generations,
      });
      return {
        evaluation,
        cached: false,
        summary: {
          engine: evaluation.engine ?? 'onnxruntime-node',
          base_accuracy: evaluation.base.preference_accuracy,
          dpo_accuracy: evaluation.trained.preference_accuracy,
          ...(evaluation.amber && { base_amber_f1: evaluation.amber.base.overall!.f1, dpo_amber_f1: evaluation.amber.trained.overall!.f1 }),
          ...(plan.onnx && { base_export: plan.baseExportCached ? 'cached' : 'exported' }),
          ...(plan.notComputed?.length && { not_computed: plan.notComputed.join('; ') }),
        },
      };
    }
    case 'publish': {
      const { repo, private: isPrivate } = STAGE_KINDS.publish.params.parse(stage.params);
      const from = input('adapter')[0]!;
      const adapter = from.train ? { bucket: from.train.adapterBucket, prefix: from.train.adapterPrefix } : from.adapter!;
      // The report's copy of the card holds the evaluation; it is keyed by the train stage.
      const trainId = stage.inputs.adapter![0]!;
      const cardKey = stage.inputs.report ? input('report')[0]!.report!.modelCards?.[trainId] : undefined;
      const published = await acts.publishAdapter({
        runId,
        stageId: stage.id,
        adapter,
        ...(cardKey && { card: { bucket, key: cardKey } }),
        repo,
        private: isPrivate,
      });
      return { summary: { repo: published.repo, commit: published.commit, url: published.url } };
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
        ...(ctx.modelSource && ctx.modelSource !== config.model.source && { modelRevision: ctx.modelSource.slice(ctx.modelSource.lastIndexOf('@') + 1) }),
        dagMermaid: planToMermaidWithStates(ctx),
        timeline: ctx.timeline(),
        dataStages,
        trainings,
        evaluations,
        ...(ctx.sweepBranches?.length && {
          sweep: sweepRows(ctx.sweepBranches, Object.fromEntries(ctx.plan.stages.map((s) => [s.id, s.kind])), trainings, allEvaluations(ctx)),
        }),
      });
      return { report };
    }
  }
}

/** s3:// folder of the merged model an sft stage stored (it merges whenever a later stage consumes its model). */
function mergedModelSource(out: StageOutput): string {
  return `s3://${out.train!.adapterBucket}/${out.train!.modelPrefix}`;
}

function allEvaluations(ctx: RunContext): Record<string, EvaluateResult> {
  return Object.fromEntries([...ctx.outputs].filter(([, o]) => o.evaluation).map(([id, o]) => [id, o.evaluation!]));
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

/** The pytorch engine's scoring, fanned out like the ONNX engine's: the same three parts. */
async function scoreWithPytorch(
  acts: Activities,
  scoring: { runId: string; stageId: string; bucket: string; modelSource: string; adapterBucket: string; adapterPrefix: string; batchSize: number },
  plan: EvaluationPlan,
  at: { beta: number; settings: PipelineConfig['evaluate'] },
) {
  const { settings } = at;
  return Promise.all([
    Promise.all(plan.preferenceShards.map((shard) => acts.scorePreferenceShardTorch({ ...scoring, shard, beta: at.beta }))),
    plan.amber ? Promise.all(plan.amber.ranges.map((range) => acts.scoreAmberShardTorch({ ...scoring, suiteKey: plan.amber!.key, range }))) : Promise.resolve(null),
    // Runs started before the pytorch engine generated answers had no such activity here
    // (their plans carry no suite either, so the suite's part replays as before).
    settings.generations > 0 && plan.preferenceShards.length && patched('pytorch-generations')
      ? acts.generateExamplesTorch({ ...scoring, shard: plan.preferenceShards[0]!, count: settings.generations, maxNewTokens: settings.max_new_tokens })
      : Promise.resolve([]),
  ]);
}

/** The ONNX engine's scoring, fanned out: held-out shards, yes/no suite ranges, greedy answers. */
async function scoreWithOnnx(
  acts: Activities,
  scoring: ScoreShardInput,
  plan: EvaluationPlan,
  at: { runId: string; stageId: string; beta: number; settings: PipelineConfig['evaluate'] },
) {
  const { settings } = at;
  return Promise.all([
    Promise.all(plan.preferenceShards.map((shard) => acts.scorePreferenceShard({ ...scoring, shard, beta: at.beta }))),
    plan.amber ? Promise.all(plan.amber.ranges.map((range) => acts.scoreAmberShard({ ...scoring, suiteKey: plan.amber!.key, range }))) : Promise.resolve(null),
    settings.generations > 0 && plan.preferenceShards.length
      ? acts.generateExamples({ ...scoring, runId: at.runId, stageId: at.stageId, shard: plan.preferenceShards[0]!, count: settings.generations, maxNewTokens: settings.max_new_tokens })
      : Promise.resolve([]),
  ]);
}
