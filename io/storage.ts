/**
 * Object storage through the `minio` client: any S3 endpoint works. Endpoint and keys come from
 * the worker's environment only (invariant 2, docs/architecture.md): they never enter a payload or a log line.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, rename } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Client, CopyDestinationOptions, CopySourceOptions } from 'minio';
import { listFilesRecursive } from './files.js';

export interface StorageEnv {
  endpoint: string;
  accessKey: string;
  secretKey: string;
  region: string;
}

/** Credentials of the local MinIO that `npm run stack` starts (the defaults below). */
export const LOCAL_MINIO_CREDENTIALS = { accessKey: 'dpo-local', secretKey: 'dpo-local-secret' };

/** Reads DPO_S3_* (defaults match the local stack started by `npm run stack`). */
export function storageEnvFromProcess(env: NodeJS.ProcessEnv = process.env): StorageEnv {
  return {
    endpoint: env.DPO_S3_ENDPOINT ?? 'http://127.0.0.1:9000',
    accessKey: env.DPO_S3_ACCESS_KEY ?? LOCAL_MINIO_CREDENTIALS.accessKey,
    secretKey: env.DPO_S3_SECRET_KEY ?? LOCAL_MINIO_CREDENTIALS.secretKey,
    region: env.DPO_S3_REGION ?? 'us-east-1',
  };
}

export interface ObjectInfo {
  key: string;
  size: number;
  etag: string;
  /** The server's time of the last write (fencing compares these, never local clocks). */
  lastModified?: Date;
}

export class Storage {
  readonly client: Client;

  constructor(env: StorageEnv) {
    const url = new URL(env.endpoint);
    this.client = new Client({
      endPoint: url.hostname,
      port: url.port ? Number(url.port) : undefined,
      useSSL: url.protocol === 'https:',
      accessKey: env.accessKey,
      secretKey: env.secretKey,
      region: env.region,
    });
  }

  async ensureBucket(bucket: string): Promise<void> {
    if (!(await this.client.bucketExists(bucket))) {
      try {
        await this.client.makeBucket(bucket);
      } catch (err) {
        // Another worker may have created it between the check and the call.
        if (!(await this.client.bucketExists(bucket))) throw err;
      }
    }
  }

  async exists(bucket: string, key: string): Promise<boolean> {
    try {
      await this.client.statObject(bucket, key);
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  /** Size of an object, or null when there is none. */
  async stat(bucket: string, key: string): Promise<{ size: number } | null> {
    try {
      const info = await this.client.statObject(bucket, key);
      return { size: info.size };
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  async list(bucket: string, prefix: string): Promise<ObjectInfo[]> {
    const out: ObjectInfo[] = [];
    const stream = this.client.listObjectsV2(bucket, prefix, true);
    for await (const item of stream as AsyncIterable<{ name?: string; size: number; etag: string; lastModified?: Date }>) {
      if (item.name) out.push({ key: item.name, size: item.size, etag: item.etag, lastModified: item.lastModified });
    }
    return out.sort((a, b) => a.key.localeCompare(b.key));
  }

  async getBuffer(bucket: string, key: string): Promise<Buffer> {
    const stream = await this.client.getObject(bucket, key);
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  }

  async getJson<T>(bucket: string, key: string): Promise<T> {
    return JSON.parse((await this.getBuffer(bucket, key)).toString('utf8')) as T;
  }

  async putBuffer(bucket: string, key: string, body: Buffer | string, contentType = 'application/octet-stream'): Promise<void> {
    const buf = typeof body === 'string' ? Buffer.from(body) : body;
    await this.client.putObject(bucket, key, buf, buf.length, { 'Content-Type': contentType });
  }

  async putJson(bucket: string, key: string, value: unknown): Promise<void> {
    await this.putBuffer(bucket, key, JSON.stringify(value, null, 2), 'application/json');
  }

  async putFile(bucket: string, key: string, path: string): Promise<void> {
    await this.client.fPutObject(bucket, key, path);
  }

  async copyObject(bucket: string, key: string, sourceBucket: string, sourceKey: string): Promise<void> {
    await this.client.copyObject(
      new CopySourceOptions({ Bucket: sourceBucket, Object: sourceKey }),
      new CopyDestinationOptions({ Bucket: bucket, Object: key }),
    );
  }

  /** Downloads one object to a local file atomically (temp file, then rename). */
  async downloadFile(bucket: string, key: string, path: string): Promise<void> {
    await mkdir(dirname(path), { recursive: true });
    const tmp = `${path}.part-${process.pid}`;
    await pipeline(await this.client.getObject(bucket, key), createWriteStream(tmp));
    await rename(tmp, path);
  }

  /** Downloads every object under `prefix` into `dir`, keeping relative paths. */
  async downloadPrefix(bucket: string, prefix: string, dir: string): Promise<string[]> {
    const objects = await this.list(bucket, prefix);
    const files: string[] = [];
    for (const obj of objects) {
      const rel = obj.key.slice(prefix.length);
      if (!rel || rel.split('/').some((s) => s === '..')) continue;
      const path = join(dir, ...rel.split('/'));
      await this.downloadFile(bucket, obj.key, path);
      files.push(rel);
    }
    return files;
  }

  /**
   * Uploads a local folder under `prefix`. The file named `lastFile` (a manifest) goes up last,
   * so readers that wait for it never see a partial folder (invariant 3, docs/architecture.md).
   */
  async uploadDir(bucket: string, dir: string, prefix: string, lastFile?: string): Promise<string[]> {
    const files = await listFilesRecursive(dir);
    const ordered = [...files.filter((f) => f !== lastFile), ...files.filter((f) => f === lastFile)];
    for (const rel of ordered) await this.putFile(bucket, prefix + rel, join(dir, ...rel.split('/')));
    return ordered;
  }
}

function isNotFound(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === 'NotFound' || code === 'NoSuchKey' || code === 'NoSuchBucket';
}

/** `s3://bucket/some/prefix` -> { bucket, prefix: 'some/prefix/' } */
export function parseS3Uri(uri: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(uri);
  if (!m) throw new Error(`not an s3:// URI: ${uri}`);
  const prefix = m[2] && !m[2].endsWith('/') ? `${m[2]}/` : m[2] ?? '';
  return { bucket: m[1]!, prefix };
}
