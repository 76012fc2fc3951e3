/**
 * Models from the Hugging Face Hub (`hf://Org/name[@revision]` or a bare `Org/name`), through
 * @huggingface/hub. A revision is resolved to its commit sha once, at run start, and every stage
 * then reads that sha. Files are fetched into a per-worker cache in the Hub's own layout
 * (`<HF_HOME>/hub/models--Org--name/{blobs,snapshots,refs}`), so transformers finds them there
 * too: only what loading needs (root-level configs, safetensors shards, tokenizer, processor and
 * chat template; never `.bin` twins, ONNX or GGUF), streamed to disk, resumed from where a broken
 * download stopped, checked against the Hub's sha256 (LFS) or git blob id, and fetched once even
 * when activities in several processes stage the same model at the same time (a lock file).
 * HF_TOKEN and HF_ENDPOINT come from the worker's environment only.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { lstat, mkdir, readFile, rename, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { downloadFile, listFiles, modelInfo } from '@huggingface/hub';
import { FailureType, nonRetryable, retryable } from '../contracts/errors.js';
import { COMMIT_SHA, HubRefError, parseHubRef, pinnedHubSource, type HubRepoRef } from '../contracts/hubRepo.js';

export interface HubModelFile {
  path: string;
  size: number;
  /** The blob's name in the cache, as huggingface_hub names it: the LFS sha256, else the git blob sha1. */
  etag: string;
  lfs: boolean;
}

export interface ResolvedHubModel {
  /** `Org/name`: what `from_pretrained` and an adapter's `base_model_name_or_path` take. */
  name: string;
  /** The revision the config asked for (`main` when it named none). */
  requested: string;
  sha: string;
  /** `hf://Org/name@<sha>`: the source every stage of the run reads. */
  pinned: string;
  /** The files loading needs, at that sha. */
  files: HubModelFile[];
}

interface HubAccess {
  hubUrl?: string;
  accessToken?: string;
}

const hubAccess = (env: NodeJS.ProcessEnv): HubAccess => ({
  hubUrl: env.HF_ENDPOINT?.replace(/\/$/, '') || undefined,
  accessToken: env.HF_TOKEN || undefined,
});

/** Formats loading never reads when safetensors weights are there (or at all). */
const SKIPPED = /\.(bin|pt|pth|ckpt|h5|msgpack|onnx|onnx_data|gguf|ot|tflite|mlmodel)$/i;
const WEIGHTS = /\.safetensors$/;
const LOADING_FILE = /\.(json|jinja|safetensors|model|tiktoken|txt)$/;

/** Root-level files `from_pretrained` reads for the model, its tokenizer and its processor. */
export function loadingFiles(files: HubModelFile[]): HubModelFile[] {
  return files.filter((f) => !f.path.includes('/') && LOADING_FILE.test(f.path) && !SKIPPED.test(f.path) && f.path !== 'README.md');
}

/**
 * Resolves the revision to a commit sha and checks, before anything else starts, that the files
 * there make a loadable vision-language model: config, safetensors weights, a processor config
 * and a chat template.
 */
export async function resolveHubModel(source: string, env: NodeJS.ProcessEnv = process.env): Promise<ResolvedHubModel> {
  let ref: HubRepoRef;
  try {
    ref = parseHubRef(source, 'model.source', { bare: true, kind: 'model' });
  } catch (err) {
    if (err instanceof HubRefError) throw nonRetryable(err.message, FailureType.InvalidConfig);
    throw err;
  }
  const hub = hubAccess(env);
  let sha: string | undefined;
  try {
    sha = (await modelInfo({ name: ref.name, revision: ref.revision, additionalFields: ['sha'], ...hub })).sha;
  } catch (err) {
    throw hubModelFailure(source, ref, err, hub);
  }
  if (!sha || !COMMIT_SHA.test(sha)) throw retryable(`model.source "${source}": the Hub returned no commit sha for revision "${ref.revision}"`);
  const all: HubModelFile[] = [];
  try {
    for await (const e of listFiles({ repo: { type: 'model', name: ref.name }, revision: sha, recursive: true, ...hub })) {
      if (e.type !== 'file') continue;
      all.push({ path: e.path, size: e.lfs?.size ?? e.size, etag: e.lfs?.oid ?? e.oid ?? '', lfs: Boolean(e.lfs) });
    }
  } catch (err) {
    throw hubModelFailure(source, ref, err, hub);
  }
  const files = loadingFiles(all).sort((a, b) => a.path.localeCompare(b.path));
  await checkLoadable(source, ref, sha, files, hub);
  return { name: ref.name, requested: ref.revision, sha, pinned: pinnedHubSource(ref, sha), files };
}

