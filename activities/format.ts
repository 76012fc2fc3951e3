/**
 * format: the seed's step. Each row becomes a conversational prompt/chosen/rejected rendered with
 * the model's chat template; its image is decoded, turned upright and RGB, thumbnailed with sharp
 * to the configured longest edge and re-encoded. Bad rows are dropped and counted by reason; a
 * split whose drop share passes `format.max_drop_ratio` fails the stage with the counts.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import * as arrow from 'apache-arrow';
import { ApplicationFailure, heartbeat } from '@temporalio/activity';
import sharp from 'sharp';
import { FailureType } from '../lib/errors.js';
import type { FormatInput, StageResult } from '../lib/stages.js';
import { ChatTokenizer } from './chatTokenizer.js';
import type { ActivityDeps } from './deps.js';
import type { DownloadManifest } from './download.js';
import { isTokenizerFile, stageModel } from './models.js';
import { readParquetTable, tableFromColumns, writeParquetTable } from './parquet.js';
import { runCachedStage, stageHash, type StageManifestBase } from './stageCache.js';

export type DropReason =
  | 'missing_image'
  | 'image_decode_failed'
  | 'empty_question'
  | 'empty_chosen'
  | 'empty_rejected'
  | 'chosen_equals_rejected'
  | 'not_text';

export interface FormattedSplit {
  key: string;
  inputRows: number;
  rows: number;
  dropped: Partial<Record<DropReason, number>>;
  /** A few dropped rows per reason, to find them in the source. */
  droppedExamples: Array<{ sampleId: string; reason: DropReason; detail?: string }>;
}

export interface FormatManifest extends StageManifestBase {
  imageLongestEdge: number;
  splits: Record<string, FormattedSplit>;
}

/** Decoding guard against decompression bombs: images above this are refused, not decoded. */
const MAX_INPUT_PIXELS = 64_000_000;
const ROWS_PER_HEARTBEAT = 64;
const IMAGE_CONCURRENCY = 4;

export async function formatDataset(deps: ActivityDeps, input: FormatInput): Promise<StageResult> {
  const { storage } = deps;
  const modelDir = await stageModel(deps, input.modelSource, isTokenizerFile);
  const chat = await ChatTokenizer.load(modelDir);
  const imageLongestEdge = input.format.image_longest_edge ?? (await defaultImageEdge(modelDir));
  const templateProbe = chat.render([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'Q' }] }]);
  const hash = stageHash('format', {
    upstream: input.upstream.hash,
    format: input.format,
    imageLongestEdge,
    columns: input.columns,
    splits: input.splits,
    limits: input.limits,
    template: createHash('sha256').update(templateProbe).digest('hex'),
  });
  const upstream = await storage.getJson<DownloadManifest>(input.bucket, input.upstream.manifestKey);

  return runCachedStage<FormatManifest>(storage, input.bucket, 'format', hash, async (prefix) => {
    const splits: Record<string, FormattedSplit> = {};
    const roles = [
      ['train', input.splits.train, input.limits.train],
      ['eval', input.splits.eval, input.limits.eval],
    ] as const;
    for (const [, split, limit] of roles) {
      const files = upstream.files.filter((f) => f.split === split);
      const rows = await readRows(storage, input.bucket, files, input.columns, limit);
      const result = await formatRows(rows, chat, imageLongestEdge, split);
      const dropShare = rows.length ? (rows.length - result.ids.length) / rows.length : 0;
      if (dropShare > input.format.max_drop_ratio) {
        throw ApplicationFailure.nonRetryable(
          `format: split "${split}" dropped ${rows.length - result.ids.length} of ${rows.length} rows ` +
            `(${(dropShare * 100).toFixed(1)}% > format.max_drop_ratio ${input.format.max_drop_ratio * 100}%): ` +
            JSON.stringify(result.dropped),
          FailureType.InvalidDataset,
        );
      }
      const key = `${prefix}${split}/part-00000.parquet`;
      const table = tableFromColumns({
        sample_id: { type: new arrow.Utf8(), values: result.ids },
        prompt: { type: new arrow.Utf8(), values: result.prompts },
        chosen: { type: new arrow.Utf8(), values: result.chosen },
        rejected: { type: new arrow.Utf8(), values: result.rejected },
        image: { type: new arrow.Binary(), values: result.images },
      });
      await storage.putBuffer(input.bucket, key, Buffer.from(writeParquetTable(table)));
      splits[split] = {
        key,
        inputRows: rows.length,
        rows: result.ids.length,
        dropped: result.dropped,
        droppedExamples: result.droppedExamples,
      };
    }
    const summary: Record<string, number> = {};
    for (const [split, s] of Object.entries(splits)) {
      summary[`${split}_rows`] = s.rows;
      summary[`${split}_dropped`] = s.inputRows - s.rows;
    }
    return { imageLongestEdge, splits, summary };
  });
}

interface RawRow {
  sampleId: string;
  image: unknown;
  question: unknown;
  chosen: unknown;
  rejected: unknown;
}

