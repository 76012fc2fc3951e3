/**
 * The Node tokenizer must give the token ids transformers' own processor gives: chat template
 * rendering, image-token expansion, special tokens. The reference comes from Python itself.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, inject, it } from 'vitest';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import { generateRows } from '../../datagen/demoShapes.js';
import { trainerPython } from '../../io/deps.js';

const exec = promisify(execFile);

async function pythonReference(modelDir: string, samples: Array<{ question: string; chosen: string; rejected: string }>) {
  const child = exec(trainerPython(), ['test/fixtures/processor_reference.py'], { maxBuffer: 64 << 20 });
  child.child.stdin!.end(JSON.stringify({ model_dir: modelDir, samples }));
  return JSON.parse((await child).stdout).samples as Array<Record<string, string | number[]>>;
}

describe('tokenizer parity with the Python processor', () => {
  it('renders and tokenizes exactly like transformers', async () => {
    const modelDir = inject('modelDir');
    const demo = (await generateRows('parity', 12, 5)).map(({ question, chosen, rejected }) => ({ question, chosen, rejected }));
    const tricky = [
      { question: 'Unicode: émoji 🦄, CJK 漢字, tabs\tand\nnewlines?', chosen: '  leading and trailing  ', rejected: 'x' },
      { question: 'Numbers 12345 and punctuation!?;:', chosen: 'Yes.', rejected: 'No.' },
    ];
    const samples = [...demo, ...tricky];
    const reference = await pythonReference(modelDir, samples);
    const chat = await ChatTokenizer.load(modelDir);
    samples.forEach((s, i) => {
      const ref = reference[i]!;
      const prompt = chat.render([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: s.question }] }]);
      const chosen = chat.render([{ role: 'assistant', content: [{ type: 'text', text: s.chosen }] }]);
      const rejected = chat.render([{ role: 'assistant', content: [{ type: 'text', text: s.rejected }] }]);
      expect(prompt).toBe(ref.prompt_text);
      expect(chosen).toBe(ref.chosen_text);
      expect(chat.encodePrompt(prompt)).toEqual(ref.prompt_input_ids);
      expect(chat.encodeCompletion(chosen)).toEqual(ref.chosen_input_ids);
      expect(chat.encodeCompletion(rejected)).toEqual(ref.rejected_input_ids);
    });
  });
});