async function checkLoadable(source: string, ref: HubRepoRef, sha: string, files: HubModelFile[], hub: HubAccess): Promise<void> {
  const has = (p: string) => files.some((f) => f.path === p);
  const at = `at ${ref.name}@${sha.slice(0, 12)}`;
  const fail = (what: string) => nonRetryable(`model.source "${source}": ${what} ${at} (files: ${files.map((f) => f.path).join(', ') || 'none'})`, FailureType.ModelLoadError);
  if (!has('config.json')) throw fail('no config.json');
  if (!files.some((f) => WEIGHTS.test(f.path))) throw fail('no safetensors weights (.bin, ONNX and GGUF files are not loaded)');
  if (!has('preprocessor_config.json') && !has('processor_config.json')) throw fail('no processor (preprocessor_config.json or processor_config.json)');
  if (has('chat_template.jinja') || has('chat_template.json')) return;
  // Older repositories keep the template inside a tokenizer or processor config.
  for (const name of ['tokenizer_config.json', 'processor_config.json']) {
    if (!has(name)) continue;
    const text = await readSmallFile(source, ref, sha, name, hub);
    if (typeof (JSON.parse(text) as { chat_template?: unknown }).chat_template === 'string') return;
  }
  const modelType = (JSON.parse(await readSmallFile(source, ref, sha, 'config.json', hub)) as { model_type?: string }).model_type;
  if (TEMPLATE_FREE_MODEL_TYPES.includes(modelType ?? '')) return;
  throw fail('no chat template (chat_template.jinja, chat_template.json, or chat_template in tokenizer_config.json)');
}

async function readSmallFile(source: string, ref: HubRepoRef, sha: string, path: string, hub: HubAccess): Promise<string> {
  try {
    const blob = await downloadFile({ repo: { type: 'model', name: ref.name }, path, revision: sha, xet: false, ...hub });
    if (!blob) throw retryable(`model.source "${source}": ${path} vanished from ${sha}`);
    return await blob.text();
  } catch (err) {
    throw hubModelFailure(source, ref, err, hub);
  }
}

/** Families whose prompts follow a fixed convention instead of a chat template (vlm/processors/paligemma.ts). */
const TEMPLATE_FREE_MODEL_TYPES = ['paligemma'];

/** 401/403/404 are the config's (or the worker's token's) to fix; network errors and 5xx are retried. */
export function hubModelFailure(source: string, ref: HubRepoRef, err: unknown, hub: HubAccess): Error {
  if ((err as { name?: string }).name === 'ApplicationFailure') return err as Error;
  const status = (err as { statusCode?: number }).statusCode;
  const base = `model.source "${source}"`;
  const detail = (err as Error).message.split('. URL:')[0];
  if (status === 401 || status === 403) {
    const token = hub.accessToken
      ? 'the worker\'s HF_TOKEN has no access to it (a gated model: accept its terms on the Hub with the token\'s account)'
      : 'HF_TOKEN is not set in the worker environment (gated and private models need one)';
    return nonRetryable(`${base}: the Hub refused access (${status}): ${token}`, FailureType.InvalidConfig);
  }
  if (status === 404) {
    const what = /rev/i.test(detail ?? '') ? `no revision "${ref.revision}" in ${ref.name}` : `no model repository ${ref.name} (or a private one${hub.accessToken ? ' this HF_TOKEN cannot see' : ' and HF_TOKEN is not set'})`;
    return nonRetryable(`${base}: ${what}`, FailureType.InvalidConfig);
  }
  return retryable(`${base}: ${detail}`);
}

/** The Hub cache every worker process on the host shares: `$HF_HUB_CACHE`, `$HF_HOME/hub`, else `<workDir>/hf/hub`. */
export function hubCacheDir(workDir: string, env: NodeJS.ProcessEnv = process.env): string {
  return env.HF_HUB_CACHE || join(env.HF_HOME || join(workDir, 'hf'), 'hub');
}

const inProcess = new Map<string, Promise<string>>();

/**
 * The model's snapshot folder (`.../snapshots/<sha>`) holding the files `only` accepts among
 * those loading needs. `source` is normally the pinned `hf://Org/name@<sha>`; another revision is
 * resolved first.
 */
export async function stageHubModel(workDir: string, source: string, only?: (file: string) => boolean, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const ref = parseHubRefOrFail(source);
  const repoDir = join(hubCacheDir(workDir, env), `models--${ref.name.replace('/', '--')}`);
  const sha = COMMIT_SHA.test(ref.revision) ? ref.revision : (await resolveHubModel(source, env)).sha;
  // Callers pass the same few filters (io/models.ts), so a filter's source text identifies it.
  const key = `${repoDir}@${sha}:${only ? only.toString() : '*'}`;
  const running = inProcess.get(key);
  if (running) return running;
  const work = withLock(join(repoDir, `.dpo-lock-${sha}`), () => fillSnapshot(repoDir, source, ref, sha, only, env)).finally(() => inProcess.delete(key));
  inProcess.set(key, work);
  return work;
}

function parseHubRefOrFail(source: string): HubRepoRef {
  try {
    return parseHubRef(source, 'model.source', { bare: true, kind: 'model' });
  } catch (err) {
    if (err instanceof HubRefError) throw nonRetryable(err.message, FailureType.InvalidConfig);
    throw err;
  }
}

