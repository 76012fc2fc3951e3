/**
 * Processor parity for Qwen2-VL, Qwen2.5-VL and Qwen3-VL, whose image-token count depends on each
 * image's size. The processors in test/fixtures/processors/qwen* are transformers' real classes
 * (Qwen2_5_VLProcessor with Qwen2.5-VL-7B-Instruct's pixel limits, Qwen2VLProcessor with legacy
 * min_pixels/max_pixels keys, Qwen3VLProcessor with Qwen3-VL-8B-Instruct's 16 px patches and
 * limits, and its chat template) with a small Qwen2-style tokenizer; the references in
 * test/fixtures/parity/ come from those processors run on 60 images from 1x1 and 1x20 strips to
 * 5000x4000 (test/fixtures/processor_parity.py). The Node side must produce the same grid, image
 * token count and ids, and refuse what the processor refuses.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import { qwenImageGrid, qwenVisionSettings, smartResize, UnprocessableImageError } from '../../vlm/processors/qwen2vl.js';
import { loadProcessorConfigs } from '../../vlm/chatTokenizer.js';
import { REPO_ROOT } from '../../io/deps.js';

interface QwenReference {
  width: number;
  height: number;
  prompt_text: string;
  chosen_text: string;
  rejected_text: string;
  chosen_input_ids: number[];
  rejected_input_ids: number[];
  error?: string;
  image_grid_thw?: [number, number, number];
  image_tokens?: number;
  prompt_input_ids?: number[];
}

interface Fixture {
  processor: string;
  samples: Array<{ question: string; chosen: string; rejected: string }>;
  reference: QwenReference[];
}

const FIXTURES = join(REPO_ROOT, 'test/fixtures');

describe.each([
  ['qwen2.5-vl', 'Qwen2_5_VLProcessor'],
  ['qwen2-vl-256', 'Qwen2VLProcessor'],
  ['qwen3-vl', 'Qwen3VLProcessor'],
])('%s processor parity', (name, processorClass) => {
  it('sizes every image, expands its tokens and tokenizes exactly like transformers', async () => {
    const fixture = JSON.parse(await readFile(join(FIXTURES, 'parity', `${name}.json`), 'utf8')) as Fixture;
    expect(fixture.processor).toBe(processorClass);
    const folder = join(FIXTURES, 'processors', name);
    const chat = await ChatTokenizer.load(folder);
    const settings = qwenVisionSettings((await loadProcessorConfigs(folder)).imageProcessorConfig!);
    expect(chat.needsImageSizes).toBe(true);
    expect(fixture.reference.filter((r) => !r.error).length).toBeGreaterThanOrEqual(50);
    const strips = fixture.reference.filter((r) => Math.max(r.width, r.height) / Math.min(r.width, r.height) >= 20 && !r.error);
    expect(strips.length).toBeGreaterThanOrEqual(4);
    fixture.reference.forEach((ref, i) => {
      const s = fixture.samples[i % fixture.samples.length]!;
      const size = { width: ref.width, height: ref.height };
      expect({ i, prompt: chat.promptText(s.question) }).toEqual({ i, prompt: ref.prompt_text });
      expect({ i, chosen: chat.completionText(s.question, s.chosen) }).toEqual({ i, chosen: ref.chosen_text });
      expect({ i, rejected: chat.completionText(s.question, s.rejected) }).toEqual({ i, rejected: ref.rejected_text });
      expect({ i, ids: chat.encodeCompletion(ref.chosen_text) }).toEqual({ i, ids: ref.chosen_input_ids });
      expect({ i, ids: chat.encodeCompletion(ref.rejected_text) }).toEqual({ i, ids: ref.rejected_input_ids });
      if (ref.error) {
        expect(() => chat.encodePrompt(ref.prompt_text, [size])).toThrow(UnprocessableImageError);
        return;
      }
      expect({ i, size, grid: qwenImageGrid(size, settings) }).toEqual({ i, size, grid: ref.image_grid_thw });
      expect({ i, size, tokens: chat.imageTokensFor(size) }).toEqual({ i, size, tokens: ref.image_tokens });
      const ids = chat.encodePrompt(ref.prompt_text, [size]);
      expect({ i, size, ids }).toEqual({ i, size, ids: ref.prompt_input_ids });
      // Every token of the image block is known, so truncation can protect it.
      expect(ids.filter((t) => chat.imageRelatedTokenIds.has(t)).length).toBe(ref.image_tokens! + 2);
    });
  });
});

describe('Qwen2-VL image sizing', () => {
  it('rounds halves to even, as Python round() does', () => {
    // 42 / 28 = 1.5 -> 2, 70 / 28 = 2.5 -> 2 (Math.round would give 3).
    expect(smartResize(70, 70 * 3, 28, 1, 10 ** 9)).toEqual({ height: 56, width: 224 });
    expect(smartResize(42, 42 * 4, 28, 1, 10 ** 9)).toEqual({ height: 56, width: 168 });
  });

  it('needs the image sizes, one per placeholder', async () => {
    const chat = await ChatTokenizer.load(join(FIXTURES, 'processors', 'qwen2.5-vl'));
    const prompt = chat.promptText('What is it?');
    expect(() => chat.encodePrompt(prompt)).toThrow(/image sizes/);
    expect(() => chat.encodePrompt(prompt, [{ width: 10, height: 10 }, { width: 10, height: 10 }])).toThrow(/1 <\|image_pad\|> placeholders but 2/);
  });
});
