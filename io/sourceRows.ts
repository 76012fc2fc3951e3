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
import type { ActivityDeps } from './deps.js';

export type ColumnMapping = PipelineConfig['dataset']['columns'];
export type FileFormat = 'parquet' | 'jsonl';

export function fileFormatOf(path: string): FileFormat | null {
  if (path.endsWith('.parquet')) return 'parquet';
  if (path.endsWith('.jsonl') || path.endsWith('.ndjson')) return 'jsonl';
  return null;
}

/** One source row as stored: cells are whatever the file holds (checked by format). */
export interface RawRow {
  sampleId: string;
  image: unknown;
  question: unknown;
  chosen: unknown;
  rejected: unknown;
  /** Set when the row's text could not be decoded (JSONL lines that are not UTF-8 or not JSON). */
  undecodable?: 'invalid_utf8' | 'invalid_json';
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

/** The rows [offset, offset + limit) of a file, with the mapped columns. */
export async function readRowRange(range: ReadRange, columns: ColumnMapping): Promise<RawRow[]> {
  return range.format === 'parquet' ? readParquetRange(range, columns) : readJsonlRange(range, columns);
}

const ROLES = ['image', 'question', 'chosen', 'rejected'] as const;

function missingColumn(sourcePath: string, role: (typeof ROLES)[number], columns: ColumnMapping, present: string[]) {
  return nonRetryable(
    `dataset file "${sourcePath}" has no column "${columns[role]}" (dataset.columns.${role}); ` +
      `its columns are: ${present.join(', ') || '(none)'}`,
    FailureType.InvalidDataset,
  );
}

async function readParquetRange(range: ReadRange, columns: ColumnMapping): Promise<RawRow[]> {
  const file = await ParquetFile.fromFile(await openAsBlob(range.path));
  let table: arrow.Table;
  try {
    // Only the mapped columns: the others (RLAIF-V has five more) are neither decoded nor copied.
    const schema = arrow.tableFromIPC(file.schema().intoIPCStream()).schema;
    const names = schema.fields.map((f) => f.name);
    for (const role of ROLES) if (!names.includes(columns[role])) throw missingColumn(range.sourcePath, role, columns, names);
    const wanted = [...new Set(ROLES.map((role) => columns[role]))];
    table = arrow.tableFromIPC((await file.read({ offset: range.offset, limit: range.limit, columns: wanted })).intoIPCStream());
  } finally {
    file.free();
  }
  const vectors = ROLES.map((role) => table.getChild(columns[role])!);
  const [image, question, chosen, rejected] = vectors as [arrow.Vector, arrow.Vector, arrow.Vector, arrow.Vector];
  const rows: RawRow[] = [];
  for (let i = 0; i < table.numRows; i++) {
    rows.push({
      sampleId: `${range.idPrefix}-${range.offset + i}`,
      image: image.get(i),
      question: question.get(i),
      chosen: chosen.get(i),
      rejected: rejected.get(i),
    });
  }
  return rows;
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

async function readJsonlRange(range: ReadRange, columns: ColumnMapping): Promise<RawRow[]> {
  const rows: RawRow[] = [];
  let index = 0;
  let checkedColumns = false;
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
      const undecodable = err instanceof TypeError ? 'invalid_utf8' : 'invalid_json';
      rows.push({ sampleId, image: null, question: null, chosen: null, rejected: null, undecodable });
      continue;
    }
    if (!record || typeof record !== 'object' || Array.isArray(record)) {
      rows.push({ sampleId, image: null, question: null, chosen: null, rejected: null, undecodable: 'invalid_json' });
      continue;
    }
    if (!checkedColumns) {
      // The first record defines the columns, as a Parquet schema would.
      for (const role of ROLES) if (!(columns[role] in record)) throw missingColumn(range.sourcePath, role, columns, Object.keys(record));
      checkedColumns = true;
    }
    rows.push({
      sampleId,
      image: record[columns.image],
      question: record[columns.question],
      chosen: record[columns.chosen],
      rejected: record[columns.rejected],
    });
  }
  return rows;
}
