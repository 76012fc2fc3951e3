/**
 * Which families take several images per prompt: the Qwen family, LLaVA, LLaVA-NeXT and Gemma 3
 * (the trainer lays their images out in placeholder order); Idefics2 and PaliGemma take one, and a
 * two-image row for them is dropped by reason, naming the family, before any image is decoded.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import { formatRow } from '../../vlm/formatRows.js';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'processors');
const options = { edge: 64, maxOutputPixels: null, maxPixels: 10_000_000, jpegQuality: 90 };

describe('several images per prompt', () => {
  for (const [fixture, several] of [
    ['qwen2.5-vl', true],
    ['qwen3-vl', true],
    ['llava-1.5', true],
    ['llava-next', true],
    ['gemma3', true],
    ['idefics2', false],
    ['paligemma', false],
  ] as const) {
    it(`${fixture}: ${several ? 'taken' : 'dropped as multi_image_unsupported'}`, async () => {
      const chat = await ChatTokenizer.load(join(FIXTURES, fixture));
      expect(Boolean(chat.family?.multiImage)).toBe(several);
      if (several) return;
      const user = { role: 'user', content: [{ type: 'image' }, { type: 'image' }, { type: 'text', text: 'Same shape?' }] };
      const row = { sampleId: 's-0', prompt: [user], chosen: [{ role: 'assistant', content: 'Yes.' }], rejected: [{ role: 'assistant', content: 'No.' }], images: [new Uint8Array([1]), new Uint8Array([2])] };
      const layout = { format: 'conversational', implicitPrompt: false, columns: { prompt: 'prompt', chosen: 'chosen', rejected: 'rejected', images: 'images' }, imageList: true } as const;
      expect(await formatRow(row, layout, chat, options)).toMatchObject({ reason: 'multi_image_unsupported', detail: expect.stringContaining(`${chat.family!.name} model family takes one image`) });
    });
  }
});
