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
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, utimes } from 'node:fs/promises';
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
import { standardChain } from '../../contracts/dag.js';
import { trainerPython } from '../../io/deps.js';
import type { FormatManifest } from '../../activities/data/format.js';

const TOKEN = 'hf_test_secret_token_0123456789';
const MAIN_SHA = 'a'.repeat(40);
const V1_SHA = 'b'.repeat(40);
const RLAIF_SHA = 'c'.repeat(40);
const MODEL_SHA = 'd'.repeat(40);
const MODEL = 'tiny-org/tiny-llava';
const GATED = 'gated-org/tiny-llava';
const NO_TEMPLATE = 'tiny-org/no-chat-template';
const PUBLISHED = 'dpo-org/tiny-llava-dpo';

/** One dataset repo with two commits: `main` (current) and the tag `v1` (older, fewer rows). */
interface Repo {
  name: string;
  commits: Record<string, Map<string, Buffer>>;
  refs: Record<string, string>;
}

/** A model repository: one commit per sha, a few refs; files served with real git/LFS ids. */
interface ModelRepo extends Repo {
  /** Served only to this token (a gated model): 401 without one, 403 with another. */
  gatedToken?: string;
}

const gitBlobId = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
const isLfs = (path: string) => /\.(safetensors|bin|onnx|gguf)$/.test(path);

