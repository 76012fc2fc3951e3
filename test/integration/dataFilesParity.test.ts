/**
 * Split resolution and split slicing against `datasets` itself: each layout is built in a temp
 * folder, resolved here through the local dataset source (io/datasetSources.ts + io/dataFiles.ts)
 * and by `datasets.load_dataset_builder` in the trainer's venv (test/fixtures/datasets_splits.py),
 * and the files per split must be the same, in the same order. Slices select rows here
 * (contracts/splitSpec.ts, the code the format stage plans with) and through `load_dataset(split=...)`;
 * the row ids must be the same.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import * as arrow from 'apache-arrow';
import { beforeAll, describe, expect, it } from 'vitest';
import { rowWindows, selectRows } from '../../contracts/splitSpec.js';
import { DataFilesError, resolveDataFiles } from '../../io/dataFiles.js';
import { openDatasetSource } from '../../io/datasetSources.js';
import { trainerPython } from '../../io/deps.js';
import { tableFromColumns, writeParquetTable } from '../../io/parquet.js';
import { fileFormatOf } from '../../io/sourceRows.js';
import type { Storage } from '../../io/storage.js';

const exec = promisify(execFile);

/** A layout: path -> rows of a data file (ids `<path>#<row>`), or the text of a README. */
type Layout = Record<string, number | string>;

const card = (yaml: string) => `---\n${yaml}\n---\n\n# A dataset card\n`;
const RLAIF_CARD = card('license: cc-by-nc-4.0\ntask_categories:\n- visual-question-answering\nsize_categories:\n- 10K<n<100K\npretty_name: RLAIF-V-Dataset');

const LAYOUTS: Record<string, { files: Layout; configs?: Array<string | undefined> }> = {
  // openbmb/RLAIF-V-Dataset: Parquet at the root, no split word, a card without configs.
  'rlaif-v': { files: { 'README.md': RLAIF_CARD, 'RLAIF-V-Dataset_000.parquet': 120, 'RLAIF-V-Dataset_001.parquet': 90, 'RLAIF-V-Dataset_002.parquet': 40 } },
  sharded: { files: { 'data/train-00000-of-00002.parquet': 7, 'data/train-00001-of-00002.parquet': 6, 'data/test-00000-of-00001.parquet': 5 } },
  'sharded-custom-split': { files: { 'data/train-00000-of-00001.parquet': 3, 'data/random-00000-of-00002.parquet': 2, 'data/random-00001-of-00002.parquet': 2 } },
  'nested-split-folders': { files: { 'data/train/a.parquet': 2, 'data/train/sub/b.parquet': 3, 'data/test/c.parquet': 2, 'data/validation/d.parquet': 1 } },
  'root-split-names': { files: { 'train.parquet': 3, 'valid.parquet': 2, 'test.parquet': 2 } },
  separators: { files: { 'my-train_file.parquet': 2, 'my.test.file.parquet': 2, 'dev.parquet': 1, 'notes/trainer.parquet': 1 } },
  aliases: { files: { 'training/x.parquet': 2, 'evaluation/y.parquet': 1, 'evaluation/z.parquet': 1 } },
  'no-separator-words': { files: { 'contest.parquet': 2, 'developers_list.parquet': 1, 'data/seqeval_results.parquet': 1 } },
  'hidden-and-special': { files: { 'train.parquet': 2, '.cache/test.parquet': 1, '__pycache__/test.parquet': 1, 'test-00001.parquet': 2 } },
  'split-folder-wins': { files: { 'test/train.parquet': 2, 'test/more.parquet': 1 } },
  jsonl: { files: { 'data/train.jsonl': 3, 'data/test.jsonl': 2 } },
  'two-configs': {
    files: {
      'README.md': card(
        'configs:\n- config_name: en\n  data_files:\n  - split: train\n    path: en/train-*.parquet\n  - split: test\n    path: en/held_out.parquet\n' +
          '- config_name: fr\n  data_dir: fr\n  default: true',
      ),
      'en/train-0.parquet': 3,
      'en/train-1.parquet': 2,
      'en/held_out.parquet': 2,
      'fr/train.parquet': 2,
      'fr/test.parquet': 1,
    },
    configs: [undefined, 'en', 'fr', 'de'],
  },
  'configs-plain-list': {
    files: { 'README.md': card('configs:\n- config_name: all\n  data_files:\n  - part_b/*.parquet\n  - part_a/*.parquet'), 'part_a/x.parquet': 1, 'part_b/y.parquet': 2, 'test.parquet': 1 },
  },
  'configs-no-default': {
    files: { 'README.md': card('configs:\n- config_name: a\n  data_files: a/*.parquet\n- config_name: b\n  data_files: b/*.parquet'), 'a/x.parquet': 1, 'b/y.parquet': 1 },
    configs: [undefined, 'b'],
  },
};

