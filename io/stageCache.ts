/**
 * Content-addressed stage outputs (invariant 6, docs/architecture.md): a stage's output lives under
 * stages/<kind>/<hash of its inputs>/ and is complete once its manifest exists. A rerun with the
 * same inputs finds the manifest and reuses the output ("cached"); anything without a manifest
 * is ignored and rewritten.
 */
import { createHash } from 'node:crypto';
import { keys, type StageKind } from '../contracts/keys.js';
import type { StageResult } from '../contracts/payloads.js';
import type { Storage } from './storage.js';

/**
 * Bump a stage's version whenever its code changes what it produces, so stale outputs are not
 * reused. Part of every stage hash.
 */
export const STAGE_CODE_VERSIONS: Record<StageKind, number> = {
  download: 2,
  // 4: parts hold `extra_images` (a row's images after the first).
  // 5: LLaVA, LLaVA-NeXT and Gemma 3 keep rows with several images.
  // 6: plain JPEGs are thumbnailed from a DCT-scaled libjpeg-turbo decode (vlm/jpegDecode.ts).
  format: 6,
  // 3: token parts hold no images; shard takes them from the format parts.
  tokenize: 3,
  // 4: shards hold `extra_images`.
  // 5: each split records its most images per row (the evaluate engine's choice reads it).
  shard: 5,
  reference: 1,
  export: 1,
};

export function stageHash(kind: StageKind, inputs: unknown): string {
  const text = JSON.stringify({ kind, version: STAGE_CODE_VERSIONS[kind], inputs }, sortedReplacer);
  return createHash('sha256').update(text).digest('hex').slice(0, 32);
}

/** Stable JSON: object keys sorted, so the same inputs always hash the same. */
function sortedReplacer(_key: string, value: unknown): unknown {
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    return Object.fromEntries(Object.entries(value as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b)));
  }
  return value;
}
export type { StageManifestBase } from '../contracts/manifests.js';
import type { StageManifestBase } from '../contracts/manifests.js';

/**
 * Returns the stored output for `hash` if complete, else runs `produce` (which writes its files
 * under `prefix`) and writes the manifest last.
 */
/** The stored output for `hash` if it is complete (its manifest exists), else null. */
export async function findCachedStage(storage: Storage, bucket: string, kind: StageKind, hash: string): Promise<StageResult | null> {
  const manifestKey = keys.stageManifest(kind, hash);
  await storage.ensureBucket(bucket);
  if (!(await storage.exists(bucket, manifestKey))) return null;
  const manifest = await storage.getJson<StageManifestBase>(bucket, manifestKey);
  return { kind, hash, manifestKey, cached: true, summary: manifest.summary };
}

/** Completes a stage whose files were written by fanned-out chunks: the manifest goes last. */
export async function writeStageManifest<M extends StageManifestBase>(
  storage: Storage,
  bucket: string,
  kind: StageKind,
  hash: string,
  body: Omit<M, keyof StageManifestBase> & { summary: M['summary'] },
): Promise<StageResult> {
  const manifestKey = keys.stageManifest(kind, hash);
  await storage.putJson(bucket, manifestKey, { ...body, kind, hash, createdAt: new Date().toISOString() });
  return { kind, hash, manifestKey, cached: false, summary: body.summary };
}

export async function runCachedStage<M extends StageManifestBase>(
  storage: Storage,
  bucket: string,
  kind: StageKind,
  hash: string,
  produce: (prefix: string) => Promise<Omit<M, keyof StageManifestBase> & { summary: M['summary'] }>,
): Promise<StageResult> {
  const manifestKey = keys.stageManifest(kind, hash);
  await storage.ensureBucket(bucket);
  if (await storage.exists(bucket, manifestKey)) {
    const manifest = await storage.getJson<M>(bucket, manifestKey);
    return { kind, hash, manifestKey, cached: true, summary: manifest.summary };
  }
  const body = await produce(keys.stagePrefix(kind, hash));
  const manifest = { ...body, kind, hash, createdAt: new Date().toISOString() };
  await storage.putJson(bucket, manifestKey, manifest);
  return { kind, hash, manifestKey, cached: false, summary: body.summary };
}
