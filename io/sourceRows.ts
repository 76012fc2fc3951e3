/**
 * Reading rows of downloaded dataset files a chunk at a time, with bounded memory: a file is
 * copied once to the worker's local cache, then Parquet row ranges are read from disk through a
 * file-backed Blob (parquet-wasm reads only the row groups it needs) and JSONL line ranges are
 * streamed. Images of JSONL rows are separate files next to the JSONL, fetched per row.
 */
import { createHash } from 'node:crypto';
import { createReadStream, openAsBlob } from 'node:fs';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import * as arrow from 'apache-arrow';
import { ParquetFile } from 'parquet-wasm';
import type { PipelineConfig } from '../contracts/config.js';
import { FailureType, nonRetryable } from '../contracts/errors.js';
import { LayoutError, resolveLayout, type ColumnKind, type DatasetFormat, type PreferenceLayout } from '../contracts/preferenceFormat.js';
import type { ActivityDeps } from './deps.js';

export type ColumnMapping = PipelineConfig['dataset']['columns'];
export type FileFormat = 'parquet' | 'jsonl';

export function fileFormatOf(path: string): FileFormat | null {
  if (path.endsWith('.parquet')) return 'parquet';
  if (path.endsWith('.jsonl') || path.endsWith('.ndjson')) return 'jsonl';
  return null;
}

/**
 * One source row as stored: cells are whatever the file holds (checked by format). Which column
 * each role comes from is the file's layout (contracts/preferenceFormat.ts).
 */
export interface RawRow {
  sampleId: string;
  /** The question (RLAIF-V raw) or prompt (TRL); undefined for an implicit prompt. */
  prompt: unknown;
  chosen: unknown;
  rejected: unknown;
  /** One image cell, or (a TRL `images` column) a list of them. */
  images: unknown;
  /** Set when the row's text could not be decoded (JSONL lines that are not UTF-8 or not JSON). */
  undecodable?: 'invalid_utf8' | 'invalid_json';
}

/** A row range and the layout its file was read with. */
export interface RowRange {
  layout: PreferenceLayout;
  rows: RawRow[];
}

/**
 * Local copy of a stored object, keyed by bucket/key (stage outputs are content-addressed, so a
 * key never changes content).
 */
export async function localCopy(deps: ActivityDeps, bucket: string, key: string): Promise<string> {
  const name = createHash('sha256').update(`${bucket}/${key}`).digest('hex').slice(0, 32);
  const path = join(deps.workDir, 'inputs', `${name}-${key.split('/').pop()}`);
  // Chunks of one file often start together on a worker: they share one download.
  let copy = inFlight.get(path);
  if (!copy) {
    copy = (async () => {
      if (!(await access(path).then(() => true, () => false))) await deps.storage.downloadFile(bucket, key, path);
      return path;
    })().finally(() => inFlight.delete(path));
    inFlight.set(path, copy);
  }
  return copy;
}

const inFlight = new Map<string, Promise<string>>();

/**
 * Rows of a stored file without copying it: a Parquet file's footer through HTTP range requests
 * (a short-lived presigned URL, used here only), JSONL lines by streaming.
 */
export async function countStoredRows(deps: ActivityDeps, bucket: string, key: string, format: FileFormat): Promise<number> {
  if (format === 'parquet') {
    const file = await ParquetFile.fromUrl(await deps.storage.client.presignedGetObject(bucket, key, 15 * 60));
    try {
      return Number(file.metadata().fileMetadata().numRows());
    } finally {
      file.free();
    }
  }
  let n = 0;
  let last = 10;
  for await (const chunk of await deps.storage.client.getObject(bucket, key)) {
    const buf = chunk as Buffer;
    for (let i = buf.indexOf(10); i >= 0; i = buf.indexOf(10, i + 1)) n++;
    if (buf.length) last = buf[buf.length - 1]!;
  }
  // A last line without "\n" still counts; empty lines are not rows, but JSONL has none between
  // rows in practice, and a chunk past the end simply reads fewer rows.
  return last === 10 ? n : n + 1;
}

export interface ReadRange {
  /** Path of the local copy. */
  path: string;
  format: FileFormat;
  /** Name of the file in the source, for error messages. */
  sourcePath: string;
  /** Prefix of sample ids: `<split>-<file index>`. */
  idPrefix: string;
  offset: number;
  limit: number;
}

/** The rows [offset, offset + limit) of a file, with the columns of its layout. */
export async function readRowRange(range: ReadRange, columns: ColumnMapping, format: DatasetFormat = 'auto'): Promise<RowRange> {
  return range.format === 'parquet' ? readParquetRange(range, columns, format) : readJsonlRange(range, columns, format);
}

/** The layout of a file from its columns' kinds; a layout it lacks is the dataset's to fix. */
function layoutOf(range: ReadRange, kinds: Map<string, ColumnKind>, columns: ColumnMapping, format: DatasetFormat): PreferenceLayout {
  try {
    return resolveLayout(format, kinds, columns, range.sourcePath);
  } catch (err) {
    if (err instanceof LayoutError) throw nonRetryable(err.message, FailureType.InvalidDataset);
    throw err;
  }
}

/** What an Arrow column type holds: `datasets` writes Image as struct {bytes, path}, messages as list<struct {role, content}>. */
export function arrowColumnKind(type: arrow.DataType): ColumnKind {
  if (arrow.DataType.isUtf8(type) || arrow.DataType.isLargeUtf8(type)) return 'text';
  if (arrow.DataType.isBinary(type) || arrow.DataType.isLargeBinary(type)) return 'binary';
  if (arrow.DataType.isStruct(type)) return type.children.some((f) => f.name === 'bytes' || f.name === 'path') ? 'image_struct' : 'other';
  if (arrow.DataType.isList(type)) {
    const item = (type as arrow.List).valueType;
    return arrow.DataType.isStruct(item) && item.children.some((f) => f.name === 'role') ? 'messages' : 'list';
  }
  return 'other';
}

