/**
 * The pipeline config: one schema shared by the CLI, the workflow and the activities.
 *
 * `PipelineConfigInput` is what users write (YAML or JSON, most fields optional);
 * `PipelineConfig` is the resolved form with every default filled in. Unknown keys are errors,
 * and every problem is reported with its path. Pure code: it is bundled into the workflow.
 */
import { z } from 'zod';
import { HubRefError, isHubModelSource, parseHubRef } from './hubRepo.js';
import { isSafeKeySegment } from './keys.js';
import { DATASET_FORMATS } from './preferenceFormat.js';
import { isWhole, parseSplitSpec, SplitSpecError, splitLabels, type RelativeInstruction } from './splitSpec.js';
import { DPO_ONLY_FIELDS, DTYPES, LABEL_SMOOTHING_LOSS_TYPES, LORA_DEFAULTS, LOSS_TYPES, LR_SCHEDULER_TYPES, REPORT_TO_INTEGRATIONS, TRAIN_DEFAULTS as TRAIN, type LossType } from './trainerContract.js';

const safeName = z
  .string()
  .refine(isSafeKeySegment, {
    message: 'must be 1-128 characters of letters, digits, ".", "_" or "-", and not "." or ".."',
  });

/** Where a dataset or a model comes from. Secrets never go here: they come from the worker's env. */
const sourceUri = z
  .string()
  .min(1)
  .refine((s) => /^(s3:\/\/[^/]+(\/.*)?|hf:\/\/.+|file:\/\/\/.+|\/.+|\.{1,2}\/.*)$/.test(s), {
    message: 'must be s3://bucket/prefix, hf://owner/name, file:///abs/path, /abs/path or ./relative/path',
  });

export const ColumnMappingSchema = z
  .strictObject({
    image: z.string().default('image').describe('column holding the image: struct {bytes, path}, binary, or (JSONL) a path relative to the file'),
    question: z.string().default('question').describe('column holding the user prompt'),
    chosen: z.string().default('chosen').describe('column holding the preferred answer'),
    rejected: z.string().default('rejected').describe('column holding the dispreferred answer'),
  })
  .describe("Column names of the rlaif_v layout (dataset.format); defaults follow openbmb/RLAIF-V-Dataset's. TRL's layouts use TRL's names: prompt, chosen, rejected, images");

/** A split with `datasets`' slicing syntax, checked for syntax here; its rows when the data is read. */
const splitSpec = z
  .string()
  .min(1)
  .max(256)
  .superRefine((spec, ctx) => {
    try {
      parseSplitSpec(spec);
    } catch (err) {
      if (!(err instanceof SplitSpecError)) throw err;
      ctx.addIssue({ code: 'custom', message: err.message });
    }
  });

export const DatasetSchema = z.strictObject({
  source: sourceUri.describe(
    'dataset of Parquet files or JSONL files with image files beside them: s3://bucket/prefix, a local folder, ' +
      'or hf://owner/name[@revision] (the Hub; HF_TOKEN and HF_ENDPOINT come from the worker env)',
  ),
  config: z
    .string()
    .min(1)
    .optional()
    .describe("config of the dataset (the README's configs: section); default: the one marked default, or the only one"),
  train_split: splitSpec
    .default('train')
    .describe('split used for training, sliceable as in datasets: train, train[:95%], train[10:-10], train[:50%]+test'),
  eval_split: splitSpec
    .default('test')
    .describe('held-out split used for evaluation, sliceable like train_split (e.g. train[95%:] to hold out part of train)'),
  format: z
    .enum(DATASET_FORMATS)
    .default('auto')
    .describe(
      "the dataset's layout: rlaif_v (question/chosen/rejected + image, named by columns), standard (TRL's prompt/chosen/rejected " +
        'strings + images), conversational (TRL\'s message lists + images; the chat template applied in the format stage); ' +
        'either TRL layout without a prompt column takes the shared prefix of chosen and rejected as the prompt; auto detects it from the columns',
    ),
  columns: ColumnMappingSchema.prefault({}),
  max_train_samples: z.int().positive().optional().describe('use at most this many training rows'),
  max_eval_samples: z.int().positive().optional().describe('use at most this many held-out rows'),
}).superRefine(checkSplitPair);

