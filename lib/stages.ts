/**
 * Payloads between stages: references to stored outputs plus small summaries, never data
 * (DESIGN invariant 1). Pure types: shared by the workflow, the activities and the CLI.
 */
import type { PipelineConfig, TrainConfig } from './config.js';
import type { StageKind } from './keys.js';

/** What a data stage returns: where its output is and whether it was reused. */
export interface StageResult {
  kind: StageKind;
  /** Hash of the stage's inputs; its output lives under stages/<kind>/<hash>/. */
  hash: string;
  manifestKey: string;
  /** True when an earlier run had already produced this exact output. */
  cached: boolean;
  /** Small numbers for progress and the report (rows, dropped, tokens...). */
  summary: Record<string, number | string>;
}

export interface StageInput {
  bucket: string;
  upstream: StageResult;
}

export interface DownloadInput {
  bucket: string;
  dataset: PipelineConfig['dataset'];
}

export interface FormatInput extends StageInput {
  modelSource: string;
  format: PipelineConfig['format'];
  columns: PipelineConfig['dataset']['columns'];
  splits: { train: string; eval: string };
  limits: { train?: number; eval?: number };
}

export interface TokenizeInput extends StageInput {
  modelSource: string;
  tokenize: PipelineConfig['tokenize'];
}

export interface ShardInput extends StageInput {
  shard: PipelineConfig['shard'];
}

/** TRL's metric names, as the trainer reports them. */
export type TrainMetrics = Record<string, number>;

export interface TrainInput {
  runId: string;
  /** The train stage's id: its checkpoints and adapter live under runs/<runId>/<stageId>/. */
  stageId: string;
  bucket: string;
  modelSource: string;
  shards: StageResult;
  trainSplit: string;
  train: TrainConfig;
  /** An earlier run whose checkpoints of this stage may be continued (resume). */
  resumeFromRunId?: string;
}

export interface TrainResult {
  /** Where the adapter is: s3://<adapterBucket>/<adapterPrefix>. */
  adapterBucket: string;
  adapterPrefix: string;
  finalStep: number;
  checkpointKeys: string[];
  resumedFromStep: number | null;
  metrics: TrainMetrics;
  trainSeconds: number;
  /** Changes made after out-of-memory failures (the trainer's own backoff, then the workflow's), in order. */
  replans?: string[];
  /** The memory settings training finished with (they differ from the config after replans). */
  finalMemorySettings?: { per_device_train_batch_size: number; gradient_accumulation_steps: number; gradient_checkpointing: boolean };
}

export interface EvalMetrics {
  samples: number;
  preference_accuracy: number;
  reward_accuracy: number;
  reward_margin_mean: number;
  logp_margin_mean: number;
}

export interface EvaluateInput {
  runId: string;
  stageId: string;
  bucket: string;
  modelSource: string;
  shards: StageResult;
  evalSplit: string;
  adapterBucket: string;
  adapterPrefix: string;
  batchSize: number;
  beta: number;
}

export interface EvaluateResult {
  base: EvalMetrics;
  trained: EvalMetrics;
  metricsKey: string;
  /** s3:// location of the adapter that was evaluated. */
  adapter: string;
}

/** One stage's line in the run's timeline. */
export interface StageTimeline {
  id: string;
  kind: string;
  needs: string[];
  state: 'pending' | 'running' | 'done' | 'failed' | 'skipped';
  cached?: boolean;
  startedAt?: number;
  finishedAt?: number;
  error?: string;
  /** Out-of-memory replans of a train stage. */
  replans?: string[];
}

export interface ReportInput {
  runId: string;
  stageId: string;
  bucket: string;
  config: PipelineConfig;
  /** Mermaid flowchart of the planned DAG. */
  dagMermaid: string;
  timeline: StageTimeline[];
  dataStages: Record<string, StageResult>;
  trainings: Record<string, TrainResult>;
  /** The evaluations this report compares, by stage id. */
  evaluations: Record<string, EvaluateResult>;
}

export interface ReportResult {
  markdownKey: string;
  jsonKey: string;
}

/** What dpoPipeline returns: every reference a user needs after the run, by stage id. */
export interface PipelineResult {
  runId: string;
  bucket: string;
  timeline: StageTimeline[];
  dataStages: Record<string, StageResult>;
  trainings: Record<string, TrainResult>;
  evaluations: Record<string, EvaluateResult>;
  reports: Record<string, ReportResult>;
}
