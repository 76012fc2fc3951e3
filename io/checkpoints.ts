/**
 * Reading checkpoints back: the newest one a new attempt may resume from. Writers upload a
 * checkpoint's files, then its manifest (last, with the attempt's fence token), so a manifest
 * means a complete folder; readers still verify every file and the fence rule (io/fencing.ts).
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { FailureType, hasFailureType } from '../contracts/errors.js';
import { keys, MANIFEST_FILE, parseFencedCheckpointName } from '../contracts/keys.js';
import type { ActivityDeps } from './deps.js';
import { listFences, publishedWhileCurrent } from './fencing.js';
import { sha256Hex } from './files.js';

interface CheckpointManifest {
  step: number;
  files: Array<{ path: string; sha256: string }>;
}

/**
 * The newest checkpoint whose manifest exists, whose files match it, and which its attempt
 * published while it still held the stage's fence (io/fencing.ts). Anything newer but
 * incomplete (no manifest, a truncated file) or written by a fenced-out attempt is skipped.
 */
export interface CheckpointQuery {
  bucket: string;
  runId: string;
  stageId: string;
  /** Local folder the checkpoint is downloaded into (as `<dir>/step-N`). */
  dir: string;
  /** Told about every checkpoint skipped, and why. */
  warn: (message: string, fields: Record<string, unknown>) => void;
}

export async function stageNewestCheckpoint(
  deps: ActivityDeps,
  { bucket, runId, stageId, dir, warn }: CheckpointQuery,
): Promise<{ step: number; key: string; dir: string } | null> {
  const checkpointsPrefix = keys.checkpointsPrefix(runId, stageId);
  const [objects, fences] = await Promise.all([
    deps.storage.list(bucket, checkpointsPrefix),
    listFences(deps.storage, bucket, runId, stageId),
  ]);
  const complete = objects
    .filter((o) => o.key.endsWith(`/${MANIFEST_FILE}`))
    .map((o) => ({ prefix: o.key.slice(0, -MANIFEST_FILE.length), writtenAt: o.lastModified?.getTime() }))
    .map((c) => ({ ...c, name: parseFencedCheckpointName(c.prefix.split('/').at(-2) ?? '') }))
    .filter((c): c is typeof c & { name: { step: number; token: number | null } } => c.name !== undefined)
    .sort((a, b) => b.name.step - a.name.step || (b.name.token ?? 0) - (a.name.token ?? 0));
  for (const candidate of complete) {
    if (!publishedWhileCurrent(candidate.name.token, candidate.writtenAt, fences)) {
      warn('skipping a checkpoint published after a newer attempt took over', { key: candidate.prefix });
      continue;
    }
    const local = join(dir, `step-${candidate.name.step}`);
    await rm(local, { recursive: true, force: true });
    await withStorageRetries(() => deps.storage.downloadPrefix(bucket, candidate.prefix, local));
    if (await checkpointIntact(local)) return { step: candidate.name.step, key: candidate.prefix, dir: local };
    warn('skipping a checkpoint whose files do not match its manifest', { key: candidate.prefix });
  }
  return null;
}

async function checkpointIntact(dir: string): Promise<boolean> {
  try {
    const manifest = JSON.parse(await readFile(join(dir, MANIFEST_FILE), 'utf8')) as CheckpointManifest;
    for (const file of manifest.files) {
      if (sha256Hex(await readFile(join(dir, file.path))) !== file.sha256) return false;
    }
    return true;
  } catch {
    return false;
  }
}

/** Storage restarts take seconds: retry a few times before failing the attempt (retryable). */
export async function withStorageRetries<T>(op: () => Promise<T>, tries = 6): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await op();
    } catch (err) {
      if (i >= tries || hasFailureType(err, FailureType.FencedOut)) throw err;
      await new Promise((r) => setTimeout(r, 500 * 2 ** i));
    }
  }
}
