/**
 * One row of the format stage: checks, chat-template rendering and the image thumbnail. Every
 * bad row becomes a drop reason, never an exception: a worker must survive any input bytes.
 */
import { createHash } from 'node:crypto';
import sharp from 'sharp';
import type { ChatTokenizer } from './chatTokenizer.js';
import type { RawRow } from '../io/sourceRows.js';

export const DROP_REASONS = [
  'invalid_utf8',
  'invalid_json',
  'wrong_type',
  'empty_question',
  'empty_chosen',
  'empty_rejected',
  'chosen_equals_rejected',
  'missing_image',
  'image_not_found',
  'image_too_large',
  'image_decode_failed',
  'duplicate',
] as const;
export type DropReason = (typeof DROP_REASONS)[number];

export interface FormatOptions {
  /** Longest edge of the thumbnail, pixels. */
  edge: number;
  /** Most pixels (width x height) of the thumbnail; null for no bound beyond the edge. */
  maxOutputPixels?: number | null;
  /** Decoding guard: images with more pixels are refused before decoding. */
  maxPixels: number;
  jpegQuality: number;
}

export interface FormattedRow {
  prompt: string;
  chosen: string;
  rejected: string;
  image: Uint8Array;
  /** Identity for de-duplication: sha256 of the source image bytes and the three texts. */
  dedupKey: string;
}

export type RowOutcome = FormattedRow | { reason: DropReason; detail?: string };

/** Fetches a JSONL row's image file (a path relative to the JSONL file); null when absent. */
export type ImageFileResolver = (relativePath: string) => Promise<Uint8Array | null>;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Text cells: strings, or binary columns holding UTF-8 (decoded strictly). */
function textOf(cell: unknown): string | null | { reason: DropReason } {
  if (cell == null) return null;
  if (typeof cell === 'string') return cell;
  if (cell instanceof Uint8Array) {
    try {
      return utf8.decode(cell);
    } catch {
      return { reason: 'invalid_utf8' };
    }
  }
  return { reason: 'wrong_type' };
}

export async function formatRow(
  row: RawRow,
  chat: ChatTokenizer,
  options: FormatOptions,
  resolveImageFile?: ImageFileResolver,
): Promise<RowOutcome> {
  if (row.undecodable) return { reason: row.undecodable };
  const texts = [row.question, row.chosen, row.rejected].map(textOf);
  for (const t of texts) if (t && typeof t === 'object') return { reason: t.reason, detail: 'question, chosen or rejected' };
  const [question, chosen, rejected] = texts.map((t) => ((t as string | null) ?? '').trim()) as [string, string, string];
  if (!question) return { reason: 'empty_question' };
  if (!chosen) return { reason: 'empty_chosen' };
  if (!rejected) return { reason: 'empty_rejected' };
  if (chosen === rejected) return { reason: 'chosen_equals_rejected' };

  const source = await imageBytes(row.image, resolveImageFile);
  if ('reason' in source) return source;
  let image: Uint8Array;
  try {
    image = await thumbnail(source.bytes, options);
  } catch (err) {
    const message = (err as Error).message;
    const reason: DropReason = /pixel limit/i.test(message) ? 'image_too_large' : 'image_decode_failed';
    return { reason, detail: message.slice(0, 200) };
  }
  const dedupKey = createHash('sha256')
    .update(source.bytes)
    .update(JSON.stringify([question, chosen, rejected]))
    .digest('base64');
  return {
    prompt: chat.promptText(question),
    chosen: chat.completionText(question, chosen),
    rejected: chat.completionText(question, rejected),
    image,
    dedupKey,
  };
}

/**
 * Image cells: RLAIF-V's struct {bytes, path}, a plain binary column, or (JSONL) a path to an
 * image file beside the JSONL, or a struct whose path names one.
 */
async function imageBytes(cell: unknown, resolve?: ImageFileResolver): Promise<{ bytes: Uint8Array } | { reason: DropReason; detail?: string }> {
  if (cell == null) return { reason: 'missing_image' };
  if (cell instanceof Uint8Array) return cell.length ? { bytes: cell } : { reason: 'missing_image' };
  let path: unknown = cell;
  if (typeof cell === 'object' && !Array.isArray(cell)) {
    const { bytes, path: p } = cell as { bytes?: unknown; path?: unknown };
    if (bytes instanceof Uint8Array && bytes.length) return { bytes };
    if (bytes != null && !(bytes instanceof Uint8Array)) return { reason: 'wrong_type', detail: 'image.bytes' };
    path = p;
  }
  if (typeof path === 'string' && path && resolve) {
    const bytes = await resolve(path);
    return bytes?.length ? { bytes } : { reason: 'image_not_found', detail: path.slice(0, 200) };
  }
  if (path == null || path === '') return { reason: 'missing_image' };
  return { reason: 'wrong_type', detail: 'image' };
}

/**
 * Upright (EXIF orientation applied), sRGB (CMYK and grayscale converted, 16-bit reduced to 8),
 * alpha flattened onto white, longest edge at most `edge` pixels (like PIL's thumbnail), JPEG.
 * `limitInputPixels` refuses decompression bombs from the header, before decoding.
 */
export async function thumbnail(bytes: Uint8Array, options: FormatOptions): Promise<Uint8Array> {
  const input = () => sharp(bytes, { limitInputPixels: options.maxPixels, failOn: 'warning', sequentialRead: true });
  let edge = options.edge;
  if (options.maxOutputPixels) {
    // The longest edge at which the thumbnail holds at most maxOutputPixels (orientation does not
    // change edges' lengths, only which is which).
    const { width, height } = await input().metadata();
    if (width && height) edge = Math.min(edge, pixelBoundedEdge(width, height, options.maxOutputPixels));
  }
  return input()
    .rotate()
    .flatten({ background: '#ffffff' })
    .resize({ width: edge, height: edge, fit: 'inside', withoutEnlargement: true })
    .toColourspace('srgb')
    // Huffman-table optimisation would cost ~2x the encode time for ~5% smaller files.
    .jpeg({ quality: options.jpegQuality, optimiseCoding: false })
    .toBuffer();
}

/**
 * The largest longest edge at which a width x height image, scaled with its aspect kept, has at
 * most maxPixels pixels (sharp rounds the other edge to the nearest pixel).
 */
export function pixelBoundedEdge(width: number, height: number, maxPixels: number): number {
  const long = Math.max(width, height);
  const short = Math.min(width, height);
  if (long * short <= maxPixels) return long;
  let edge = Math.max(1, Math.floor(long * Math.sqrt(maxPixels / (long * short))));
  while (edge > 1 && edge * Math.max(1, Math.round((short * edge) / long)) > maxPixels) edge--;
  return edge;
}
