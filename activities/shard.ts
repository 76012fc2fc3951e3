/**
 * shard: token rows into Parquet shards of `shard.samples_per_shard` rows, in order (so shard
 * assignment is deterministic), plus a manifest with per-shard rows, tokens, bytes and sha256.
 */
import { createHash } from 'node:crypto';
import { heartbeat } from '@temporalio/activity';
import type { ShardInput, StageResult } from '../lib/stages.js';
import type { ActivityDeps } from './deps.js';
import { listToNumbers, readParquetTable, writeParquetTable } from './parquet.js';
import { runCachedStage, stageHash, type StageManifestBase } from './stageCache.js';
import type { TokenizeManifest } from './tokenize.js';

export interface ShardEntry {
  key: string;
  rows: number;
  tokens: number;
  bytes: number;
  sha256: string;
}

export interface ShardManifest extends StageManifestBase {
  splits: Record<string, { rows: number; tokens: number; shards: ShardEntry[] }>;
}

export async function shardDataset(deps: ActivityDeps, input: ShardInput): Promise<StageResult> {
  const { storage } = deps;
  const hash = stageHash('shard', { upstream: input.upstream.hash, shard: input.shard });
  const upstream = await storage.getJson<TokenizeManifest>(input.bucket, input.upstream.manifestKey);

  return runCachedStage<ShardManifest>(storage, input.bucket, 'shard', hash, async (prefix) => {
    const splits: ShardManifest['splits'] = {};
    for (const [split, tokenized] of Object.entries(upstream.splits)) {
      const table = readParquetTable(await storage.getBuffer(input.bucket, tokenized.key));
      const shards: ShardEntry[] = [];
      const size = input.shard.samples_per_shard;
      for (let start = 0, n = 0; start < table.numRows; start += size, n++) {
        const part = table.slice(start, Math.min(start + size, table.numRows));
        const bytes = Buffer.from(writeParquetTable(part));
        const key = `${prefix}${split}/shard-${String(n).padStart(5, '0')}.parquet`;
        await storage.putBuffer(input.bucket, key, bytes);
        shards.push({
          key,
          rows: part.numRows,
          tokens: countTokens(part),
          bytes: bytes.length,
          sha256: createHash('sha256').update(bytes).digest('hex'),
        });
        heartbeat({ split, shards: shards.length });
      }
      splits[split] = {
        rows: shards.reduce((a, s) => a + s.rows, 0),
        tokens: shards.reduce((a, s) => a + s.tokens, 0),
        shards,
      };
    }
    const summary: Record<string, number> = {};
    for (const [split, s] of Object.entries(splits)) summary[`${split}_shards`] = s.shards.length;
    return { splits, summary };
  });
}

function countTokens(table: ReturnType<typeof readParquetTable>): number {
  let n = 0;
  for (const col of ['prompt_input_ids', 'chosen_input_ids', 'rejected_input_ids']) {
    const child = table.getChild(col)!;
    for (let i = 0; i < table.numRows; i++) n += listToNumbers(child.get(i)).length;
  }
  return n;
}
