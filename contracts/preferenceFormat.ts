/**
 * Preference-dataset layouts: which columns hold the prompt, the two answers and the images, and
 * how a row's cells become prompt/chosen/rejected. Four are accepted, as TRL and RLAIF-V publish
 * them:
 *
 *  - `rlaif_v`: RLAIF-V's raw columns (question, chosen, rejected strings + one image), renamed by
 *    `dataset.columns`;
 *  - `standard`: TRL's standard preference format: prompt/chosen/rejected strings used verbatim
 *    (the prompt holds the model's image placeholders), `images` a list (or `image` one image);
 *  - `conversational`: TRL's conversational format: prompt/chosen/rejected message lists
 *    ({role, content}, content a string or parts {type: "text", text} / {type: "image"}), the chat
 *    template applied by the format stage (trl-lib/rlaif-v, HuggingFaceH4/rlaif-v_formatted);
 *  - either TRL format without a prompt column (an "implicit prompt"): chosen and rejected are
 *    whole conversations and their shared prefix is the prompt (TRL's extract_prompt).
 *
 * Pure logic: the column kinds come from the reader (a Parquet schema or a JSONL record).
 */

export const DATASET_FORMATS = ['auto', 'rlaif_v', 'standard', 'conversational'] as const;
export type DatasetFormat = (typeof DATASET_FORMATS)[number];
export type PreferenceLayoutName = Exclude<DatasetFormat, 'auto'>;

/** What a column holds, as far as its type (or a JSONL value) tells. */
export type ColumnKind = 'text' | 'binary' | 'image_struct' | 'messages' | 'list' | 'other';

/** RLAIF-V raw's column names (dataset.columns). */
export interface RawColumnMapping {
  image: string;
  question: string;
  chosen: string;
  rejected: string;
}

export interface PreferenceLayout {
  format: PreferenceLayoutName;
  /** No prompt column (or one TRL ignores): the prompt is chosen's and rejected's shared prefix. */
  implicitPrompt: boolean;
  /** The source column of each role; prompt is null for an implicit prompt. */
  columns: { prompt: string | null; chosen: string; rejected: string; images: string };
  /** The image column holds a list of images (TRL's `images`), not one image. */
  imageList: boolean;
}

/** How a stage summary names a layout: "conversational", "standard (implicit prompt)", ... */
export function layoutLabel(layout: PreferenceLayout): string {
  return `${layout.format}${layout.implicitPrompt ? ' (implicit prompt)' : ''}`;
}

/** A layout that cannot be read from these columns: the dataset's (or the config's) to fix. */
export class LayoutError extends Error {}

const ACCEPTED =
  'rlaif_v (question, chosen, rejected strings + image; names set by dataset.columns), ' +
  'standard (prompt, chosen, rejected strings + images, a list of images, or image; prompt optional: implicit prompt), ' +
  'conversational (prompt, chosen, rejected message lists of {role, content} + images or image; prompt optional: implicit prompt)';

function describe(columns: ReadonlyMap<string, ColumnKind>): string {
  return [...columns].map(([name, kind]) => `${name} (${kind})`).join(', ') || '(none)';
}

const isText = (kind: ColumnKind | undefined) => kind === 'text' || kind === 'binary';

/**
 * The layout of a file with these columns (in file order). `declared` is dataset.format; `auto`
 * detects: RLAIF-V raw where its (mapped) question column is present, else TRL's column names,
 * whose answer columns' kind tells standard from conversational.
 */
export function resolveLayout(declared: DatasetFormat, columns: ReadonlyMap<string, ColumnKind>, mapping: RawColumnMapping, file: string): PreferenceLayout {
  const rawRoles = ['image', 'question', 'chosen', 'rejected'] as const;
  const rawMissing = rawRoles.filter((role) => !columns.has(mapping[role]));
  // RLAIF-V's question column (as mapped) marks its layout: its other columns must be there too.
  if (declared === 'rlaif_v' || (declared === 'auto' && columns.has(mapping.question))) {
    if (rawMissing.length) {
      const role = rawMissing[0]!;
      throw new LayoutError(
        `dataset file "${file}" has no column "${mapping[role]}" (dataset.columns.${role}); its columns are: ${[...columns.keys()].join(', ') || '(none)'}`,
      );
    }
    return {
      format: 'rlaif_v',
      implicitPrompt: false,
      columns: { prompt: mapping.question, chosen: mapping.chosen, rejected: mapping.rejected, images: mapping.image },
      imageList: false,
    };
  }
  const images = columns.has('images') ? 'images' : columns.has('image') ? 'image' : null;
  const chosen = columns.get('chosen');
  const rejected = columns.get('rejected');
  const detected: PreferenceLayoutName | null =
    chosen === 'messages' && rejected === 'messages' ? 'conversational' : isText(chosen) && isText(rejected) ? 'standard' : null;
  const format = declared === 'auto' ? detected : declared;
  if (!format || !images || detected !== format) {
    const why =
      declared === 'auto'
        ? 'cannot tell the dataset layout from its columns'
        : `does not have the columns of dataset.format "${declared}"`;
    throw new LayoutError(`dataset file "${file}" ${why}: ${describe(columns)}; accepted layouts: ${ACCEPTED}`);
  }
  const promptKind = columns.get('prompt');
  // TRL's maybe_extract_prompt: a prompt column counts only when it is of the answers' kind (some
  // datasets carry a plain-text prompt beside whole conversations).
  const explicit = promptKind !== undefined && (format === 'conversational' ? promptKind === 'messages' : isText(promptKind));
  return {
    format,
    implicitPrompt: !explicit,
    columns: { prompt: explicit ? 'prompt' : null, chosen: 'chosen', rejected: 'rejected', images },
    imageList: images === 'images',
  };
}

