import { describe, expect, it } from 'vitest';
import { parsePipelineConfig, type TrainConfig } from '../../contracts/config.js';
import { replanAfterOom } from '../../contracts/policies.js';

function train(overrides: Partial<TrainConfig>): TrainConfig {
  const parsed = parsePipelineConfig({ name: 'x', model: { source: 's3://b/m' }, dataset: { source: './d' }, train: overrides });
  if (!parsed.ok) throw new Error('bad');
  return parsed.config.train;
}

describe('replanAfterOom', () => {
  it('turns on gradient checkpointing first, then halves the micro-batch keeping the effective batch', () => {
    let t = train({ per_device_train_batch_size: 8, gradient_accumulation_steps: 4, gradient_checkpointing: false });
    const changes: string[] = [];
    for (let plan = replanAfterOom(t); plan; plan = replanAfterOom(t)) {
      changes.push(plan.change);
      t = plan.next;
      expect((t.per_device_train_batch_size as number) * t.gradient_accumulation_steps).toBe(32);
    }
    expect(changes).toEqual([
      'turned on gradient checkpointing',
      'micro-batch 8 -> 4, gradient accumulation 4 -> 8',
      'micro-batch 4 -> 2, gradient accumulation 8 -> 16',
      'micro-batch 2 -> 1, gradient accumulation 16 -> 32',
    ]);
  });

  it('keeps the effective batch exact for odd micro-batches', () => {
    const plan = replanAfterOom(train({ per_device_train_batch_size: 6, gradient_accumulation_steps: 1, gradient_checkpointing: true }))!;
    expect(plan.next.per_device_train_batch_size).toBe(3);
    const again = replanAfterOom(plan.next)!;
    expect((again.next.per_device_train_batch_size as number) * again.next.gradient_accumulation_steps).toBe(6);
  });

  it('leaves an "auto" micro-batch to the trainer (it chose it for the GPU and backed off in-process)', () => {
    const t = train({ per_device_train_batch_size: 'auto', total_train_batch_size: 64, gradient_checkpointing: true });
    expect(replanAfterOom(t)).toBeNull();
  });
});
