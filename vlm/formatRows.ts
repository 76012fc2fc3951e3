/**
 * One row of the format stage: checks, chat-template rendering and the image thumbnail. Every
 * bad row becomes a drop reason, never an exception: a worker must survive any input bytes.
 */
import { createHash } from 'node:crypto';
import sharp from 'sharp';
import type { ChatTokenizer } from './chatTokenizer.js';
import { fastPathJpeg, JpegDecoderUnavailableError, jpegFastPathEnabled, thumbnailPlan, withDecodedPixels, type FastPathJpeg } from './jpegDecode.js';
import type { RawRow } from '../io/sourceRows.js';
import { deepEqual, extractPrompt, parseMessages, prepareMultimodal, type PreferenceLayout, type RawMessage } from '../contracts/preferenceFormat.js';

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
  'image_count_mismatch',
  'multi_image_unsupported',
  'chat_template_error',
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
  /** One thumbnail per image placeholder of the prompt, in order. */
  images: Uint8Array[];
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
  layout: PreferenceLayout,
  chat: ChatTokenizer,
  options: FormatOptions,
  resolveImageFile?: ImageFileResolver,
): Promise<RowOutcome> {
  if (row.undecodable) return { reason: row.undecodable };
  const texts = layout.format === 'conversational' ? conversationTexts(row, layout, chat) : stringTexts(row, layout, chat);
  if ('reason' in texts) return texts;
  const imageCells = layout.imageList ? row.images : [row.images];
  if (imageCells == null || (Array.isArray(imageCells) && imageCells.length === 0)) return { reason: 'missing_image' };
  if (!Array.isArray(imageCells)) return { reason: 'wrong_type', detail: `${layout.columns.images} is not a list of images` };
  if (texts.answerImageParts) {
    return { reason: 'image_count_mismatch', detail: `chosen or rejected holds ${texts.answerImageParts} image placeholders; images belong to the prompt` };
  }
  if (texts.imageParts !== imageCells.length) {
    return { reason: 'image_count_mismatch', detail: `${texts.imageParts} image placeholders, ${imageCells.length} images` };
  }
  if (imageCells.length > 1 && !chat.family?.multiImage) {
    return { reason: 'multi_image_unsupported', detail: `${imageCells.length} images; the ${chat.family?.name ?? 'text-only'} model family takes one image per prompt here` };
  }
  const sources: Uint8Array[] = [];
  const images: Uint8Array[] = [];
  for (const cell of imageCells) {
    const source = await imageBytes(cell, resolveImageFile);
    if ('reason' in source) return source;
    try {
      images.push(await thumbnail(source.bytes, options));
    } catch (err) {
      // A worker without the decoder is a setup problem: fail the chunk, drop nothing.
      if (err instanceof JpegDecoderUnavailableError) throw err;
      const message = (err as Error).message;
      const reason: DropReason = /pixel limit/i.test(message) ? 'image_too_large' : 'image_decode_failed';
      return { reason, detail: message.slice(0, 200) };
    }
    sources.push(source.bytes);
  }
  const hash = createHash('sha256');
  for (const bytes of sources) hash.update(bytes);
  const dedupKey = hash.update(JSON.stringify(texts.identity)).digest('base64');
  return { prompt: texts.prompt, chosen: texts.chosen, rejected: texts.rejected, images, dedupKey };
}

/** A row's rendered texts, its prompt's image placeholders, and what identifies it for de-duplication. */
interface RowTexts {
  prompt: string;
  chosen: string;
  rejected: string;
  /** Image placeholders of the prompt. */
  imageParts: number;
  /** Image placeholders of the answers (where no image is given to the model). */
  answerImageParts: number;
  identity: unknown;
}

/**
 * RLAIF-V raw (the question rendered as a one-image user turn) and TRL's standard format (the
 * strings verbatim, as TRL's vision collator hands them to the processor; the prompt holds the
 * family's placeholders itself).
 */
function stringTexts(row: RawRow, layout: PreferenceLayout, chat: ChatTokenizer): RowTexts | { reason: DropReason; detail?: string } {
  const cells = [layout.implicitPrompt ? '' : row.prompt, row.chosen, row.rejected].map(textOf);
  for (const t of cells) if (t && typeof t === 'object') return { reason: t.reason, detail: 'prompt (question), chosen or rejected' };
  let [prompt, chosen, rejected] = cells.map((t) => (t as string | null) ?? '') as [string, string, string];
  if (layout.format === 'rlaif_v') {
    [prompt, chosen, rejected] = [prompt.trim(), chosen.trim(), rejected.trim()];
  } else if (layout.implicitPrompt) {
    if (!chosen || !rejected) return { reason: chosen ? 'empty_rejected' : 'empty_chosen' };
    ({ prompt, chosen, rejected } = extractPrompt(chosen, rejected));
  }
  if (!prompt.trim()) return { reason: 'empty_question' };
  if (!chosen.trim()) return { reason: 'empty_chosen' };
  if (!rejected.trim()) return { reason: 'empty_rejected' };
  if (chosen === rejected) return { reason: 'chosen_equals_rejected' };
  if (layout.format === 'rlaif_v') {
    return { prompt: chat.promptText(prompt), chosen: chat.completionText(prompt, chosen), rejected: chat.completionText(prompt, rejected), imageParts: 1, answerImageParts: 0, identity: [prompt, chosen, rejected] };
  }
  // Placeholders in an answer would be images the collator never gives the model.
  const answerImageParts = chat.countImagePlaceholders(chosen) + chat.countImagePlaceholders(rejected);
  return { prompt, chosen, rejected, imageParts: chat.countImagePlaceholders(prompt), answerImageParts, identity: [prompt, chosen, rejected] };
}

