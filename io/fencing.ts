/**
 * Attempt fencing for checkpoints: no zombie writers (docs/training-and-durability.md).
 *
 * Every train attempt owns a fence token: the Temporal server's schedule time of that attempt
 * (ms). A later attempt -- a retry after a heartbeat timeout, the next segment, an OOM replan --
 * always has a larger token. At start an attempt writes `fences/<token>`; before it publishes a
 * checkpoint manifest or the final adapter it lists the fences, and if a newer one exists it
 * stops its trainer and publishes nothing. Its checkpoints live in folders named by its token,
 * so two attempts never write the same key.
 *
 * A stale attempt can still lose the race between its last check and its manifest upload. So
 * readers apply one more rule, using only the storage server's clock: a checkpoint of token t is
 * used only if its manifest was written before any fence newer than t existed.
 */
import { keys, fenceName } from '../contracts/keys.js';
import { FailureType, retryable } from '../contracts/errors.js';
import type { ObjectInfo, Storage } from './storage.js';

export interface FenceRecord {
  token: number;
  writtenAt: number;
}

export class AttemptFence {
  constructor(
    private readonly storage: Storage,
    private readonly bucket: string,
    private readonly runId: string,
    private readonly stageId: string,
    readonly token: number,
  ) {}

  /** Writes this attempt's fence; fails if a newer attempt has already claimed the stage. */
  async claim(owner: Record<string, unknown>): Promise<void> {
    await this.storage.putJson(this.bucket, keys.fence(this.runId, this.stageId, this.token), { token: this.token, ...owner });
    await this.assertCurrent('start');
  }

  /** Throws FencedOut when a newer attempt exists: the caller must not publish anything. */
  async assertCurrent(what: string): Promise<void> {
    const newer = (await listFences(this.storage, this.bucket, this.runId, this.stageId)).filter((f) => f.token > this.token);
    if (newer.length) {
      throw retryable(
        `a newer attempt (fence ${fenceName(newer[0]!.token)}) owns this train stage; this attempt (fence ${fenceName(this.token)}) stops before ${what}`,
        FailureType.FencedOut,
      );
    }
  }
}

export async function listFences(storage: Storage, bucket: string, runId: string, stageId: string): Promise<FenceRecord[]> {
  const prefix = keys.fencesPrefix(runId, stageId);
  return (await storage.list(bucket, prefix))
    .map((o: ObjectInfo) => ({ token: Number(o.key.slice(prefix.length)), writtenAt: o.lastModified?.getTime() ?? 0 }))
    .filter((f) => Number.isFinite(f.token))
    .sort((a, b) => a.token - b.token);
}

/**
 * Whether a checkpoint of `token` whose manifest was written at `manifestAt` (server time) was
 * published by the attempt while it still held the stage. Unfenced checkpoints (older runs) pass.
 */
export function publishedWhileCurrent(token: number | null, manifestAt: number | undefined, fences: FenceRecord[]): boolean {
  if (token === null) return true;
  if (manifestAt === undefined) return false;
  const superseded = Math.min(...fences.filter((f) => f.token > token).map((f) => f.writtenAt));
  return manifestAt < superseded;
}
