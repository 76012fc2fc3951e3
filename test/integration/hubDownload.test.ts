/**
 * hf:// sources through @huggingface/hub against a local HTTP server started here that serves a
 * dataset repository in the Hub's URL layout (revision info with its sha, tree listing,
 * resolve/<rev>/<path> with ranges). The worker's HF_TOKEN and HF_ENDPOINT come from its env.
 * Checked: the revision is resolved to a commit sha, pinned and recorded; the token is sent but
 * never reaches the workflow history; a download that fails midway is retried by Temporal and
 * skips the files it already stored; a missing repository is a clear non-retryable error.
 * A commit in openbmb/RLAIF-V-Dataset's exact layout, written by `datasets` (root Parquet files
 * without a split word, a card without configs:), resolves to one train split, as `datasets`
 * reads it, and trains through the whole pipeline with train[:95%] held in and train[95%:] out.
 * An s3:// copy of it with a README configs: section is split as the chosen dataset.config says.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { DownloadManifest } from '../../activities/data/download.js';
import { generateDemoDataset } from '../../datagen/demoShapes.js';
import { dataConfig, runPipeline } from '../dataFixtures.js';
import { startTestStack, TEST_BUCKET, uniqueId, type TestStack } from '../harness.js';
import { PIPELINE_WORKFLOW } from '../../contracts/messages.js';
import { trainerPython } from '../../io/deps.js';
import type { FormatManifest } from '../../activities/data/format.js';

const TOKEN = 'hf_test_secret_token_0123456789';
const MAIN_SHA = 'a'.repeat(40);
const V1_SHA = 'b'.repeat(40);
const RLAIF_SHA = 'c'.repeat(40);

/** One dataset repo with two commits: `main` (current) and the tag `v1` (older, fewer rows). */
interface Repo {
  name: string;
  commits: Record<string, Map<string, Buffer>>;
  refs: Record<string, string>;
}

class FakeHub {
  readonly requests: string[] = [];
  /** Paths whose next N full downloads fail with a 500 midway. */
  readonly failures = new Map<string, number>();
  private server!: Server;
  constructor(private readonly repo: Repo) {}

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async start(): Promise<void> {
    this.server = createServer((req, res) => this.handle(req, res));
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
  }

  async stop(): Promise<void> {
    await new Promise((resolve) => this.server.close(resolve));
  }

  private sha(rev: string): string | undefined {
    return this.repo.commits[rev] ? rev : this.repo.refs[rev];
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url!, 'http://x');
    const path = decodeURIComponent(url.pathname);
    this.requests.push(`${req.method} ${path}${req.headers.range ? ` ${req.headers.range}` : ''}`);
    const json = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
      res.end(JSON.stringify(body));
    };
    if (req.headers.authorization !== `Bearer ${TOKEN}`) return json(401, { error: 'Invalid credentials in Authorization header' });
    const name = this.repo.name;
    let m = new RegExp(`^/api/datasets/${name}/revision/([^/]+)$`).exec(path);
    if (m) {
      const sha = this.sha(m[1]!);
      if (!sha) return json(404, { error: `Invalid rev id: ${m[1]}` }, { 'X-Error-Code': 'RevisionNotFound' });
      return json(200, { _id: 'x1', id: name, sha, private: false, gated: false, downloads: 0, likes: 0, lastModified: '2026-01-01T00:00:00.000Z' });
    }
    m = new RegExp(`^/api/datasets/${name}/tree/([^/]+)(/.*)?$`).exec(path);
    if (m) {
      const sha = this.sha(m[1]!);
      if (!sha) return json(404, { error: 'Revision not found' }, { 'X-Error-Code': 'RevisionNotFound' });
      const files = [...this.repo.commits[sha]!.entries()].map(([p, b]) => ({ type: 'file', path: p, size: b.length, oid: `${sha.slice(0, 8)}-${p}` }));
      return json(200, files);
    }
    m = new RegExp(`^/datasets/${name}/resolve/([^/]+)/(.+)$`).exec(path);
    if (m) {
      const sha = this.sha(m[1]!);
      const body = sha ? this.repo.commits[sha]!.get(m[2]!) : undefined;
      if (!body) return json(404, { error: 'Entry not found' }, { 'X-Error-Code': 'EntryNotFound' });
      const range = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range ?? ''));
      const headers = { ETag: `"${sha}-${m[2]}"`, 'X-Repo-Commit': sha!, 'Accept-Ranges': 'bytes', 'Content-Type': 'application/octet-stream' };
      if (range) {
        const [start, end] = [Number(range[1]), Math.min(Number(range[2]), body.length - 1)];
        res.writeHead(206, { ...headers, 'Content-Range': `bytes ${start}-${end}/${body.length}`, 'Content-Length': end - start + 1 });
        return void res.end(body.subarray(start, end + 1));
      }
      const failuresLeft = this.failures.get(m[2]!) ?? 0;
      if (failuresLeft > 0) {
        // Half the file, then the connection dies: the worker sees a broken stream.
        this.failures.set(m[2]!, failuresLeft - 1);
        res.writeHead(200, { ...headers, 'Content-Length': body.length });
        res.write(body.subarray(0, body.length >> 1));
        return void setTimeout(() => res.destroy(), 20);
      }
      res.writeHead(200, { ...headers, 'Content-Length': body.length });
      return void res.end(body);
    }
    json(404, { error: 'Repository not found' }, { 'X-Error-Code': 'RepoNotFound' });
  }
}

