/**
 * The default image edge is the seed's rule, half the processor's longest edge, for every family
 * (format and evaluate share it: evaluate once computed max(shortest edge, crop)/2 instead, 189
 * px for Idefics2 where format used 490).
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../io/deps.js';
import { defaultImageEdge, defaultMaxPixels } from '../../vlm/imageSize.js';
import { pixelBoundedEdge } from '../../vlm/formatRows.js';

const fixture = (name: string) => join(REPO_ROOT, 'test/fixtures/processors', name);

describe('defaultImageEdge', () => {
  it.each([
    ['idefics2', 490], // size.longest_edge 980
    ['llava-1.5', 168], // size.shortest_edge 336
    ['paligemma', 112], // size 224 x 224
    ['llava-next', 504], // anyres: the largest pinpoint's edge, 1008 (1008 x 336)
  ])('%s: half the longest edge the processor declares', async (name, edge) => {
    expect(await defaultImageEdge(fixture(name))).toBe(edge);
  });
});

describe('Qwen2-VL-style processors: a pixel bound instead of an edge', () => {
  it.each([
    ['qwen2.5-vl', 12845056], // size.longest_edge (Qwen2.5-VL-7B-Instruct's max_pixels)
    ['qwen2-vl-256', 200704], // legacy max_pixels, which transformers reads over size
  ])('%s: thumbnails hold at most the processor\'s max_pixels', async (name, pixels) => {
    expect(await defaultMaxPixels(fixture(name))).toBe(pixels);
    expect(await defaultImageEdge(fixture(name))).toBe(8192);
  });

  it('other families have no pixel bound', async () => {
    expect(await defaultMaxPixels(fixture('llava-1.5'))).toBeNull();
  });

  it.each([
    [4000, 3000, 200704],
    [3000, 4000, 200704],
    [5000, 4000, 12845056],
    [20, 1, 10],
    [1000, 7, 3000],
    [640, 480, 307200],
  ])('pixelBoundedEdge(%i, %i, %i) is the largest edge within the bound', (width, height, max) => {
    const edge = pixelBoundedEdge(width, height, max);
    const long = Math.max(width, height);
    const short = Math.min(width, height);
    const pixels = (e: number) => e * Math.max(1, Math.round((short * e) / long));
    expect(pixels(edge)).toBeLessThanOrEqual(max);
    if (edge < long) expect(pixels(edge + 1)).toBeGreaterThan(max);
  });
});

describe('thumbnail with a pixel bound', () => {
  it('shrinks the image (aspect kept) to at most maxOutputPixels', async () => {
    const { default: sharp } = await import('sharp');
    const { thumbnail } = await import('../../vlm/formatRows.js');
    const png = await sharp({ create: { width: 400, height: 300, channels: 3, background: '#336699' } }).png().toBuffer();
    const out = await thumbnail(png, { edge: 8192, maxOutputPixels: 10_000, maxPixels: 50_000_000, jpegQuality: 90 });
    const { width, height } = await sharp(out).metadata();
    expect(width! * height!).toBeLessThanOrEqual(10_000);
    expect(width! * height!).toBeGreaterThan(9_000);
    expect(Math.abs(width! / height! - 4 / 3)).toBeLessThan(0.02);
  });
});
