/**
 * The JPEG fast path of the format stage's thumbnails: libjpeg-turbo decodes the image with
 * DCT-domain scaling (1/2, 1/4 or 1/8, the largest reduction that still leaves at least the
 * thumbnail's size; see MIN_SCALED_DECODE_PIXELS for small images), then sharp resizes those pixels to the exact size with the kernel it uses
 * anyway and encodes the JPEG. sharp decodes at full size below a 3x reduction (it turns on JPEG
 * shrink-on-load only from there), and the typical ~1000 px photo thumbnailed to ~490 px needs 2x:
 * at 2x most of the full decode is work for pixels that are thrown away.
 *
 * Only what the fast path reproduces exactly takes it: baseline or progressive Huffman JPEGs,
 * 8-bit, YCbCr or grayscale, no embedded ICC profile (sharp converts those to sRGB), no EXIF
 * orientation other than 1 (sharp turns those upright), within the pixel limit by the header.
 * Everything else, and any image libjpeg-turbo warns about, goes to sharp, which keeps every
 * guard and makes the keep/drop decision (and its reason) as before.
 *
 * The decoder is a small N-API addon (vlm/native/jpegDecode.c) that `npm run setup` builds
 * against Debian's libturbojpeg into the per-user cache (scripts/build-jpeg-decoder.sh).
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { REPO_ROOT } from '../io/deps.js';
import { pinnedVersions, userCacheDir } from '../io/toolsCache.js';

/** The addon's exports (vlm/native/jpegDecode.c). */
interface JpegDecoderAddon {
  header(bytes: Uint8Array): { width: number; height: number; subsampling: number; colorspace: number };
  /** Writes the pixels into `output` (at least the scaled size x channels bytes). */
  decode(bytes: Uint8Array, scaleDenominator: ScaleDenominator, gray: boolean, output: Uint8Array): Promise<{ width: number; height: number; channels: 1 | 3 }>;
}

export interface DecodedPixels {
  /** Interleaved, row-major: RGB, or one channel for grayscale. */
  data: Buffer;
  width: number;
  height: number;
  channels: 1 | 3;
}

export type ScaleDenominator = 1 | 2 | 4 | 8;

/** TurboJPEG's colorspace codes (TJCS_*) the fast path takes. */
const TJCS_YCBCR = 1;
const TJCS_GRAY = 2;

const SOURCE = join(REPO_ROOT, 'vlm/native/jpegDecode.c');

/** Missing or unloadable decoder: a setup problem, never a bad image. */
export class JpegDecoderUnavailableError extends Error {
  override name = 'JpegDecoderUnavailableError';
}

/**
 * Where scripts/build-jpeg-decoder.sh puts the addon: keyed by the pinned libturbojpeg version
 * and the source's hash, so a changed source or pin is rebuilt and never loads a stale build.
 */
export function jpegDecoderPath(): string {
  const version = pinnedVersions().TURBOJPEG_DEB_VERSION;
  if (!version) throw new JpegDecoderUnavailableError('scripts/versions.sh pins no TURBOJPEG_DEB_VERSION');
  const sourceHash = createHash('sha256').update(readFileSync(SOURCE)).digest('hex').slice(0, 12);
  return join(userCacheDir(), 'tools', `jpeg-decoder-${version.replace(/^\d+:/, '')}-${sourceHash}`, 'jpegDecode.node');
}

let loaded: JpegDecoderAddon | undefined;

/** The addon, loaded once; a clear error naming the fix when it is not built. */
export function jpegDecoder(): JpegDecoderAddon {
  if (loaded) return loaded;
  const path = jpegDecoderPath();
  if (!existsSync(path)) {
    throw new JpegDecoderUnavailableError(
      `the JPEG decoder addon is not built (${path} is missing): run \`npm run setup\` (or \`bash scripts/build-jpeg-decoder.sh\`), ` +
        'or set DPO_JPEG_DECODER=sharp to make every thumbnail with sharp (slower)',
    );
  }
  try {
    loaded = createRequire(import.meta.url)(path) as JpegDecoderAddon;
  } catch (err) {
    throw new JpegDecoderUnavailableError(`the JPEG decoder addon ${path} does not load (${(err as Error).message}): rebuild it with \`bash scripts/build-jpeg-decoder.sh\``);
  }
  return loaded;
}

/** Whether thumbnails may use the fast path: DPO_JPEG_DECODER=sharp turns it off. */
export function jpegFastPathEnabled(): boolean {
  return process.env.DPO_JPEG_DECODER !== 'sharp';
}

/** What the fast path needs to know of an image it takes. */
export interface FastPathJpeg {
  width: number;
  height: number;
  gray: boolean;
}

/**
 * The image's size and kind if the fast path reproduces sharp's result for it, else why not
 * (for tests and diagnostics). Reads the markers only: no pixel is decoded.
 */
