/**
 * The default image edge is the seed's rule, half the processor's longest edge, for every family
 * (format and evaluate share it: evaluate once computed max(shortest edge, crop)/2 instead, 189
 * px for Idefics2 where format used 490).
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../io/deps.js';
import { defaultImageEdge } from '../../vlm/imageSize.js';

const fixture = (name: string) => join(REPO_ROOT, 'test/fixtures/processors', name);

describe('defaultImageEdge', () => {
  it.each([
    ['idefics2', 490], // size.longest_edge 980
    ['llava-1.5', 168], // size.shortest_edge 336
    ['paligemma', 112], // size 224 x 224
  ])('%s: half the longest edge the processor declares', async (name, edge) => {
    expect(await defaultImageEdge(fixture(name))).toBe(edge);
  });
});
