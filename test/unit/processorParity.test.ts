/**
 * Processor parity for real model families: idefics2 (with and without image splitting),
 * llava-1.5 and paligemma. The processors in test/fixtures/processors/ are transformers' real
 * classes with small generated tokenizers, and the reference ids in test/fixtures/parity/ come
 * from those processors themselves (test/fixtures/processor_parity.py builds both). The Node side
 * must render and tokenize every sample to exactly the same ids.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import { REPO_ROOT } from '../../io/deps.js';

interface Fixture {
  processor: string;
  samples: Array<{ question: string; chosen: string; rejected: string }>;
  reference: Array<{ prompt_text: string; chosen_text: string; rejected_text: string; prompt_input_ids: number[]; chosen_input_ids: number[]; rejected_input_ids: number[] }>;
}

const FIXTURES = join(REPO_ROOT, 'test/fixtures');
const IMAGE_TOKENS = { idefics2: 64, 'idefics2-split': 320, 'llava-1.5': 576, paligemma: 256 } as const;

describe.each(Object.entries(IMAGE_TOKENS))('%s processor parity', (name, imageTokens) => {
  it('renders, expands image tokens and tokenizes exactly like transformers', async () => {
    const fixture = JSON.parse(await readFile(join(FIXTURES, 'parity', `${name}.json`), 'utf8')) as Fixture;
    const chat = await ChatTokenizer.load(join(FIXTURES, 'processors', name));
    expect(chat.imageTokenCount).toBe(imageTokens);
    expect(fixture.samples.length).toBeGreaterThanOrEqual(8);
    fixture.samples.forEach((s, i) => {
      const ref = fixture.reference[i]!;
      const prompt = chat.render([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: s.question }] }]);
      const chosen = chat.render([{ role: 'assistant', content: [{ type: 'text', text: s.chosen }] }]);
      const rejected = chat.render([{ role: 'assistant', content: [{ type: 'text', text: s.rejected }] }]);
      expect({ i, prompt }).toEqual({ i, prompt: ref.prompt_text });
      expect({ i, chosen }).toEqual({ i, chosen: ref.chosen_text });
      expect({ i, rejected }).toEqual({ i, rejected: ref.rejected_text });
      expect({ i, ids: chat.encodePrompt(prompt) }).toEqual({ i, ids: ref.prompt_input_ids });
      expect({ i, ids: chat.encodeCompletion(chosen) }).toEqual({ i, ids: ref.chosen_input_ids });
      expect({ i, ids: chat.encodeCompletion(rejected) }).toEqual({ i, ids: ref.rejected_input_ids });
      // Every image token of the block is known, so truncation can protect it.
      const imageIds = ref.prompt_input_ids.filter((t) => chat.imageRelatedTokenIds.has(t));
      expect(imageIds.length).toBeGreaterThanOrEqual(imageTokens);
    });
  });
});
