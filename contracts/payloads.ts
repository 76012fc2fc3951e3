/**
 * Payloads between stages: references to stored outputs plus small summaries, never data
 * (invariant 1, docs/architecture.md). Pure types: shared by the workflow, the activities and the CLI.
 */
import type { PipelineConfig, TrainConfig } from './config.js';
import type { StageKind } from './keys.js';
import type { DatasetFormat } from './preferenceFormat.js';
import type { AmberCounts, EvalMetrics, GenerativeCounts, GenerativeMetrics, ShortAnswerCounts, ShortAnswerMetrics, YesNoMetrics } from './evalMetrics.js';
import type { EvalEngine } from './evalEngine.js';
import type { RunLineage } from './lineage.js';
import type { TrainingControl } from './progress.js';
import type { Interruptions } from './attempts.js';
import type { StageAttempts } from './attempts.js';

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
  /** dataset.format: the layout declared, or auto (absent in runs started before it existed: auto). */
  datasetFormat?: DatasetFormat;
  /** The labels the two selections go by in keys and summaries (contracts/splitSpec.ts splitLabels). */
  splits: { train: string; eval: string };
  /** The specs they select (dataset.train_split / eval_split); absent: the labels are plain split names. */
  slices?: { train: string; eval: string };
  limits: { train?: number; eval?: number };
}

/** One row range of one downloaded file: the unit format fans out over CPU workers. */
export interface FormatChunkSpec {
  split: string;
  /** Position of the chunk in its split: parts are concatenated in this order. */
  index: number;
  fileKey: string;
  sourcePath: string;
  format: 'parquet' | 'jsonl';
  /** Sample ids are `<idPrefix>-<row in file>`. */
  idPrefix: string;
  offset: number;
  limit: number;
}

/** What `formatDataset` decides: the cached output, or the chunks to run then finish. */
export interface FormatPlan {
  hash: string;
  imageLongestEdge: number;
  cached?: StageResult;
  chunks: FormatChunkSpec[];
  /** Where the downloaded files are (JSONL rows name image files under it). */
  filesPrefix?: string;
}

export interface FormatChunkInput {
  bucket: string;
  modelSource: string;
  hash: string;
  imageLongestEdge: number;
  format: PipelineConfig['format'];
  columns: PipelineConfig['dataset']['columns'];
  datasetFormat?: DatasetFormat;
  filesPrefix?: string;
  chunk: FormatChunkSpec;
}

export interface FormatChunkResult {
  split: string;
  index: number;
  key: string;
  inputRows: number;
  rows: number;
  dropped: Record<string, number>;
  droppedExamples: Array<{ sampleId: string; reason: string; detail?: string }>;
  /** The layout its file was read with (contracts/preferenceFormat.ts layoutLabel). */
  layout?: string;
}

export interface FormatFinishInput {
  bucket: string;
  hash: string;
  imageLongestEdge: number;
  format: PipelineConfig['format'];
  splits: string[];
  chunks: FormatChunkResult[];
}

export interface TokenizeInput extends StageInput {
  modelSource: string;
  tokenize: PipelineConfig['tokenize'];
}

/** What `tokenizeDataset` decides: the cached output, or the formatted parts to tokenize. */
export interface TokenizePlan {
  hash: string;
  cached?: StageResult;
  imageTokenCount: number;
  splits: string[];
  chunks: Array<{ split: string; index: number; key: string }>;
}

export interface TokenizeChunkInput {
  bucket: string;
  modelSource: string;
  hash: string;
  tokenize: PipelineConfig['tokenize'];
  chunk: { split: string; index: number; key: string };
}

export interface TokenizeChunkResult {
  split: string;
  index: number;
  key: string;
  /** The formatted part these rows come from: it holds their images (token parts do not). */
  formatKey: string;
  /** Side file with the kept rows' prompt/chosen/rejected lengths, for the manifest's statistics. */
  lengthsKey: string;
  inputRows: number;
  rows: number;
  tokens: number;
  truncated: number;
  dropped: Record<string, number>;
}

export interface TokenizeFinishInput {
  bucket: string;
  hash: string;
  imageTokenCount: number;
  splits: string[];
  chunks: TokenizeChunkResult[];
}

