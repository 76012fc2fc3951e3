/**
 * The thumbnails' JPEG fast path (libjpeg-turbo's DCT-scaled decode, then sharp's resize and
 * encode) against sharp's own path, on real images: bench-like photos and the demo generator's
 * images come out the same size and within 40 dB PSNR; every bad-input image of the format guards
 * gets the same outcome (kept, or refused with the same message); and only plain 8-bit
 * baseline/progressive JPEGs take the fast path.
 */
import { spawnSync } from 'node:child_process';
import sharp from 'sharp';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { photo } from '../../bench/data/generate.js';
import { generateRows } from '../../datagen/demoShapes.js';
import { sharpThumbnail, thumbnail, type FormatOptions } from '../../vlm/formatRows.js';
import { exifOrientation, fastPathJpeg, largestReduction, thumbnailPlan, withDecodedPixels, type FastPathJpeg } from '../../vlm/jpegDecode.js';
import { images } from '../dataFixtures.js';
import { REPO_ROOT } from '../../io/deps.js';

const options = (edge: number, extra: Partial<FormatOptions> = {}): FormatOptions => ({ edge, maxPixels: 50_000_000, jpegQuality: 95, ...extra });

/** PSNR of two same-size JPEGs over their decoded RGB pixels, in dB. */
async function psnr(a: Uint8Array, b: Uint8Array): Promise<number> {
  const [x, y] = await Promise.all([a, b].map((img) => sharp(img).raw().toBuffer({ resolveWithObject: true })));
  expect([x!.info.width, x!.info.height, x!.info.channels]).toEqual([y!.info.width, y!.info.height, y!.info.channels]);
  let se = 0;
  for (let i = 0; i < x!.data.length; i++) se += (x!.data[i]! - y!.data[i]!) ** 2;
  return se === 0 ? Infinity : 10 * Math.log10((255 * 255 * x!.data.length) / se);
}

/** Either both succeed (same size, >= 40 dB) or both fail with the same message. */
async function expectSameOutcome(bytes: Uint8Array, opts: FormatOptions): Promise<number | string> {
  const settle = (p: Promise<Uint8Array>) => p.then((out) => ({ out }), (err: Error) => ({ error: err.message }));
  // One after the other: libvips' error messages gather whatever else failed meanwhile.
  const fast = await settle(thumbnail(bytes, opts));
  const slow = await settle(sharpThumbnail(bytes, opts));
  if ('error' in slow) {
    expect(fast).toEqual(slow);
    return slow.error;
  }
  expect('out' in fast).toBe(true);
  const db = await psnr((fast as { out: Uint8Array }).out, slow.out);
  expect(db).toBeGreaterThanOrEqual(40);
  return db;
}

let benchPhotos: Uint8Array[];

beforeAll(async () => {
  const noise = await sharp({ create: { width: 1200, height: 1000, channels: 3, background: '#000000', noise: { type: 'gaussian', mean: 0, sigma: 12 } } })
    .raw()
    .toBuffer();
  benchPhotos = await Promise.all([0, 1, 2, 3].map((i) => photo(i, noise)));
});