export function fastPathJpeg(bytes: Uint8Array, maxPixels: number): FastPathJpeg | { sharp: string } {
  const scan = scanJpegMarkers(bytes);
  if ('sharp' in scan) return scan;
  if (scan.width * scan.height > maxPixels) return { sharp: 'over the pixel limit' };
  let header;
  try {
    header = jpegDecoder().header(bytes);
  } catch (err) {
    if (err instanceof JpegDecoderUnavailableError) throw err;
    return { sharp: `header: ${(err as Error).message}` };
  }
  if (header.colorspace !== TJCS_YCBCR && header.colorspace !== TJCS_GRAY) return { sharp: `colorspace ${header.colorspace} (not YCbCr or grayscale)` };
  if (header.width !== scan.width || header.height !== scan.height) return { sharp: 'frame size disagrees with the decoder' };
  return { width: scan.width, height: scan.height, gray: header.colorspace === TJCS_GRAY };
}

/**
 * Decodes a `fastPathJpeg` image at 1/scaleDenominator of its size (rounded up, as libjpeg does),
 * on the libuv pool, and hands the pixels to `use`. Their buffer is reused for a later image once
 * `use` settles: the format stage makes several thumbnails at once, and a fresh ~600 KB buffer
 * per image made V8 collect garbage far more often.
 */
export async function withDecodedPixels<T>(bytes: Uint8Array, jpeg: FastPathJpeg, scaleDenominator: ScaleDenominator, use: (pixels: DecodedPixels) => Promise<T>): Promise<T> {
  const size = scaledSize(jpeg.width, scaleDenominator) * scaledSize(jpeg.height, scaleDenominator) * (jpeg.gray ? 1 : 3);
  const buffer = takeBuffer(size);
  try {
    const info = await jpegDecoder().decode(bytes, scaleDenominator, jpeg.gray, buffer);
    return await use({ ...info, data: buffer.subarray(0, info.width * info.height * info.channels) });
  } finally {
    giveBuffer(buffer);
  }
}

/** Spare pixel buffers, at most this many (one per image in flight is enough). */
const SPARE_BUFFERS = 8;
const spare: Buffer[] = [];

/** A spare buffer of at least `size` bytes (and not wastefully larger), else a new one. */
function takeBuffer(size: number): Buffer {
  const i = spare.findIndex((b) => b.length >= size && b.length <= 2 * size);
  return i >= 0 ? spare.splice(i, 1)[0]! : Buffer.allocUnsafeSlow(size);
}

function giveBuffer(buffer: Buffer): void {
  if (spare.length < SPARE_BUFFERS) spare.push(buffer);
}

/** libjpeg's scaled size: ceil(size / denominator). */
export function scaledSize(size: number, denominator: ScaleDenominator): number {
  return Math.ceil(size / denominator);
}

/**
 * From this many pixels on, the decode takes the largest DCT reduction that still covers the
 * thumbnail. Smaller images take sharp's own shrink-on-load instead (none below 3x), so their
 * thumbnails are what sharp made: the reduction saves little there (a 256 px image decodes in
 * well under a millisecond), and on small images with hard edges (the demo's shapes) the DCT
 * reduction's filter differs most from lanczos3 (~38 dB from sharp's thumbnail at an exact 2x or
 * 4x, against ~42 dB on the bench's photos).
 */
export const MIN_SCALED_DECODE_PIXELS = 256 * 256;

export interface ThumbnailPlan {
  /** The thumbnail's size: what sharp's own path gives. */
  width: number;
  height: number;
  /** The DCT reduction to decode at. */
  scaleDenominator: ScaleDenominator;
}

/**
 * How the fast path thumbnails a width x height JPEG to `edge`: the size sharp's
 * `resize({ width: edge, height: edge, fit: 'inside', withoutEnlargement: true })` gives it
 * (sharp's ResolveShrink and libvips' rounding, including sharp's own JPEG shrink-on-load from a
 * 3x reduction, after which it recomputes the shrink from the reduced size), and the reduction.
 */
export function thumbnailPlan(width: number, height: number, edge: number): ThumbnailPlan {
  let [w, h] = [width, height];
  let { hshrink, vshrink } = resolveShrink(w, h, edge);
  const shrink = Math.min(hshrink, vshrink);
  let onLoad: ScaleDenominator = shrink >= 8 ? 8 : shrink >= 4 ? 4 : shrink >= 2 ? 2 : 1;
  // sharp halves it where the shrink's integer part equals it ("libjpeg rounding errors").
  if (onLoad > 1 && Math.trunc(shrink) === onLoad) onLoad = (onLoad / 2) as ScaleDenominator;
  if (onLoad > 1) {
    // libvips trims what libjpeg's scaled decode rounds up: floor, not ceil.
    [w, h] = [Math.floor(w / onLoad), Math.floor(h / onLoad)];
    ({ hshrink, vshrink } = resolveShrink(w, h, edge));
  }
  // vips_resize: VIPS_ROUND_UINT(size * scale) with scale = 1 / shrink.
  const size = { width: Math.floor(w * (1 / hshrink) + 0.5), height: Math.floor(h * (1 / vshrink) + 0.5) };
  const scaleDenominator = width * height >= MIN_SCALED_DECODE_PIXELS ? largestReduction(width, height, size.width, size.height) : onLoad;
  return { ...size, scaleDenominator };
}

