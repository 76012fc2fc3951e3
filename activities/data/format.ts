/**
 * format: the seed's step. Each row becomes a conversational prompt/chosen/rejected rendered with
 * the model's chat template; its image is decoded, turned upright and RGB, thumbnailed with sharp
 * to the configured longest edge and re-encoded (vlm/formatRows.ts). Bad rows are dropped
 * and counted by reason; duplicates are removed; a split whose drop share passes
 * `format.max_drop_ratio` fails the stage with the counts.
 *
 * Fanned out in three activities: `formatDataset` plans (or finds the cached output),
 * `formatChunk` formats one row range of one file into one part file (many run in parallel on any
 * CPU workers), `formatFinish` removes duplicates across chunks, checks the drop share and writes
 * the manifest last.
 */
import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import * as arrow from 'apache-arrow';
import { ApplicationFailure } from '@temporalio/activity';
import { FailureType } from '../../contracts/errors.js';
import { keys } from '../../contracts/keys.js';
import type { FormatChunkInput, FormatChunkResult, FormatChunkSpec, FormatFinishInput, FormatInput, FormatPlan, StageResult } from '../../contracts/payloads.js';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import type { ActivityDeps } from '../../io/deps.js';
import type { DownloadedFile, DownloadManifest } from './download.js';
import { defaultImageEdge, defaultMaxPixels } from '../../vlm/imageSize.js';
import { DROP_REASONS, formatRow, type DropReason, type FormatOptions } from '../../vlm/formatRows.js';
import { isTokenizerFile, stageModel } from '../../io/models.js';
import { extraImagesType, IMAGE_COLUMN_OPTIONS, readParquetTable, rowImages, tableFromColumns, writeParquetTable } from '../../io/parquet.js';
import { progress } from '../heartbeat.js';
import { countStoredRows, localCopy, readRowRange } from '../../io/sourceRows.js';
import { findCachedStage, stageHash, writeStageManifest, type StageManifestBase } from '../../io/stageCache.js';
import { overlapOf, rowWindows, selectRows, SplitSpecError } from '../../contracts/splitSpec.js';
import { layoutLabel } from '../../contracts/preferenceFormat.js';

export type { DropReason } from '../../vlm/formatRows.js';

export interface FormatPart {
  key: string;
  rows: number;
}

export interface FormattedSplit {
  /** Part files in order: the split's rows are their concatenation. */
  parts: FormatPart[];
  inputRows: number;
  rows: number;
  dropped: Partial<Record<DropReason, number>>;
  /** A few dropped rows per reason, to find them in the source. */
  droppedExamples: DroppedExample[];
}

export interface DroppedExample {
  sampleId: string;
  reason: DropReason;
  detail?: string;
}

export interface FormatManifest extends StageManifestBase {
  imageLongestEdge: number;
  /** The layouts the files were read with (dataset.format, or what auto detected), e.g. ["conversational"]. */
  layouts?: string[];
  splits: Record<string, FormattedSplit>;
}

const IMAGE_CONCURRENCY = 6;

/**
 * Runs `f` on at most `window` items at a time, in order; returns one promise per item, so the
 * caller can consume results in order while later items are already running.
 */
function orderedMap<T, R>(items: T[], window: number, f: (item: T) => Promise<R>): Array<Promise<R> | undefined> {
  const settle: Array<(r: Promise<R>) => void> = [];
  const out: Array<Promise<R> | undefined> = items.map(() => new Promise<R>((resolve) => settle.push(resolve)));
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      const result = f(items[i]!);
      settle[i]!(result);
      await result.catch(() => undefined);
    }
  };
  for (let k = 0; k < Math.min(window, items.length); k++) void lane();
  return out;
}
const EXAMPLES_PER_REASON = 3;

