import { describe, expect, it } from 'vitest';
import { parsePipelineConfig } from '../../contracts/config.js';
import { isHubModelSource, parseHubRef, pinnedHubSource } from '../../contracts/hubRepo.js';
import { loadingFiles } from '../../io/hubModels.js';

const config = (source: string) => parsePipelineConfig({ name: 'x', model: { source }, dataset: { source: 's3://b/d' } });

describe('Hub model sources', () => {
  it('take hf://Org/name[@revision] and TRL\'s bare Org/name[@revision]', () => {
    expect(parseHubRef('hf://Qwen/Qwen2.5-VL-3B-Instruct', 'model.source', { kind: 'model' })).toEqual({ name: 'Qwen/Qwen2.5-VL-3B-Instruct', revision: 'main' });
    expect(parseHubRef('HuggingFaceM4/idefics2-8b@refs/pr/7', 'model.source', { bare: true, kind: 'model' })).toEqual({ name: 'HuggingFaceM4/idefics2-8b', revision: 'refs/pr/7' });
    expect(parseHubRef('hf://models/google/paligemma-3b-pt-224@v1/', 'model.source', { kind: 'model' })).toEqual({ name: 'google/paligemma-3b-pt-224', revision: 'v1' });
    expect(pinnedHubSource({ name: 'o/n', revision: 'main' }, 'a'.repeat(40))).toBe(`hf://o/n@${'a'.repeat(40)}`);
    for (const hub of ['hf://o/n', 'o/n', 'o/n@v1']) expect(isHubModelSource(hub), hub).toBe(true);
    for (const other of ['s3://b/m', '/abs/m', './m', '../m', 'file:///m']) expect(isHubModelSource(other), other).toBe(false);
  });

  it('refuse paths that leave the repository, naming model.source', () => {
    for (const bad of ['hf://o/n@../../datasets/x', 'o/n@refs/../x', 'hf://o/..', 'o/n@a//b', 'hf://o/n/../../x']) {
      expect(() => parseHubRef(bad, 'model.source', { bare: true, kind: 'model' }), bad).toThrow(`model.source "${bad}": the path leaves the repository`);
      const parsed = config(bad);
      expect(parsed.ok, bad).toBe(false);
      if (!parsed.ok) expect(parsed.problems.map((p) => `${p.path}: ${p.message}`), bad).toEqual([expect.stringMatching(/^model\.source: the path leaves the repository/)]);
    }
    const parsed = config('hf://o/n@bad rev');
    expect(parsed.ok).toBe(false);
    expect(config('o/n@v1.0').ok).toBe(true);
    expect(config('hf://o/n').ok).toBe(true);
    expect(config('models/tiny').ok).toBe(true); // a bare Org/name, as TRL reads it
    expect(config('tiny').ok).toBe(false);
  });

  it('download only what loading needs', () => {
    const files = ['config.json', 'model-00001-of-00002.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin', 'onnx/model.onnx', 'model.gguf', 'tokenizer.model', 'chat_template.jinja', 'README.md', '.gitattributes', 'flax_model.msgpack', 'merges.txt', 'examples/cat.jpg'];
    expect(loadingFiles(files.map((path) => ({ path, size: 1, etag: 'x', lfs: false }))).map((f) => f.path)).toEqual([
      'config.json',
      'model-00001-of-00002.safetensors',
      'model.safetensors.index.json',
      'tokenizer.model',
      'chat_template.jinja',
      'merges.txt',
    ]);
  });
});

describe('model cards', () => {
  it('name the base by its source id and put the recipe in a TRL-style card', async () => {
    const { baseModelId, effectiveBatch, renderModelCard } = await import('../../contracts/modelCard.js');
    expect(baseModelId(`hf://o/n@${'a'.repeat(40)}`)).toBe('o/n');
    expect(baseModelId('o/n')).toBe('o/n');
    expect(baseModelId('s3://b/models/x')).toBe('s3://b/models/x');
    const parsed = parsePipelineConfig({ name: 'x', model: { source: 's3://b/m' }, dataset: { source: 's3://b/d' }, train: { per_device_train_batch_size: 4, gradient_accumulation_steps: 3, loss_type: ['sigmoid', 'sft'] } });
    if (!parsed.ok) throw new Error('config');
    const train = parsed.config.train;
    expect(effectiveBatch(train)).toBe(12);
    expect(effectiveBatch(train, { per_device_train_batch_size: 2, gradient_accumulation_steps: 6 })).toBe(12);
    const card = renderModelCard({
      name: 'x',
      runId: 'r1',
      stageId: 'train',
      modelSource: 's3://b/m',
      dataset: { source: 's3://b/d', revision: 'abc', trainSplit: 'train', evalSplit: 'test' },
      train,
      steps: 7,
    });
    // Not a Hub model: no Hub link, no base_model:adapter tag, no datasets: entry.
    expect(card).toMatch(/^---\nbase_model: "s3:\/\/b\/m"\nlibrary_name: peft\n/);
    expect(card).not.toContain('base_model:adapter:');
    expect(card).not.toContain('datasets:');
    expect(card).toContain('| loss | sigmoid + sft |');
    expect(card).toContain('| optimizer steps | 7 |');
    expect(card).toContain('on `s3://b/d` at revision `abc` (train: `train`, held out: `test`)');
  });
});
