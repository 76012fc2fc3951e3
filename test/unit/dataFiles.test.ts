/**
 * The split resolution port (io/dataFiles.ts) against the cases of datasets' own
 * tests/test_data_files.py (test_get_data_files_patterns, the hidden and special folder rules,
 * resolve_pattern on its complex_data_dir fixture). Parity with datasets itself, run on real
 * folders, is test/integration/dataFilesParity.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { DataFilesError, getDataPatterns, resolveDataFiles, resolvePattern, sanitizePatterns } from '../../io/dataFiles.js';

const files = (v: string | string[]) => (Array.isArray(v) ? v : [v]);

// test_get_data_files_patterns: each layout and the files datasets assigns to each split, in order.
const LAYOUTS: Array<Record<string, string | string[]>> = [
  { train: 'train.txt', validation: 'valid.txt', test: 'test.txt' },
  { train: 'data/train.txt', validation: 'data/valid.txt', test: 'data/test.txt' },
  { train: 'train/split.txt', validation: 'valid/split.txt', test: 'test/split.txt' },
  {
    train: [0, 1, 2].map((i) => `data/train_${i}.txt`),
    validation: [0, 1, 2].map((i) => `data/validation_${i}.txt`),
    test: [0, 1, 2].map((i) => `data/test_${i}.txt`),
  },
  {
    train: [0, 1, 2].map((i) => `data/train-0000${i}-of-00003.txt`),
    validation: [0, 1, 2].map((i) => `data/validation-0000${i}-of-00003.txt`),
    test: [0, 1, 2].map((i) => `data/test-0000${i}-of-00003.txt`),
    random: [0, 1, 2].map((i) => `data/random-0000${i}-of-00003.txt`),
  },
  { train: 'dataset.txt' },
  { train: 'data/dataset.txt' },
  { train: ['data/image.jpg', 'metadata.jsonl'] },
  { train: ['data/image.jpg', 'metadata.csv'] },
  { train: 'my_train_dir/dataset.txt' },
  { train: 'data/my_train_file.txt' },
  { test: 'my_test_dir/dataset.txt' },
  { test: 'data/my_test_file.txt' },
  { validation: 'my_validation_dir/dataset.txt' },
  { validation: 'data/my_validation_file.txt' },
  { train: 'train_dir/dataset.txt' },
  { train: 'data/train_file.txt' },
  { test: 'test_dir/dataset.txt' },
  { test: 'data/test_file.txt' },
  { validation: 'validation_dir/dataset.txt' },
  { validation: 'data/validation_file.txt' },
  { train: 'my_train/dataset.txt' },
  { train: 'data/my_train.txt' },
  { test: 'my_test/dataset.txt' },
  { test: 'data/my_test.txt' },
  { validation: 'my_validation/dataset.txt' },
  { validation: 'data/my_validation.txt' },
  { test: 'eval.txt' },
  { test: 'data/eval.txt' },
  { test: 'eval/dataset.txt' },
  { validation: 'dev.txt' },
  { validation: 'data/dev.txt' },
  { validation: 'dev/dataset.txt' },
  { validation: 'val.txt' },
  { validation: 'data/val.txt' },
  { train: 'train.parquet', validation: 'valid.parquet', test: 'test.parquet' },
  { train: 'developers_list.txt' },
  { train: 'data/seqeval_results.txt' },
  { train: 'contest.txt' },
  { test: 'my.test.file.txt' },
  { test: 'my-test-file.txt' },
  { test: 'my_test_file.txt' },
  { test: 'my test file.txt' },
  { test: 'my-test_file.txt' },
  { test: 'test00001.txt' },
  { test: 'test/train.txt' },
];

describe('datasets split patterns (get_data_patterns)', () => {
  for (const basePath of ['', 'my_dir']) {
    it.each(LAYOUTS.map((l) => [JSON.stringify(l), l] as const))(`%s under "${basePath}"`, (_name, layout) => {
      const prefix = basePath ? `${basePath}/` : '';
      const all = Object.values(layout).flatMap(files).map((f) => prefix + f).sort();
      const patterns = getDataPatterns(all, basePath);
      expect(Object.keys(patterns)).toEqual(Object.keys(layout));
      for (const [split, ps] of Object.entries(patterns)) {
        const matched = ps.flatMap((p) => resolvePattern(p, all, basePath));
        expect(matched).toEqual(files(layout[split]!).map((f) => prefix + f));
      }
    });
  }

  it('reads the sharded pattern when the parent folder name ends in "data" too', () => {
    const all = ['data/train-00001-of-00009.parquet'];
    expect(getDataPatterns(all)).toEqual({ train: ['data/train-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]*.*'] });
  });

  it('finds nothing in a folder without data files', () => {
    expect(() => getDataPatterns(['README.md', '.hidden/x.parquet'])).toThrow(DataFilesError);
  });
});

describe('datasets resolve_pattern', () => {
  // test_data_files.py's complex_data_dir fixture.
  const complex = [
    'data/train.txt', 'data/test.txt', 'README.md', '.dummy', 'data/subdir/train.txt', 'data/subdir/test.txt',
    'data/.dummy_subdir/train.txt', 'data/.dummy_subdir/test.txt', '__pycache__/script.py',
  ].sort();
  it.each([
    ['*', 0], ['**', 4], ['**/*', 4], ['*.txt', 0], ['data/*', 2], ['data/**', 4], ['**/*.txt', 4], ['**/train.txt', 2],
  ] as const)('%s matches %i files', (pattern, n) => {
    expect(resolvePattern(pattern, complex)).toHaveLength(n);
  });

  it('returns hidden files and folders only when the pattern names them', () => {
    expect(resolvePattern('*dummy', complex)).toEqual([]);
    expect(resolvePattern('.dummy', complex)).toEqual(['.dummy']);
    expect(resolvePattern('data/*dummy_subdir/train.txt', complex)).toEqual([]);
    expect(resolvePattern('data/.dummy_subdir/train.txt', complex)).toHaveLength(1);
    expect(resolvePattern('*/.dummy_subdir/train.txt', complex)).toHaveLength(1);
    expect(resolvePattern('.*/*', ['.hidden_dir/a.txt'])).toHaveLength(1);
    expect(resolvePattern('.*/*', ['.hidden_dir/.hidden_file.txt'])).toHaveLength(0);
    expect(resolvePattern('.*/.*', ['.hidden_dir/.hidden_file.txt'])).toHaveLength(1);
  });

  it('returns files in __special__ folders only when the pattern names them', () => {
    expect(resolvePattern('**', ['__pycache__/b.txt'])).toEqual([]);
    expect(resolvePattern('*/b.txt', ['__pycache__/b.txt'])).toEqual([]);
    expect(resolvePattern('__pycache__/*', ['__pycache__/b.txt', '__pycache__/__b.txt'])).toHaveLength(2);
    expect(resolvePattern('__*/*', ['__pycache__/__b.txt'])).toHaveLength(1);
    expect(resolvePattern('*', ['__b.txt'])).toHaveLength(1);
  });

  it('keeps only the allowed extensions when given', () => {
    expect(resolvePattern('**', complex, '', ['.txt'])).toHaveLength(4);
    expect(resolvePattern('**', complex, '', ['.blablabla'])).toHaveLength(0);
  });
});

