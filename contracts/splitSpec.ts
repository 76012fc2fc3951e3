/**
 * Split specs with `datasets`' slicing syntax (`train`, `train[:1%]`, `train[98%:]`,
 * `train[10:-10]`, `train[:50%]+test`, `test[:20%](pct1_dropremainder)`), ported from
 * datasets' ReadInstruction so a spec selects the same rows `load_dataset(..., split=spec)`
 * would: percentages round to the closest row (Python's round, half to even) unless
 * `(pct1_dropremainder)` is given, negative boundaries count from the end.
 *
 * Two deliberate differences, both refusals where datasets would silently read less: an absolute
 * boundary past the end of its split and a slice that selects no rows are errors.
 * Pure code: the config schema and the workflow use it.
 */
import { roundHalfEven } from './pythonRound.js';

/** datasets' split name rule (naming._split_re), ASCII: split names become storage key segments. */
const SPLIT_NAME = '[A-Za-z0-9_]+(?:\\.[A-Za-z0-9_]+)*';
const SUB_SPEC = new RegExp(
  `^(?<split>${SPLIT_NAME})(?:\\[(?:(?<from>-?[\\d_]+)(?<fromPct>%)?)?:(?:(?<to>-?[\\d_]+)(?<toPct>%)?)?\\])?(?:\\((?<rounding>[^)]*)\\))?$`,
);

export type Rounding = 'closest' | 'pct1_dropremainder';

/** One `+`-separated part of a spec, before the split's length is known. */
export interface RelativeInstruction {
  split: string;
  from?: number;
  to?: number;
  unit: '%' | 'abs';
  rounding?: Rounding;
}

/** Rows [from, to) of one split. */
export interface AbsoluteInstruction {
  split: string;
  from: number;
  to: number;
}

export class SplitSpecError extends Error {}

/** A Python int literal as datasets reads it: digits with single underscores between them. */
function parseInt_(text: string, spec: string): number {
  if (!/^-?\d+(?:_\d+)*$/.test(text)) throw new SplitSpecError(`"${spec}": "${text}" is not an integer`);
  const value = Number(text.replace(/_/g, ''));
  if (!Number.isSafeInteger(value)) throw new SplitSpecError(`"${spec}": ${text} is too large`);
  return value;
}

function parsePart(part: string): RelativeInstruction {
  const m = SUB_SPEC.exec(part);
  if (!m?.groups) {
    throw new SplitSpecError(`unrecognized split "${part}": expected a split name, optionally sliced like train[:10%], train[10:-10] or train[50%:]`);
  }
  const g = m.groups;
  const unit = g.fromPct || g.toPct ? '%' : 'abs';
  const from = g.from !== undefined ? parseInt_(g.from, part) : undefined;
  const to = g.to !== undefined ? parseInt_(g.to, part) : undefined;
  let rounding: Rounding | undefined;
  if (g.rounding !== undefined) {
    if (g.rounding !== 'closest' && g.rounding !== 'pct1_dropremainder') {
      throw new SplitSpecError(`"${part}": rounding must be closest or pct1_dropremainder, not "${g.rounding}"`);
    }
    if (unit !== '%') throw new SplitSpecError(`"${part}": a rounding applies to percent slices only`);
    rounding = g.rounding;
  }
  if (unit === '%') {
    for (const b of [from, to]) {
      if (b !== undefined && Math.abs(b) > 100) throw new SplitSpecError(`"${part}": percent boundaries must be between -100% and 100%`);
    }
    rounding ??= 'closest';
  }
  return { split: g.split!, ...(from !== undefined && { from }), ...(to !== undefined && { to }), unit, ...(rounding && { rounding }) };
}

/** Parses a spec; throws SplitSpecError with the reason. */
export function parseSplitSpec(spec: string): RelativeInstruction[] {
  // Split on "+" alone: load_dataset refuses spaces around it (ReadInstruction would strip them).
  const parts = spec.split('+');
  const instructions = parts.map(parsePart);
  const first = instructions[0]!;
  for (const other of instructions.slice(1)) {
    // datasets forbids summing percent slices with different roundings.
    if (first.unit !== 'abs' && other.unit !== 'abs' && first.rounding !== other.rounding) {
      throw new SplitSpecError(`"${spec}": the percent slices use different roundings`);
    }
  }
  return instructions;
}

/** The splits a spec reads, each once, in order. */
export function splitsOf(spec: string): string[] {
  return [...new Set(parseSplitSpec(spec).map((i) => i.split))];
}

/** True when the spec is a bare split name (no slice, no `+`). */
export function isPlainSplit(spec: string): boolean {
  return new RegExp(`^${SPLIT_NAME}$`).test(spec);
}

function pctToAbs(boundary: number, rows: number, rounding: Rounding | undefined, spec: string): number {
  if (rounding === 'pct1_dropremainder') {
    if (rows < 100) throw new SplitSpecError(`"${spec}": pct1_dropremainder on a split of fewer than 100 rows always selects nothing`);
    return boundary * Math.trunc(rows / 100);
  }
  return roundHalfEven((boundary * rows) / 100);
}

/**
 * Each part of the spec as absolute rows, given every split's row count. Errors: an unknown split,
 * an absolute boundary past the end of its split, a part that selects no rows.
 */
export function toAbsolute(spec: string, rowsPerSplit: Record<string, number>): AbsoluteInstruction[] {
  return parseSplitSpec(spec).map((ins) => {
    const rows = rowsPerSplit[ins.split];
    if (rows === undefined) throw new SplitSpecError(`unknown split "${ins.split}" (the dataset has: ${Object.keys(rowsPerSplit).join(', ')})`);
    return absoluteOf(ins, rows, spec);
  });
}