/** The largest DCT reduction whose decoded image is still at least width x height. */
export function largestReduction(imageWidth: number, imageHeight: number, width: number, height: number): ScaleDenominator {
  for (const d of [8, 4, 2] as const) {
    if (scaledSize(imageWidth, d) >= width && scaledSize(imageHeight, d) >= height) return d;
  }
  return 1;
}

/** sharp's ResolveShrink for fit 'inside' (Canvas::MAX) without enlargement. */
function resolveShrink(width: number, height: number, edge: number): { hshrink: number; vshrink: number } {
  const shrink = Math.max(width / edge, height / edge, 1);
  return { hshrink: Math.min(shrink, width), vshrink: Math.min(shrink, height) };
}

interface MarkerScan {
  width: number;
  height: number;
}

/**
 * Walks the JPEG's markers up to the first scan (what libjpeg's header read sees): the frame
 * type, precision, components and size, EXIF orientation and whether an ICC profile is embedded.
 */
export function scanJpegMarkers(bytes: Uint8Array): MarkerScan | { sharp: string } {
  if (bytes.length < 4 || bytes[0] !== 0xff || bytes[1] !== 0xd8) return { sharp: 'not a JPEG' };
  const u16 = (i: number) => (bytes[i]! << 8) | bytes[i + 1]!;
  let frame: MarkerScan | undefined;
  let pos = 2;
  while (pos < bytes.length) {
    if (bytes[pos] !== 0xff) return { sharp: 'malformed marker' };
    while (bytes[pos] === 0xff) pos++; // fill bytes
    const marker = bytes[pos++];
    if (marker === undefined) break;
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) continue; // TEM, RSTn: no length
    if (marker === 0xd9) return { sharp: 'no scan before the end of the image' };
    if (pos + 2 > bytes.length) break;
    const length = u16(pos);
    const start = pos + 2;
    const end = pos + length;
    if (length < 2 || end > bytes.length) return { sharp: 'truncated marker segment' };
    if (marker === 0xda) {
      return frame ?? { sharp: 'scan before a frame header' };
    }
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      // SOF0 baseline, SOF1 extended sequential, SOF2 progressive (Huffman); not lossless,
      // hierarchical or arithmetic-coded frames.
      if (marker > 0xc2) return { sharp: `frame type 0x${marker.toString(16)}` };
      if (frame) return { sharp: 'two frame headers' };
      if (length < 8) return { sharp: 'short frame header' };
      const precision = bytes[start]!;
      if (precision !== 8) return { sharp: `${precision}-bit samples` };
      const components = bytes[start + 5]!;
      if (components !== 1 && components !== 3) return { sharp: `${components} components` };
      frame = { height: u16(start + 1), width: u16(start + 3) };
      if (!frame.width || !frame.height) return { sharp: 'no frame size in the header' };
    } else if (marker === 0xe1 && hasPrefix(bytes, start, end, EXIF)) {
      const orientation = exifOrientation(bytes.subarray(start + EXIF.length, end));
      if (orientation === null) return { sharp: 'unreadable EXIF' };
      if (orientation !== 1) return { sharp: `EXIF orientation ${orientation}` };
    } else if (marker === 0xe2 && hasPrefix(bytes, start, end, ICC)) {
      return { sharp: 'embedded ICC profile' };
    }
    pos = end;
  }
  return { sharp: 'no scan' };
}

const EXIF = [0x45, 0x78, 0x69, 0x66, 0, 0]; // "Exif\0\0"
const ICC = [...'ICC_PROFILE'].map((c) => c.charCodeAt(0)).concat(0);

function hasPrefix(bytes: Uint8Array, start: number, end: number, prefix: number[]): boolean {
  if (end - start < prefix.length) return false;
  return prefix.every((b, i) => bytes[start + i] === b);
}

/** IFD0's Orientation tag (0x0112) of a TIFF-structured EXIF block: 1 when absent, null when unreadable. */
export function exifOrientation(tiff: Uint8Array): number | null {
  if (tiff.length < 8) return null;
  const little = tiff[0] === 0x49 && tiff[1] === 0x49;
  if (!little && !(tiff[0] === 0x4d && tiff[1] === 0x4d)) return null;
  const view = new DataView(tiff.buffer, tiff.byteOffset, tiff.byteLength);
  if (view.getUint16(2, little) !== 42) return null;
  const ifd = view.getUint32(4, little);
  if (ifd + 2 > tiff.length) return null;
  const entries = view.getUint16(ifd, little);
  if (ifd + 2 + entries * 12 > tiff.length) return null;
  for (let i = 0; i < entries; i++) {
    const entry = ifd + 2 + i * 12;
    if (view.getUint16(entry, little) !== 0x0112) continue;
    const type = view.getUint16(entry + 2, little);
    // SHORT, count 1, the value in the entry itself.
    if (type !== 3 || view.getUint32(entry + 4, little) !== 1) return null;
    return view.getUint16(entry + 8, little);
  }
  return 1;
}