/** Plans the stage: the cached output if these inputs were formatted before, else the chunks. */
export async function formatDataset(deps: ActivityDeps, input: FormatInput): Promise<FormatPlan> {
  const { storage } = deps;
  const modelDir = await stageModel(deps, input.modelSource, isTokenizerFile);
  const chat = await ChatTokenizer.load(modelDir);
  const imageLongestEdge = input.format.image_longest_edge ?? (await defaultImageEdge(modelDir));
  const thumbnailPixels = input.format.max_pixels ?? (await defaultMaxPixels(modelDir));
  const templateProbe = chat.promptText('Q');
  // chunk_rows changes how the work is split, not what it produces.
  const { chunk_rows: chunkRows, ...settings } = input.format;
  const hash = stageHash('format', {
    upstream: input.upstream.hash,
    format: settings,
    imageLongestEdge,
    // Only where there is a pixel bound, so the hashes of other families' stages stay as they were.
    ...(thumbnailPixels ? { thumbnailPixels } : {}),
    columns: input.columns,
    // Only when declared, so the hashes of auto-detected (RLAIF-V raw) stages stay as they were.
    ...(input.datasetFormat && input.datasetFormat !== 'auto' ? { datasetFormat: input.datasetFormat } : {}),
    splits: input.splits,
    // The slices themselves (the labels above spell them too, but this is what selects the rows).
    ...(input.slices && { slices: input.slices }),
    limits: input.limits,
    template: createHash('sha256').update(templateProbe).digest('hex'),
  });
  const cached = await findCachedStage(storage, input.bucket, 'format', hash);
  if (cached) return { hash, imageLongestEdge, cached, chunks: [] };

  const upstream = await storage.getJson<DownloadManifest>(input.bucket, input.upstream.manifestKey);
  const rowCounts = new Map<string, Promise<number>>();
  const rowsOf = (file: DownloadedFile) => {
    let n = rowCounts.get(file.key);
    if (!n) rowCounts.set(file.key, (n = countStoredRows(deps, input.bucket, file.key, file.format)));
    return n;
  };
  const filesOf = (split: string) => upstream.files.filter((f) => f.split === split);
  const specs = input.slices ?? input.splits;
  const selections = {
    train: await selectRowsOf('dataset.train_split', specs.train, filesOf, rowsOf),
    eval: await selectRowsOf('dataset.eval_split', specs.eval, filesOf, rowsOf),
  };
  const shared = overlapOf(selections.train, selections.eval);
  if (shared) {
    throw ApplicationFailure.nonRetryable(
      `dataset.train_split "${specs.train}" and dataset.eval_split "${specs.eval}" overlap: both select rows ` +
        `[${shared.from}, ${shared.to}) of split "${shared.split}"; held-out rows must not be trained on`,
      FailureType.InvalidConfig,
    );
  }
  const chunks: FormatChunkSpec[] = [];
  for (const role of ['train', 'eval'] as const) {
    const windows = await rowWindows(selections[role], (split) => filesOf(split).length, (split, i) => rowsOf(filesOf(split)[i]!), input.limits[role]);
    let index = 0;
    for (const w of windows) {
      const file = filesOf(w.split)[w.fileIndex]!;
      for (let offset = w.offset; offset < w.offset + w.limit; offset += chunkRows) {
        chunks.push({
          split: input.splits[role],
          index: index++,
          fileKey: file.key,
          sourcePath: file.sourcePath,
          format: file.format,
          // Sample ids name the row in its source split, whatever the slice.
          idPrefix: `${w.split}-${w.fileIndex}`,
          offset,
          limit: Math.min(chunkRows, w.offset + w.limit - offset),
        });
      }
      progress({ planned: chunks.length });
    }
  }
  return { hash, imageLongestEdge, chunks, filesPrefix: upstream.filesPrefix };
}

/** The rows a split spec selects; a bad slice is the config's to fix, named by its field. */
async function selectRowsOf(field: string, spec: string, filesOf: (split: string) => DownloadedFile[], rowsOf: (file: DownloadedFile) => Promise<number>) {
  try {
    return await selectRows(spec, async (split) => {
      let rows = 0;
      for (const file of filesOf(split)) rows += await rowsOf(file);
      return rows;
    });
  } catch (err) {
    if (!(err instanceof SplitSpecError)) throw err;
    throw ApplicationFailure.nonRetryable(`${field}: ${err.message}`, FailureType.InvalidConfig);
  }
}