async function build(root: string, files: Layout): Promise<void> {
  for (const [path, content] of Object.entries(files)) {
    const full = join(root, path);
    await mkdir(dirname(full), { recursive: true });
    if (typeof content === 'string') {
      await writeFile(full, content);
      continue;
    }
    const ids = Array.from({ length: content }, (_, i) => `${path}#${i}`);
    if (fileFormatOf(path) === 'jsonl') await writeFile(full, ids.map((id) => JSON.stringify({ id })).join('\n') + '\n');
    else await writeFile(full, writeParquetTable(tableFromColumns({ id: { type: new arrow.Utf8(), values: ids } })));
  }
}

interface Reference {
  resolve: Array<Record<string, string[]> | { error: string }>;
  slice: Array<string[] | { error: string }>;
  absolute: Array<Array<[string, number, number]> | { error: string }>;
}

async function datasetsReference(request: object): Promise<Reference> {
  const child = exec(trainerPython(), ['test/fixtures/datasets_splits.py'], { maxBuffer: 64 << 20 });
  child.child.stdin!.end(JSON.stringify(request));
  return JSON.parse((await child).stdout) as Reference;
}

/** This project's resolution of a folder: the local source's listing and README, then dataFiles. */
async function resolveHere(dir: string, config: string | undefined): Promise<Record<string, string[]> | { error: string }> {
  // The local source reads files itself; storage is only for copying, which this does not do.
  const source = await openDatasetSource(dir, null as unknown as Storage);
  const listing = await source.listFiles();
  const readme = listing.find((f) => f.path === 'README.md');
  try {
    const { splits } = resolveDataFiles({ files: listing.map((f) => f.path), readme: readme && (await source.readText(readme)), ...(config !== undefined && { config }) });
    return Object.fromEntries(Object.entries(splits).map(([s, files]) => [s, files.filter((f) => fileFormatOf(f))]).filter(([, files]) => files!.length));
  } catch (err) {
    if (err instanceof DataFilesError) return { error: err.message };
    throw err;
  }
}

const root = await mkdtemp(join(tmpdir(), 'dpo-datafiles-'));
const cases = Object.entries(LAYOUTS).flatMap(([name, l]) => (l.configs ?? [undefined]).map((config) => ({ name, config, dir: join(root, name) })));

// Slices over the RLAIF-V layout (train: 250 rows in three files) and the sharded one (train 13, test 5).
const SLICES: Array<{ layout: string; split: string }> = [
  ...['train', 'train[:1%]', 'train[98%:]', 'train[:95%]', 'train[95%:]', 'train[:500]', 'train[10:-10]', 'train[:50%]', 'train[33%:66%]', 'train[-5%:]',
    'train[:-30%]', 'train[115:125]', 'train[-7:]', 'train[:3%](pct1_dropremainder)', 'train[1_0:2_0]', 'train[:5]+train[-5:]', 'train[0:0]']
    .map((split) => ({ layout: 'rlaif-v', split })),
  ...['train[:50%]+test', 'test + train[:2]', 'train[7:]', 'train[:1%]', 'test[60%:]', 'train[:20%](pct1_dropremainder)', 'train[:14]']
    .map((split) => ({ layout: 'sharded', split })),
];
/** Absolute boundaries past the end: datasets reads what there is, this refuses. */
const OUT_OF_RANGE = ['train[:500]', 'train[:14]'];
const ABSOLUTE_SPECS = ['train[:1%]', 'train[98%:]', 'train[:33%]', 'train[33%:67%]', 'train[-50%:-25%]', 'train[:-1%]', 'train[5%:]', 'train[:95%]', 'train[2:-2]', 'train[:7]'];
const ABSOLUTE_ROWS = [1, 2, 3, 5, 7, 10, 19, 20, 33, 50, 99, 100, 101, 150, 199, 250, 333, 1001];

