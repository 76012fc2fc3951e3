/**
 * Processor parity for LLaVA-NeXT (anyres), whose image-token count depends on each image's size:
 * test/fixtures/processors/llava-next is transformers' LlavaNextProcessor at
 * llava-v1.6-mistral-7b-hf's settings (336 px tiles, five grid pinpoints, CLS dropped) with a
 * small Llama-style tokenizer and the model's Mistral chat template; the references in
 * test/fixtures/parity/llava-next.json come from it on 60 images from 1x1 and 1x20 strips to
 * 5000x4000 (test/fixtures/processor_parity.py). Node must produce the same token count and ids.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../io/deps.js';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import { selectBestResolution } from '../../vlm/processors/llavaNext.js';

interface Reference {
  width: number;
  height: number;
  prompt_text: string;
  chosen_text: string;
  rejected_text: string;
  chosen_input_ids: number[];
  rejected_input_ids: number[];
  image_sizes: [number, number];
  image_tokens: number;
  prompt_input_ids: number[];
}

const FIXTURES = join(REPO_ROOT, 'test/fixtures');

describe('llava-next processor parity', () => {
  it('expands every image to its anyres token count and tokenizes exactly like transformers', async () => {
    const fixture = JSON.parse(await readFile(join(FIXTURES, 'parity', 'llava-next.json'), 'utf8')) as {
      processor: string;
      samples: Array<{ question: string; chosen: string; rejected: string }>;
      reference: Reference[];
    };
    expect(fixture.processor).toBe('LlavaNextProcessor');
    const chat = await ChatTokenizer.load(join(FIXTURES, 'processors', 'llava-next'));
    expect(chat.needsImageSizes).toBe(true);
    expect(fixture.reference.length).toBeGreaterThanOrEqual(50);
    // Different sizes make different counts: the test would catch a fixed count.
    expect(new Set(fixture.reference.map((r) => r.image_tokens)).size).toBeGreaterThan(10);
    fixture.reference.forEach((ref, i) => {
      const s = fixture.samples[i % fixture.samples.length]!;
      const size = { width: ref.width, height: ref.height };
      expect({ i, size: ref.image_sizes }).toEqual({ i, size: [ref.height, ref.width] });
      expect({ i, prompt: chat.promptText(s.question) }).toEqual({ i, prompt: ref.prompt_text });
      expect({ i, chosen: chat.completionText(s.question, s.chosen) }).toEqual({ i, chosen: ref.chosen_text });
      expect({ i, rejected: chat.completionText(s.question, s.rejected) }).toEqual({ i, rejected: ref.rejected_text });
      expect({ i, ids: chat.encodeCompletion(ref.chosen_text) }).toEqual({ i, ids: ref.chosen_input_ids });
      expect({ i, size, tokens: chat.imageTokensFor(size) }).toEqual({ i, size, tokens: ref.image_tokens });
      expect({ i, size, ids: chat.encodePrompt(ref.prompt_text, [size]) }).toEqual({ i, size, ids: ref.prompt_input_ids });
    });
  });

  it('picks the pinpoint that keeps the most pixels, then the one that wastes the fewest', () => {
    const pinpoints: Array<[number, number]> = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];
    expect(selectBestResolution(480, 640, pinpoints)).toEqual([672, 672]);
    expect(selectBestResolution(100, 900, pinpoints)).toEqual([336, 1008]);
    // Small enough to fit everywhere unscaled: the smallest canvas wins on waste.
    expect(selectBestResolution(10, 10, pinpoints)).toEqual([336, 672]);
  });
});