let stack: TestStack;
let hub: FakeHub;
const NAME = 'openbmb-test/RLAIF-V-mini';

async function repoFiles(trainRows: number, seed: number): Promise<Map<string, Buffer>> {
  const dir = await mkdtemp(join(tmpdir(), 'dpo-hub-'));
  const files = await generateDemoDataset({ outDir: dir, trainRows, testRows: 6, seed });
  return new Map([
    ['README.md', Buffer.from('# RLAIF-V mini\n')],
    ['data/train-00000-of-00001.parquet', await readFile(files.train!)],
    ['data/test-00000-of-00001.parquet', await readFile(files.test!)],
  ]);
}

let rlaif: Map<string, Buffer>;

/** RLAIF-V's layout, written with datasets (test/fixtures/rlaif_v_layout.py) from demo rows. */
async function rlaifFiles(rows: number, seed: number): Promise<Map<string, Buffer>> {
  const dir = await mkdtemp(join(tmpdir(), 'dpo-rlaif-'));
  const demo = await generateDemoDataset({ outDir: join(dir, 'demo'), trainRows: rows, testRows: 1, seed });
  const { stdout } = await promisify(execFile)(trainerPython(), ['test/fixtures/rlaif_v_layout.py', join(dir, 'out'), '2', demo.train!]);
  const names = ['README.md', ...Object.keys(JSON.parse(stdout) as Record<string, number>)];
  return new Map(await Promise.all(names.map(async (n) => [n, await readFile(join(dir, 'out', n))] as const)));
}

beforeAll(async () => {
  // Unique repo content per test run, so nothing is reused from an earlier run's storage.
  const seed = Date.now() % 100_000;
  hub = new FakeHub({
    name: NAME,
    commits: { [MAIN_SHA]: await repoFiles(20, seed), [V1_SHA]: await repoFiles(12, seed + 1), [RLAIF_SHA]: (rlaif = await rlaifFiles(40, seed + 2)) },
    refs: { main: MAIN_SHA, v1: V1_SHA, rlaif: RLAIF_SHA },
  });
  await hub.start();
  // The worker's environment (these tests run the worker in this process).
  process.env.HF_ENDPOINT = hub.url;
  process.env.HF_TOKEN = TOKEN;
  stack = await startTestStack();
});

afterAll(async () => {
  await stack?.stop();
  await hub?.stop();
  delete process.env.HF_ENDPOINT;
  delete process.env.HF_TOKEN;
});

