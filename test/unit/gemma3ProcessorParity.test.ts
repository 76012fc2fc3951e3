/**
 * Processor parity for Gemma 3. The processor in test/fixtures/processors/gemma3 is transformers'
 * real Gemma3Processor at gemma-3-4b-it's settings (896 x 896 SigLIP input, 256 soft tokens, Gemma
 * 3's chat template) with a small Gemma-style tokenizer carrying the family's special tokens; the
 * references in test/fixtures/parity/gemma3.json come from it, run on 60 images from 1x1 and 1x20
 * strips to 5000x4000 (test/fixtures/processor_parity.py), tokenized as TRL's vision collator does.
 * The Node side must render the same texts (a system turn folded into the first user turn), expand
 * the same image blocks and produce the same ids; pan-and-scan, which it does not expand, is refused.
 */
import { cp, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import { REPO_ROOT } from '../../io/deps.js';

interface GemmaReference {
  width: number;
  height: number;
  prompt_text: string;
  system_text: string;
  system_prompt_text: string;
  chosen_text: string;
  rejected_text: string;
  chosen_input_ids: number[];
  rejected_input_ids: number[];
  prompt_input_ids: number[];
  image_tokens: number;
  token_type_ids_ones: number;
  pixel_shape: number[];
}

interface Fixture {
  processor: string;
  samples: Array<{ question: string; chosen: string; rejected: string }>;
  reference: GemmaReference[];
}

const FIXTURES = join(REPO_ROOT, 'test/fixtures');
const FOLDER = join(FIXTURES, 'processors', 'gemma3');

describe('gemma3 processor parity', () => {
  it('renders, expands every image block and tokenizes exactly like transformers, for every image size', async () => {
    const fixture = JSON.parse(await readFile(join(FIXTURES, 'parity', 'gemma3.json'), 'utf8')) as Fixture;
    expect(fixture.processor).toBe('Gemma3Processor');
    expect(fixture.reference.length).toBeGreaterThanOrEqual(50);
    expect(fixture.reference.filter((r) => Math.max(r.width, r.height) / Math.min(r.width, r.height) >= 20).length).toBeGreaterThanOrEqual(4);
    const chat = await ChatTokenizer.load(FOLDER);
    expect(chat.imageToken).toBe('<start_of_image>');
    expect(chat.imageTokenCount).toBe(256);
    expect(chat.needsImageSizes).toBe(false);
    fixture.reference.forEach((ref, i) => {
      const s = fixture.samples[i % fixture.samples.length]!;
      const size = { width: ref.width, height: ref.height };
      expect({ i, prompt: chat.promptText(s.question) }).toEqual({ i, prompt: ref.prompt_text });
      const system = chat.render(
        [
          { role: 'system', content: [{ type: 'text', text: ref.system_text }] },
          { role: 'user', content: [{ type: 'image' }, { type: 'text', text: s.question }] },
        ],
        true,
      );
      expect({ i, system }).toEqual({ i, system: ref.system_prompt_text });
      expect({ i, chosen: chat.completionText(s.question, s.chosen) }).toEqual({ i, chosen: ref.chosen_text });
      expect({ i, rejected: chat.completionText(s.question, s.rejected) }).toEqual({ i, rejected: ref.rejected_text });
      expect({ i, ids: chat.encodeCompletion(ref.chosen_text) }).toEqual({ i, ids: ref.chosen_input_ids });
      expect({ i, ids: chat.encodeCompletion(ref.rejected_text) }).toEqual({ i, ids: ref.rejected_input_ids });
      // The processor resizes every image to 896 x 896: one fixed block, whatever the size.
      expect(ref.pixel_shape).toEqual([1, 3, 896, 896]);
      expect({ i, size, tokens: chat.imageTokensFor(size) }).toEqual({ i, size, tokens: ref.image_tokens });
      const ids = chat.encodePrompt(ref.prompt_text, [size]);
      expect({ i, size, ids }).toEqual({ i, size, ids: ref.prompt_input_ids });
      // Soft tokens plus <start_of_image> and <end_of_image>: all protected from truncation.
      expect(ids.filter((t) => chat.imageRelatedTokenIds.has(t)).length).toBe(ref.image_tokens + 2);
      expect(ref.token_type_ids_ones).toBe(ref.image_tokens);
    });
    // The template writes bos; the tokenizer must not add a second one.
    const bos = fixture.reference[0]!.prompt_input_ids[0]!;
    expect(fixture.reference[0]!.prompt_input_ids[1]).not.toBe(bos);
  });

  it('refuses a processor config with pan-and-scan on, naming the field', async () => {
    const folder = await mkdtemp(join(tmpdir(), 'gemma3-pan-'));
    await cp(FOLDER, folder, { recursive: true });
    const path = join(folder, 'preprocessor_config.json');
    const config = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
    await writeFile(path, JSON.stringify({ ...config, do_pan_and_scan: true }));
    await expect(ChatTokenizer.load(folder)).rejects.toMatchObject({ type: 'InvalidConfig', nonRetryable: true, message: expect.stringMatching(/do_pan_and_scan: true/) });
  });
});
