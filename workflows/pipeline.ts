/**
 * dpoPipeline: download -> format -> tokenize -> shard -> train -> evaluate -> report.
 *
 * Orchestration only: every stage is an activity, payloads are object keys and summaries.
 * The input is the JSON form of a pipeline config (what `dpo run` sends, and what
 * `temporal workflow start --type dpoPipeline --input @run.json` sends).
 */
import {
  ApplicationFailure,
  defineQuery,
  proxyActivities,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities } from '../activities/index.js';
import { formatConfigProblems, parsePipelineConfig, type PipelineConfig } from '../lib/config.js';
import { FailureType, NON_RETRYABLE_FAILURES } from '../lib/errors.js';
import { isSafeKeySegment } from '../lib/keys.js';
import type { PipelineResult, StageResult } from '../lib/stages.js';



export type StageName = 'download' | 'format' | 'tokenize' | 'shard' | 'train' | 'evaluate' | 'report';
export const STAGE_ORDER: StageName[] = ['download', 'format', 'tokenize', 'shard', 'train', 'evaluate', 'report'];

export interface StageStatus {
  state: 'pending' | 'running' | 'done' | 'failed';
  cached?: boolean;
  startedAt?: number;
  finishedAt?: number;
  summary?: Record<string, number | string>;
}

export interface PipelineStatus {
  runId: string;
  name: string;
  current: StageName | null;
  stages: Record<StageName, StageStatus>;
}

export const statusQuery = defineQuery<PipelineStatus>('status');

/** Data stages: minutes of CPU work, heartbeating per chunk. Bad data fails fast. */
const DATA_STAGE_OPTIONS = {
  startToCloseTimeout: '30 minutes',
  heartbeatTimeout: '2 minutes',
  retry: {
    initialInterval: '2 seconds',
    backoffCoefficient: 2,
    maximumInterval: '1 minute',
    maximumAttempts: 5,
    nonRetryableErrorTypes: NON_RETRYABLE_FAILURES,
  },
} as const;

/**
 * Training: hours on a GPU. The heartbeat timeout notices a dead worker quickly; a retry
 * resumes from the newest complete checkpoint, so a lost worker costs one checkpoint interval.
 */
const TRAIN_OPTIONS = {
  startToCloseTimeout: '24 hours',
  heartbeatTimeout: '30 seconds',
  retry: {
    initialInterval: '1 second',
    backoffCoefficient: 2,
    maximumInterval: '30 seconds',
    maximumAttempts: 10,
    nonRetryableErrorTypes: NON_RETRYABLE_FAILURES,
  },
} as const;

export async function dpoPipeline(input: unknown): Promise<PipelineResult> {
  const config = validateInput(input);
  const runId = workflowInfo().workflowId;
  if (!isSafeKeySegment(runId)) {
    throw ApplicationFailure.nonRetryable(
      `workflow id "${runId}" cannot name a run's storage folder: use 1-128 letters, digits, ".", "_" or "-"`,
      FailureType.InvalidConfig,
    );
  }

  const status: PipelineStatus = {
    runId,
    name: config.name,
    current: null,
    stages: Object.fromEntries(STAGE_ORDER.map((s) => [s, { state: 'pending' }])) as PipelineStatus['stages'],
  };
  setHandler(statusQuery, () => status);

  const cpu = proxyActivities<Activities>({ ...DATA_STAGE_OPTIONS, taskQueue: config.queues.cpu });
  const gpu = proxyActivities<Activities>({ ...TRAIN_OPTIONS, taskQueue: config.queues.gpu });

  /** Runs one stage, keeping the status query current. */
  async function stage<T>(name: StageName, run: () => Promise<T>, describe?: (r: T) => Partial<StageStatus>): Promise<T> {
    status.current = name;
    status.stages[name] = { state: 'running', startedAt: Date.now() };
    try {
      const result = await run();
      status.stages[name] = { ...status.stages[name], state: 'done', finishedAt: Date.now(), ...describe?.(result) };
      return result;
    } catch (err) {
      status.stages[name] = { ...status.stages[name], state: 'failed', finishedAt: Date.now() };
      throw err;
    }
  }
  const dataStage = (r: StageResult) => ({ cached: r.cached, summary: r.summary });
  const bucket = config.storage.bucket;
  const modelSource = config.model.source;
  const splits = { train: config.dataset.train_split, eval: config.dataset.eval_split };

  const downloaded = await stage('download', () => cpu.downloadDataset({ bucket, dataset: config.dataset }), dataStage);
  const formatted = await stage(
    'format',
    () =>
      cpu.formatDataset({
        bucket,
        upstream: downloaded,
        modelSource,
        format: config.format,
        columns: config.dataset.columns,
        splits,
        limits: { train: config.dataset.max_train_samples, eval: config.dataset.max_eval_samples },
      }),
    dataStage,
  );
  const tokenized = await stage(
    'tokenize',
    () => cpu.tokenizeDataset({ bucket, upstream: formatted, modelSource, tokenize: config.tokenize }),
    dataStage,
  );
  const sharded = await stage('shard', () => cpu.shardDataset({ bucket, upstream: tokenized, shard: config.shard }), dataStage);

  const train = await stage(
    'train',
    () => gpu.trainModel({ runId, bucket, modelSource, shards: sharded, trainSplit: splits.train, train: config.train }),
    (r) => ({ summary: { step: r.finalStep, ...r.metrics } }),
  );
  const evaluation = await stage(
    'evaluate',
    () =>
      cpu.evaluateModel({
        runId,
        bucket,
        modelSource,
        shards: sharded,
        evalSplit: splits.eval,
        adapterPrefix: train.adapterPrefix,
        batchSize: config.evaluate.batch_size,
        beta: config.train.beta,
      }),
    (r) => ({
      summary: {
        base_accuracy: r.base.preference_accuracy,
        dpo_accuracy: r.trained.preference_accuracy,
      },
    }),
  );
  const stages = [downloaded, formatted, tokenized, sharded];
  const report = await stage('report', () => cpu.writeReport({ runId, bucket, config, stages, train, evaluation }));
  status.current = null;
  return { runId, bucket, stages, train, evaluation, report };
}

function validateInput(input: unknown): PipelineConfig {
  const parsed = parsePipelineConfig(input);
  if (!parsed.ok) {
    // Fails the workflow before any stage runs, listing every problem with its path.
    throw ApplicationFailure.nonRetryable(formatConfigProblems(parsed.problems), FailureType.InvalidConfig, parsed.problems);
  }
  return parsed.config;
}
