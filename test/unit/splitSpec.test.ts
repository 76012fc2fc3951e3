/**
 * Split specs (contracts/splitSpec.ts) and the config fields that hold them. Rounding and row
 * selection are checked against datasets itself in test/integration/dataFilesParity.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { parsePipelineConfig } from '../../contracts/config.js';
import { formatSplitInput, overlapOf, parseSplitSpec, rowWindows, splitLabel, splitLabels, splitsOf, toAbsolute } from '../../contracts/splitSpec.js';

const base = { name: 'r', model: { source: 's3://m/x' }, dataset: { source: 's3://d/x' } };

describe('split specs', () => {
  it('parses datasets syntax', () => {
    expect(parseSplitSpec('train')).toEqual([{ split: 'train', unit: 'abs' }]);
    expect(parseSplitSpec('train[:1%]')).toEqual([{ split: 'train', to: 1, unit: '%', rounding: 'closest' }]);
    expect(parseSplitSpec('train[10:-10]')).toEqual([{ split: 'train', from: 10, to: -10, unit: 'abs' }]);
    expect(parseSplitSpec('train[:50%]+test')).toEqual([{ split: 'train', to: 50, unit: '%', rounding: 'closest' }, { split: 'test', unit: 'abs' }]);
    expect(parseSplitSpec('test[:20%](pct1_dropremainder)')[0]!.rounding).toBe('pct1_dropremainder');
    expect(splitsOf('train[:5]+test+train[-5:]')).toEqual(['train', 'test']);
  });

  it.each([
    ['', /unrecognized split/],
    ['train[', /unrecognized split/],
    ['train[1]', /unrecognized split/],
    ['train[a:b]', /unrecognized split/],
    ['train[:101%]', /between -100% and 100%/],
    ['train[:5](closest)', /percent slices only/],
    ['train[:5%](nearest)', /closest or pct1_dropremainder/],
    ['train[:5%]+test[:5%](pct1_dropremainder)', /different roundings/],
    ['train + test', /unrecognized split/],
    ['my-split', /unrecognized split/],
  ])('refuses %j', (spec, message) => {
    expect(() => parseSplitSpec(spec)).toThrow(message);
  });

  it('refuses empty and out-of-range selections', () => {
    expect(() => toAbsolute('train[5:5]', { train: 10 })).toThrow(/selects no rows/);
    expect(() => toAbsolute('train[:1%]', { train: 10 })).toThrow(/selects no rows/);
    expect(() => toAbsolute('train[:500]', { train: 100 })).toThrow(/out of range: split "train" has 100 rows/);
    expect(() => toAbsolute('validation', { train: 100 })).toThrow(/unknown split "validation"/);
    expect(toAbsolute('train[98%:]', { train: 250 })).toEqual([{ split: 'train', from: 245, to: 250 }]);
    // Python's round: 2.5 -> 2.
    expect(toAbsolute('train[:1%]', { train: 250 })).toEqual([{ split: 'train', from: 0, to: 2 }]);
  });

  it('finds shared rows', () => {
    expect(overlapOf(toAbsolute('train[:95%]', { train: 100 }), toAbsolute('train[95%:]', { train: 100 }))).toBeUndefined();
    expect(overlapOf(toAbsolute('train[:96%]', { train: 100 }), toAbsolute('train[95%:]', { train: 100 }))).toEqual({ split: 'train', from: 95, to: 96 });
    expect(overlapOf(toAbsolute('train[:5]', { train: 9, test: 9 }), toAbsolute('test[:5]', { train: 9, test: 9 }))).toBeUndefined();
  });

  it('maps a selection onto file windows', async () => {
    const files = [4, 3, 5];
    const windows = await rowWindows(toAbsolute('train[3:9]', { train: 12 }), () => files.length, async (_s, i) => files[i]!);
    expect(windows).toEqual([
      { split: 'train', fileIndex: 0, offset: 3, limit: 1 },
      { split: 'train', fileIndex: 1, offset: 0, limit: 3 },
      { split: 'train', fileIndex: 2, offset: 0, limit: 2 },
    ]);
    const limited = await rowWindows(toAbsolute('train[3:9]', { train: 12 }), () => files.length, async (_s, i) => files[i]!, 2);
    expect(limited).toEqual([{ split: 'train', fileIndex: 0, offset: 3, limit: 1 }, { split: 'train', fileIndex: 1, offset: 0, limit: 1 }]);
  });

  it('labels selections with safe storage names, plain names unchanged', () => {
    expect(splitLabel('train')).toBe('train');
    expect(splitLabel('train[:95%]')).toBe('train._95pct');
    expect(splitLabel('train[95%:]')).toBe('train.95pct_');
    expect(splitLabel('train[10:-10]+test')).toBe('train.10_-10.and.test');
    expect(splitLabels({ train_split: 'train[:5]', eval_split: 'train[5:]' })).toEqual({ train: 'train._5', eval: 'train.5_' });
    expect(formatSplitInput({ train_split: 'train', eval_split: 'test' })).toEqual({ splits: { train: 'train', eval: 'test' } });
    expect(formatSplitInput({ train_split: 'train[:95%]', eval_split: 'train[95%:]' }).slices).toEqual({ train: 'train[:95%]', eval: 'train[95%:]' });
  });
});

describe('dataset split fields in the config', () => {
  const issues = (dataset: Record<string, unknown>) => {
    const r = parsePipelineConfig({ ...base, dataset: { ...base.dataset, ...dataset } });
    return r.ok ? [] : r.problems.map((i) => `${i.path}: ${i.message}`);
  };

  it('accepts slices and a config name', () => {
    expect(issues({ train_split: 'train[:95%]', eval_split: 'train[95%:]', config: 'en' })).toEqual([]);
    expect(issues({ train_split: 'train[:50%]+test', eval_split: 'validation' })).toEqual([]);
  });

  it('names the field of a malformed slice', () => {
    expect(issues({ train_split: 'train[:200%]' })).toEqual([expect.stringMatching(/^dataset\.train_split: .*between -100% and 100%/)]);
    expect(issues({ eval_split: 'train[x]' })).toEqual([expect.stringMatching(/^dataset\.eval_split: unrecognized split/)]);
  });

  it('refuses train and eval reading one whole split, naming both fields', () => {
    const [issue] = issues({ train_split: 'train', eval_split: 'train[95%:]' });
    expect(issue).toMatch(/dataset\.train_split "train" and dataset\.eval_split "train\[95%:\]" both select rows of split "train"/);
    expect(issues({ train_split: 'train', eval_split: 'train' })).toHaveLength(1);
  });
});