async function fillSnapshot(repoDir: string, source: string, ref: HubRepoRef, sha: string, only: ((file: string) => boolean) | undefined, env: NodeJS.ProcessEnv): Promise<string> {
  const snapshot = join(repoDir, 'snapshots', sha);
  // A commit's file list never changes, so it is kept and later stagings need no Hub call at all.
  const listPath = join(repoDir, '.dpo-files', `${sha}.json`);
  let files = await readFile(listPath, 'utf8').then((t) => JSON.parse(t) as HubModelFile[], () => null);
  if (!files) {
    files = (await resolveHubModel(`hf://${ref.name}@${sha}`, env)).files;
    await mkdir(dirname(listPath), { recursive: true });
    await writeFile(`${listPath}.tmp-${process.pid}`, JSON.stringify(files));
    await rename(`${listPath}.tmp-${process.pid}`, listPath);
  }
  const hub = hubAccess(env);
  for (const file of files.filter((f) => !only || only(f.path))) {
    const pointer = join(snapshot, file.path);
    if (await stat(pointer).then(() => true, () => false)) continue;
    const blob = join(repoDir, 'blobs', file.etag);
    if (!(await stat(blob).then(() => true, () => false))) await downloadBlob(source, ref, sha, file, blob, hub);
    await mkdir(dirname(pointer), { recursive: true });
    await rm(pointer, { force: true }); // a dangling link left by a removed blob
    await symlink(relative(dirname(pointer), blob), pointer);
  }
  if (ref.revision !== sha) {
    // What huggingface_hub records too: from_pretrained(name, revision=...) then finds this snapshot offline.
    await mkdir(dirname(join(repoDir, 'refs', ref.revision)), { recursive: true });
    await writeFile(join(repoDir, 'refs', ref.revision), sha);
  }
  return snapshot;
}

/** Streams one file into `<blob>.incomplete` (resuming what an earlier try left), verifies it, then renames it into place. */
async function downloadBlob(source: string, ref: HubRepoRef, sha: string, file: HubModelFile, blobPath: string, hub: HubAccess): Promise<void> {
  const incomplete = `${blobPath}.incomplete`;
  await mkdir(dirname(blobPath), { recursive: true });
  let offset = (await stat(incomplete).catch(() => null))?.size ?? 0;
  if (offset > file.size) {
    await rm(incomplete, { force: true });
    offset = 0;
  }
  if (offset < file.size) {
    try {
      const blob = await downloadFile({ repo: { type: 'model', name: ref.name }, path: file.path, revision: sha, xet: false, ...hub });
      if (!blob) throw retryable(`model.source "${source}": ${file.path} vanished from ${sha}`);
      const part = offset ? blob.slice(offset) : blob;
      await pipeline(Readable.fromWeb(part.stream() as WebReadableStream<Uint8Array>), createWriteStream(incomplete, { flags: offset ? 'a' : 'w' }));
    } catch (err) {
      // The bytes that did arrive stay in .incomplete: the retry asks only for the rest.
      throw hubModelFailure(source, ref, err, hub);
    }
  }
  const digest = await fileDigest(incomplete, file);
  if (digest !== file.etag) {
    await rm(incomplete, { force: true });
    throw retryable(`model.source "${source}": ${file.path} failed its ${file.lfs ? 'sha256' : 'git blob'} check after download (got ${digest}, expected ${file.etag})`);
  }
  await rename(incomplete, blobPath);
}

/** sha256 of the content for LFS files; git's blob id (sha1 of "blob <size>\0" + content) for the rest. */
async function fileDigest(path: string, file: HubModelFile): Promise<string> {
  const hash = createHash(file.lfs ? 'sha256' : 'sha1');
  if (!file.lfs) hash.update(`blob ${(await stat(path)).size}\0`);
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** A lock older than this without a refresh belongs to a process that died. */
const STALE_LOCK_MS = 60_000;

/**
 * Runs `work` holding `lockDir` (mkdir is atomic, also across processes). The holder refreshes it
 * while working; a waiter takes over a lock nobody has refreshed for a minute.
 */
async function withLock<T>(lockDir: string, work: () => Promise<T>): Promise<T> {
  await mkdir(dirname(lockDir), { recursive: true });
  for (;;) {
    try {
      await mkdir(lockDir);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const age = Date.now() - ((await lstat(lockDir).catch(() => null))?.mtimeMs ?? Date.now());
      if (age > STALE_LOCK_MS) await rm(lockDir, { recursive: true, force: true });
      else await new Promise((r) => setTimeout(r, 200));
    }
  }
  const refresh = setInterval(() => void utimes(lockDir, new Date(), new Date()).catch(() => undefined), 5_000);
  try {
    return await work();
  } finally {
    clearInterval(refresh);
    await rm(lockDir, { recursive: true, force: true });
  }
}