async function readRows(
  storage: ActivityDeps['storage'],
  bucket: string,
  files: DownloadManifest['files'],
  columns: FormatInput['columns'],
  limit: number | undefined,
): Promise<RawRow[]> {
  const rows: RawRow[] = [];
  for (const file of files) {
    const table = readParquetTable(await storage.getBuffer(bucket, file.key));
    const names = table.schema.fields.map((f) => f.name);
    const get = (role: keyof typeof columns) => {
      const col = table.getChild(columns[role]);
      if (!col) {
        throw ApplicationFailure.nonRetryable(
          `dataset file "${file.sourcePath}" has no column "${columns[role]}" (dataset.columns.${role}); ` +
            `its columns are: ${names.join(', ')}`,
          FailureType.InvalidDataset,
        );
      }
      return col;
    };
    const [image, question, chosen, rejected] = [get('image'), get('question'), get('chosen'), get('rejected')];
    for (let i = 0; i < table.numRows; i++) {
      if (limit !== undefined && rows.length >= limit) return rows;
      rows.push({
        sampleId: `${file.split}-${rows.length}`,
        image: image.get(i),
        question: question.get(i),
        chosen: chosen.get(i),
        rejected: rejected.get(i),
      });
    }
  }
  return rows;
}

async function formatRows(rows: RawRow[], chat: ChatTokenizer, edge: number, split: string) {
  const out = { ids: [] as string[], prompts: [] as string[], chosen: [] as string[], rejected: [] as string[], images: [] as Uint8Array[] };
  const dropped: Partial<Record<DropReason, number>> = {};
  const droppedExamples: FormattedSplit['droppedExamples'] = [];
  const drop = (row: RawRow, reason: DropReason, detail?: string) => {
    dropped[reason] = (dropped[reason] ?? 0) + 1;
    if (droppedExamples.filter((e) => e.reason === reason).length < 3) droppedExamples.push({ sampleId: row.sampleId, reason, detail });
  };

  for (let start = 0; start < rows.length; start += IMAGE_CONCURRENCY) {
    const batch = rows.slice(start, start + IMAGE_CONCURRENCY);
    const results = await Promise.all(batch.map((row) => formatRow(row, chat, edge)));
    results.forEach((r, j) => {
      const row = batch[j]!;
      if ('reason' in r) return drop(row, r.reason, r.detail);
      out.ids.push(row.sampleId);
      out.prompts.push(r.prompt);
      out.chosen.push(r.chosen);
      out.rejected.push(r.rejected);
      out.images.push(r.image);
    });
    if (start % ROWS_PER_HEARTBEAT < IMAGE_CONCURRENCY) heartbeat({ split, rows: start + batch.length, of: rows.length });
  }
  return { ...out, dropped, droppedExamples };
}

type RowResult = { prompt: string; chosen: string; rejected: string; image: Uint8Array } | { reason: DropReason; detail?: string };

async function formatRow(row: RawRow, chat: ChatTokenizer, edge: number): Promise<RowResult> {
  const texts = [row.question, row.chosen, row.rejected];
  if (texts.some((t) => t != null && typeof t !== 'string')) return { reason: 'not_text' };
  const [question, chosen, rejected] = texts.map((t) => ((t as string | null) ?? '').trim()) as [string, string, string];
  if (!question) return { reason: 'empty_question' };
  if (!chosen) return { reason: 'empty_chosen' };
  if (!rejected) return { reason: 'empty_rejected' };
  if (chosen === rejected) return { reason: 'chosen_equals_rejected' };

  const bytes = imageBytes(row.image);
  if (!bytes?.length) return { reason: 'missing_image' };
  let image: Uint8Array;
  try {
    image = await thumbnail(bytes, edge);
  } catch (err) {
    return { reason: 'image_decode_failed', detail: (err as Error).message.slice(0, 200) };
  }
  return {
    prompt: chat.render([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: question }] }]),
    chosen: chat.render([{ role: 'assistant', content: [{ type: 'text', text: chosen }] }]),
    rejected: chat.render([{ role: 'assistant', content: [{ type: 'text', text: rejected }] }]),
    image,
  };
}

/** RLAIF-V stores images as a struct {bytes, path}; plain binary columns work too. */
function imageBytes(cell: unknown): Uint8Array | null {
  if (cell instanceof Uint8Array) return cell;
  if (cell && typeof cell === 'object') {
    const bytes = (cell as { bytes?: unknown }).bytes;
    if (bytes instanceof Uint8Array) return bytes;
  }
  return null;
}

/** Upright, sRGB, no alpha, longest edge at most `edge` pixels (like PIL's thumbnail), JPEG. */
export async function thumbnail(bytes: Uint8Array, edge: number): Promise<Uint8Array> {
  return sharp(bytes, { limitInputPixels: MAX_INPUT_PIXELS, failOn: 'warning' })
    .rotate()
    .flatten({ background: '#ffffff' })
    .toColourspace('srgb')
    .resize({ width: edge, height: edge, fit: 'inside', withoutEnlargement: true })
    .jpeg({ quality: 95 })
    .toBuffer();
}

/** Half the processor's longest edge, as in the seed. */
async function defaultImageEdge(modelDir: string): Promise<number> {
  const cfg = JSON.parse(await readFile(`${modelDir}/preprocessor_config.json`, 'utf8')) as { size?: Record<string, number> };
  const size = cfg.size ?? {};
  const longest = size.longest_edge ?? Math.max(size.height ?? 0, size.width ?? 0, size.shortest_edge ?? 0);
  if (!longest) throw ApplicationFailure.nonRetryable('format.image_longest_edge is required: the processor declares no size', FailureType.InvalidConfig);
  return Math.max(8, Math.floor(longest / 2));
}
