/**
 * What the workflow does when training runs out of memory (invariant 5, docs/architecture.md): the trainer has
 * already backed off in its own process; the workflow then restarts it from the last checkpoint
 * with a smaller footprint, one notch at a time, keeping the effective batch
 * (micro-batch x accumulation) unchanged. Pure code: runs inside the workflow.
 */
import type { TrainConfig } from './config.js';

export interface OomReplan {
  next: TrainConfig;
  /** What changed, in words, for the history, the status query and the report. */
  change: string;
}

export function replanAfterOom(current: TrainConfig): OomReplan | null {
  if (!current.gradient_checkpointing) {
    return { next: { ...current, gradient_checkpointing: true }, change: 'turned on gradient checkpointing' };
  }
  const micro = current.per_device_train_batch_size;
  // "auto": the trainer already chose the micro-batch for this GPU and backed off to 1 in-process.
  if (micro === 'auto' || micro <= 1) return null;
  // The largest micro-batch at most half the current one that divides it keeps micro x accum exact.
  let smaller = Math.floor(micro / 2);
  while (micro % smaller !== 0) smaller--;
  const accumulation = (current.gradient_accumulation_steps * micro) / smaller;
  return {
    next: { ...current, per_device_train_batch_size: smaller, gradient_accumulation_steps: accumulation },
    change: `micro-batch ${micro} -> ${smaller}, gradient accumulation ${current.gradient_accumulation_steps} -> ${accumulation}`,
  };
}

export function oomGiveUpMessage(stageId: string, tried: string[], last: TrainConfig): string {
  return (
    `stage "${stageId}" ran out of memory at micro-batch ${last.per_device_train_batch_size} with gradient checkpointing ` +
    `on; nothing smaller is left to try (tried: ${tried.join('; ') || 'the trainer\'s own backoff'}). ` +
    'Use a GPU with more memory, a shorter tokenize.max_length, smaller images (format.image_longest_edge), ' +
    'or a smaller LoRA rank.'
  );
}