/** The same from a JSONL record's value. */
export function jsonColumnKind(value: unknown): ColumnKind {
  if (typeof value === 'string') return 'text';
  if (Array.isArray(value)) return value.length && value.every((m) => m && typeof m === 'object' && 'role' in m) ? 'messages' : 'list';
  if (value && typeof value === 'object') return 'bytes' in value || 'path' in value ? 'image_struct' : 'other';
  return 'other';
}

/**
 * Arrow cells as plain values: structs as objects, lists as arrays (binary stays Uint8Array), so
 * message lists compare and render like JSON.
 */
export function plainCell(cell: unknown): unknown {
  if (cell == null || typeof cell !== 'object' || cell instanceof Uint8Array) return cell;
  if (cell instanceof arrow.Vector) return Array.from(cell as Iterable<unknown>, plainCell);
  if (Array.isArray(cell)) return cell.map(plainCell);
  const json = typeof (cell as { toJSON?: unknown }).toJSON === 'function' ? (cell as { toJSON: () => Record<string, unknown> }).toJSON() : (cell as Record<string, unknown>);
  return Object.fromEntries(Object.entries(json).map(([k, v]) => [k, plainCell(v)]));
}

function rowOf(sampleId: string, layout: PreferenceLayout, cell: (column: string) => unknown): RawRow {
  const { columns } = layout;
  return {
    sampleId,
    prompt: columns.prompt === null ? undefined : cell(columns.prompt),
    chosen: cell(columns.chosen),
    rejected: cell(columns.rejected),
    images: cell(columns.images),
  };
}

async function readParquetRange(range: ReadRange, columns: ColumnMapping, format: DatasetFormat): Promise<RowRange> {
  const file = await ParquetFile.fromFile(await openAsBlob(range.path));
  let table: arrow.Table;
  let layout: PreferenceLayout;
  try {
    // Only the layout's columns: the others (RLAIF-V has five more) are neither decoded nor copied.
    const schema = arrow.tableFromIPC(file.schema().intoIPCStream()).schema;
    layout = layoutOf(range, new Map(schema.fields.map((f) => [f.name, arrowColumnKind(f.type)])), columns, format);
    const wanted = [...new Set(Object.values(layout.columns).filter((c): c is string => c !== null))];
    table = arrow.tableFromIPC((await file.read({ offset: range.offset, limit: range.limit, columns: wanted })).intoIPCStream());
  } finally {
    file.free();
  }
  const vectors = new Map(table.schema.fields.map((f) => [f.name, table.getChild(f.name)!]));
  const rows: RawRow[] = [];
  for (let i = 0; i < table.numRows; i++) {
    rows.push(rowOf(`${range.idPrefix}-${range.offset + i}`, layout, (c) => plainCell(vectors.get(c)!.get(i))));
  }
  return { layout, rows };
}

/** JSONL lines as raw bytes (so text that is not UTF-8 is caught per row, not per file). */
async function* jsonlLines(path: string): AsyncGenerator<Buffer> {
  let pending: Buffer[] = [];
  for await (const chunk of createReadStream(path)) {
    let buf = chunk as Buffer;
    for (let nl = buf.indexOf(10); nl >= 0; nl = buf.indexOf(10)) {
      pending.push(buf.subarray(0, nl));
      const line = Buffer.concat(pending);
      pending = [];
      yield line.length && line[line.length - 1] === 13 ? line.subarray(0, -1) : line;
      buf = buf.subarray(nl + 1);
    }
    if (buf.length) pending.push(buf);
  }
  if (pending.length) yield Buffer.concat(pending);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

async function readJsonlRange(range: ReadRange, columns: ColumnMapping, format: DatasetFormat): Promise<RowRange> {
  const rows: RawRow[] = [];
  let index = 0;
  let layout: PreferenceLayout | undefined;
  const undecodable = (sampleId: string, reason: 'invalid_utf8' | 'invalid_json'): RawRow => ({ sampleId, prompt: null, chosen: null, rejected: null, images: null, undecodable: reason });
  for await (const line of jsonlLines(range.path)) {
    if (!line.length) continue;
    const i = index++;
    if (i < range.offset) continue;
    if (i >= range.offset + range.limit) break;
    const sampleId = `${range.idPrefix}-${i}`;
    let record: Record<string, unknown>;
    try {
      record = JSON.parse(utf8.decode(line)) as Record<string, unknown>;
    } catch (err) {
      rows.push(undecodable(sampleId, err instanceof TypeError ? 'invalid_utf8' : 'invalid_json'));
      continue;
    }
    if (!record || typeof record !== 'object' || Array.isArray(record)) {
      rows.push(undecodable(sampleId, 'invalid_json'));
      continue;
    }
    // The first record defines the columns, as a Parquet schema would.
    layout ??= layoutOf(range, new Map(Object.entries(record).map(([k, v]) => [k, jsonColumnKind(v)])), columns, format);
    rows.push(rowOf(sampleId, layout, (c) => record[c]));
  }
  // A range of undecodable lines only: the layout does not matter, every row is dropped.
  layout ??= { format: 'rlaif_v', implicitPrompt: false, columns: { prompt: columns.question, chosen: columns.chosen, rejected: columns.rejected, images: columns.image }, imageList: false };
  return { layout, rows };
}