/**
 * Train and eval must not share rows: a whole split on one side overlaps any part of it on the
 * other (slices of one split are compared once its row count is known, in the format stage).
 * Both selections must also have labels that are safe storage names.
 */
function checkSplitPair(dataset: { train_split: string; eval_split: string }, ctx: z.RefinementCtx): void {
  let train: RelativeInstruction[];
  let evalParts: RelativeInstruction[];
  try {
    [train, evalParts] = [parseSplitSpec(dataset.train_split), parseSplitSpec(dataset.eval_split)];
  } catch {
    return; // already reported on the field itself
  }
  const shared = train.find((t) => evalParts.some((e) => e.split === t.split && (isWhole(t) || isWhole(e))));
  if (shared) {
    ctx.addIssue({
      code: 'custom',
      path: ['eval_split'],
      message:
        `dataset.train_split "${dataset.train_split}" and dataset.eval_split "${dataset.eval_split}" both select rows of split "${shared.split}": ` +
        `held-out rows must not be trained on; slice it, e.g. train_split: "${shared.split}[:95%]" and eval_split: "${shared.split}[95%:]"`,
    });
  }
  const labels = splitLabels(dataset);
  for (const [field, label] of [['train_split', labels.train], ['eval_split', labels.eval]] as const) {
    if (!isSafeKeySegment(label)) ctx.addIssue({ code: 'custom', path: [field], message: `names a split that cannot be a storage name ("${label}")` });
  }
}