/** Formats one chunk into its part file; returns counts (the dedup keys go to a side file). */
export async function formatChunk(deps: ActivityDeps, input: FormatChunkInput): Promise<FormatChunkResult> {
  const { storage } = deps;
  const { chunk } = input;
  const modelDir = await stageModel(deps, input.modelSource, isTokenizerFile);
  const chat = await ChatTokenizer.load(modelDir);
  const path = await localCopy(deps, input.bucket, chunk.fileKey);
  const { layout, rows } = await readRowRange({ path, ...chunk }, input.columns, input.datasetFormat);
  const options: FormatOptions = {
    edge: input.imageLongestEdge,
    maxOutputPixels: input.format.max_pixels ?? (await defaultMaxPixels(modelDir)),
    maxPixels: input.format.max_image_pixels,
    jpegQuality: input.format.jpeg_quality,
  };
  const resolveImage = jsonlImageResolver(deps, input.bucket, input.filesPrefix, chunk.sourcePath);

  const out: FormattedColumns & { keys: string[] } = { ids: [], prompts: [], chosen: [], rejected: [], images: [], keys: [] };
  const dropped: Partial<Record<DropReason, number>> = {};
  const droppedExamples: DroppedExample[] = [];
  const drop = (sampleId: string, reason: DropReason, detail?: string) => {
    dropped[reason] = (dropped[reason] ?? 0) + 1;
    if (droppedExamples.filter((e) => e.reason === reason).length < EXAMPLES_PER_REASON) droppedExamples.push({ sampleId, reason, detail });
  };
  const seen = new Set<string>();
  // A sliding window keeps sharp's threads busy (a batch would wait for its slowest image);
  // results are consumed in row order, so the output order is deterministic.
  const results = orderedMap(rows, IMAGE_CONCURRENCY, (row) => formatRow(row, layout, chat, options, resolveImage));
  for (const [i, row] of rows.entries()) {
    const r = await results[i]!;
    results[i] = undefined;
    if (i % 64 === 0) progress({ chunk: chunk.index, rows: i, of: rows.length });
    if ('reason' in r) {
      drop(row.sampleId, r.reason, r.detail);
      continue;
    }
    if (input.format.dedupe) {
      if (seen.has(r.dedupKey)) {
        drop(row.sampleId, 'duplicate');
        continue;
      }
      seen.add(r.dedupKey);
    }
    out.ids.push(row.sampleId);
    out.prompts.push(r.prompt);
    out.chosen.push(r.chosen);
    out.rejected.push(r.rejected);
    out.images.push(r.images);
    out.keys.push(r.dedupKey);
  }
  const prefix = partPrefix(input.hash, chunk.split, chunk.index);
  await storage.putBuffer(input.bucket, `${prefix}.parquet`, writeParquetTable(formattedTable(out), IMAGE_COLUMN_OPTIONS));
  await storage.putJson(input.bucket, `${prefix}.keys.json`, out.keys);
  return {
    split: chunk.split,
    index: chunk.index,
    key: `${prefix}.parquet`,
    inputRows: rows.length,
    rows: out.ids.length,
    dropped: dropped as Record<string, number>,
    droppedExamples,
    layout: layoutLabel(layout),
  };
}