class FakeHub {
  readonly requests: string[] = [];
  /** Paths whose next N full downloads fail with a 500 midway. */
  readonly failures = new Map<string, number>();
  /** Paths served with their last byte flipped (a corrupted transfer). */
  readonly corrupt = new Set<string>();
  /** Repositories created through the commit API, with each commit's files. */
  readonly published = new Map<string, { private: boolean; commits: Array<{ oid: string; title: string; files: Map<string, Buffer> }> }>();
  /** Commits whose answer is lost (recorded, then the connection dropped), as a network failure would. */
  loseCommitAnswers = 0;
  private readonly lfs = new Map<string, Buffer>();
  private server!: Server;
  constructor(
    private readonly repo: Repo,
    private readonly models: ModelRepo[] = [],
  ) {}

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
    if (req.method === 'POST' || req.method === 'PUT') {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => this.handleWrite(req, res, Buffer.concat(chunks)));
      return;
    }
    const url = new URL(req.url!, 'http://x');
    const path = decodeURIComponent(url.pathname);
    this.requests.push(`${req.method} ${path}${req.headers.range ? ` ${req.headers.range}` : ''}`);
    const json = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
      res.end(JSON.stringify(body));
    };
    const model = this.models.find((r) => path.startsWith(`/api/models/${r.name}/`) || path.startsWith(`/${r.name}/resolve/`));
    if (model) return this.handleModel(model, req, res, path, json);
    const published = [...this.published.keys()].find((id) => path.startsWith(`/api/models/${id}/`));
    if (published) return this.handlePublished(published, req, path, json);
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

  /**
   * The Hub's commit API as @huggingface/hub drives it: create the repo, preupload (which files go
   * through LFS), the LFS batch and its PUTs (sha256-checked), then the NDJSON commit.
   */
  private handleWrite(req: IncomingMessage, res: ServerResponse, body: Buffer): void {
    const path = decodeURIComponent(new URL(req.url!, 'http://x').pathname);
    this.requests.push(`${req.method} ${path}`);
    const json = (status: number, value: unknown) => {
      res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(value));
    };
    // LFS upload URLs are presigned (as the Hub's storage URLs are): no token goes there.
    if (!path.startsWith('/lfs-upload/') && req.headers.authorization !== `Bearer ${TOKEN}`) return json(401, { error: 'Invalid credentials in Authorization header' });
    if (path === '/api/repos/create') {
      const { name, organization, visibility, type } = JSON.parse(body.toString()) as { name: string; organization: string; visibility?: string; type: string };
      const id = `${organization}/${name}`;
      if (type !== 'model') return json(400, { error: `unexpected repo type ${type}` });
      if (this.published.has(id)) return json(409, { error: 'You already created this model repo' });
      this.published.set(id, { private: visibility === 'private', commits: [] });
      return json(200, { url: `${this.url}/${id}`, name: id });
    }
    let m = /^\/api\/models\/(.+)\/preupload\/main$/.exec(path);
    if (m) {
      const { files } = JSON.parse(body.toString()) as { files: Array<{ path: string }> };
      return json(200, { files: files.map((f) => ({ path: f.path, uploadMode: f.path.endsWith('.safetensors') ? 'lfs' : 'regular', shouldIgnore: false })) });
    }
    m = /^\/(.+)\.git\/info\/lfs\/objects\/batch$/.exec(path);
    if (m) {
      const { objects } = JSON.parse(body.toString()) as { objects: Array<{ oid: string; size: number }> };
      return json(200, { transfer: 'basic', objects: objects.map((o) => ({ ...o, actions: { upload: { href: `${this.url}/lfs-upload/${o.oid}` } } })) });
    }
    m = /^\/lfs-upload\/([0-9a-f]{64})$/.exec(path);
    if (m) {
      if (createHash('sha256').update(body).digest('hex') !== m[1]) return json(400, { error: 'sha256 mismatch' });
      this.lfs.set(m[1]!, body);
      return json(200, {});
    }
    m = /^\/api\/models\/(.+)\/commit\/main$/.exec(path);
    const repo = m && this.published.get(m[1]!);
    if (repo) {
      const lines = body.toString().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { key: string; value: Record<string, string> });
      const files = new Map<string, Buffer>();
      for (const { key, value } of lines.slice(1)) {
        if (key === 'file') files.set(value.path!, Buffer.from(value.content!, 'base64'));
        else if (key === 'lfsFile' && this.lfs.has(value.oid!)) files.set(value.path!, this.lfs.get(value.oid!)!);
        else return json(422, { error: `cannot commit ${key} ${value.path}` });
      }
      const oid = createHash('sha1').update(`${m![1]}:${repo.commits.length + 1}`).digest('hex');
      repo.commits.push({ oid, title: lines[0]!.value.summary!, files });
      if (this.loseCommitAnswers > 0) {
        this.loseCommitAnswers--;
        return void res.destroy();
      }
      return json(200, { commitOid: oid, commitUrl: `${this.url}/${m![1]}/commit/${oid}`, hookOutput: '', success: true });
    }
    json(404, { error: 'Repository not found' });
  }

  /** A published repository's head: /api/models/<id>/tree/main and /api/models/<id>/commits/main. */
  private handlePublished(id: string, req: IncomingMessage, path: string, json: (status: number, body: unknown, headers?: Record<string, string>) => void): void {
    if (req.headers.authorization !== `Bearer ${TOKEN}`) return json(401, { error: 'Invalid credentials in Authorization header' });
    const { commits } = this.published.get(id)!;
    const head = commits.at(-1);
    if (!head) return json(404, { error: 'Revision not found' }, { 'X-Error-Code': 'RevisionNotFound' });
    if (path === `/api/models/${id}/tree/main`) {
      return json(
        200,
        [...head.files.entries()].map(([p, b]) => ({
          type: 'file',
          path: p,
          // As preupload decided: safetensors through LFS (the blob is its pointer), the rest regular.
          ...(p.endsWith('.safetensors')
            ? { size: b.length, oid: gitBlobId(Buffer.from(`pointer ${p}`)), lfs: { oid: createHash('sha256').update(b).digest('hex'), size: b.length, pointerSize: 134 } }
            : { size: b.length, oid: gitBlobId(b) }),
        })),
      );
    }
    if (path === `/api/models/${id}/commits/main`) {
      return json(200, [...commits].reverse().map((c) => ({ id: c.oid, title: c.title, message: '', authors: [], date: '2026-01-01T00:00:00.000Z' })));
    }
    json(404, { error: 'Entry not found' }, { 'X-Error-Code': 'EntryNotFound' });
  }

  /** The model routes: /api/models/<name>/revision|tree/<rev>, /<name>/resolve/<rev>/<path>. */
  private handleModel(repo: ModelRepo, req: IncomingMessage, res: ServerResponse, path: string, json: (status: number, body: unknown, headers?: Record<string, string>) => void): void {
    const auth = req.headers.authorization;
    if (repo.gatedToken && auth !== `Bearer ${repo.gatedToken}`) {
      return auth ? json(403, { error: 'Access to model is restricted. You must have access to it and be authenticated to access it.' }) : json(401, { error: 'Access to model is restricted and you are not in the authorized list.' });
    }
    const sha = (rev: string) => (repo.commits[rev] ? rev : repo.refs[rev]);
    let m = new RegExp(`^/api/models/${repo.name}/revision/([^/]+)$`).exec(path);
    if (m) {
      const commit = sha(m[1]!);
      if (!commit) return json(404, { error: `Invalid rev id: ${m[1]}` }, { 'X-Error-Code': 'RevisionNotFound' });
      return json(200, { _id: 'm1', id: repo.name, sha: commit, private: false, gated: repo.gatedToken ? 'manual' : false, downloads: 0, likes: 0, lastModified: '2026-01-01T00:00:00.000Z' });
    }
    m = new RegExp(`^/api/models/${repo.name}/tree/([^/]+)(/.*)?$`).exec(path);
    if (m) {
      const commit = sha(m[1]!);
      if (!commit) return json(404, { error: 'Revision not found' }, { 'X-Error-Code': 'RevisionNotFound' });
      return json(
        200,
        [...repo.commits[commit]!.entries()].map(([p, b]) => ({
          type: 'file',
          path: p,
          size: isLfs(p) ? 134 : b.length,
          oid: gitBlobId(isLfs(p) ? Buffer.from(`pointer ${p}`) : b),
          ...(isLfs(p) && { lfs: { oid: createHash('sha256').update(b).digest('hex'), size: b.length, pointerSize: 134 } }),
        })),
      );
    }
    m = new RegExp(`^/${repo.name}/resolve/([^/]+)/(.+)$`).exec(path);
    const commit = m && sha(m[1]!);
    let body = commit ? repo.commits[commit]!.get(m![2]!) : undefined;
    if (!body) return json(404, { error: 'Entry not found' }, { 'X-Error-Code': 'EntryNotFound' });
    if (this.corrupt.has(m![2]!)) body = Buffer.concat([body.subarray(0, -1), Buffer.from([body[body.length - 1]! ^ 0xff])]);
    this.serveFile(req, res, m![2]!, commit!, body);
  }

  private serveFile(req: IncomingMessage, res: ServerResponse, file: string, sha: string, body: Buffer): void {
    const headers = { ETag: `"${sha}-${file}"`, 'X-Repo-Commit': sha, 'Accept-Ranges': 'bytes', 'Content-Type': 'application/octet-stream' };
    const range = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range ?? ''));
    if (range) {
      const [start, end] = [Number(range[1]), Math.min(Number(range[2]), body.length - 1)];
      res.writeHead(206, { ...headers, 'Content-Range': `bytes ${start}-${end}/${body.length}`, 'Content-Length': end - start + 1 });
      return void res.end(body.subarray(start, end + 1));
    }
    const failuresLeft = this.failures.get(file) ?? 0;
    if (failuresLeft > 0) {
      this.failures.set(file, failuresLeft - 1);
      res.writeHead(200, { ...headers, 'Content-Length': body.length });
      res.write(body.subarray(0, body.length >> 1));
      return void setTimeout(() => res.destroy(), 20);
    }
    res.writeHead(200, { ...headers, 'Content-Length': body.length });
    res.end(body);
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

