/**
 * The data stages on the real stack (Temporal workers, MinIO), on the demo dataset:
 * - tokenize truncation as TRL does it, never through image tokens, with length statistics;
 * - shards sized by rows and bytes, read back by pyarrow, DuckDB and `datasets`;
 * - caching: a rerun is all cached; changing one stage's parameter recomputes that stage and what
 *   follows, nothing before.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { temporalEnv } from '../../contracts/connection.js';
import { createWorkers } from '../../worker/createWorkers.js';
import { trainerPython } from '../../io/deps.js';
import type { FormatManifest } from '../../activities/data/format.js';
import { readParquetTable } from '../../io/parquet.js';
import type { ShardManifest } from '../../activities/data/shard.js';
import { truncateSample, type TokenizeManifest } from '../../activities/data/tokenize.js';
import { generateDemoDataset } from '../../datagen/demoShapes.js';
import type { PipelineResult } from '../../contracts/payloads.js';
import { PIPELINE_WORKFLOW } from '../../contracts/messages.js';
import { dataConfig, runPipeline } from '../dataFixtures.js';
import { startTestStack, TEST_BUCKET, uniqueId, type TestStack } from '../harness.js';

const exec = promisify(execFile);
let stack: TestStack;
let datasetDir: string;

beforeAll(async () => {
  stack = await startTestStack();
  datasetDir = await mkdtemp(join(tmpdir(), 'dpo-data-'));
  await generateDemoDataset({ outDir: datasetDir, trainRows: 60, testRows: 12, seed: 21 });
});

afterAll(async () => {
  await stack?.stop();
});

describe('truncateSample (TRL DPO semantics, image tokens protected)', () => {
  const IMG = 9;
  const image = new Set([IMG]);
  // bos, 3 image tokens, 6 text tokens
  const prompt = [1, IMG, IMG, IMG, 20, 21, 22, 23, 24, 25];
  const sample = { prompt, chosen: [30, 31, 32, 33, 2], rejected: [40, 41, 2] };
  const settings = { max_length: 100, max_prompt_length: 100, max_completion_length: null, truncation_mode: 'keep_end' as const };

  it('keeps samples within the limits untouched', () => {
    expect(truncateSample(sample, settings, image)).toEqual({ ...sample, truncated: false });
  });
  it('max_prompt_length keeps the end of the prompt, and drops when that cuts an image token', () => {
    expect(truncateSample(sample, { ...settings, max_prompt_length: 6 }, image)).toEqual({ dropped: 'image_tokens_truncated' });
    const textFirst = { ...sample, prompt: [1, 50, 51, 52, IMG, IMG, 20] };
    expect(truncateSample(textFirst, { ...settings, max_prompt_length: 2 }, image)).toEqual({ dropped: 'image_tokens_truncated' });
    expect(truncateSample(textFirst, { ...settings, max_prompt_length: 4 }, image)).toMatchObject({ prompt: [52, IMG, IMG, 20], truncated: true });
  });
  it('max_completion_length keeps the start of the answers', () => {
    expect(truncateSample(sample, { ...settings, max_completion_length: 2 }, image)).toMatchObject({ chosen: [30, 31], rejected: [40, 41], truncated: true });
  });
  it('keep_start cuts the end of the answers to fit max_length', () => {
    expect(truncateSample(sample, { ...settings, max_length: 12, max_prompt_length: 12, truncation_mode: 'keep_start' }, image)).toEqual({
      prompt,
      chosen: [30, 31],
      rejected: [40, 41],
      truncated: true,
    });
    expect(truncateSample(sample, { ...settings, max_length: 10, max_prompt_length: 10, truncation_mode: 'keep_start' }, image)).toEqual({
      dropped: 'prompt_too_long',
    });
  });
  it('keep_end cuts the start of the prompt, and drops the sample rather than cut an image token', () => {
    expect(truncateSample(sample, { ...settings, max_length: 14, max_prompt_length: 14 }, image)).toMatchObject({ prompt: prompt.slice(1), truncated: true });
    expect(truncateSample(sample, { ...settings, max_length: 12, max_prompt_length: 12 }, image)).toEqual({ dropped: 'image_tokens_truncated' });
    const textFirst = { prompt: [1, 50, 51, 52, IMG, IMG, 20], chosen: [30, 2], rejected: [40, 41, 2] };
    expect(truncateSample(textFirst, { ...settings, max_length: 8, max_prompt_length: 8 }, image)).toEqual({
      prompt: [51, 52, IMG, IMG, 20],
      chosen: [30, 2],
      rejected: [40, 41, 2],
      truncated: true,
    });
  });
});

describe('data stages on the real stack', () => {
  let first: PipelineResult;

  it('tokenizes with TRL truncation and records length statistics', async () => {
    first = await runPipeline(
      stack,
      dataConfig(stack, inject('modelSource'), datasetDir, {
        format: { image_longest_edge: 48, chunk_rows: 16 },
        // Demo prompts are ~45 tokens (36 of them the image) and answers ~8: keep_start cuts answers.
        tokenize: { max_length: 50, max_prompt_length: 50, truncation_mode: 'keep_start' },
        shard: { samples_per_shard: 25, max_shard_bytes: 20_000 },
      }),
    );
    const manifest = await stack.deps.storage.getJson<TokenizeManifest>(TEST_BUCKET, first.dataStages.tokenize!.manifestKey);
    const train = manifest.splits.train!;
    expect(train.inputRows).toBe(60);
    expect(train.parts.length).toBe(4);
    expect(train.rows + Object.values(train.dropped).reduce((a, b) => a + b, 0)).toBe(60);
    expect(train.truncated).toBeGreaterThan(0);
    const { prompt, chosen, rejected } = train.lengths!;
    for (const stats of [prompt, chosen, rejected]) {
      expect(stats.min).toBeLessThanOrEqual(stats.p50);
      expect(stats.p50).toBeLessThanOrEqual(stats.p95);
      expect(stats.p95).toBeLessThanOrEqual(stats.max);
      expect(stats.mean).toBeGreaterThanOrEqual(stats.min);
      expect(stats.mean).toBeLessThanOrEqual(stats.max);
    }
    expect(prompt.min).toBeGreaterThan(36);
    expect(prompt.max + Math.max(chosen.max, rejected.max)).toBeLessThanOrEqual(50);
  });

  it('writes shards sized by rows and bytes that pyarrow, DuckDB and datasets read', async () => {
    const manifest = await stack.deps.storage.getJson<ShardManifest>(TEST_BUCKET, first.dataStages.shard!.manifestKey);
    const train = manifest.splits.train!;
    const tokenized = await stack.deps.storage.getJson<TokenizeManifest>(TEST_BUCKET, first.dataStages.tokenize!.manifestKey);
    expect(train.rows).toBe(tokenized.splits.train!.rows);
    expect(train.tokens).toBe(tokenized.splits.train!.tokens);
    expect(train.shards.length).toBeGreaterThan(Math.ceil(train.rows / 25)); // the byte limit closes some shards early
    expect(Math.max(...train.shards.map((s) => s.rows))).toBeLessThanOrEqual(25);
    const dir = await mkdtemp(join(tmpdir(), 'dpo-shards-'));
    const paths: string[] = [];
    for (const [i, s] of train.shards.entries()) {
      const bytes = await stack.deps.storage.getBuffer(TEST_BUCKET, s.key);
      expect(createHash('sha256').update(bytes).digest('hex')).toBe(s.sha256);
      expect(bytes.length).toBe(s.bytes);
      paths.push(join(dir, `shard-${i}.parquet`));
      await writeFile(paths[i]!, bytes);
    }
    const script = `
import json, sys
import duckdb, pyarrow.parquet as pq
from datasets import load_dataset
paths = json.loads(sys.argv[1])
out = {"pyarrow": [], "codec": {}}
for p in paths:
    f = pq.ParquetFile(p)
    out["pyarrow"].append(f.metadata.num_rows)
    for rg in range(f.metadata.num_row_groups):
        for c in range(f.metadata.num_columns):
            col = f.metadata.row_group(rg).column(c)
            out["codec"].setdefault(col.path_in_schema, set()).add(col.compression)
out["codec"] = {k: sorted(v) for k, v in out["codec"].items()}
files = ", ".join(repr(p) for p in paths)
out["duckdb"] = duckdb.sql(
    f"select count(*), sum(len(prompt_input_ids) + len(chosen_input_ids) + len(rejected_input_ids)) from read_parquet([{files}])"
).fetchall()[0]
ds = load_dataset("parquet", data_files=paths, split="train", cache_dir=sys.argv[2])
out["datasets"] = [ds.num_rows, sorted(ds.column_names), sum(len(x) for x in ds["prompt_input_ids"])]
print(json.dumps(out))
`;
    const { stdout } = await exec(trainerPython(), ['-c', script, JSON.stringify(paths), join(dir, 'hf-cache')], { env: { ...process.env, HF_DATASETS_OFFLINE: '1' } });
    const read = JSON.parse(stdout.trim().split('\n').pop()!) as { pyarrow: number[]; codec: Record<string, string[]>; duckdb: [number, number]; datasets: [number, string[], number] };
    expect(read.pyarrow).toEqual(train.shards.map((s) => s.rows));
    // zstd, except the JPEG bytes, which it cannot shrink.
    expect(read.codec).toEqual({
      sample_id: ['ZSTD'],
      'prompt_input_ids.list.item': ['ZSTD'],
      'chosen_input_ids.list.item': ['ZSTD'],
      'rejected_input_ids.list.item': ['ZSTD'],
      image: ['UNCOMPRESSED'],
      // A list column: the writer's per-column settings reach top-level columns only.
      'extra_images.list.item': ['ZSTD'],
    });
    expect(read.duckdb).toEqual([train.rows, train.tokens]);
    expect(read.datasets[0]).toBe(train.rows);
    expect(read.datasets[1]).toEqual(['chosen_input_ids', 'extra_images', 'image', 'prompt_input_ids', 'rejected_input_ids', 'sample_id']);
  });

  it('joins each sample with its own formatted image in the shards (token parts carry none)', async () => {
    const { storage } = stack.deps;
    const formatted = await storage.getJson<FormatManifest>(TEST_BUCKET, first.dataStages.format!.manifestKey);
    const imageOf = new Map<string, string>();
    for (const part of formatted.splits.train!.parts) {
      const t = readParquetTable(await storage.getBuffer(TEST_BUCKET, part.key));
      for (let i = 0; i < t.numRows; i++) imageOf.set(t.getChild('sample_id')!.get(i) as string, createHash('sha256').update(t.getChild('image')!.get(i) as Uint8Array).digest('hex'));
    }
    const tokenized = await storage.getJson<TokenizeManifest>(TEST_BUCKET, first.dataStages.tokenize!.manifestKey);
    const tokenPart = readParquetTable(await storage.getBuffer(TEST_BUCKET, tokenized.splits.train!.parts[0]!.key));
    expect(tokenPart.schema.fields.map((f) => f.name)).toEqual(['sample_id', 'prompt_input_ids', 'chosen_input_ids', 'rejected_input_ids']);
    const shards = await storage.getJson<ShardManifest>(TEST_BUCKET, first.dataStages.shard!.manifestKey);
    let checked = 0;
    for (const s of shards.splits.train!.shards) {
      const t = readParquetTable(await storage.getBuffer(TEST_BUCKET, s.key));
      for (let i = 0; i < t.numRows; i++, checked++) {
        const id = t.getChild('sample_id')!.get(i) as string;
        expect(createHash('sha256').update(t.getChild('image')!.get(i) as Uint8Array).digest('hex'), id).toBe(imageOf.get(id));
      }
    }
    expect(checked).toBe(tokenized.splits.train!.rows);
  });

  it('reuses everything on a rerun, and recomputes only from the stage whose parameter changed', async () => {
    const base = {
      format: { image_longest_edge: 48, chunk_rows: 16 },
      tokenize: { max_length: 50, max_prompt_length: 50, truncation_mode: 'keep_start' as const },
      shard: { samples_per_shard: 25, max_shard_bytes: 20_000 },
    };
    const again = await runPipeline(stack, dataConfig(stack, inject('modelSource'), datasetDir, base));
    expect(Object.values(again.dataStages).map((s) => s.cached)).toEqual([true, true, true, true]);
    // chunk_rows changes how format is split over workers, not what it produces.
    const rechunked = await runPipeline(stack, dataConfig(stack, inject('modelSource'), datasetDir, { ...base, format: { ...base.format, chunk_rows: 7 } }));
    expect(Object.values(rechunked.dataStages).map((s) => s.cached)).toEqual([true, true, true, true]);

    const changed = await runPipeline(stack, dataConfig(stack, inject('modelSource'), datasetDir, { ...base, tokenize: { ...base.tokenize, max_length: 52 } }));
    const state = Object.fromEntries(Object.entries(changed.dataStages).map(([id, s]) => [id, s.cached]));
    expect(state).toEqual({ download: true, format: true, tokenize: false, shard: false });
    expect(changed.dataStages.format!.hash).toBe(first.dataStages.format!.hash);
    expect(changed.dataStages.tokenize!.hash).not.toBe(first.dataStages.tokenize!.hash);
    const status = changed.timeline.map((t) => [t.id, t.cached ?? false]);
    expect(status).toEqual([
      ['download', true],
      ['format', true],
      ['tokenize', false],
      ['shard', false],
    ]);
  });
});

describe('fan-out', () => {
  it('spreads one stage\'s chunks over every CPU worker on the queue', async () => {
    // A second worker process's worth of workers on the same queues, with its own scratch space.
    const workDir = await mkdtemp(join(tmpdir(), 'dpo-worker2-'));
    const { workers, connection } = await createWorkers({
      temporal: temporalEnv(),
      queues: stack.queues,
      serve: { cpu: true, gpu: false },
      deps: { ...stack.deps, workDir },
      workflowBundle: { code: await readFile(inject('workflowBundlePath'), 'utf8') },
      cpuSlots: 2,
    });
    const running = Promise.all(workers.map((w: Worker) => w.run()));
    try {
      const dir = await mkdtemp(join(tmpdir(), 'dpo-fanout-'));
      await generateDemoDataset({ outDir: dir, trainRows: 64, testRows: 8, seed: 33 });
      const workflowId = uniqueId('fanout');
      const started = Date.now() - 1000;
      const config = dataConfig(stack, inject('modelSource'), dir, { format: { image_longest_edge: 48, chunk_rows: 4 } });
      const result: PipelineResult = await stack.client.workflow.execute(PIPELINE_WORKFLOW, { taskQueue: stack.queues.cpu, workflowId, args: [config] });
      const history = await stack.client.workflow.getHandle(workflowId).fetchHistory();
      const chunks = history.events!.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'formatChunk');
      expect(chunks.length).toBe(18);
      // The timeline counts every activity of the fan-out (plan, 18 chunks, finish) and their attempts.
      expect(result.timeline.find((t) => t.id === 'format')).toMatchObject({ activities: 20, attempts: 20, retries: 0 });
      expect(result.dataStages.format).not.toHaveProperty('attempt'); // taken off the payloads
      // Both workers copied this run's source files for their chunks into their own scratch space.
      const copiedSince = async (d: string) => {
        const names = await readdir(join(d, 'inputs')).catch(() => [] as string[]);
        const times = await Promise.all(names.map(async (n) => (await stat(join(d, 'inputs', n))).mtimeMs));
        return times.filter((t) => t >= started).length;
      };
      expect(await copiedSince(workDir)).toBeGreaterThan(0);
      expect(await copiedSince(stack.deps.workDir)).toBeGreaterThan(0);
    } finally {
      for (const w of workers) w.shutdown();
      await running;
      await connection.close();
    }
  });
});