/** Cross-chunk duplicates, the drop-share check, and the manifest (written last). */
export async function formatFinish(deps: ActivityDeps, input: FormatFinishInput): Promise<StageResult> {
  const { storage } = deps;
  const splits: Record<string, FormattedSplit> = {};
  for (const split of input.splits) {
    const chunks = input.chunks.filter((c) => c.split === split).sort((a, b) => a.index - b.index);
    const s: FormattedSplit = { parts: [], inputRows: 0, rows: 0, dropped: {}, droppedExamples: [] };
    const seen = new Set<string>();
    for (const c of chunks) {
      s.inputRows += c.inputRows;
      for (const [reason, n] of Object.entries(c.dropped)) s.dropped[reason as DropReason] = (s.dropped[reason as DropReason] ?? 0) + n;
      for (const e of c.droppedExamples as DroppedExample[]) {
        if (s.droppedExamples.filter((x) => x.reason === e.reason).length < EXAMPLES_PER_REASON) s.droppedExamples.push(e);
      }
      let rows = c.rows;
      if (input.format.dedupe && c.rows) {
        const rowKeys = await storage.getJson<string[]>(input.bucket, c.key.replace(/\.parquet$/, '.keys.json'));
        const keep = rowKeys.map((k) => !seen.has(k));
        rowKeys.forEach((k) => seen.add(k));
        const duplicates = keep.filter((k) => !k).length;
        if (duplicates) {
          // Rare: rewrite this part without the rows an earlier chunk already has.
          rows = await rewriteWithout(deps, input.bucket, c.key, keep);
          s.dropped.duplicate = (s.dropped.duplicate ?? 0) + duplicates;
        }
      }
      s.rows += rows;
      if (rows) s.parts.push({ key: c.key, rows });
      progress({ split, chunk: c.index });
    }
    s.dropped = Object.fromEntries(DROP_REASONS.filter((r) => s.dropped[r]).map((r) => [r, s.dropped[r]!]));
    const dropShare = s.inputRows ? (s.inputRows - s.rows) / s.inputRows : 0;
    if (dropShare > input.format.max_drop_ratio) {
      throw ApplicationFailure.nonRetryable(
        `format: split "${split}" dropped ${s.inputRows - s.rows} of ${s.inputRows} rows ` +
          `(${(dropShare * 100).toFixed(1)}% > format.max_drop_ratio ${+(input.format.max_drop_ratio * 100).toFixed(3)}%): ` +
          `${JSON.stringify(s.dropped)}; examples: ${JSON.stringify(s.droppedExamples.slice(0, 5))}`,
        FailureType.InvalidDataset,
      );
    }
    splits[split] = s;
  }
  const layouts = [...new Set(input.chunks.map((c) => c.layout).filter((l): l is string => !!l))];
  const summary: Record<string, number | string> = {};
  if (layouts.length) summary.layout = layouts.join(', ');
  for (const [split, s] of Object.entries(splits)) {
    summary[`${split}_rows`] = s.rows;
    summary[`${split}_dropped`] = s.inputRows - s.rows;
  }
  return writeStageManifest<FormatManifest>(storage, input.bucket, 'format', input.hash, {
    imageLongestEdge: input.imageLongestEdge,
    layouts,
    splits,
    summary,
  });
}

function partPrefix(hash: string, split: string, index: number): string {
  return `${keys.stagePrefix('format', hash)}${split}/part-${String(index).padStart(5, '0')}`;
}

interface FormattedColumns {
  ids: string[];
  prompts: string[];
  chosen: string[];
  rejected: string[];
  /** Per row, its images in placeholder order. */
  images: Uint8Array[][];
}

/**
 * A part's columns. Images are stored as the shards store them (trainer/CONTRACT.md): `image` the
 * first, `extra_images` the rest (empty for one-image rows), so one-image readers stay as they are.
 */
function formattedTable(cols: FormattedColumns) {
  return tableFromColumns({
    sample_id: { type: new arrow.Utf8(), values: cols.ids },
    prompt: { type: new arrow.Utf8(), values: cols.prompts },
    chosen: { type: new arrow.Utf8(), values: cols.chosen },
    rejected: { type: new arrow.Utf8(), values: cols.rejected },
    image: { type: new arrow.Binary(), values: cols.images.map((images) => images[0] ?? null) },
    extra_images: { type: extraImagesType(), values: cols.images.map((images) => images.slice(1)) },
  });
}

async function rewriteWithout(deps: ActivityDeps, bucket: string, key: string, keep: boolean[]): Promise<number> {
  const table = readParquetTable(await deps.storage.getBuffer(bucket, key));
  const names = ['sample_id', 'prompt', 'chosen', 'rejected'] as const;
  const [ids, prompts, chosen, rejected] = names.map((n) => {
    const v = table.getChild(n)!;
    return Array.from({ length: table.numRows }, (_, i) => v.get(i)).filter((_, i) => keep[i]);
  });
  const kept = formattedTable({
    ids: ids as string[],
    prompts: prompts as string[],
    chosen: chosen as string[],
    rejected: rejected as string[],
    images: rowImages(table).filter((_, i) => keep[i]),
  });
  await deps.storage.putBuffer(bucket, key, writeParquetTable(kept, IMAGE_COLUMN_OPTIONS));
  return kept.numRows;
}

/** JSONL image paths are relative to the JSONL file; they may not leave the dataset. */
function jsonlImageResolver(deps: ActivityDeps, bucket: string, filesPrefix: string | undefined, sourcePath: string) {
  if (!filesPrefix) return undefined;
  return async (relative: string): Promise<Uint8Array | null> => {
    const path = posix.normalize(posix.join(posix.dirname(sourcePath), relative));
    if (path.startsWith('../..') || path.startsWith('/') || path === '..') return null;
    const key = filesPrefix + path;
    return (await deps.storage.exists(bucket, key)) ? deps.storage.getBuffer(bucket, key) : null;
  };
}