/** True when the part reads its whole split (no boundaries): its rows need not be counted first. */
export function isWhole(ins: RelativeInstruction): boolean {
  return ins.from === undefined && ins.to === undefined;
}

/** One part as rows [from, to) of a split of `rows` rows (datasets' _rel_to_abs_instr). */
export function absoluteOf(ins: RelativeInstruction, rows: number, spec: string): AbsoluteInstruction {
  let from: number;
  let to: number;
  if (ins.unit === '%') {
    from = ins.from === undefined ? 0 : pctToAbs(ins.from, rows, ins.rounding, spec);
    to = ins.to === undefined ? rows : pctToAbs(ins.to, rows, ins.rounding, spec);
  } else {
    for (const b of [ins.from, ins.to]) {
      if (b !== undefined && Math.abs(b) > rows) {
        throw new SplitSpecError(`"${spec}": boundary ${b} is out of range: split "${ins.split}" has ${rows} rows`);
      }
    }
    from = ins.from ?? 0;
    to = ins.to ?? rows;
  }
  if (from < 0) from = Math.max(rows + from, 0);
  if (to < 0) to = Math.max(rows + to, 0);
  from = Math.min(from, rows);
  to = Math.min(to, rows);
  if (to <= from) throw new SplitSpecError(`"${spec}" selects no rows of split "${ins.split}" (it has ${rows} rows; the slice is [${from}, ${to}))`);
  return { split: ins.split, from, to };
}

/** The first row range two selections share, if any. */
export function overlapOf(a: AbsoluteInstruction[], b: AbsoluteInstruction[]): AbsoluteInstruction | undefined {
  for (const x of a) {
    for (const y of b) {
      if (x.split !== y.split) continue;
      const from = Math.max(x.from, y.from);
      const to = Math.min(x.to, y.to);
      if (from < to) return { split: x.split, from, to };
    }
  }
  return undefined;
}

/**
 * The name a selection goes by in storage keys and stage summaries: a bare split name is itself
 * (so configs without slices keep their keys), a sliced one is spelled with safe characters
 * (`train[:95%]` -> `train._95pct`).
 */
export function splitLabel(spec: string): string {
  if (isPlainSplit(spec)) return spec;
  const label = parseSplitSpec(spec)
    .map((i) => {
      const unit = i.unit === '%' ? 'pct' : '';
      const range = i.from === undefined && i.to === undefined ? '' : `.${i.from ?? ''}${i.from !== undefined ? unit : ''}_${i.to ?? ''}${i.to !== undefined ? unit : ''}`;
      return `${i.split}${range}${i.rounding === 'pct1_dropremainder' ? '.pct1' : ''}`;
    })
    .join('.and.');
  return label.length <= 128 ? label : `${label.slice(0, 111)}.${fnv1a(spec)}`;
}

/** The labels of a run's two selections; never equal (an eval label that would be gets `.eval`). */
export function splitLabels(dataset: { train_split: string; eval_split: string }): { train: string; eval: string } {
  const train = splitLabel(dataset.train_split);
  const evalLabel = splitLabel(dataset.eval_split);
  return { train, eval: evalLabel === train && dataset.eval_split !== dataset.train_split ? `${evalLabel}.eval` : evalLabel };
}

function fnv1a(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, '0');
}

/** The format stage's split inputs: the labels, and the specs when either is more than a name. */
export function formatSplitInput(dataset: { train_split: string; eval_split: string }): {
  splits: { train: string; eval: string };
  slices?: { train: string; eval: string };
} {
  const splits = splitLabels(dataset);
  const plain = splits.train === dataset.train_split && splits.eval === dataset.eval_split;
  return { splits, ...(!plain && { slices: { train: dataset.train_split, eval: dataset.eval_split } }) };
}

/**
 * The rows a spec selects, part by part, given each split's row count (asked only for sliced
 * parts: a part that reads its whole split is [0, Infinity), so its files are counted only as far
 * as they are read).
 */
export async function selectRows(spec: string, splitRows: (split: string) => Promise<number>): Promise<AbsoluteInstruction[]> {
  const out: AbsoluteInstruction[] = [];
  for (const part of parseSplitSpec(spec)) {
    out.push(isWhole(part) ? { split: part.split, from: 0, to: Number.POSITIVE_INFINITY } : absoluteOf(part, await splitRows(part.split), spec));
  }
  return out;
}

/** Rows [offset, offset + limit) of the fileIndex-th file of a split. */
export interface RowWindow {
  split: string;
  fileIndex: number;
  offset: number;
  limit: number;
}

/**
 * Where selected rows lie in a split's files (a split's rows are its files' rows in order), at
 * most `limit` rows in all: the windows to read, in the selection's order.
 */
export async function rowWindows(
  parts: AbsoluteInstruction[],
  fileCount: (split: string) => number,
  fileRows: (split: string, fileIndex: number) => Promise<number>,
  limit = Number.POSITIVE_INFINITY,
): Promise<RowWindow[]> {
  const out: RowWindow[] = [];
  let remaining = limit;
  for (const part of parts) {
    let start = 0;
    for (let fileIndex = 0; fileIndex < fileCount(part.split); fileIndex++) {
      if (remaining <= 0 || start >= part.to) break;
      const rows = await fileRows(part.split, fileIndex);
      // This file holds rows [start, start + rows) of its split; the part wants [from, to).
      const from = Math.max(part.from, start);
      const to = Math.min(part.to, start + rows, from + remaining);
      if (to > from) {
        out.push({ split: part.split, fileIndex, offset: from - start, limit: to - from });
        remaining -= to - from;
      }
      start += rows;
    }
  }
  return out;
}
