/**
 * Parquet in and out through Apache Arrow (parquet-wasm is arrow-rs compiled to wasm: the same
 * reader/writer pyarrow-compatible tools expect). Shards are zstd-compressed.
 */
import * as arrow from 'apache-arrow';
import { Compression, readParquet, Table as WasmTable, WriterPropertiesBuilder, writeParquet } from 'parquet-wasm';

export function readParquetTable(bytes: Uint8Array): arrow.Table {
  return arrow.tableFromIPC(readParquet(bytes).intoIPCStream());
}

export function writeParquetTable(table: arrow.Table): Uint8Array {
  const props = new WriterPropertiesBuilder().setCompression(Compression.ZSTD).build();
  return writeParquet(WasmTable.fromIPCStream(arrow.tableToIPC(table, 'stream')), props);
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