export interface ShardInput extends StageInput {
  shard: PipelineConfig['shard'];
}

/** TRL's metric names, as the trainer reports them. */
export type { TrainMetrics } from './progress.js';
import type { TrainMetrics } from './progress.js';

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
  /** A `reference` stage's output: precomputed reference log-probs (precompute_ref_log_probs). */
  reference?: StageResult;
  /**
   * An adapter the trainer loads as its initial LoRA weights when there is no checkpoint to resume
   * (`init_from`): s3://<bucket>/<prefix> of a PEFT adapter folder.
   */
  initAdapter?: { bucket: string; prefix: string };
  /** What the final adapter's model card says about the run (its config name, sources and revisions). */
  card?: TrainCardInfo;
  /** What the trainer optimises (absent: dpo, as in runs started before sft stages existed). */
  objective?: 'dpo' | 'sft';
  /** Also store the base model with the final adapter merged in (an sft stage whose model a later stage consumes). */
  mergeModel?: boolean;
}

export interface TrainCardInfo {
  name: string;
  /** `model.source` as the config wrote it (the stages read the pinned form). */
  modelSource: string;
  modelRevision: string | null;
  dataset: { source: string; revision: string | null; trainSplit: string; evalSplit: string };
}

/**
 * One segment of a training run: from the newest usable checkpoint up to the next multiple of
 * `segmentSteps` (or to the end). Its heartbeats carry the step and the newest checkpoint key.
 */
export interface TrainSegmentInput extends TrainInput {
  /** Steps per segment; null: one epoch's worth. Segment ends are aligned to multiples of it. */
  segmentSteps: number | null;
  /** The workflow whose `trainingControl` query steers this segment (pause, checkpoint interval). */
  controlWorkflowId?: string;
  control?: TrainingControl;
}

export interface TrainSegmentResult {
  /** True when training finished: the adapter is stored. False: a segment ended at `step`. */
  done: boolean;
  step: number;
  totalSteps: number | null;
  checkpointKey: string | null;
  checkpointKeys: string[];
  resumedFromStep: number | null;
  metrics: TrainMetrics;
  trainSeconds: number;
  adapterBucket?: string;
  adapterPrefix?: string;
  /** With mergeModel: the merged model folder, s3://<adapterBucket>/<modelPrefix>. */
  modelPrefix?: string;
  /** Step metrics of every optimizer step so far (learning curves in the report). */
  stepMetricsKey?: string;
  /** s3:// location of the adapter training started from (`init_from`), when there was one. */
  initAdapter?: string;
  /** How this segment's earlier attempts ended (preempted, worker lost, failed). */
  interruptions: Interruptions;
  /** The trainer's own out-of-memory backoff in this segment: the settings it ended with. */
  backoff?: { micro_batch: number; grad_accum: number; gradient_checkpointing: boolean };
  /** Experiment tracking (train.report_to) in this segment; absent when report_to is none. */
  tracking?: TrackingSummary;
}

/**
 * Experiment tracking of a train stage: tracker calls that failed (training went on; each was
 * retried at the next step), failed event-file uploads, the seconds the trainer spent in tracker
 * calls, and where each tracker's run can be looked at: the MLflow run's page, an online W&B
 * run's page, the s3:// folder of the TensorBoard event files or of the offline W&B run.
 */
/** The memo's `trackerLinks`: train stage id -> tracker -> its run's page or files. */
export type TrackerLinks = Record<string, Record<string, string>>;

export interface TrackingSummary {
  failures: Record<string, number>;
  uploadFailures: number;
  seconds: number;
  links: Record<string, string>;
}

export interface ReferenceInput {
  bucket: string;
  modelSource: string;
  shards: StageResult;
  trainSplit: string;
  batchSize: number;
  /** The train stage's dtype: the reference is scored in the precision training would use. */
  dtype: TrainConfig['dtype'];
  /** The train stage's padding_free: scored as it would train (the same log-probs either way, so not in the cache key). */
  paddingFree?: boolean;
  /** Part of the cache key (the shards already depend on them through their own hash). */
  lengths: PipelineConfig['tokenize'];
}

