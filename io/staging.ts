/**
 * Staging onto a GPU worker's local disk what a train or reference activity reads: token shards
 * (content-addressed, sha256-checked), a reference stage's log-probs, an `init_from` adapter.
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { FailureType, nonRetryable, retryable } from '../contracts/errors.js';
import type { ReferenceManifest, ShardManifest } from '../contracts/manifests.js';
import type { ActivityDeps } from './deps.js';
import { sha256Hex } from './files.js';

/** Downloads the split's shards into a content-addressed local cache, checking their sha256. */
export async function stageShards(deps: ActivityDeps, { bucket, manifestKey, split }: { bucket: string; manifestKey: string; split: string }): Promise<string[]> {
  const manifest = await deps.storage.getJson<ShardManifest>(bucket, manifestKey);
  const entry = manifest.splits[split];
  if (!entry) throw nonRetryable(`shard manifest has no split "${split}"`, FailureType.InvalidDataset);
  const paths: string[] = [];
  for (const shard of entry.shards) {
    const path = join(deps.workDir, 'shards', `${shard.sha256}.parquet`);
    const ok = await readFile(path).then((b) => sha256Hex(b) === shard.sha256, () => false);
    if (!ok) {
      await deps.storage.downloadFile(bucket, shard.key, path);
      if (sha256Hex(await readFile(path)) !== shard.sha256) {
        await rm(path, { force: true });
        throw retryable(`shard ${shard.key} failed its sha256 check after download`);
      }
    }
    paths.push(path);
  }
  return paths;
}

/**
 * Downloads a reference stage's output for the train activity; returns the local parquet paths
 * (each beside the trainer's manifest.json, which the trainer verifies).
 */
export async function stageReference(deps: ActivityDeps, { bucket, manifestKey, dir }: { bucket: string; manifestKey: string; dir: string }): Promise<string[]> {
  const manifest = await deps.storage.getJson<ReferenceManifest>(bucket, manifestKey);
  await rm(dir, { recursive: true, force: true });
  await deps.storage.downloadPrefix(bucket, manifest.logpsPrefix, dir);
  return manifest.files.map((f) => join(dir, f));
}

/** `init_from`: downloads the adapter folder training starts from. */
export async function stageInitAdapter(deps: ActivityDeps, from: { bucket: string; prefix: string }, dir: string): Promise<string> {
  await rm(dir, { recursive: true, force: true });
  const files = await deps.storage.downloadPrefix(from.bucket, from.prefix, dir);
  if (!files.some((f) => f.endsWith('adapter_config.json'))) {
    throw nonRetryable(`init_from: s3://${from.bucket}/${from.prefix} holds no PEFT adapter (adapter_config.json)`, FailureType.InvalidConfig);
  }
  return dir;
}
