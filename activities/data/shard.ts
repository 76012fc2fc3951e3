/**
 * shard: the tokenized parts, in order, joined with their images (taken from the formatted part
 * each token part came from, by sample id), into Parquet shards (zstd; the JPEG bytes stored as they are) closed at
 * `shard.samples_per_shard` rows or before their rows pass `shard.max_shard_bytes`, whichever
 * comes first. Assignment depends only on the ordered rows and these two settings, so it is
 * deterministic. The manifest lists per shard its rows, tokens, bytes and sha256. Memory holds
 * one tokenized part and one shard at a time.
 */
import * as arrow from 'apache-arrow';
import { keys } from '../../contracts/keys.js';
import type { ShardInput, StageResult } from '../../contracts/payloads.js';
import type { ActivityDeps } from '../../io/deps.js';
import { extraImagesType, IMAGE_COLUMN_OPTIONS, readParquetTable, rowImages, writeParquetTable } from '../../io/parquet.js';
import { progress } from '../heartbeat.js';
import { findCachedStage, stageHash, writeStageManifest } from '../../io/stageCache.js';
import type { ShardEntry, ShardManifest } from '../../contracts/manifests.js';
import type { TokenizeManifest } from './tokenize.js';
import { sha256Hex } from '../../io/files.js';
export type { ShardEntry, ShardManifest } from '../../contracts/manifests.js';

const TOKEN_COLUMNS = ['prompt_input_ids', 'chosen_input_ids', 'rejected_input_ids'] as const;

export async function shardDataset(deps: ActivityDeps, input: ShardInput): Promise<StageResult> {
  const { storage } = deps;
  const hash = stageHash('shard', { upstream: input.upstream.hash, shard: input.shard });
  const cached = await findCachedStage(storage, input.bucket, 'shard', hash);
  if (cached) return cached;
  const upstream = await storage.getJson<TokenizeManifest>(input.bucket, input.upstream.manifestKey);

  const splits: ShardManifest['splits'] = {};
  for (const [split, tokenized] of Object.entries(upstream.splits)) {
    const shards: ShardEntry[] = [];
    let pending: arrow.Table[] = [];
    let pendingRows = 0;
    let pendingBytes = 0;
    let pendingTokens = 0;
    let maxImagesPerRow = 0;
    const flush = async () => {
      if (!pendingRows) return;
      const table = new arrow.Table(pending.flatMap((t) => t.batches));
      const bytes = writeParquetTable(table, IMAGE_COLUMN_OPTIONS);
      const key = `${keys.stagePrefix('shard', hash)}${split}/shard-${String(shards.length).padStart(5, '0')}.parquet`;
      await storage.putBuffer(input.bucket, key, bytes);
      const ids = table.getChild('sample_id')!;
      shards.push({
        key,
        rows: table.numRows,
        tokens: pendingTokens,
        bytes: bytes.length,
        sha256: sha256Hex(bytes),
        firstSampleId: ids.get(0) as string,
        lastSampleId: ids.get(table.numRows - 1) as string,
      });
      pending = [];
      pendingRows = pendingBytes = pendingTokens = 0;
      progress({ split, shards: shards.length });
    };
    for (const part of tokenized.parts) {
      const table = withImages(
        readParquetTable(await storage.getBuffer(input.bucket, part.key)),
        readParquetTable(await storage.getBuffer(input.bucket, part.formatKey), ['sample_id', 'image', 'extra_images']),
        part.formatKey,
      );
      const sizes = rowSizes(table);
      maxImagesPerRow = sizes.images.reduce((most, n) => Math.max(most, n), maxImagesPerRow);
      let start = 0;
      for (let i = 0; i < table.numRows; i++) {
        const full = pendingRows + (i - start) >= input.shard.samples_per_shard;
        const tooBig = pendingRows + (i - start) > 0 && pendingBytes + sizes.bytes[i]! > input.shard.max_shard_bytes;
        if (full || tooBig) {
          if (i > start) pending.push(table.slice(start, i));
          pendingRows += i - start;
          start = i;
          await flush();
        }
        pendingBytes += sizes.bytes[i]!;
        pendingTokens += sizes.tokens[i]!;
      }
      if (table.numRows > start) pending.push(table.slice(start));
      pendingRows += table.numRows - start;
    }
    await flush();
    splits[split] = {
      rows: shards.reduce((a, s) => a + s.rows, 0),
      tokens: shards.reduce((a, s) => a + s.tokens, 0),
      shards,
      maxImagesPerRow,
    };
  }
  const summary: Record<string, number> = {};
  for (const [split, s] of Object.entries(splits)) summary[`${split}_shards`] = s.shards.length;
  return writeStageManifest<ShardManifest>(storage, input.bucket, 'shard', hash, { splits, summary });
}

/**
 * The token rows with an `image` column from their formatted part. Tokenize keeps the formatted
 * rows' order and only drops rows, so one forward walk matches every id.
 */
function withImages(tokens: arrow.Table, formatted: arrow.Table, formatKey: string): arrow.Table {
  const formattedIds = formatted.getChild('sample_id')!;
  const formattedImages = rowImages(formatted);
  const ids = tokens.getChild('sample_id')!;
  const images: Uint8Array[][] = [];
  let j = 0;
  for (let i = 0; i < tokens.numRows; i++) {
    const id = ids.get(i) as string;
    while (j < formatted.numRows && formattedIds.get(j) !== id) j++;
    if (j === formatted.numRows) throw new Error(`shard: sample ${id} is not in its formatted part ${formatKey}`);
    images.push(formattedImages[j++]!);
  }
  const columns: Record<string, arrow.Vector> = {};
  for (const field of tokens.schema.fields) columns[field.name] = tokens.getChild(field.name)!;
  // The trainer contract's layout: the first image, then the rest (empty for one-image rows).
  columns.image = arrow.vectorFromArray(images.map((row) => row[0] ?? null), new arrow.Binary());
  columns.extra_images = arrow.vectorFromArray(images.map((row) => row.slice(1)), extraImagesType());
  return new arrow.Table(columns);
}

/** Per row: tokens, images, and an estimate of its stored bytes (images + 4 bytes a token + id). */
function rowSizes(table: arrow.Table): { bytes: number[]; tokens: number[]; images: number[] } {
  const images = rowImages(table);
  const ids = table.getChild('sample_id')!;
  const lists = TOKEN_COLUMNS.map((c) => table.getChild(c)!);
  const bytes: number[] = [];
  const tokens: number[] = [];
  for (let i = 0; i < table.numRows; i++) {
    let n = 0;
    for (const l of lists) n += (l.get(i) as arrow.Vector | null)?.length ?? 0;
    tokens.push(n);
    bytes.push(images[i]!.reduce((sum, image) => sum + image.length, 0) + 4 * n + String(ids.get(i)).length);
  }
  return { bytes, tokens, images: images.map((row) => row.length) };
}