/** A model also takes TRL's bare `Org/name[@revision]`; `hf://` and bare names are checked like Hub ids. */
const modelSourceUri = z
  .string()
  .min(1)
  .superRefine((s, ctx) => {
    if (isHubModelSource(s)) {
      try {
        parseHubRef(s, 'model.source', { bare: true, kind: 'model' });
      } catch (err) {
        if (!(err instanceof HubRefError)) throw err;
        ctx.addIssue({ code: 'custom', message: err.message.replace(/^model\.source "[^"]*": /, '') });
      }
      return;
    }
    if (!/^(s3:\/\/[^/]+(\/.*)?|file:\/\/\/.+|\/.+|\.{1,2}\/.*)$/.test(s)) {
      ctx.addIssue({ code: 'custom', message: 'must be hf://Org/name[@revision], Org/name[@revision], s3://bucket/prefix, file:///abs/path, /abs/path or ./relative/path' });
    }
  });

export const ModelSchema = z.strictObject({
  source: modelSourceUri.describe(
    'model folder as saved by save_pretrained: hf://Org/name[@revision] or Org/name[@revision] (the Hub: the revision is pinned to its ' +
      'commit sha at run start; HF_TOKEN and HF_ENDPOINT come from the worker env), s3://bucket/prefix or a local folder',
  ),
});

export const FormatSchema = z.strictObject({
  image_longest_edge: z
    .int()
    .min(8)
    .max(8192)
    .optional()
    .describe("pixels; images are thumbnailed to this longest edge (default: half the processor's longest edge; 8192 for Qwen2-VL-style processors, whose limit is max_pixels)"),
  max_pixels: z
    .int()
    .positive()
    .optional()
    .describe("thumbnails are also shrunk (aspect kept) to at most this many pixels (default: the processor's max_pixels for Qwen2-VL-style processors, else none)"),
  max_image_pixels: z
    .int()
    .positive()
    .default(50_000_000)
    .describe('images with more pixels (width x height) are dropped undecoded: the guard against decompression bombs'),
  jpeg_quality: z.int().min(1).max(100).default(95).describe('quality of the re-encoded JPEG thumbnails'),
  dedupe: z
    .boolean()
    .default(true)
    .describe('drop rows whose image bytes, prompt, chosen and rejected all equal an earlier row'),
  max_drop_ratio: z
    .number()
    .min(0)
    .max(1)
    .default(0.2)
    .describe('fail the stage when more than this share of rows is dropped as invalid'),
  chunk_rows: z
    .int()
    .positive()
    .default(256)
    .describe('rows per parallel chunk activity (format and tokenize fan out over CPU workers)'),
});

/** The tokenize section's fields; `TokenizeSchema` adds the cross-field check. */
export const TokenizeFields = z.strictObject({
  max_length: z
    .int()
    .positive()
    .default(1024)
    .describe('tokens; prompt + longest answer, truncated per truncation_mode (TRL DPOConfig.max_length)'),
  max_prompt_length: z
    .int()
    .positive()
    .default(512)
    .describe('tokens; longer prompts keep their last max_prompt_length tokens (TRL DPOConfig.max_prompt_length)'),
  max_completion_length: z
    .int()
    .positive()
    .nullable()
    .default(null)
    .describe('tokens; longer answers keep their first max_completion_length tokens (TRL DPOConfig.max_completion_length)'),
  truncation_mode: z
    .enum(['keep_end', 'keep_start'])
    .default('keep_end')
    .describe(
      'what max_length keeps (TRL DPOConfig.truncation_mode): keep_end cuts the start of the prompt, keep_start the end of ' +
        'the answers; a sample that would lose any image token is dropped and counted instead',
    ),
});

export const TokenizeSchema = TokenizeFields.refine((t) => t.max_prompt_length <= t.max_length, {
    message: 'max_prompt_length must not exceed max_length',
    path: ['max_prompt_length'],
  });

export const ShardSchema = z.strictObject({
  samples_per_shard: z.int().positive().default(2000).describe('at most this many rows per Parquet shard'),
  max_shard_bytes: z
    .int()
    .positive()
    .default(256 * 1024 * 1024)
    .describe('bytes; a shard is closed before its rows (images included) pass this size'),
});

export const LoraSchema = z.strictObject({
  r: z.int().positive().default(LORA_DEFAULTS.r).describe('LoRA rank'),
  alpha: z.number().positive().default(LORA_DEFAULTS.alpha).describe('LoRA scaling numerator (scale = alpha / r)'),
  dropout: z.number().min(0).lt(1).default(LORA_DEFAULTS.dropout).describe('dropout on the LoRA branch'),
  target_modules: z
    .union([z.literal('all-linear'), z.array(z.string().min(1)).min(1)])
    .default(LORA_DEFAULTS.target_modules)
    .describe('modules that get adapters; "all-linear" as in the seed recipe'),
});

// The trainer's enums and defaults (the seed recipe), from its generated config schema.
export { LOSS_TYPES };
const LABEL_SMOOTHING_USERS: readonly LossType[] = LABEL_SMOOTHING_LOSS_TYPES;

export const TrainSchema = z
  .strictObject({
  epochs: z.int().positive().default(TRAIN.epochs).describe('passes over the training shards'),
  max_steps: z.int().positive().nullable().default(TRAIN.max_steps).describe('optimizer steps; overrides epochs when set'),
  per_device_train_batch_size: z
    .union([z.int().positive(), z.literal('auto')])
    .default(TRAIN.per_device_train_batch_size)
    .describe('pairs per micro-batch, or "auto": the trainer picks it at start from the GPU memory (dpo estimate); on CPU 8'),
  total_train_batch_size: z
    .int()
    .positive()
    .optional()
    .describe('pairs per optimizer step; required with per_device_train_batch_size "auto" (the micro-batch then divides it)'),
  precompute_ref_log_probs: z
    .boolean()
    .default(TRAIN.precompute_ref_log_probs)
    .describe('compute the reference log-probs once in a cached `reference` stage (gpu queue) and skip the reference forward pass while training (TRL\'s name)'),
  gradient_accumulation_steps: z.int().positive().default(TRAIN.gradient_accumulation_steps).describe('micro-batches per optimizer step'),
  learning_rate: z.number().positive().default(TRAIN.learning_rate).describe('peak AdamW learning rate'),
  lr_scheduler_type: z.enum(LR_SCHEDULER_TYPES).default(TRAIN.lr_scheduler_type).describe('learning-rate decay after warmup (transformers\' schedulers)'),
  warmup_ratio: z.number().min(0).lt(1).default(TRAIN.warmup_ratio).describe('share of steps with linear warmup'),
  weight_decay: z.number().min(0).default(TRAIN.weight_decay).describe('AdamW decoupled weight decay (coefficient)'),
  max_grad_norm: z.number().positive().default(TRAIN.max_grad_norm).describe('gradient clipping norm'),
  beta: z.number().positive().default(TRAIN.beta).describe('DPO temperature'),
  loss_type: z
    .union([z.enum(LOSS_TYPES), z.array(z.enum(LOSS_TYPES)).min(1)])
    .default(TRAIN.loss_type)
    .describe('DPO objective by TRL\'s name (docs/training-and-durability.md#loss-types), or a list of them summed with loss_weights (MPO: ["sigmoid", "bco_pair", "sft"] with [0.8, 0.2, 1.0])'),
  loss_weights: z.array(z.number()).min(1).nullable().default(TRAIN.loss_weights).describe('one weight per loss_type entry; null: 1 each (as in TRL)'),
  label_smoothing: z
    .number()
    .min(0)
    .lt(1)
    .default(TRAIN.label_smoothing)
    .describe('robust: assumed label-flip rate (< 0.5); exo_pair: EXO epsilon, required > 0 (paper: 1e-3); aot/aot_unpaired: logistic smoothing; 0 for the other losses'),
  discopop_tau: z.number().positive().default(TRAIN.discopop_tau).describe('DiscoPOP temperature (loss_type discopop)'),
  ld_alpha: z.number().min(0).max(1).nullable().default(TRAIN.ld_alpha).describe('LD-DPO weight of the tokens past the shorter completion (1 = plain DPO); null: off'),
  use_weighting: z.boolean().default(TRAIN.use_weighting).describe('WPO: weight each pair by its length-normalised sequence probabilities under the policy'),
  lora: LoraSchema.prefault({}),
  dtype: z.enum(DTYPES).default(TRAIN.dtype).describe('base weight and autocast dtype (LoRA weights stay float32)'),
  gradient_checkpointing: z.boolean().default(TRAIN.gradient_checkpointing).describe('recompute activations in the backward pass: less memory, more compute'),
  padding_free: z
    .boolean()
    .default(TRAIN.padding_free)
    .describe('pack each micro-batch\'s pairs into one sequence without padding for the policy and reference forwards (positions restart per sample, attention stays within each sample): the padded losses, no work on padding; LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, other families refused when training starts (TRL\'s name; docs/training-and-durability.md#padding-free-batches)'),
  checkpoint_every_steps: z.int().positive().default(TRAIN.checkpoint_every_steps).describe('optimizer steps between checkpoints'),
  segment_steps: z
    .int()
    .positive()
    .nullable()
    .default(null)
    .describe('optimizer steps per training activity (the training workflow chains them); null: one epoch'),
  segments_per_workflow_run: z
    .int()
    .positive()
    .default(50)
    .describe('training activities per run of the training workflow before it continues as new (bounds its history)'),
  seed: z.int().min(0).default(TRAIN.seed).describe('seeds LoRA init, dropout and the data order (epoch e uses seed + e)'),
  report_to: z
    .union([z.enum(['none', 'all', ...REPORT_TO_INTEGRATIONS]), z.array(z.enum(REPORT_TO_INTEGRATIONS)).min(1)])
    .default('none')
    .describe(`experiment trackers for every step's metrics (TRL's report_to): "none", "all", one of ${REPORT_TO_INTEGRATIONS.join(', ')}, or a list (docs/experiment-tracking.md)`),
  })
  .refine((t) => t.per_device_train_batch_size !== 'auto' || t.total_train_batch_size !== undefined, {
    message: 'required when per_device_train_batch_size is "auto"',
    path: ['total_train_batch_size'],
  })
  .refine(
    (t) =>
      t.per_device_train_batch_size === 'auto' ||
      t.total_train_batch_size === undefined ||
      t.total_train_batch_size === t.per_device_train_batch_size * t.gradient_accumulation_steps,
    { message: 'must equal per_device_train_batch_size x gradient_accumulation_steps', path: ['total_train_batch_size'] },
  )
  .superRefine((t, ctx) => {
    for (const problem of lossProblems(t)) ctx.addIssue({ code: 'custom', ...problem });
  });

/**
 * The train settings only DPO reads (the trainer's DPO_ONLY_FIELDS that the pipeline has): an sft
 * stage does not inherit them from the train section and refuses them in its params.
 */
export const SFT_REFUSED_TRAIN_FIELDS = DPO_ONLY_FIELDS.filter((f): f is Extract<typeof f, keyof TrainConfig> => f in TrainSchema.shape);

/** What an sft stage starts from: the train section without its DPO settings (the trainer's defaults for them). */
export function sftBaseSettings(train: TrainConfig): Partial<TrainConfig> {
  return Object.fromEntries(Object.entries(train).filter(([k]) => !(SFT_REFUSED_TRAIN_FIELDS as readonly string[]).includes(k))) as Partial<TrainConfig>;
}

/** A loss setting TRL refuses (or ignores, which we refuse), with the field it names. */
export interface LossProblem {
  path: string[];
  message: string;
}

/**
 * The trainer's own rules (TrainConfig.loss_problems in the trainer's config.py), here so that
 * `dpo validate` names them before any stage runs: the combinations TRL's DPOConfig/DPOTrainer
 * reject or fail on, and label_smoothing where TRL would silently ignore it.
 */
export function lossProblems(t: {
  loss_type: LossType | LossType[];
  loss_weights: number[] | null;
  label_smoothing: number;
  use_weighting: boolean;
  ld_alpha: number | null;
  precompute_ref_log_probs: boolean;
}): LossProblem[] {
  const types: LossType[] = typeof t.loss_type === 'string' ? [t.loss_type] : t.loss_type;
  const problems: LossProblem[] = [];
  if (t.loss_weights !== null && t.loss_weights.length !== types.length) {
    problems.push({ path: ['loss_weights'], message: `${t.loss_weights.length} weights for ${types.length} loss types; give one per loss_type entry (as TRL requires)` });
  }
  if (t.label_smoothing > 0 && !types.some((x) => LABEL_SMOOTHING_USERS.includes(x))) {
    problems.push({ path: ['label_smoothing'], message: `must be 0 for these loss types; only ${LABEL_SMOOTHING_USERS.join(', ')} read it (TRL ignores it for the others)` });
  }
  if (types.includes('robust') && t.label_smoothing >= 0.5) {
    problems.push({ path: ['label_smoothing'], message: 'must be < 0.5 with loss_type robust (a flip rate)' });
  }
  if (types.includes('exo_pair') && t.label_smoothing === 0) {
    problems.push({ path: ['label_smoothing'], message: "must be > 0 with loss_type exo_pair (EXO's epsilon; the paper uses 1e-3), as TRL requires" });
  }
  if (t.use_weighting && (types.includes('aot') || types.includes('aot_unpaired'))) {
    problems.push({ path: ['use_weighting'], message: 'not available with loss_type aot or aot_unpaired, which sort the pairs (TRL refuses it too)' });
  }
  if (t.use_weighting && types.includes('sft')) {
    problems.push({ path: ['use_weighting'], message: 'not available with loss_type sft (TRL 1.16 fails on it)' });
  }
  if (t.ld_alpha !== null && t.precompute_ref_log_probs) {
    problems.push({ path: ['ld_alpha'], message: 'not available with precompute_ref_log_probs (the precomputed reference log-probs are plain sums)' });
  }
  return problems;
}

export const EvaluateSchema = z.strictObject({
  batch_size: z.int().positive().default(16).describe('pairs per forward pass'),
  amber_suite: sourceUri
    .optional()
    .describe(
      'AMBER-style yes/no hallucination suite: s3://bucket/prefix or a local folder holding Parquet with columns id, image, question, answer (yes|no), kind (existence|attribute|relation)',
    ),
  amber_questions_per_shard: z.int().positive().default(100).describe('questions per parallel scoring activity'),
  generations: z.int().min(0).max(32).default(4).describe('held-out prompts answered greedily by base and DPO for the report'),
  max_new_tokens: z.int().positive().max(256).default(16).describe('tokens per greedy answer'),
  ort_threads: z.int().positive().max(64).default(1).describe('onnxruntime intra-op threads per scoring activity'),
  engine: z
    .enum(['auto', 'onnx', 'pytorch'])
    .default('auto')
    .describe(
      'scoring engine: onnx (onnxruntime-node on ONNX exports), pytorch (the trainer PyTorch model, for the same metrics), auto (onnx unless the model family cannot be exported, e.g. Qwen2-VL)',
    ),
});

export const QueuesSchema = z.strictObject({
  cpu: z.string().min(1).default('dpo').describe('task queue of workflows and CPU stages'),
  gpu: z.string().min(1).default('dpo-gpu').describe('task queue of the train stage'),
});

export const StorageSchema = z.strictObject({
  bucket: z
    .string()
    .regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'must be a valid S3 bucket name')
    .default('dpo')
    .describe('bucket for stage outputs, checkpoints and reports (endpoint and keys come from the worker env)'),
});

/** One stage of a declared DAG (contracts/dag.ts plans and checks them). */
const durationString = z.string().regex(/^\d+(\.\d+)?\s*(ms|s|m|h|d|seconds?|minutes?|hours?|days?)$/, 'must be a duration such as "30s", "10m" or "2h"');

export const StageDeclSchema = z.strictObject({
  id: z.string().refine(isSafeKeySegment, 'must be 1-128 letters, digits, ".", "_" or "-" (it names storage folders)').describe('unique stage id; names its storage folder'),
  kind: z.string().describe('download, format, tokenize, shard, reference, train, sft, adapter, evaluate, report or publish'),
  needs: z.array(z.string()).default([]).describe('ids of the stages whose outputs this one consumes'),
  params: z.record(z.string(), z.unknown()).default({}).describe("overrides of the config section of the stage's kind"),
  queue: z.string().min(1).optional().describe('task queue override'),
  timeouts: z
    .strictObject({
      start_to_close: durationString.optional().describe("activity start-to-close timeout, e.g. '2h' (default: the kind's)"),
      heartbeat: durationString.optional().describe("activity heartbeat timeout, e.g. '30s' (default: the kind's)"),
    })
    .optional(),
  retry: z
    .strictObject({
      maximum_attempts: z.int().positive().optional().describe('attempts per activity before the stage fails (default: the kind\'s)'),
      initial_interval: durationString.optional().describe('wait before the first retry, e.g. \'1s\''),
      maximum_interval: durationString.optional().describe('longest wait between retries, e.g. \'1m\''),
    })
    .optional(),
});

/**
 * A sweep: dotted paths into the train section, each with the values to try (a value may be a
 * list, for list-valued fields such as train.loss_type). Only train settings can be swept, so every branch shares the data stages (their outputs are cached once).
 */
const sweepScalar = z.union([z.number(), z.string(), z.boolean()]);
export const SweepSchema = z
  .record(z.string(), z.array(z.union([sweepScalar, z.array(sweepScalar).min(1)])).min(1, 'list at least one value'))
  .superRefine((sweep, ctx) => {
    if (!Object.keys(sweep).length) ctx.addIssue({ code: 'custom', message: 'name at least one field, e.g. {"train.beta": [0.05, 0.1]}' });
    for (const field of Object.keys(sweep)) {
      const problem = sweepFieldProblem(field);
      if (problem) ctx.addIssue({ code: 'custom', path: [field], message: problem });
    }
  });

/** Why a sweep key is not a sweepable field, or null when it is (e.g. `train.beta`, `train.lora.r`). */
export function sweepFieldProblem(field: string): string | null {
  const [section, ...rest] = field.split('.');
  const hint = `sweepable fields are train.<field>: ${Object.keys(TrainSchema.shape).join(', ')}`;
  if (section !== 'train' || !rest.length) return `unknown sweep field "${field}": ${hint}`;
  let shape: Record<string, z.ZodType> = TrainSchema.shape;
  for (const [i, key] of rest.entries()) {
    const node = shape[key];
    if (!node) return `unknown sweep field "${field}": ${hint}`;
    const inner = unwrapObject(node);
    if (i < rest.length - 1) {
      if (!inner) return `unknown sweep field "${field}": "${rest.slice(0, i + 1).join('.')}" has no sub-fields`;
      shape = inner;
    }
  }
  return null;
}

function unwrapObject(node: z.ZodType): Record<string, z.ZodType> | null {
  let t: unknown = node;
  for (let i = 0; i < 4 && t; i++) {
    if (t instanceof z.ZodObject) return t.shape as Record<string, z.ZodType>;
    t = (t as { def?: { innerType?: unknown } }).def?.innerType;
  }
  return null;
}

export const PipelineConfigSchema = z.strictObject({
  name: safeName.describe('human name of the run; used in workflow ids'),
  model: ModelSchema,
  dataset: DatasetSchema,
  format: FormatSchema.prefault({}),
  tokenize: TokenizeSchema.prefault({}),
  shard: ShardSchema.prefault({}),
  train: TrainSchema.prefault({}),
  evaluate: EvaluateSchema.prefault({}),
  queues: QueuesSchema.prefault({}),
  storage: StorageSchema.prefault({}),
  resume_from_run: safeName
    .optional()
    .describe('id of an earlier run of this config: train stages continue from its newest complete checkpoints'),
  // -- run lifecycle: sweeps and schedule lineage --------------------------------------
  sweep: SweepSchema.optional().describe(
    'train settings to sweep, e.g. {"train.beta": [0.05, 0.1]}: one train (and evaluate) branch per combination, sharing the data stages',
  ),
  init_from: z
    .union([z.literal('previous'), safeName])
    .optional()
    .describe(
      'train stages start from an earlier adapter: "previous" (the last successful run of the schedule that started this run) or a run id',
    ),
  stages: z
    .array(StageDeclSchema)
    .min(1)
    .optional()
    .describe('the DAG of stages; without it: download -> format -> tokenize -> shard -> train -> evaluate -> report'),
});

export type PipelineConfigInput = z.input<typeof PipelineConfigSchema>;
export type PipelineConfig = z.output<typeof PipelineConfigSchema>;
export type TrainConfig = PipelineConfig['train'];

export interface ConfigProblem {
  /** Dotted path of the offending field, e.g. `train.beta`; `(root)` for the whole document. */
  path: string;
  message: string;
}

export type ConfigParseResult =
  | { ok: true; config: PipelineConfig }
  | { ok: false; problems: ConfigProblem[] };

/** Validates raw input, collecting every problem instead of stopping at the first. */
export function parsePipelineConfig(raw: unknown): ConfigParseResult {
  const result = PipelineConfigSchema.safeParse(raw, { reportInput: true });
  if (result.success) return { ok: true, config: result.data };
  const problems = result.error.issues.map((issue) => ({
    path: issue.path.length ? issue.path.join('.') : '(root)',
    message: describeIssue(issue),
  }));
  return { ok: false, problems };
}

function describeIssue(issue: z.core.$ZodIssue): string {
  if (issue.code === 'unrecognized_keys') {
    return `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
  }
  if (issue.code === 'invalid_type' && issue.input === undefined) return `required (expected ${issue.expected})`;
  return issue.message;
}

export function formatConfigProblems(problems: ConfigProblem[]): string {
  if (problems.length === 1) return `invalid pipeline config: ${problems[0]!.path}: ${problems[0]!.message}`;
  const lines = problems.map((p) => `  - ${p.path}: ${p.message}`);
  return `invalid pipeline config (${problems.length} problem${problems.length > 1 ? 's' : ''}):\n${lines.join('\n')}`;
}

/** The JSON Schema of what users may write, exported to configs/ for editors. */
export function pipelineConfigJsonSchema(): object {
  return z.toJSONSchema(PipelineConfigSchema, { io: 'input', unrepresentable: 'any' });
}