/** The tiny model's save_pretrained folder as a Hub commit, with files loading must skip beside it. */
async function modelFiles(withTemplate = true): Promise<Map<string, Buffer>> {
  const dir = inject('modelDir');
  const files = new Map<string, Buffer>();
  for (const name of await readdir(dir)) files.set(name, await readFile(join(dir, name)));
  files.set('pytorch_model.bin', Buffer.alloc(4096, 7));
  files.set('onnx/model.onnx', Buffer.alloc(2048, 9));
  files.set('README.md', Buffer.from('---\nlicense: apache-2.0\n---\n# tiny llava\n'));
  if (!withTemplate) {
    files.delete('chat_template.jinja');
    const tokenizerConfig = JSON.parse(files.get('tokenizer_config.json')!.toString()) as Record<string, unknown>;
    delete tokenizerConfig.chat_template;
    files.set('tokenizer_config.json', Buffer.from(JSON.stringify(tokenizerConfig)));
  }
  return files;
}

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
  const model = await modelFiles();
  hub = new FakeHub(
    {
      name: NAME,
      commits: { [MAIN_SHA]: await repoFiles(20, seed), [V1_SHA]: await repoFiles(12, seed + 1), [RLAIF_SHA]: (rlaif = await rlaifFiles(40, seed + 2)) },
      refs: { main: MAIN_SHA, v1: V1_SHA, rlaif: RLAIF_SHA },
    },
    [
      { name: MODEL, commits: { [MODEL_SHA]: model }, refs: { main: MODEL_SHA, 'v1.0': MODEL_SHA } },
      { name: GATED, commits: { [MODEL_SHA]: model }, refs: { main: MODEL_SHA }, gatedToken: TOKEN },
      { name: NO_TEMPLATE, commits: { [MODEL_SHA]: await modelFiles(false) }, refs: { main: MODEL_SHA } },
    ],
  );
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

  it("trains a Hub model on RLAIF-V's own layout, holding out a slice of its only split", async () => {
    const source = `hf://${NAME}@rlaif`;
    // The model as TRL's model_name_or_path names it; its weights break midway the first time.
    hub.failures.set('model.safetensors', 1);
    const modelSource = `${MODEL}@v1.0`;
    const workflowId = uniqueId('hub-model');
    const result = await stack.client.workflow.execute(PIPELINE_WORKFLOW, {
      taskQueue: stack.queues.cpu,
      workflowId,
      args: [dataConfig(stack, modelSource, source, {
        dataset: { source, train_split: 'train[:95%]', eval_split: 'train[95%:]' },
        // The whole standard chain, download -> format -> tokenize -> shard -> train -> evaluate ->
        // report, then the adapter and its card pushed to a Hub repository.
        stages: [...standardChain(), { id: 'publish', kind: 'publish', needs: ['train', 'report'], params: { repo: PUBLISHED } }],
        train: { epochs: 1, per_device_train_batch_size: 8, gradient_accumulation_steps: 1, learning_rate: 0.002, dtype: 'float32', checkpoint_every_steps: 5, seed: 3 },
        evaluate: { batch_size: 16, generations: 1, max_new_tokens: 4 },
      })],
    });
    await expectHubModelStaged(workflowId, result.lineage!, result.reports.report!.markdownKey);
    const pulled = await expectPulledAdapterLoads(workflowId);
    await expectPublished(workflowId, result.timeline, pulled);
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

/**
 * The model's revision was pinned at run start and recorded; only what loading needs came down,
 * each file once (format and tokenize chunks, train and evaluate all staged it), the broken
 * weights download resumed from where it stopped, into the Hub's own cache layout.
 */
async function expectHubModelStaged(workflowId: string, lineage: { modelRevision?: string | null }, reportKey: string): Promise<void> {
  expect(lineage.modelRevision).toBe(MODEL_SHA);
  const description = await stack.client.workflow.getHandle(workflowId).describe();
  expect(description.searchAttributes.DpoModelRevision).toEqual([MODEL_SHA]);
  expect((await stack.deps.storage.getBuffer(TEST_BUCKET, reportKey)).toString()).toContain(`at commit \`${MODEL_SHA}\``);
  const gets = hub.requests.filter((r) => r.startsWith(`GET /${MODEL}/resolve/`) && !r.endsWith('bytes=0-0'));
  expect(gets.every((r) => r.includes(`/resolve/${MODEL_SHA}/`))).toBe(true);
  const fetched = gets.map((r) => r.split(' ')[1]!.split(`/resolve/${MODEL_SHA}/`)[1]!);
  expect(fetched.filter((f) => f !== 'model.safetensors').sort()).toEqual(
    ['chat_template.jinja', 'config.json', 'generation_config.json', 'preprocessor_config.json', 'processor_config.json', 'tokenizer.json', 'tokenizer_config.json'],
  );
  const weights = gets.filter((r) => r.includes('/model.safetensors'));
  const size = (await readFile(join(inject('modelDir'), 'model.safetensors'))).length;
  // The first try broke after at most half the file; the retry asked only for what was missing.
  expect(weights[0]).toBe(`GET /${MODEL}/resolve/${MODEL_SHA}/model.safetensors`);
  expect(weights).toHaveLength(2);
  const resumedAt = Number(new RegExp(`model\\.safetensors bytes=(\\d+)-${size - 1}$`).exec(weights[1]!)?.[1]);
  expect(resumedAt).toBeGreaterThan(0);
  expect(resumedAt).toBeLessThanOrEqual(size >> 1);
  const snapshot = join(stack.deps.workDir, 'hf/hub/models--tiny-org--tiny-llava/snapshots', MODEL_SHA);
  expect((await lstat(join(snapshot, 'model.safetensors'))).isSymbolicLink()).toBe(true);
  expect(await readlink(join(snapshot, 'model.safetensors'))).toMatch(/^\.\.\/\.\.\/blobs\/[0-9a-f]{64}$/);
}

describe('hf:// and Org/name model sources', () => {
  it('refuses a missing repository, revision or token, and a model without a chat template, before any stage starts', async () => {
    const failure = async (modelSource: string) => {
      const workflowId = uniqueId('hub-bad-model');
      const err = await stack.client.workflow
        .execute(PIPELINE_WORKFLOW, { taskQueue: stack.queues.cpu, workflowId, args: [dataConfig(stack, modelSource, `hf://${NAME}`)] })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      let cause: unknown = (err as WorkflowFailedError).cause;
      while (cause && !(cause instanceof ApplicationFailure)) cause = (cause as { cause?: unknown }).cause;
      // Nothing ran but the resolution itself.
      const history = await stack.client.workflow.getHandle(workflowId).fetchHistory();
      const activities = history.events!.flatMap((e) => (e.activityTaskScheduledEventAttributes ? [e.activityTaskScheduledEventAttributes.activityType!.name] : []));
      expect(activities.filter((a) => a !== 'recordRun').every((a) => a === 'resolveModelSource')).toBe(true);
      expect(activities.filter((a) => a === 'resolveModelSource')).toHaveLength(1);
      return cause as ApplicationFailure;
    };
    const missing = await failure('hf://nobody/no-model');
    expect(missing.type).toBe('InvalidConfig');
    expect(missing.message).toBe('model.source "hf://nobody/no-model": no model repository nobody/no-model (or a private one this HF_TOKEN cannot see)');
    const revision = await failure(`${MODEL}@no-such-tag`);
    expect(revision.message).toBe(`model.source "${MODEL}@no-such-tag": no revision "no-such-tag" in ${MODEL}`);
    const template = await failure(`hf://${NO_TEMPLATE}`);
    expect(template.type).toBe('ModelLoadError');
    expect(template.message).toMatch(new RegExp(`^model\\.source "hf://${NO_TEMPLATE}": no chat template .* at ${NO_TEMPLATE}@dddddddddddd`));
    process.env.HF_TOKEN = 'hf_other_account';
    try {
      const denied = await failure(`hf://${GATED}`);
      expect(denied.message).toMatch(/the Hub refused access \(403\): the worker's HF_TOKEN has no access to it/);
      delete process.env.HF_TOKEN;
      const anonymous = await failure(`hf://${GATED}`);
      expect(anonymous.type).toBe('InvalidConfig');
      expect(anonymous.message).toBe(`model.source "hf://${GATED}": the Hub refused access (401): HF_TOKEN is not set in the worker environment (gated and private models need one)`);
    } finally {
      process.env.HF_TOKEN = TOKEN;
    }
  });

  it('two processes staging the same model fetch each file once; a corrupted transfer is refused', async () => {
    const workDir = await mkdtemp(join(tmpdir(), 'dpo-hub-cache-'));
    const before = hub.requests.length;
    const stage = () =>
      promisify(execFile)('npx', ['tsx', 'test/fixtures/stageHubModel.ts', workDir, `hf://${GATED}@${MODEL_SHA}`], {
        env: { ...process.env, HF_ENDPOINT: hub.url, HF_TOKEN: TOKEN },
      });
    const [a, b] = await Promise.all([stage(), stage()]);
    expect(a.stdout.trim()).toBe(join(workDir, 'hf/hub/models--gated-org--tiny-llava/snapshots', MODEL_SHA));
    expect(b.stdout.trim()).toBe(a.stdout.trim());
    const gets = hub.requests.slice(before).filter((r) => r.startsWith(`GET /${GATED}/resolve/`) && !r.endsWith('bytes=0-0'));
    expect(gets.length).toBe(8);
    expect(new Set(gets).size).toBe(8);
    // transformers loads the snapshot folder as it is.
    const { stdout } = await promisify(execFile)(trainerPython(), ['-c', `import sys; from transformers import AutoConfig, AutoProcessor; AutoProcessor.from_pretrained(sys.argv[1]); print(AutoConfig.from_pretrained(sys.argv[1]).model_type)`, a.stdout.trim()]);
    expect(stdout.trim()).toBe('llava');

    hub.corrupt.add('tokenizer.json');
    try {
      const { stageHubModel } = await import('../../io/hubModels.js');
      const other = await mkdtemp(join(tmpdir(), 'dpo-hub-cache-'));
      const err = await stageHubModel(other, `hf://${MODEL}@${MODEL_SHA}`).catch((e: unknown) => e as ApplicationFailure);
      expect((err as ApplicationFailure).type).toBe('Transient');
      expect((err as ApplicationFailure).message).toMatch(/^model\.source "hf:\/\/tiny-org\/tiny-llava@d+": tokenizer\.json failed its git blob check after download/);
      expect(await readdir(join(other, 'hf/hub/models--tiny-org--tiny-llava/blobs'))).not.toContain(expect.stringMatching(/incomplete/));
    } finally {
      hub.corrupt.delete('tokenizer.json');
    }
  });

  it('waits for a download lock that is being refreshed, and takes over one left by a process that died', async () => {
    const { stageHubModel } = await import('../../io/hubModels.js');
    const workDir = await mkdtemp(join(tmpdir(), 'dpo-hub-cache-'));
    const lock = join(workDir, 'hf/hub/models--tiny-org--tiny-llava', `.dpo-lock-${MODEL_SHA}`);
    const snapshot = join(workDir, 'hf/hub/models--tiny-org--tiny-llava/snapshots', MODEL_SHA);
    // A live holder's lock: the stage waits as long as it is there.
    await mkdir(lock, { recursive: true });
    let done = false;
    const waiting = stageHubModel(workDir, `hf://${MODEL}@${MODEL_SHA}`).then((dir) => ((done = true), dir));
    await new Promise((r) => setTimeout(r, 1500));
    expect(done).toBe(false);
    await rm(lock, { recursive: true });
    expect(await waiting).toBe(snapshot);

    // A lock nobody has refreshed for two minutes: its holder died, and the next stage takes over.
    const other = await mkdtemp(join(tmpdir(), 'dpo-hub-cache-'));
    const stale = join(other, 'hf/hub/models--tiny-org--tiny-llava', `.dpo-lock-${MODEL_SHA}`);
    await mkdir(stale, { recursive: true });
    const twoMinutesAgo = new Date(Date.now() - 120_000);
    await utimes(stale, twoMinutesAgo, twoMinutesAgo);
    const started = Date.now();
    expect(await stageHubModel(other, `hf://${MODEL}@${MODEL_SHA}`)).toBe(join(other, 'hf/hub/models--tiny-org--tiny-llava/snapshots', MODEL_SHA));
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(await lstat(stale).catch(() => null)).toBeNull();
  });
});

const dpo = (...args: string[]) => promisify(execFile)(process.execPath, ['--import', 'tsx', 'cli/dpo.ts', ...args]);

/**
 * `dpo pull` gives a folder that stands alone: its adapter_config.json names the Hub id and
 * commit (not a worker path), its README.md is the run's model card with the evaluation, and the
 * seed's `model.load_adapter(folder)` loads it onto the base that transformers finds by that id
 * in the worker's Hub cache (offline).
 */
async function expectPulledAdapterLoads(workflowId: string): Promise<string> {
  const out = await mkdtemp(join(tmpdir(), 'dpo-pull-'));
  const { stdout } = await dpo('pull', workflowId, '--to', join(out, 'adapter'));
  expect(stdout).toContain(`pulled the adapter of ${workflowId}/train into ${join(out, 'adapter')}`);
  const config = JSON.parse(await readFile(join(out, 'adapter/adapter_config.json'), 'utf8')) as Record<string, unknown>;
  expect(config).toMatchObject({ base_model_name_or_path: MODEL, revision: MODEL_SHA });
  const card = await readFile(join(out, 'adapter/README.md'), 'utf8');
  expect(card.startsWith(`---\nbase_model: "${MODEL}"\ndatasets:\n- "${NAME}"\nlibrary_name: peft\n`)).toBe(true);
  expect(card).toContain(`tags:\n- "base_model:adapter:${MODEL}"\n- lora\n- transformers\n- trl\n- dpo\n---\n`);
  expect(card).toContain(`at revision \`${MODEL_SHA}\``);
  expect(card).toContain(`at revision \`${RLAIF_SHA}\` (train: \`train[:95%]\`, held out: \`train[95%:]\`)`);
  for (const row of ['| loss | sigmoid |', '| beta | 0.1 |', '| LoRA | r 16, alpha 32, dropout 0, target modules all-linear |', '| optimizer steps | 5 |', '| effective batch (pairs per step) | 8 |', '| dtype | float32 |']) {
    expect(card).toContain(row);
  }
  expect(card).toMatch(/\n## Evaluation: base vs DPO\n\n\| metric \| base \| DPO \(evaluate\) \| delta \|\n\| --- \|.*\n\| preference accuracy \(held-out\) \| /);

  const env = { ...process.env, HF_HOME: join(stack.deps.workDir, 'hf'), HF_HUB_OFFLINE: '1' };
  const loaded = JSON.parse((await promisify(execFile)(trainerPython(), ['test/fixtures/load_pulled_adapter.py', join(out, 'adapter')], { env })).stdout) as Record<string, unknown>;
  expect(loaded).toMatchObject({ base: MODEL, revision: MODEL_SHA, adapters: ['default'] });
  expect(loaded.tensors).toBeGreaterThan(0);
  expect(loaded.matched).toBe(loaded.tensors);
  expect(loaded.loaded_tensors).toBe(loaded.tensors);
  expect(loaded.nonzero_lora_b).toBeGreaterThan(0);

  const report = await dpo('pull', workflowId, '--what', 'report', '--to', join(out, 'report'));
  expect(report.stdout).toContain('report.md');
  expect(await readFile(join(out, 'report/model-cards/train.md'), 'utf8')).toBe(card);
  // An existing folder with files in it is never replaced.
  const refused = await dpo('pull', workflowId, '--to', join(out, 'adapter')).catch((e: { code: number; stderr: string }) => e);
  expect((refused as { code: number }).code).toBe(2);
  expect((refused as { stderr: string }).stderr).toContain('is not empty');
  return join(out, 'adapter');
}

/**
 * The publish stage pushed exactly the pulled folder (adapter, config, the card with the
 * evaluation) in one commit to a new private repository; an `adapter` stage's adapter publishes
 * with its own card; without a token the stage fails naming its repo and the variable.
 */
async function expectPublished(workflowId: string, timeline: Array<{ id: string; summary?: Record<string, unknown> }>, pulled: string): Promise<void> {
  const repo = hub.published.get(PUBLISHED)!;
  expect(repo.private).toBe(true);
  expect(repo.commits).toHaveLength(1);
  expect(repo.commits[0]!.title).toBe(`DPO adapter from run ${workflowId}`);
  const names = (await readdir(pulled)).sort();
  expect([...repo.commits[0]!.files.keys()].sort()).toEqual(names);
  for (const name of names) expect(repo.commits[0]!.files.get(name)!.equals(await readFile(join(pulled, name))), name).toBe(true);
  expect(timeline.find((t) => t.id === 'publish')!.summary).toMatchObject({ repo: PUBLISHED, commit: expect.stringMatching(/^[0-9a-f]{40}$/) });

  const adapterOnly = (repoName: string) =>
    runPipeline(stack, {
      ...dataConfig(stack, inject('modelSource'), `hf://${NAME}`),
      stages: [
        { id: 'trained', kind: 'adapter', params: { source: `s3://${TEST_BUCKET}/runs/${workflowId}/train/final/adapter/` } },
        { id: 'publish', kind: 'publish', needs: ['trained'], params: { repo: repoName, private: false } },
      ],
    });
  delete process.env.HF_TOKEN;
  try {
    const failed = await adapterOnly('dpo-org/no-token').catch((e: unknown) => e);
    let cause: unknown = (failed as WorkflowFailedError).cause;
    while (cause && !(cause instanceof ApplicationFailure)) cause = (cause as { cause?: unknown }).cause;
    expect((cause as ApplicationFailure).type).toBe('InvalidConfig');
    expect((cause as ApplicationFailure).message).toBe(
      'stage "publish" params.repo "dpo-org/no-token": HF_TOKEN is not set in the worker environment (publishing needs a token with write access)',
    );
  } finally {
    process.env.HF_TOKEN = TOKEN;
  }
  expect(hub.published.has('dpo-org/no-token')).toBe(false);
  // The Hub's answer to the commit is lost once: the retry finds the files at the head and
  // commits nothing more.
  hub.loseCommitAnswers = 1;
  const copied = await adapterOnly('dpo-org/public-copy');
  const copy = hub.published.get('dpo-org/public-copy')!;
  expect(copy.commits).toHaveLength(1);
  const summaries = copied.timeline as Array<{ id: string; summary?: Record<string, unknown> }>;
  expect(summaries.find((t) => t.id === 'publish')!.summary).toMatchObject({ commit: copy.commits[0]!.oid });
  expect(copy.private).toBe(false);
  const card = copy.commits[0]!.files.get('README.md')!.toString();
  expect(card).toContain('| optimizer steps | 5 |');
  expect(card).not.toContain('## Evaluation');
}
