/**
 * The model card (README.md) of a trained adapter, in the shape TRL and PEFT give theirs: YAML
 * front matter the Hub reads (base_model, library_name, datasets, TRL-style tags), then the
 * recipe (the report stage appends the base-vs-DPO table to its copy). Also the id an adapter names as its base
 * (`base_model_name_or_path`): the model's source id, never a worker's folder. Pure code.
 */
import type { TrainConfig } from './config.js';
import { isHubModelSource, parseHubRef } from './hubRepo.js';

export interface ModelCardInput {
  /** The config's name (the card's title). */
  name: string;
  runId: string;
  stageId: string;
  /** `model.source` as the config wrote it. */
  modelSource: string;
  /** The commit a Hub model was pinned to. */
  modelRevision?: string | null;
  dataset: { source: string; revision?: string | null; trainSplit: string; evalSplit: string };
  train: TrainConfig;
  steps: number;
  /** The micro-batch training finished with (after any out-of-memory replans). */
  memory?: { per_device_train_batch_size: number | 'auto'; gradient_accumulation_steps: number };
  /** What was optimised; absent: dpo. */
  objective?: 'dpo' | 'sft';
}

/** What `from_pretrained` takes for the base: `Org/name` for a Hub model, else the source URI as written. */
export function baseModelId(modelSource: string): string {
  return isHubModelSource(modelSource) ? parseHubRef(modelSource, 'model.source', { bare: true, kind: 'model' }).name : modelSource;
}

/** A dataset's id as the Hub's `datasets:` metadata takes it: `owner/name` for hf://, else the URI. */
function datasetId(source: string): string {
  if (!source.startsWith('hf://')) return source;
  return parseHubRef(source, 'dataset.source').name;
}

export function effectiveBatch(train: TrainConfig, memory?: ModelCardInput['memory']): number | null {
  if (train.total_train_batch_size) return train.total_train_batch_size;
  const perDevice = memory?.per_device_train_batch_size ?? train.per_device_train_batch_size;
  const accum = memory?.gradient_accumulation_steps ?? train.gradient_accumulation_steps;
  return typeof perDevice === 'number' ? perDevice * accum : null;
}

const yamlString = (s: string) => JSON.stringify(s);

export function renderModelCard(card: ModelCardInput): string {
  const base = baseModelId(card.modelSource);
  const onHub = isHubModelSource(card.modelSource);
  const dataset = datasetId(card.dataset.source);
  const losses = typeof card.train.loss_type === 'string' ? [card.train.loss_type] : card.train.loss_type;
  const lora = card.train.lora;
  const batch = effectiveBatch(card.train, card.memory);
  const sft = card.objective === 'sft';
  const front = [
    '---',
    `base_model: ${yamlString(base)}`,
    ...(card.dataset.source.startsWith('hf://') ? ['datasets:', `- ${yamlString(dataset)}`] : []),
    'library_name: peft',
    `model_name: ${yamlString(card.name)}`,
    'pipeline_tag: image-text-to-text',
    'tags:',
    ...(onHub ? [`- ${yamlString(`base_model:adapter:${base}`)}`] : []),
    '- lora',
    '- transformers',
    '- trl',
    sft ? '- sft' : '- dpo',
    '---',
  ];
  const link = (id: string, kind: '' | 'datasets/') => (onHub || kind ? `[${id}](https://huggingface.co/${kind}${id})` : `\`${id}\``);
  const revision = (r: string | null | undefined) => (r ? ` at revision \`${r}\`` : '');
  const body = [
    `# ${card.name}`,
    '',
    `A LoRA adapter for ${link(base, '')}${revision(card.modelRevision)}, trained with ${sft ? 'SFT (supervised fine-tuning on the chosen answers, loss on the assistant tokens only)' : 'DPO (Direct Preference Optimization)'} ` +
      `on ${card.dataset.source.startsWith('hf://') ? link(dataset, 'datasets/') : `\`${dataset}\``}${revision(card.dataset.revision)} ` +
      `(train: \`${card.dataset.trainSplit}\`, held out: \`${card.dataset.evalSplit}\`). Run \`${card.runId}\`, stage \`${card.stageId}\`.`,
    '',
    '## Use',
    '',
    '```python',
    'from transformers import AutoModelForImageTextToText, AutoProcessor',
    '',
    `processor = AutoProcessor.from_pretrained(${JSON.stringify(base)}${card.modelRevision ? `, revision=${JSON.stringify(card.modelRevision)}` : ''})`,
    `model = AutoModelForImageTextToText.from_pretrained(${JSON.stringify(base)}${card.modelRevision ? `, revision=${JSON.stringify(card.modelRevision)}` : ''})`,
    'model.load_adapter("path/to/this/folder")  # or this repository\'s id',
    '```',
    '',
    '## Training',
    '',
    '| setting | value |',
    '| --- | --- |',
    ...(sft
      ? ['| loss | completion-only NLL (TRL SFTTrainer) |']
      : [`| loss | ${losses.join(' + ')}${card.train.loss_weights ? ` (weights ${card.train.loss_weights.join(', ')})` : ''} |`, `| beta | ${card.train.beta} |`]),
    `| LoRA | r ${lora.r}, alpha ${lora.alpha}, dropout ${lora.dropout}, target modules ${typeof lora.target_modules === 'string' ? lora.target_modules : lora.target_modules.join(', ')} |`,
    `| optimizer steps | ${card.steps} |`,
    `| effective batch (pairs per step) | ${batch ?? 'auto'} |`,
    `| learning rate | ${card.train.learning_rate} (${card.train.lr_scheduler_type}, warmup ${card.train.warmup_ratio}) |`,
    `| dtype | ${card.train.dtype} |`,
    '',
  ];
  return [...front, '', ...body].join('\n');
}