export interface TrainResult {
  /** Where the adapter is: s3://<adapterBucket>/<adapterPrefix>. */
  adapterBucket: string;
  adapterPrefix: string;
  /** An sft stage whose model a later stage consumes: the merged model folder, s3://<adapterBucket>/<modelPrefix>. */
  modelPrefix?: string;
  /** What was optimised (absent: dpo). */
  objective?: 'dpo' | 'sft';
  /** The model the adapter applies to when it is not model.source: an sft stage's merged model (s3://...). */
  baseModelSource?: string;
  finalStep: number;
  checkpointKeys: string[];
  resumedFromStep: number | null;
  metrics: TrainMetrics;
  trainSeconds: number;
  /** Step metrics (TRL names) of every optimizer step so far, for learning curves: JSON [{step, epoch, metrics}]. */
  stepMetricsKey?: string;
  /** s3:// location of the adapter training started from (`init_from`), when there was one. */
  initAdapter?: string;
  /** Changes made after out-of-memory failures (the trainer's own backoff, then the workflow's), in order. */
  replans?: string[];
  /** The memory settings training finished with (they differ from the config after replans). */
  finalMemorySettings?: { per_device_train_batch_size: number | 'auto'; gradient_accumulation_steps: number; gradient_checkpointing: boolean };
  /** Segment activities, their attempts, preemptions and lost workers (contracts/attempts.ts). */
  attempts?: StageAttempts;
  /** Experiment tracking, as the last segment reported it (train.report_to; absent for none). */
  tracking?: TrackingSummary;
}

export type { EvalMetrics } from './evalMetrics.js';

export interface EvaluateInput {
  runId: string;
  stageId: string;
  bucket: string;
  modelSource: string;
  shards: StageResult;
  evalSplit: string;
  adapterBucket: string;
  adapterPrefix: string;
  evaluate: PipelineConfig['evaluate'];
  /** Thumbnail edge of the format stage, applied to the AMBER suite's images too. */
  imageLongestEdge?: number;
  /** Names `evaluate.engine` in errors: the config field or the stage's params override. */
  engineField?: string;
}

/** What the evaluation fans out over: the ONNX exports and the shards to score with them. */
export interface EvaluationPlan {
  /** Absent in plans of older workers, which only had onnxruntime-node (contracts/evalEngine.ts). */
  engine?: EvalEngine;
  /** Why that engine (the stage summary and the report name it). */
  engineReason?: string;
  /** Requested metrics the engine did not compute, each with its reason: only in plans of older workers, whose pytorch engine left out the yes/no suite and generations. */
  notComputed?: string[];
  /** s3 prefixes (in `bucket`) of the two ONNX exports, each a folder with model.onnx; null with the pytorch engine. */
  onnx: { base: string; trained: string } | null;
  /** True when the base model's export came from an earlier run (content-addressed). */
  baseExportCached: boolean;
  preferenceShards: Array<{ key: string; sha256: string; rows: number }>;
  /** Row ranges of the AMBER suite file, one per scoring activity. */
  amber: { key: string; ranges: Array<[start: number, end: number]> } | null;
  imageLongestEdge: number;
}

export interface ScoreShardInput {
  bucket: string;
  modelSource: string;
  onnx: NonNullable<EvaluationPlan['onnx']>;
  threads: number;
  batchSize: number;
}

export interface GeneratedExample {
  sampleId: string;
  question: string;
  /** The held-out pair's chosen answer, for reference. */
  chosen: string;
  base: string;
  trained: string;
  /** The (thumbnailed) image in storage, for the report. */
  imageKey: string | null;
}

/** A suite item that base and DPO answered differently (greedy), for the report's visual table. */
export interface AmberExample {
  id: string;
  /** existence | attribute | relation, or generative (a description prompt). */
  kind: string;
  question: string;
  /** "yes" / "no", or the image's objects for a description prompt. */
  truth: string;
  base: string;
  trained: string;
  imageKey: string | null;
}

/** One range of the AMBER-style suite scored by both models (summed by finishEvaluation). */
export interface AmberShardResult {
  base: AmberCounts;
  trained: AmberCounts;
  /** Greedy descriptions, CHAIR-style; absent when the range has no description prompts. */
  generative?: { base: GenerativeCounts; trained: GenerativeCounts };
  /** Greedy answers to the yes/no questions. */
  shortAnswers?: { base: ShortAnswerCounts; trained: ShortAnswerCounts };
  examples?: AmberExample[];
}