describe('JPEG fast path output', () => {
  it.each([500, 490, 333, 250, 224, 120, 48, 980])('bench photos (1000x800) at edge %i: same size, within 40 dB of sharp', async (edge) => {
    for (const bytes of benchPhotos) await expectSameOutcome(bytes, options(edge));
  });

  it('bench photos as progressive JPEGs, and under a pixel bound', async () => {
    const progressive = await sharp(benchPhotos[0]!).jpeg({ quality: 90, progressive: true }).toBuffer();
    expect(fastPathJpeg(progressive, 50_000_000)).toEqual({ width: 1000, height: 800, gray: false });
    await expectSameOutcome(progressive, options(490));
    await expectSameOutcome(benchPhotos[1]!, options(8192, { maxOutputPixels: 200_704 }));
  });

  it('demo images (datagen) at the edges the tests and the demo use', async () => {
    const rows = await generateRows('train', 6, 3);
    for (const edge of [24, 32, 47, 48, 64, 490]) for (const r of rows) await expectSameOutcome(r.image.bytes, options(edge));
  });

  it('gives the size sharp gives for any image size and edge', async () => {
    let seed = 7;
    const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let i = 0; i < 60; i++) {
      const [w, h] = [16 + Math.floor(next() * 1500), 16 + Math.floor(next() * 1500)];
      const edge = 8 + Math.floor(next() * 600);
      const bytes = await sharp({ create: { width: w, height: h, channels: 3, background: '#7a5' } }).jpeg().toBuffer();
      const out = await sharp(await sharpThumbnail(bytes, options(edge))).metadata();
      const { width, height } = thumbnailPlan(w, h, edge);
      expect({ w, h, edge, width, height }).toEqual({ w, h, edge, width: out.width, height: out.height });
      const fast = await sharp(await thumbnail(bytes, options(edge))).metadata();
      expect([fast.width, fast.height]).toEqual([out.width, out.height]);
    }
  });

  it('decodes at the largest DCT reduction that still covers the thumbnail', async () => {
    expect(largestReduction(1000, 800, 490, 392)).toBe(2);
    expect(largestReduction(1000, 800, 500, 400)).toBe(2);
    expect(largestReduction(1000, 800, 501, 401)).toBe(1);
    expect(largestReduction(1000, 800, 250, 200)).toBe(4);
    expect(largestReduction(1000, 800, 120, 96)).toBe(8);
    expect(largestReduction(1001, 801, 126, 101)).toBe(8); // ceil(1001 / 8) = 126
    expect(thumbnailPlan(1000, 800, 490)).toEqual({ width: 490, height: 392, scaleDenominator: 2 });
    expect(thumbnailPlan(1000, 800, 1200)).toEqual({ width: 1000, height: 800, scaleDenominator: 1 });
    // Small images take sharp's own shrink-on-load: none below 3x, 2 at 4x (sharp halves 4).
    expect(thumbnailPlan(96, 96, 48)).toEqual({ width: 48, height: 48, scaleDenominator: 1 });
    expect(thumbnailPlan(96, 96, 32)).toEqual({ width: 32, height: 32, scaleDenominator: 2 });
    expect(thumbnailPlan(96, 96, 24)).toEqual({ width: 24, height: 24, scaleDenominator: 2 });
    expect(thumbnailPlan(256, 256, 64).scaleDenominator).toBe(4);
    const jpeg = fastPathJpeg(benchPhotos[0]!, 50_000_000) as FastPathJpeg;
    const sizes = await Promise.all(([1, 2, 4, 8] as const).map((d) => withDecodedPixels(benchPhotos[0]!, jpeg, d, async (p) => [p.width, p.height, p.channels, p.data.length])));
    expect(sizes).toEqual([[1000, 800, 3, 1000 * 800 * 3], [500, 400, 3, 500 * 400 * 3], [250, 200, 3, 250 * 200 * 3], [125, 100, 3, 125 * 100 * 3]]);
  });
});

describe('which images take the fast path', () => {
  it('plain 8-bit JPEGs, baseline or progressive, RGB or grayscale', async () => {
    expect(fastPathJpeg(await images.jpeg(), 50_000_000)).toEqual({ width: 80, height: 60, gray: false });
    const progressive = await sharp(await images.jpeg()).jpeg({ progressive: true }).toBuffer();
    expect(fastPathJpeg(progressive, 50_000_000)).toEqual({ width: 80, height: 60, gray: false });
    // (images.grey is a 3-channel JPEG of grey pixels; this one has a single component.)
    const grey = await sharp(await images.grey()).toColourspace('b-w').jpeg().toBuffer();
    expect(fastPathJpeg(grey, 50_000_000)).toEqual({ width: 80, height: 60, gray: true });
    expect(fastPathJpeg(await images.grey(), 50_000_000)).toEqual({ width: 80, height: 60, gray: false });
    // An EXIF block with orientation 1 changes nothing.
    const upright = await sharp(await images.jpeg()).withExif({ IFD0: { Orientation: '1' } }).toBuffer();
    expect(fastPathJpeg(upright, 50_000_000)).toEqual({ width: 80, height: 60, gray: false });
  });

  it('sharp keeps EXIF-rotated, CMYK, ICC-tagged and over-limit JPEGs, and every other format', async () => {
    expect(fastPathJpeg(await images.exifRotated(), 50_000_000)).toEqual({ sharp: 'EXIF orientation 6' });
    expect(fastPathJpeg(await images.cmyk(), 50_000_000)).toEqual({ sharp: '4 components' });
    const p3 = await sharp(await images.jpeg()).withIccProfile('p3').toBuffer();
    expect(fastPathJpeg(p3, 50_000_000)).toEqual({ sharp: 'embedded ICC profile' });
    expect(fastPathJpeg(await images.jpeg(), 80 * 60 - 1)).toEqual({ sharp: 'over the pixel limit' });
    for (const png of [await images.rgb16(), await images.alpha(), await images.pngBomb(), await images.notAnImage()]) {
      expect(fastPathJpeg(png, 50_000_000)).toEqual({ sharp: 'not a JPEG' });
    }
  });

  it('reads the EXIF orientation from either byte order, and refuses what it cannot read', () => {
    const tiff = (little: boolean, orientation: number) => {
      const b = new DataView(new ArrayBuffer(26));
      b.setUint16(0, little ? 0x4949 : 0x4d4d);
      b.setUint16(2, 42, little);
      b.setUint32(4, 8, little);
      b.setUint16(8, 1, little);
      b.setUint16(10, 0x0112, little);
      b.setUint16(12, 3, little);
      b.setUint32(14, 1, little);
      b.setUint16(18, orientation, little);
      return new Uint8Array(b.buffer);
    };
    expect(exifOrientation(tiff(true, 6))).toBe(6);
    expect(exifOrientation(tiff(false, 3))).toBe(3);
    expect(exifOrientation(tiff(true, 6).subarray(0, 20))).toBeNull();
    expect(exifOrientation(new Uint8Array([1, 2, 3]))).toBeNull();
  });
});

