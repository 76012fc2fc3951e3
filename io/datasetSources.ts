/**
 * Where datasets come from. Each source lists its files with a fingerprint (so a changed source
 * gets a new download hash) and streams one file into the run's storage, never holding it whole.
 * Sources: s3://bucket/prefix (any S3 endpoint), local folders, and hf://owner/name[@revision]
 * (the Hugging Face Hub through @huggingface/hub; the revision is resolved to a commit sha, which
 * is what gets listed, downloaded and recorded). HF_TOKEN and HF_ENDPOINT come from the worker's
 * environment only.
 */
import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { datasetInfo, downloadFile, listFiles } from '@huggingface/hub';
import { FailureType, nonRetryable, retryable } from '../contracts/errors.js';
import { listFilesRecursive, sha256File } from './files.js';
import { parseS3Uri, type Storage } from './storage.js';

export interface SourceFile {
  /** Path relative to the source root, with "/" separators. */
  path: string;
  size: number;
  /** Content fingerprint: S3 etag, Hub blob/LFS oid, or sha256 of a local file. */
  fingerprint: string;
}

export interface DatasetSource {
  readonly uri: string;
  /** The exact version listed: a Hub commit sha; undefined for S3 and local sources. */
  readonly revision?: string;
  listFiles(): Promise<SourceFile[]>;
  /** A small file's text (the README whose YAML says which files make up each split). */
  readText(file: SourceFile): Promise<string>;
  copyTo(file: SourceFile, bucket: string, key: string): Promise<void>;
}

export async function openDatasetSource(uri: string, storage: Storage, env: NodeJS.ProcessEnv = process.env): Promise<DatasetSource> {
  if (uri.startsWith('s3://')) return new S3Source(uri, storage);
  if (uri.startsWith('hf://')) return HubSource.open(uri, storage, env);
  return new LocalSource(uri, storage);
}

class S3Source implements DatasetSource {
  constructor(
    readonly uri: string,
    private readonly storage: Storage,
  ) {}

  async listFiles(): Promise<SourceFile[]> {
    const { bucket, prefix } = parseS3Uri(this.uri);
    const objects = await this.storage.list(bucket, prefix);
    return objects.map((o) => ({ path: o.key.slice(prefix.length), size: o.size, fingerprint: o.etag }));
  }

  async readText(file: SourceFile): Promise<string> {
    const src = parseS3Uri(this.uri);
    return (await this.storage.getBuffer(src.bucket, src.prefix + file.path)).toString('utf8');
  }

  async copyTo(file: SourceFile, bucket: string, key: string): Promise<void> {
    const src = parseS3Uri(this.uri);
    await this.storage.copyObject(bucket, key, src.bucket, src.prefix + file.path);
  }
}

class LocalSource implements DatasetSource {
  private readonly root: string;
  constructor(
    readonly uri: string,
    private readonly storage: Storage,
  ) {
    this.root = resolve(uri.startsWith('file://') ? uri.slice('file://'.length) : uri);
  }

  async listFiles(): Promise<SourceFile[]> {
    const info = await stat(this.root).catch(() => null);
    if (!info?.isDirectory()) {
      throw nonRetryable(
        `dataset.source "${this.uri}": no such folder on worker ${process.env.HOSTNAME ?? ''} (resolved to ${this.root})`.trim(),
        FailureType.InvalidConfig,
      );
    }
    const files = await listFilesRecursive(this.root);
    return Promise.all(
      files.map(async (path) => {
        const full = join(this.root, path);
        return { path, size: (await stat(full)).size, fingerprint: await sha256File(full) };
      }),
    );
  }

  async readText(file: SourceFile): Promise<string> {
    return readFile(join(this.root, file.path), 'utf8');
  }

  async copyTo(file: SourceFile, bucket: string, key: string): Promise<void> {
    await this.storage.putFile(bucket, key, join(this.root, file.path));
  }
}

