/**
 * Parquet in and out through Apache Arrow (parquet-wasm is arrow-rs compiled to wasm: the same
 * reader/writer pyarrow-compatible tools expect). Shards are zstd-compressed.
 */
import * as arrow from 'apache-arrow';
import { Compression, readParquet, Table as WasmTable, WriterPropertiesBuilder, writeParquet } from 'parquet-wasm';

/** The whole file, or only `columns` (the others are neither decoded nor copied out of wasm). */
export function readParquetTable(bytes: Uint8Array, columns?: string[]): arrow.Table {
  return arrow.tableFromIPC(readParquet(bytes, columns ? { columns } : undefined).intoIPCStream());
}

export interface ParquetWriteOptions {
  /** Small row groups let readers fetch a row range without decoding the whole file. */
  rowGroupRows?: number;
  /**
   * Columns of already-compressed bytes (JPEG images): stored without zstd and without a
   * dictionary. Compressing JPEG saves ~0.1% and costs most of the write time.
   */
  incompressible?: string[];
}

/** zstd Parquet (except `incompressible` columns), as a Buffer ready to upload. */
export function writeParquetTable(table: arrow.Table, options: ParquetWriteOptions = {}): Buffer {
  let builder = new WriterPropertiesBuilder().setCompression(Compression.ZSTD);
  if (options.rowGroupRows) builder = builder.setMaxRowGroupSize(options.rowGroupRows);
  for (const col of options.incompressible ?? []) {
    builder = builder.setColumnCompression(col, Compression.UNCOMPRESSED).setColumnDictionaryEnabled(col, false);
  }
  const props = builder.build();
  const bytes = writeParquet(WasmTable.fromIPCStream(arrow.tableToIPC(table, 'stream')), props);
  // A view, not a copy (the bytes are already out of wasm memory): parts and shards are tens of
  // MB, and every copy brings the next major GC closer.
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * The image column of format parts and shards holds JPEG bytes. (`extra_images` stays zstd: the
 * writer's per-column settings name top-level columns only, and it is empty for one-image rows.)
 */
export const IMAGE_COLUMN_OPTIONS: ParquetWriteOptions = { incompressible: ['image'] };

/** `extra_images`: a row's images after the first (format parts and shards). */
export const extraImagesType = () => new arrow.List(new arrow.Field('item', new arrow.Binary(), true));

/**
 * Every row's images in order: `image` then `extra_images` (absent in tables written before rows
 * could hold several; a null `image` is no image).
 */
export function rowImages(table: arrow.Table): Uint8Array[][] {
  const first = table.getChild('image');
  const extra = table.getChild('extra_images');
  return Array.from({ length: table.numRows }, (_, i) => {
    const head = first?.get(i) as Uint8Array | null | undefined;
    const rest = extra?.get(i) as arrow.Vector | null | undefined;
    return [...(head ? [head] : []), ...(rest ? (Array.from(rest) as Uint8Array[]) : [])];
  });
}

export const int32List = () => new arrow.List(new arrow.Field('item', new arrow.Int32(), true));

/** Builds a table from column vectors; `metadata` lands in the Parquet schema's key-value metadata. */
export function tableFromColumns(
  columns: Record<string, { type: arrow.DataType; values: unknown[] }>,
  metadata?: Record<string, string>,
): arrow.Table {
  const vectors: Record<string, arrow.Vector> = {};
  for (const [name, { type, values }] of Object.entries(columns)) vectors[name] = arrow.vectorFromArray(values, type);
  const table = new arrow.Table(vectors);
  if (!metadata) return table;
  const schema = new arrow.Schema(table.schema.fields, new Map(Object.entries(metadata)));
  return new arrow.Table(schema, table.batches);
}

/** Converts an Arrow list cell (a Vector) into a plain number array. */
export function listToNumbers(cell: unknown): number[] {
  if (cell == null) return [];
  if (Array.isArray(cell)) return cell as number[];
  return Array.from((cell as arrow.Vector).toArray() as ArrayLike<number>);
}
