import { readFile } from 'node:fs/promises';
import YAML from 'yaml';
import { describe, expect, it } from 'vitest';
import { parsePipelineConfig, pipelineConfigJsonSchema } from '../../contracts/config.js';

const minimal = { name: 'x', model: { source: 's3://b/m' }, dataset: { source: './data' } };

describe('pipeline config', () => {
  it('fills every default of a minimal config', () => {
    const parsed = parsePipelineConfig(minimal);
    expect(parsed.ok).toBe(true);
    if (!parsed.ok) return;
    expect(parsed.config.train.loss_type).toBe('sigmoid');
    expect(parsed.config.train.per_device_train_batch_size).toBe(2);
    expect(parsed.config.train.gradient_accumulation_steps).toBe(32);
    expect(parsed.config.train.lora.target_modules).toBe('all-linear');
    expect(parsed.config.dataset.columns).toEqual({ image: 'image', question: 'question', chosen: 'chosen', rejected: 'rejected' });
    expect(parsed.config.queues).toEqual({ cpu: 'dpo', gpu: 'dpo-gpu' });
  });

  it('lists every problem with its path', () => {
    const parsed = parsePipelineConfig({
      name: 'bad/name',
      model: {},
      dataset: { source: 'ftp://nope', train_split: '..' },
      tokenize: { max_length: 10, max_prompt_length: 20 },
      train: { beta: 0, lora: { r: 0 }, dtype: 'int8' },
      storage: { bucket: 'Bad_Bucket' },
      unknown_section: {},
    });
    expect(parsed.ok).toBe(false);
    if (parsed.ok) return;
    const paths = parsed.problems.map((p) => p.path);
    expect(paths).toEqual(
      expect.arrayContaining([
        'name',
        'model.source',
        'dataset.source',
        'dataset.train_split',
        'tokenize.max_prompt_length',
        'train.beta',
        'train.lora.r',
        'train.dtype',
        'storage.bucket',
        '(root)',
      ]),
    );
    expect(parsed.problems.find((p) => p.path === 'model.source')!.message).toBe('required (expected string)');
    expect(parsed.problems.find((p) => p.path === '(root)')!.message).toBe('unknown key "unknown_section"');
  });

  it('ships a demo config whose JSON twin (the Temporal CLI input) says the same', async () => {
    const yaml = YAML.parse(await readFile('configs/demo.yaml', 'utf8'));
    const json = JSON.parse(await readFile('configs/demo.json', 'utf8'));
    expect(json).toEqual(yaml);
    expect(parsePipelineConfig(yaml).ok).toBe(true);
  });

  it('exports the JSON Schema that configs/pipeline.schema.json holds', async () => {
    const stored = JSON.parse(await readFile('configs/pipeline.schema.json', 'utf8'));
    expect(stored).toEqual(pipelineConfigJsonSchema());
  });
});
