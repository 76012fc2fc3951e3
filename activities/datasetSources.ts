/**
 * Where datasets come from. Each source lists its Parquet files with a fingerprint (so a changed
 * source gets a new download hash) and copies one file into the run's storage.
 * Sources: s3://bucket/prefix (any S3 endpoint), local folders. hf://owner/name plugs in here.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { FailureType } from '../lib/errors.js';
import { listFilesRecursive, parseS3Uri, type Storage } from './storage.js';

export interface SourceFile {
  /** Path relative to the source root, with "/" separators. */
  path: string;
  size: number;
  /** Content fingerprint: S3 etag or sha256 of a local file. */
  fingerprint: string;
}

export interface DatasetSource {
  readonly uri: string;
  listParquet(): Promise<SourceFile[]>;
  copyTo(file: SourceFile, bucket: string, key: string): Promise<void>;
}

export function openDatasetSource(uri: string, storage: Storage): DatasetSource {
  if (uri.startsWith('s3://')) return new S3Source(uri, storage);
  if (uri.startsWith('hf://')) {
    throw ApplicationFailure.nonRetryable(
      `dataset.source "${uri}": Hugging Face Hub sources are not supported by this version; ` +
        'download the Parquet files and use s3:// or a local folder',
      FailureType.InvalidConfig,
    );
  }
  return new LocalSource(uri, storage);
}

class S3Source implements DatasetSource {
  constructor(
    readonly uri: string,
    private readonly storage: Storage,
  ) {}

  async listParquet(): Promise<SourceFile[]> {
    const { bucket, prefix } = parseS3Uri(this.uri);
    const objects = await this.storage.list(bucket, prefix);
    return objects
      .filter((o) => o.key.endsWith('.parquet'))
      .map((o) => ({ path: o.key.slice(prefix.length), size: o.size, fingerprint: o.etag }));
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

  async listParquet(): Promise<SourceFile[]> {
    const info = await stat(this.root).catch(() => null);
    if (!info?.isDirectory()) {
      throw ApplicationFailure.nonRetryable(
        `dataset.source "${this.uri}": no such folder on worker ${process.env.HOSTNAME ?? ''} (resolved to ${this.root})`.trim(),
        FailureType.InvalidConfig,
      );
    }
    const files = (await listFilesRecursive(this.root)).filter((f) => f.endsWith('.parquet'));
    return Promise.all(
      files.map(async (path) => {
        const full = join(this.root, path);
        return { path, size: (await stat(full)).size, fingerprint: await sha256File(full) };
      }),
    );
  }

  async copyTo(file: SourceFile, bucket: string, key: string): Promise<void> {
    await this.storage.putFile(bucket, key, join(this.root, file.path));
  }
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/**
 * Which split a file belongs to, by the Hub's conventions: a folder named after the split
 * (`train/x.parquet`) or a file-name prefix (`data/train-00000-of-00002.parquet`).
 */
export function fileBelongsToSplit(path: string, split: string): boolean {
  const segments = path.split('/');
  const name = segments.pop() ?? '';
  if (segments.includes(split)) return true;
  return name === `${split}.parquet` || name.startsWith(`${split}-`) || name.startsWith(`${split}_`);
}
