/**
 * The AMBER-style yes/no suite's file format (one Parquet file: id, image {bytes, path},
 * question, answer "yes" | "no", kind): written by the demo's generator (datagen/amber.ts) or by
 * a user, read by the evaluate stage.
 */
import * as arrow from 'apache-arrow';
import { readParquetTable, tableFromColumns, writeParquetTable } from './parquet.js';

export const AMBER_KINDS = ['existence', 'attribute', 'relation'] as const;
export type AmberKind = (typeof AMBER_KINDS)[number];

export interface AmberQuestion {
  id: string;
  image: { bytes: Uint8Array; path: string };
  question: string;
  answer: 'yes' | 'no';
  kind: AmberKind;
}

export function amberToParquet(questions: AmberQuestion[]): Uint8Array {
  const str = (values: unknown[]) => ({ type: new arrow.Utf8(), values });
  const imageType = new arrow.Struct([new arrow.Field('bytes', new arrow.Binary(), true), new arrow.Field('path', new arrow.Utf8(), true)]);
  return writeParquetTable(
    tableFromColumns({
      id: str(questions.map((q) => q.id)),
      image: { type: imageType, values: questions.map((q) => q.image) },
      question: str(questions.map((q) => q.question)),
      answer: str(questions.map((q) => q.answer)),
      kind: str(questions.map((q) => q.kind)),
    }),
  );
}

/** Reads a suite file; every row is checked, and a bad one is named with its field. */
export function amberFromParquet(bytes: Uint8Array, source: string): AmberQuestion[] {
  const table = readParquetTable(bytes);
  for (const column of ['id', 'image', 'question', 'answer', 'kind']) {
    if (!table.schema.fields.some((f) => f.name === column)) throw new Error(`${source}: no column "${column}" (expected id, image, question, answer, kind)`);
  }
  return table.toArray().map((row: Record<string, unknown>, i) => {
    const r = row as { id: string; image: { bytes: Uint8Array; path: string } | null; question: string; answer: string; kind: string };
    const where = `${source} row ${i} (id ${String(r.id)})`;
    if (r.answer !== 'yes' && r.answer !== 'no') throw new Error(`${where}: answer must be "yes" or "no", got ${JSON.stringify(r.answer)}`);
    if (!AMBER_KINDS.includes(r.kind as AmberKind)) throw new Error(`${where}: kind must be one of ${AMBER_KINDS.join(', ')}, got ${JSON.stringify(r.kind)}`);
    const image = r.image as unknown as { toJSON?: () => unknown } | null;
    const plain = (image && typeof image.toJSON === 'function' ? image.toJSON() : image) as { bytes: Uint8Array; path: string } | null;
    if (!plain?.bytes?.length) throw new Error(`${where}: image has no bytes`);
    return { id: String(r.id), image: { bytes: plain.bytes, path: plain.path }, question: String(r.question), answer: r.answer, kind: r.kind as AmberKind };
  });
}
