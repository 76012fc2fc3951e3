/**
 * The AMBER-style suite's file format, written by the demo's generator (datagen/amber.ts) or by a
 * user, read by the evaluate stage. One or more Parquet files with columns id, image {bytes, path},
 * question, answer, kind, and optionally truth_objects / hallu_objects (lists of strings):
 *
 *   discriminative rows  kind existence | attribute | relation, answer "yes" | "no"
 *   generative rows      kind "generative", answer "" (none), a description prompt; truth_objects
 *                        are the objects in the image, hallu_objects the objects a description
 *                        could wrongly name (AMBER's "truth" and "hallu" annotations)
 *
 * A suite without the object columns (the older format) has discriminative rows only.
 */
import * as arrow from 'apache-arrow';
import { readParquetTable, tableFromColumns, writeParquetTable } from './parquet.js';

export const AMBER_KINDS = ['existence', 'attribute', 'relation'] as const;
export type AmberKind = (typeof AMBER_KINDS)[number];
export const GENERATIVE_KIND = 'generative';

export interface AmberQuestion {
  id: string;
  image: { bytes: Uint8Array; path: string };
  question: string;
  answer: 'yes' | 'no';
  kind: AmberKind;
}

/** A description prompt scored CHAIR-style: which named objects are absent from the image. */
export interface AmberDescription {
  id: string;
  image: { bytes: Uint8Array; path: string };
  question: string;
  truthObjects: string[];
  halluObjects: string[];
}

export interface AmberSuite {
  questions: AmberQuestion[];
  descriptions: AmberDescription[];
}

export function amberToParquet(suite: AmberSuite | AmberQuestion[]): Uint8Array {
  const { questions, descriptions } = Array.isArray(suite) ? { questions: suite, descriptions: [] } : suite;
  const str = (values: unknown[]) => ({ type: new arrow.Utf8(), values });
  const strList = (values: unknown[]) => ({ type: new arrow.List(new arrow.Field('item', new arrow.Utf8(), true)), values });
  const imageType = new arrow.Struct([new arrow.Field('bytes', new arrow.Binary(), true), new arrow.Field('path', new arrow.Utf8(), true)]);
  const rows = [
    ...questions.map((q) => ({ ...q, truthObjects: [] as string[], halluObjects: [] as string[] })),
    ...descriptions.map((d) => ({ ...d, answer: '', kind: GENERATIVE_KIND })),
  ];
  return writeParquetTable(
    tableFromColumns({
      id: str(rows.map((q) => q.id)),
      image: { type: imageType, values: rows.map((q) => q.image) },
      question: str(rows.map((q) => q.question)),
      answer: str(rows.map((q) => q.answer)),
      kind: str(rows.map((q) => q.kind)),
      truth_objects: strList(rows.map((q) => q.truthObjects)),
      hallu_objects: strList(rows.map((q) => q.halluObjects)),
    }),
  );
}

const plainList = (v: unknown): string[] => {
  if (v == null) return [];
  const items = typeof (v as { toArray?: unknown }).toArray === 'function' ? (v as { toArray: () => unknown[] }).toArray() : (v as unknown[]);
  return Array.from(items, String);
};

/** Reads a suite file; every row is checked, and a bad one is named with its field. */
export function readAmberSuite(bytes: Uint8Array, source: string): AmberSuite {
  const table = readParquetTable(bytes);
  for (const column of ['id', 'image', 'question', 'answer', 'kind']) {
    if (!table.schema.fields.some((f) => f.name === column)) throw new Error(`${source}: no column "${column}" (expected id, image, question, answer, kind)`);
  }
  const suite: AmberSuite = { questions: [], descriptions: [] };
  table.toArray().forEach((row: Record<string, unknown>, i) => {
    const r = row as { id: string; image: { bytes: Uint8Array; path: string } | null; question: string; answer: string; kind: string; truth_objects?: unknown; hallu_objects?: unknown };
    const where = `${source} row ${i} (id ${String(r.id)})`;
    const image = r.image as unknown as { toJSON?: () => unknown } | null;
    const plain = (image && typeof image.toJSON === 'function' ? image.toJSON() : image) as { bytes: Uint8Array; path: string } | null;
    if (!plain?.bytes?.length) throw new Error(`${where}: image has no bytes`);
    const common = { id: String(r.id), image: { bytes: plain.bytes, path: plain.path }, question: String(r.question) };
    if (r.kind === GENERATIVE_KIND) {
      const truthObjects = plainList(r.truth_objects);
      const halluObjects = plainList(r.hallu_objects);
      if (!truthObjects.length && !halluObjects.length) throw new Error(`${where}: a generative row needs truth_objects or hallu_objects (the objects to look for in its description)`);
      suite.descriptions.push({ ...common, truthObjects, halluObjects });
      return;
    }
    if (r.answer !== 'yes' && r.answer !== 'no') throw new Error(`${where}: answer must be "yes" or "no", got ${JSON.stringify(r.answer)}`);
    if (!AMBER_KINDS.includes(r.kind as AmberKind)) throw new Error(`${where}: kind must be one of ${[...AMBER_KINDS, GENERATIVE_KIND].join(', ')}, got ${JSON.stringify(r.kind)}`);
    suite.questions.push({ ...common, answer: r.answer, kind: r.kind as AmberKind });
  });
  return suite;
}

/** The discriminative (yes/no) rows of a suite file. */
export function amberFromParquet(bytes: Uint8Array, source: string): AmberQuestion[] {
  return readAmberSuite(bytes, source).questions;
}