describe('README configs', () => {
  it('sanitizes data_files as datasets does', () => {
    expect(sanitizePatterns('a.parquet')).toEqual({ train: ['a.parquet'] });
    expect(sanitizePatterns(['a', 'b'])).toEqual({ train: ['a', 'b'] });
    expect(sanitizePatterns([{ split: 'train', path: 'x/*' }, { split: 'test', path: ['y', 'z'] }])).toEqual({ train: ['x/*'], test: ['y', 'z'] });
    expect(() => sanitizePatterns([{ split: 'train', path: 'x' }, { split: 'train', path: 'y' }])).toThrow(/duplicated/);
    expect(() => sanitizePatterns([{ split: 'train' }])).toThrow(/split: <name>, path/);
  });

  const readme = (yaml: string) => `---\n${yaml}\n---\n# card\n`;
  const two = readme(
    'configs:\n- config_name: en\n  data_files:\n  - split: train\n    path: en/a-*.parquet\n  - split: test\n    path: en/b.parquet\n' +
      '- config_name: fr\n  data_dir: fr\n  default: true',
  );
  const listing = ['en/a-0.parquet', 'en/a-1.parquet', 'en/b.parquet', 'fr/train.parquet', 'fr/test.parquet', 'README.md'];

  it('picks the config by name, by default: true, and refuses unknown or ambiguous names', () => {
    expect(resolveDataFiles({ files: listing, readme: two, config: 'en' })).toEqual({
      config: 'en',
      splits: { train: ['en/a-0.parquet', 'en/a-1.parquet'], test: ['en/b.parquet'] },
    });
    expect(resolveDataFiles({ files: listing, readme: two })).toEqual({ config: 'fr', splits: { train: ['fr/train.parquet'], test: ['fr/test.parquet'] } });
    expect(() => resolveDataFiles({ files: listing, readme: two, config: 'de' })).toThrow(/config "de" not found; the dataset's configs are: en, fr/);
    const noDefault = readme('configs:\n- config_name: a\n  data_files: en/*\n- config_name: b\n  data_files: fr/*');
    expect(() => resolveDataFiles({ files: listing, readme: noDefault })).toThrow(/config name is missing/);
    expect(() => resolveDataFiles({ files: listing, config: 'x' })).toThrow(/only config is "default"/);
  });

  it('reads the RLAIF-V layout (root Parquet files, no configs, no split word) as train', () => {
    const rlaif = ['README.md', 'RLAIF-V-Dataset_000.parquet', 'RLAIF-V-Dataset_001.parquet'];
    expect(resolveDataFiles({ files: rlaif, readme: readme('license: cc-by-nc-4.0\ntask_categories:\n- visual-question-answering') })).toEqual({
      config: 'default',
      splits: { train: ['RLAIF-V-Dataset_000.parquet', 'RLAIF-V-Dataset_001.parquet'] },
    });
  });

  it('refuses data_files and data_dir that leave the dataset', () => {
    for (const bad of ['../other/*.parquet', '/etc/x.parquet', 'hf://datasets/other/repo/x.parquet', 'a/../../x.parquet']) {
      expect(() => resolveDataFiles({ files: listing, readme: readme(`configs:\n- config_name: x\n  data_files: "${bad}"`) }), bad).toThrow(/leaves the dataset/);
    }
    expect(() => resolveDataFiles({ files: listing, readme: readme('configs:\n- config_name: x\n  data_dir: ../up') })).toThrow(/leaves the dataset/);
  });

  it('names a literal data file that is missing', () => {
    expect(() => resolveDataFiles({ files: listing, readme: readme('configs:\n- config_name: x\n  data_files: nope.parquet') })).toThrow(/nope.parquet/);
  });
});

describe('hf:// sources', () => {
  it('parse owner/name and a revision, and refuse paths that leave the repository', async () => {
    const { parseHubUri } = await import('../../io/datasetSources.js');
    expect(parseHubUri('hf://openbmb/RLAIF-V-Dataset')).toEqual({ name: 'openbmb/RLAIF-V-Dataset', revision: 'main' });
    expect(parseHubUri('hf://datasets/openbmb/RLAIF-V-Dataset@v1/')).toEqual({ name: 'openbmb/RLAIF-V-Dataset', revision: 'v1' });
    expect(parseHubUri('hf://o/n@refs/pr/1')).toEqual({ name: 'o/n', revision: 'refs/pr/1' });
    for (const bad of ['hf://o/n@../../models/x', 'hf://o/n@/etc', 'hf://o/n@a//b', 'hf://o/..', 'hf://o/n@refs/../x']) {
      expect(() => parseHubUri(bad), bad).toThrow(/leaves the repository/);
    }
    expect(() => parseHubUri('hf://o/n/../../x')).toThrow(/expected hf:\/\/owner\/name/);
  });
});