describe('bad and awkward inputs keep their outcome', () => {
  it.each(Object.keys(images) as Array<keyof typeof images>)('%s', async (name) => {
    const outcome = await expectSameOutcome(await images[name](), options(48, { maxPixels: 50_000_000 }));
    if (name === 'truncatedJpeg' || name === 'notAnImage') expect(outcome).toEqual(expect.any(String));
    if (name === 'pngBomb') expect(outcome).toMatch(/pixel limit/i);
  });

  it('a JPEG over the pixel limit is refused by sharp from its header, as before', async () => {
    const bytes = await images.jpeg();
    await expect(thumbnail(bytes, options(48, { maxPixels: 1000 }))).rejects.toThrow(/pixel limit/i);
  });

  it('a corrupt scan in a valid header: the fast path gives way, sharp decides', async () => {
    const bytes = Buffer.from(benchPhotos[2]!);
    bytes.fill(0xff, 5000, 5600); // garbage inside the entropy-coded data
    await expectSameOutcome(bytes, options(490));
  });

  it('grayscale comes out as 3-channel sRGB, as from sharp', async () => {
    const grey = await sharp(benchPhotos[3]!).toColourspace('b-w').jpeg().toBuffer();
    expect(fastPathJpeg(grey, 50_000_000)).toEqual({ width: 1000, height: 800, gray: true });
    await expectSameOutcome(grey, options(490));
    const meta = await sharp(await thumbnail(grey, options(490))).metadata();
    expect([meta.space, meta.channels]).toEqual(['srgb', 3]);
  });
});

describe('without the decoder', () => {
  it('fails with an error naming the fix, not as a bad image', async () => {
    vi.resetModules();
    const previous = process.env.DPO_CACHE_DIR;
    process.env.DPO_CACHE_DIR = '/nonexistent/dpo-cache';
    try {
      const fresh = await import('../../vlm/jpegDecode.js');
      expect(() => fresh.jpegDecoder()).toThrow(fresh.JpegDecoderUnavailableError);
      expect(() => fresh.jpegDecoder()).toThrow(/npm run setup/);
    } finally {
      if (previous === undefined) delete process.env.DPO_CACHE_DIR;
      else process.env.DPO_CACHE_DIR = previous;
      vi.resetModules();
    }
  });

  it('a CPU worker refuses to start, naming the fix, before it connects', () => {
    const worker = spawnSync(process.execPath, ['--import', 'tsx', 'worker/main.ts', '--queues', 'cpu'], {
      cwd: REPO_ROOT,
      env: { ...process.env, DPO_CACHE_DIR: '/nonexistent/dpo-cache', DPO_JPEG_DECODER: '', TEMPORAL_ADDRESS: '127.0.0.1:1' },
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(worker.status).toBe(2);
    expect(worker.stderr).toMatch(/worker: the JPEG decoder addon is not built .*npm run setup.*DPO_JPEG_DECODER=sharp/s);
  });
});