let reference: Reference;

beforeAll(async () => {
  for (const [name, layout] of Object.entries(LAYOUTS)) await build(join(root, name), layout.files);
  reference = await datasetsReference({
    resolve: cases.map(({ dir, config }) => ({ dir, config })),
    slice: SLICES.map(({ layout, split }) => ({ dir: join(root, layout), split })),
    absolute: ABSOLUTE_SPECS.flatMap((spec) => ABSOLUTE_ROWS.map((rows) => ({ spec, rows }))),
  });
}, 300_000);

describe('split resolution: the same files per split as datasets', () => {
  it('covers the layouts of the Hub', () => expect(cases.length).toBeGreaterThanOrEqual(12));

  it.each(cases.map((c, i) => [`${c.name}${c.config ? ` (config ${c.config})` : ''}`, i] as const))('%s', async (_name, i) => {
    const { dir, config } = cases[i]!;
    const expected = reference.resolve[i]!;
    const actual = await resolveHere(dir, config);
    if ('error' in expected) {
      // Both refuse (a missing or unknown config): the message here names what is wrong.
      expect(actual, `datasets: ${String(expected.error)}`).toHaveProperty('error');
      expect(String((actual as { error: string }).error)).toMatch(/config/);
    } else {
      expect(actual).toEqual(expected);
    }
  });
});

/** The ids this project's planner reads for a spec, file windows and all. */
async function idsHere(dir: string, spec: string): Promise<string[]> {
  const resolved = await resolveHere(dir, undefined);
  if ('error' in resolved) throw new Error(String(resolved.error));
  const rows = LAYOUTS[dir.split('/').pop()!]!.files;
  const rowsOfFile = (split: string, i: number) => Promise.resolve(rows[resolved[split]![i]!] as number);
  const splitRows = async (split: string) => resolved[split]!.reduce((n, f) => n + (rows[f] as number), 0);
  const windows = await rowWindows(await selectRows(spec, splitRows), (split) => resolved[split]?.length ?? 0, rowsOfFile);
  return windows.flatMap((w) => Array.from({ length: w.limit }, (_, k) => `${resolved[w.split]![w.fileIndex]}#${w.offset + k}`));
}

describe('split slicing: the same rows as datasets', () => {
  it.each(SLICES.map((s, i) => [`${s.layout}: ${s.split}`, i] as const))('%s', async (_name, i) => {
    const { layout, split } = SLICES[i]!;
    const expected = reference.slice[i]!;
    const got = await idsHere(join(root, layout), split).catch((err: Error) => err);
    if (!Array.isArray(expected)) {
      // datasets refuses too (pct1_dropremainder on fewer than 100 rows, spaces around "+").
      expect(got, expected.error).toBeInstanceOf(Error);
    } else if (expected.length === 0) {
      // datasets returns no rows; an empty selection is refused here.
      expect(String(got)).toMatch(/selects no rows/);
    } else if (OUT_OF_RANGE.includes(split)) {
      // An absolute boundary past the end: datasets reads what there is, this refuses.
      expect(String(got)).toMatch(/out of range/);
    } else {
      expect(got).toEqual(expected);
    }
  });

  it('converts slices to rows with datasets rounding for many split sizes', async () => {
    let i = 0;
    for (const spec of ABSOLUTE_SPECS) {
      for (const rows of ABSOLUTE_ROWS) {
        const expected = reference.absolute[i++]!;
        const got = await selectRows(spec, async () => rows)
          .then((parts) => parts.map((p) => [p.split, p.from, p.to]))
          .catch((err: Error) => err.message);
        const what = `${spec} of ${rows} rows`;
        if (!Array.isArray(expected)) expect(typeof got, what).toBe('string');
        else if (expected.some(([, from, to]) => to <= from)) expect(got, what).toMatch(/selects no rows|out of range/);
        else if (/^train\[:7\]$/.test(spec) && rows < 7) expect(got, what).toMatch(/out of range/);
        else expect(got, what).toEqual(expected);
      }
    }
  });
});
