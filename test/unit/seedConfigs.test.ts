import { readFile } from 'node:fs/promises';
import YAML from 'yaml';
import { describe, expect, it } from 'vitest';
import { parsePipelineConfig } from '../../contracts/config.js';
import { planPipeline, standardChain } from '../../contracts/dag.js';

async function load(name: string) {
  const parsed = parsePipelineConfig(YAML.parse(await readFile(new URL(`../../configs/${name}`, import.meta.url), 'utf8')));
  if (!parsed.ok) throw new Error(`${name}: ${JSON.stringify(parsed.problems)}`);
  return parsed.config;
}

describe('seed configs', () => {
  it.each(['idefics2-8b.yaml', 'paligemma-3b.yaml', 'llava-1.5-7b.yaml', 'qwen2.5-vl-7b.yaml', 'qwen3-vl-8b.yaml', 'llava-next-mistral-7b.yaml', 'gemma-3-4b.yaml'])('%s is valid and plans the standard chain', async (name) => {
    const config = await load(name);
    expect(config.train.dtype).toBe('bfloat16');
    expect(config.train.lora.target_modules).toBe('all-linear');
    expect(config.model.source).toMatch(/^hf:\/\//);
    expect(() => planPipeline(standardChain(config), config)).not.toThrow();
  });

  it("idefics2-8b.yaml holds the seed's settings", async () => {
    const config = await load('idefics2-8b.yaml');
    expect(config.model.source).toBe('hf://HuggingFaceM4/idefics2-8b');
    expect(config.dataset.source).toBe('hf://openbmb/RLAIF-V-Dataset');
    // RLAIF-V has only a train split (its files carry no split word): a slice is held out.
    expect([config.dataset.train_split, config.dataset.eval_split]).toEqual(['train[:95%]', 'train[95%:]']);
    expect(config.train).toMatchObject({
      per_device_train_batch_size: 2,
      gradient_accumulation_steps: 32,
      gradient_checkpointing: true,
      epochs: 1,
      dtype: 'bfloat16',
      lora: { r: 16, alpha: 32, target_modules: 'all-linear' },
    });
    // Images at half the processor's longest edge: the format stage's default (no override).
    expect(config.format.image_longest_edge).toBeUndefined();
  });

  it('accepts per_device_train_batch_size "auto" with the total batch, and names the missing field', () => {
    const base = { name: 'x', model: { source: 's3://b/m' }, dataset: { source: './d' } };
    const ok = parsePipelineConfig({ ...base, train: { per_device_train_batch_size: 'auto', total_train_batch_size: 64 } });
    expect(ok.ok).toBe(true);
    const missing = parsePipelineConfig({ ...base, train: { per_device_train_batch_size: 'auto' } });
    expect(missing.ok ? [] : missing.problems).toEqual([{ path: 'train.total_train_batch_size', message: 'required when per_device_train_batch_size is "auto"' }]);
  });
});