export interface EvaluateResult {
  base: EvalMetrics;
  trained: EvalMetrics;
  /** AMBER-style yes/no metrics ("no" is the positive class), overall and per question kind. */
  amber?: { base: Record<string, YesNoMetrics>; trained: Record<string, YesNoMetrics> };
  /** AMBER-style generative metrics of greedy descriptions (CHAIR, Cover, Hal), when the suite has description prompts. */
  generative?: { base: GenerativeMetrics; trained: GenerativeMetrics };
  /** Share of greedy answers to the yes/no questions that are right. */
  shortAnswers?: { base: ShortAnswerMetrics; trained: ShortAnswerMetrics };
  /** Suite items base and DPO answered differently: image, question, truth, both answers. */
  amberExamples?: AmberExample[];
  generations?: GeneratedExample[];
  metricsKey: string;
  /** s3:// location of the adapter that was evaluated. */
  adapter: string;
  onnx?: EvaluationPlan['onnx'] | undefined;
  /** The base model's ONNX export was reused from an earlier run. */
  baseExportCached?: boolean;
  engine?: EvalEngine;
  engineReason?: string;
  /** Requested metrics this engine did not compute, each with its reason: only in results of older workers (both engines now compute every metric); the report still names them. */
  notComputed?: string[];
}

/**
 * One stage's line in the run's timeline. The attempt counts (contracts/attempts.ts) are set once the
 * stage's activities report them: live for data stages, at the end for train stages.
 */
export interface StageTimeline extends Partial<StageAttempts> {
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

/** The pipeline's own run in the trackers that have one (MLflow's parent run), at its start and its unsuccessful end. */
export interface PipelineTrackingInput {
  runId: string;
  /** The pipeline's `train.report_to`. */
  reportTo: TrainConfig['report_to'];
  workflow: { workflowId: string; runId: string };
  status: 'RUNNING' | 'FAILED' | 'KILLED';
}

export interface ReportInput {
  runId: string;
  stageId: string;
  bucket: string;
  config: PipelineConfig;
  /** The commit sha a Hub model source was pinned to at run start. */
  modelRevision?: string;
  /** Mermaid flowchart of the planned DAG. */
  dagMermaid: string;
  timeline: StageTimeline[];
  dataStages: Record<string, StageResult>;
  trainings: Record<string, TrainResult>;
  /** The evaluations this report compares, by stage id. */
  evaluations: Record<string, EvaluateResult>;
  /** A sweep's comparison table, one row per branch. */
  sweep?: SweepRow[];
}

export interface ReportResult {
  markdownKey: string;
  /** Each train stage's model card with its evaluation (README.md for the adapter), by train stage id. */
  modelCards?: Record<string, string>;
  htmlKey?: string;
  jsonKey: string;
  /** Written last: the report is final only when this exists. */
  manifestKey?: string;
  /** The evaluations and the report sent to the run's trackers (train.report_to): failed calls per tracker, the parent MLflow run's page. */
  tracking?: { failures: Record<string, number>; links: Record<string, string> };
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
  /** A sweep's comparison table, one row per branch. */
  sweep?: SweepRow[];
  /** Parent run, schedule, dataset revision, config hash. */
  lineage?: RunLineage;
}

/** A value a sweep tries for one field. */
export type SweepScalar = number | string | boolean;
/** A swept field's value in one branch; a list for list-valued fields (train.loss_type). */
export type SweepValue = SweepScalar | SweepScalar[];

/** One row of the comparison table that ends a sweep. */
export interface SweepRow {
  branch: string;
  values: Record<string, SweepValue>;
  trainStage: string;
  evaluateStage?: string;
  finalStep?: number;
  /** Final training metrics (TRL names). */
  loss?: number;
  trainRewardAccuracy?: number;
  /** Held-out preference accuracy of the trained model, and of the base model. */
  heldOutAccuracy?: number;
  baseAccuracy?: number;
  rewardMargin?: number;
  adapter?: string;
}