describe('hf:// dataset sources', () => {
  it('resolves the revision to a commit sha, records it, and retried downloads skip finished files', async () => {
    hub.failures.set('data/test-00000-of-00001.parquet', 1);
    const workflowId = uniqueId('hub');
    const result = await stack.client.workflow.execute(PIPELINE_WORKFLOW, {
      taskQueue: stack.queues.cpu,
      workflowId,
      args: [dataConfig(stack, inject('modelSource'), `hf://${NAME}`)],
    });
    const download = result.dataStages.download!;
    expect(download.summary.revision).toBe(MAIN_SHA);
    const manifest = await stack.deps.storage.getJson<DownloadManifest>(TEST_BUCKET, download.manifestKey);
    expect(manifest.revision).toBe(MAIN_SHA);
    expect(manifest.files.map((f) => f.sourcePath).sort()).toEqual(['data/test-00000-of-00001.parquet', 'data/train-00000-of-00001.parquet']);
    expect(result.dataStages.format!.summary.train_rows).toBe(20);
    // Everything was fetched at the pinned sha, never at a moving ref.
    const downloads = hub.requests.filter((r) => r.startsWith('GET /datasets/') && !r.includes('bytes=0-0'));
    expect(downloads.every((r) => r.includes(`/resolve/${MAIN_SHA}/`))).toBe(true);
    // train went up on the first attempt; test broke midway, so Temporal retried the activity,
    // which skipped train (already stored) and fetched test again.
    expect(downloads.filter((r) => r.endsWith('train-00000-of-00001.parquet')).length).toBe(1);
    expect(downloads.filter((r) => r.endsWith('test-00000-of-00001.parquet')).length).toBe(2);
    const history = JSON.stringify(await stack.client.workflow.getHandle(workflowId).fetchHistory());
    expect(history).not.toContain(TOKEN);
  });

  it('pins hf://owner/name@tag to the tag\'s commit', async () => {
    const result = await runPipeline(stack, dataConfig(stack, inject('modelSource'), `hf://${NAME}@v1`));
    expect(result.dataStages.download!.summary.revision).toBe(V1_SHA);
    expect(result.dataStages.format!.summary.train_rows).toBe(12);
  });

  it('fails clearly, without retrying, on a missing repository or a missing token', async () => {
    const missing = await runPipeline(stack, dataConfig(stack, inject('modelSource'), 'hf://nobody/nothing')).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(WorkflowFailedError);
    let cause: unknown = (missing as WorkflowFailedError).cause;
    while (cause && !(cause instanceof ApplicationFailure)) cause = (cause as { cause?: unknown }).cause;
    expect((cause as ApplicationFailure).type).toBe('InvalidConfig');
    expect((cause as ApplicationFailure).message).toContain('dataset.source "hf://nobody/nothing"');
    expect((cause as ApplicationFailure).message).toContain('no such dataset or revision');

    process.env.HF_TOKEN = 'hf_wrong';
    try {
      const denied = await runPipeline(stack, dataConfig(stack, inject('modelSource'), `hf://${NAME}`)).catch((e: unknown) => e);
      let c: unknown = (denied as WorkflowFailedError).cause;
      while (c && !(c instanceof ApplicationFailure)) c = (c as { cause?: unknown }).cause;
      expect((c as ApplicationFailure).type).toBe('InvalidConfig');
      expect((c as ApplicationFailure).message).toContain('set HF_TOKEN in the worker environment');
    } finally {
      process.env.HF_TOKEN = TOKEN;
    }
  });

  it("trains on RLAIF-V's own layout, holding out a slice of its only split", async () => {
    const source = `hf://${NAME}@rlaif`;
    const result = await runPipeline(
      stack,
      dataConfig(stack, inject('modelSource'), source, {
        dataset: { source, train_split: 'train[:95%]', eval_split: 'train[95%:]' },
        // The whole default DAG: download -> format -> tokenize -> shard -> train -> evaluate -> report.
        stages: undefined,
        train: { epochs: 1, per_device_train_batch_size: 8, gradient_accumulation_steps: 1, learning_rate: 0.002, dtype: 'float32', checkpoint_every_steps: 5, seed: 3 },
        evaluate: { batch_size: 16, generations: 1, max_new_tokens: 4 },
      }),
    );
    const manifest = await stack.deps.storage.getJson<DownloadManifest>(TEST_BUCKET, result.dataStages.download!.manifestKey);
    expect(manifest.config).toBe('default');
    expect(manifest.files.map((f) => [f.split, f.sourcePath])).toEqual([
      ['train', 'RLAIF-V-Dataset_000.parquet'],
      ['train', 'RLAIF-V-Dataset_001.parquet'],
    ]);
    // 40 rows: [0, 38) to train, [38, 40) held out (the second file's last two rows).
    const format = await stack.deps.storage.getJson<FormatManifest>(TEST_BUCKET, result.dataStages.format!.manifestKey);
    expect(Object.keys(format.splits)).toEqual(['train._95pct', 'train.95pct_']);
    expect(result.dataStages.format!.summary['train._95pct_rows']).toBe(38);
    expect(result.dataStages.format!.summary['train.95pct__rows']).toBe(2);
    // 38 pairs in steps of 8.
    expect(result.trainings.train!.finalStep).toBe(5);
    expect(result.evaluations.evaluate!.base.samples).toBe(2);
    expect(result.evaluations.evaluate!.trained.samples).toBe(2);

    // The repository has no test split: the default eval_split fails, saying how to slice one.
    const failed = await runPipeline(stack, dataConfig(stack, inject('modelSource'), source)).catch((e: unknown) => e);
    let cause: unknown = (failed as WorkflowFailedError).cause;
    while (cause && !(cause instanceof ApplicationFailure)) cause = (cause as { cause?: unknown }).cause;
    expect((cause as ApplicationFailure).type).toBe('InvalidConfig');
    expect((cause as ApplicationFailure).message).toMatch(/^dataset\.eval_split "test": .* has no Parquet or JSONL files for split "test" \(its splits: train;/);
    expect((cause as ApplicationFailure).message).toContain('eval_split: "train[95%:]"');
  });

  it('refuses train and eval slices that share rows, naming both fields', async () => {
    const source = `hf://${NAME}@rlaif`;
    const config = dataConfig(stack, inject('modelSource'), source, { dataset: { source, train_split: 'train[:60%]', eval_split: 'train[50%:]' } });
    const failed = await runPipeline(stack, config).catch((e: unknown) => e);
    let cause: unknown = (failed as WorkflowFailedError).cause;
    while (cause && !(cause instanceof ApplicationFailure)) cause = (cause as { cause?: unknown }).cause;
    expect((cause as ApplicationFailure).type).toBe('InvalidConfig');
    expect((cause as ApplicationFailure).message).toBe(
      'dataset.train_split "train[:60%]" and dataset.eval_split "train[50%:]" overlap: both select rows [20, 24) of split "train"; held-out rows must not be trained on',
    );
  });

  it('reads an s3:// copy whose README configs: picks the files, by dataset.config', async () => {
    const prefix = `datasets/${uniqueId('rlaif-configs')}/`;
    const card =
      '---\nconfigs:\n- config_name: halves\n  data_files:\n  - split: train\n    path: RLAIF-V-Dataset_000.parquet\n' +
      '  - split: test\n    path: RLAIF-V-Dataset_001.parquet\n- config_name: all\n  data_files: "*.parquet"\n  default: true\n---\n';
    for (const [name, body] of rlaif) await stack.deps.storage.putBuffer(TEST_BUCKET, prefix + name, name === 'README.md' ? card : body);
    const source = `s3://${TEST_BUCKET}/${prefix}`;
    const result = await runPipeline(stack, dataConfig(stack, inject('modelSource'), source, { dataset: { source, config: 'halves' } }));
    const manifest = await stack.deps.storage.getJson<DownloadManifest>(TEST_BUCKET, result.dataStages.download!.manifestKey);
    expect(manifest.config).toBe('halves');
    expect(manifest.files.map((f) => [f.split, f.sourcePath])).toEqual([
      ['train', 'RLAIF-V-Dataset_000.parquet'],
      ['test', 'RLAIF-V-Dataset_001.parquet'],
    ]);
    expect(result.dataStages.format!.summary).toMatchObject({ train_rows: 20, test_rows: 20 });

    const failed = await runPipeline(stack, dataConfig(stack, inject('modelSource'), source, { dataset: { source, config: 'nope' } })).catch((e: unknown) => e);
    let cause: unknown = (failed as WorkflowFailedError).cause;
    while (cause && !(cause instanceof ApplicationFailure)) cause = (cause as { cause?: unknown }).cause;
    expect((cause as ApplicationFailure).type).toBe('InvalidConfig');
    expect((cause as ApplicationFailure).message).toMatch(/^dataset\.config: config "nope" not found; the dataset's configs are: halves, all/);
  });
});