/**
 * TRL's extract_prompt: the longest common prefix of chosen and rejected (characters of strings,
 * or whole messages of conversations) is the prompt; a space just before the point where they
 * part stays with the answers. Ported with its edge cases: when one is a prefix of the other the
 * prompt stops one element short of the shorter, and at index 0 Python's `[-1]` looks at the end.
 */
export function extractPrompt<T extends string | readonly unknown[]>(chosen: T, rejected: T, equal: (a: unknown, b: unknown) => boolean = Object.is): { prompt: T; chosen: T; rejected: T } {
  const n = Math.min(chosen.length, rejected.length);
  if (n === 0) throw new LayoutError('chosen or rejected is empty: no prompt can be extracted from it');
  let idx = 0;
  for (idx = 0; idx < n; idx++) {
    if (!equal(chosen[idx], rejected[idx])) {
      const before = chosen[idx - 1 < 0 ? chosen.length - 1 : idx - 1];
      if (before === ' ') idx -= 1;
      break;
    }
  }
  // Python's loop variable keeps its last value when the loop runs out.
  if (idx === n) idx = n - 1;
  const slice = (v: T, from: number, to?: number) => v.slice(from < 0 ? Math.max(0, v.length + from) : from, to === undefined ? undefined : to < 0 ? v.length + to : to) as T;
  return { prompt: slice(chosen, 0, idx), chosen: slice(chosen, idx), rejected: slice(rejected, idx) };
}

/** Python's `==` on JSON-like values (dicts compare by keys and values, lists by elements). */
export function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a instanceof Uint8Array && b instanceof Uint8Array) return a.length === b.length && a.every((v, i) => v === b[i]);
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((v, i) => deepEqual(v, b[i]));
  if (a && b && typeof a === 'object' && typeof b === 'object' && !Array.isArray(a) && !Array.isArray(b)) {
    const ka = Object.keys(a);
    const kb = Object.keys(b);
    return ka.length === kb.length && ka.every((k) => k in b && deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
  }
  return false;
}

export type ContentPart = { type: 'image' } | { type: 'text'; text: string };
export interface Message {
  role: 'system' | 'user' | 'assistant';
  content: ContentPart[];
}

/** A message list as a cell holds it: content a string or parts (Arrow structs give image parts `text: null`). */
export interface RawMessage {
  role: string;
  content: string | Array<{ type: string; text?: string | null }>;
}

const ROLES = new Set(['system', 'user', 'assistant']);

/** A cell that is a list of {role, content} messages, or why it is not. */
export function parseMessages(cell: unknown): RawMessage[] | { problem: string } {
  if (!Array.isArray(cell)) return { problem: 'not a list of messages' };
  for (const [i, m] of cell.entries()) {
    if (!m || typeof m !== 'object') return { problem: `message ${i} is not an object` };
    const { role, content } = m as { role?: unknown; content?: unknown };
    if (typeof role !== 'string' || !ROLES.has(role)) return { problem: `message ${i} has role ${JSON.stringify(role)} (expected system, user or assistant)` };
    if (typeof content === 'string') continue;
    if (!Array.isArray(content)) return { problem: `message ${i} content is neither a string nor a list of parts` };
    for (const part of content) {
      const type = (part as { type?: unknown } | null)?.type;
      const text = (part as { text?: unknown } | null)?.text;
      if (type === 'image') continue;
      if (type !== 'text' || typeof text !== 'string') return { problem: `message ${i} has a part that is neither {type: "image"} nor {type: "text", text}` };
    }
  }
  return cell as RawMessage[];
}

/**
 * TRL's prepare_multimodal_messages: every content becomes a list of parts; where content is a
 * string, the first user message gets `images` image parts before its text. Returns the messages
 * and their image parts' count (which must equal the row's images).
 */
export function prepareMultimodal(messages: RawMessage[], images: number): { messages: Message[]; imageParts: number } {
  let imagesIncluded = false;
  let imageParts = 0;
  const out = messages.map((m): Message => {
    const role = m.role as Message['role'];
    if (typeof m.content === 'string') {
      const text: ContentPart = { type: 'text', text: m.content };
      if (role === 'user' && !imagesIncluded) {
        imagesIncluded = true;
        imageParts += images;
        return { role, content: [...Array.from({ length: images }, (): ContentPart => ({ type: 'image' })), text] };
      }
      return { role, content: [text] };
    }
    const content = m.content.map((p): ContentPart => (p.type === 'image' ? { type: 'image' } : { type: 'text', text: p.text as string }));
    imageParts += content.filter((p) => p.type === 'image').length;
    return { role, content };
  });
  return { messages: out, imageParts };
}