/**
 * TRL's conversational format: the prompt extracted if implicit (extract_prompt), image parts
 * filled in (prepare_multimodal_messages), then the chat template applied as TRL's
 * apply_chat_template does (ChatTokenizer.renderPreference).
 */
function conversationTexts(row: RawRow, layout: PreferenceLayout, chat: ChatTokenizer): RowTexts | { reason: DropReason; detail?: string } {
  const parsed = [layout.implicitPrompt ? [] : row.prompt, row.chosen, row.rejected].map(parseMessages);
  for (const [i, p] of parsed.entries()) if ('problem' in p) return { reason: 'wrong_type', detail: `${['prompt', 'chosen', 'rejected'][i]}: ${p.problem}` };
  let [prompt, chosen, rejected] = parsed as [RawMessage[], RawMessage[], RawMessage[]];
  if (layout.implicitPrompt) {
    if (!chosen.length || !rejected.length) return { reason: chosen.length ? 'empty_rejected' : 'empty_chosen' };
    ({ prompt, chosen, rejected } = extractPrompt(chosen, rejected, deepEqual));
  }
  if (!prompt.length) return { reason: 'empty_question' };
  if (!chosen.length) return { reason: 'empty_chosen' };
  if (!rejected.length) return { reason: 'empty_rejected' };
  if (deepEqual(chosen, rejected)) return { reason: 'chosen_equals_rejected' };
  const images = layout.imageList ? (Array.isArray(row.images) ? row.images.length : 0) : row.images == null ? 0 : 1;
  const p = prepareMultimodal(prompt, images);
  const c = prepareMultimodal(chosen, 0);
  const r = prepareMultimodal(rejected, 0);
  let rendered: { prompt: string; chosen: string; rejected: string };
  try {
    rendered = chat.renderPreference(p.messages, c.messages, r.messages);
  } catch (err) {
    // e.g. a template that insists on alternating roles, or a final assistant turn without text.
    return { reason: 'chat_template_error', detail: (err as Error).message.slice(0, 200) };
  }
  if (!rendered.chosen.trim()) return { reason: 'empty_chosen' };
  if (!rendered.rejected.trim()) return { reason: 'empty_rejected' };
  return { ...rendered, imageParts: p.imageParts, answerImageParts: c.imageParts + r.imageParts, identity: [p.messages, c.messages, r.messages] };
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
 * Plain 8-bit JPEGs take the DCT-scaled decode (vlm/jpegDecode.ts); sharp makes all the others,
 * and any the fast path cannot decode cleanly, so every guard and drop decision is sharp's.
 */
export async function thumbnail(bytes: Uint8Array, options: FormatOptions): Promise<Uint8Array> {
  if (jpegFastPathEnabled()) {
    const jpeg = fastPathJpeg(bytes, options.maxPixels);
    if (!('sharp' in jpeg)) {
      const out = await jpegThumbnail(bytes, jpeg, options).catch(() => null);
      if (out) return out;
    }
  }
  return sharpThumbnail(bytes, options);
}

/** The longest edge the thumbnail gets: `edge`, or less where maxOutputPixels bounds it. */
function thumbnailEdge(width: number, height: number, options: FormatOptions): number {
  return options.maxOutputPixels ? Math.min(options.edge, pixelBoundedEdge(width, height, options.maxOutputPixels)) : options.edge;
}

/**
 * The fast path: decoded at the largest DCT reduction that leaves at least the thumbnail's size,
 * then sharp's resize (same kernel, lanczos3) to exactly the size sharp's own path gives, and the
 * same encode. Rejects when libjpeg-turbo finds anything wrong; the caller then asks sharp.
 */
async function jpegThumbnail(bytes: Uint8Array, jpeg: FastPathJpeg, options: FormatOptions): Promise<Uint8Array> {
  const size = thumbnailPlan(jpeg.width, jpeg.height, thumbnailEdge(jpeg.width, jpeg.height, options));
  return withDecodedPixels(bytes, jpeg, size.scaleDenominator, (pixels) =>
    sharp(pixels.data, { raw: { width: pixels.width, height: pixels.height, channels: pixels.channels } })
      .resize({ width: size.width, height: size.height, fit: 'fill' })
      .toColourspace('srgb')
      .jpeg({ quality: options.jpegQuality, optimiseCoding: false })
      .toBuffer(),
  );
}

/**
 * sharp's path, for every image the fast path does not take. `limitInputPixels` refuses
 * decompression bombs from the header, before decoding.
 */
export async function sharpThumbnail(bytes: Uint8Array, options: FormatOptions): Promise<Uint8Array> {
  const input = () => sharp(bytes, { limitInputPixels: options.maxPixels, failOn: 'warning', sequentialRead: true });
  let edge = options.edge;
  if (options.maxOutputPixels) {
    // The longest edge at which the thumbnail holds at most maxOutputPixels (orientation does not
    // change edges' lengths, only which is which).
    const { width, height } = await input().metadata();
    if (width && height) edge = thumbnailEdge(width, height, options);
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