/** `hf://owner/name[@revision]` -> { name: 'owner/name', revision } */
export function parseHubUri(uri: string): { name: string; revision: string } {
  const m = /^hf:\/\/(?:datasets\/)?([A-Za-z0-9][\w.-]*\/[\w.-]+)(?:@([\w./-]+))?\/?$/.exec(uri);
  if (!m) {
    throw nonRetryable(
      `dataset.source "${uri}": expected hf://owner/name or hf://owner/name@revision`,
      FailureType.InvalidConfig,
    );
  }
  const revision = (m[2] ?? 'main').replace(/\/+$/, '');
  // A revision is a branch, tag or sha; one with ".." or empty segments would reach other URLs.
  if (revision.split('/').some((s) => s === '' || s === '.' || s === '..') || m[1]!.split('/').some((s) => /^\.+$/.test(s))) {
    throw nonRetryable(`dataset.source "${uri}": the path leaves the repository ("." or ".." segments are not allowed)`, FailureType.InvalidConfig);
  }
  return { name: m[1]!, revision };
}

class HubSource implements DatasetSource {
  private constructor(
    readonly uri: string,
    private readonly name: string,
    readonly revision: string,
    private readonly hub: { hubUrl?: string; accessToken?: string },
    private readonly storage: Storage,
  ) {}

  static async open(uri: string, storage: Storage, env: NodeJS.ProcessEnv): Promise<HubSource> {
    const { name, revision } = parseHubUri(uri);
    const hub = { hubUrl: env.HF_ENDPOINT?.replace(/\/$/, '') || undefined, accessToken: env.HF_TOKEN || undefined };
    let sha: string | undefined;
    try {
      sha = (await datasetInfo({ name, revision, additionalFields: ['sha'], ...hub })).sha;
    } catch (err) {
      throw hubFailure(uri, err);
    }
    if (!sha) throw retryable(`dataset.source "${uri}": the Hub returned no commit sha for revision "${revision}"`);
    return new HubSource(uri, name, sha, hub, storage);
  }

  async listFiles(): Promise<SourceFile[]> {
    const out: SourceFile[] = [];
    try {
      for await (const entry of listFiles({ repo: { type: 'dataset', name: this.name }, revision: this.revision, recursive: true, ...this.hub })) {
        if (entry.type !== 'file') continue;
        out.push({ path: entry.path, size: entry.lfs?.size ?? entry.size, fingerprint: entry.lfs?.oid ?? entry.oid ?? `${this.revision}:${entry.path}` });
      }
    } catch (err) {
      throw hubFailure(this.uri, err);
    }
    return out.sort((a, b) => a.path.localeCompare(b.path));
  }

  async readText(file: SourceFile): Promise<string> {
    const blob = await downloadFile({ repo: { type: 'dataset', name: this.name }, path: file.path, revision: this.revision, xet: false, ...this.hub }).catch(
      (err: unknown) => {
        throw hubFailure(this.uri, err);
      },
    );
    if (!blob) throw retryable(`dataset.source "${this.uri}": ${file.path} vanished from revision ${this.revision}`);
    return blob.text();
  }

  async copyTo(file: SourceFile, bucket: string, key: string): Promise<void> {
    const blob = await downloadFile({ repo: { type: 'dataset', name: this.name }, path: file.path, revision: this.revision, xet: false, ...this.hub }).catch(
      (err: unknown) => {
        throw hubFailure(this.uri, err);
      },
    );
    if (!blob) throw retryable(`dataset.source "${this.uri}": ${file.path} vanished from revision ${this.revision}`);
    // Streamed: a multi-GB Parquet file goes to storage in parts, never whole in memory.
    const body = Readable.fromWeb(blob.stream() as WebReadableStream<Uint8Array>);
    await this.storage.client.putObject(bucket, key, body, file.size);
  }
}

/** Auth and missing-repo errors are the config's to fix; the rest (network, 5xx) is retried. */
function hubFailure(uri: string, err: unknown): Error {
  const status = (err as { statusCode?: number }).statusCode;
  const message = `dataset.source "${uri}": ${(err as Error).message}`;
  if (status === 401 || status === 403 || status === 404) {
    const hint = status === 404 ? ' (no such dataset or revision, or a gated/private one without HF_TOKEN)' : ' (set HF_TOKEN in the worker environment)';
    return nonRetryable(message + hint, FailureType.InvalidConfig);
  }
  return retryable(message);
}

export const IMAGE_FILE = /\.(jpe?g|png|webp|gif|bmp|tiff?)$/i;
