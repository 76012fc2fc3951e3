/**
 * Layout detection from a file's columns and TRL's prompt extraction / multimodal message
 * preparation, ported from trl/data_utils.py (extract_prompt, maybe_extract_prompt,
 * prepare_multimodal_messages). TRL's own outputs on the same rows are compared in
 * test/integration/preferenceFormatParity.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { ColumnMappingSchema } from '../../contracts/config.js';
import { deepEqual, extractPrompt, LayoutError, parseMessages, prepareMultimodal, resolveLayout, type ColumnKind } from '../../contracts/preferenceFormat.js';

const mapping = ColumnMappingSchema.parse({});
const cols = (entries: Array<[string, ColumnKind]>) => new Map(entries);

describe('resolveLayout', () => {
  it("detects RLAIF-V's raw columns, as named by dataset.columns", () => {
    const layout = resolveLayout('auto', cols([['ds_name', 'text'], ['image', 'image_struct'], ['question', 'text'], ['chosen', 'text'], ['rejected', 'text']]), mapping, 'f.parquet');
    expect(layout).toEqual({ format: 'rlaif_v', implicitPrompt: false, columns: { prompt: 'question', chosen: 'chosen', rejected: 'rejected', images: 'image' }, imageList: false });
    const renamed = resolveLayout('auto', cols([['img', 'binary'], ['q', 'text'], ['good', 'text'], ['bad', 'text']]), { image: 'img', question: 'q', chosen: 'good', rejected: 'bad' }, 'f');
    expect(renamed.columns).toEqual({ prompt: 'q', chosen: 'good', rejected: 'bad', images: 'img' });
  });

  it("detects TRL's conversational format (trl-lib/rlaif-v) from the answers' kind", () => {
    const layout = resolveLayout('auto', cols([['chosen', 'messages'], ['rejected', 'messages'], ['images', 'list'], ['prompt', 'messages']]), mapping, 'f');
    expect(layout).toEqual({ format: 'conversational', implicitPrompt: false, columns: { prompt: 'prompt', chosen: 'chosen', rejected: 'rejected', images: 'images' }, imageList: true });
  });

  it("detects TRL's standard format, with images or a single image column", () => {
    expect(resolveLayout('auto', cols([['prompt', 'text'], ['chosen', 'text'], ['rejected', 'text'], ['images', 'list']]), mapping, 'f').format).toBe('standard');
    const single = resolveLayout('standard', cols([['prompt', 'text'], ['chosen', 'text'], ['rejected', 'text'], ['image', 'image_struct']]), mapping, 'f');
    expect(single).toMatchObject({ format: 'standard', imageList: false, columns: { images: 'image' } });
  });

  it('takes an implicit prompt without a prompt column, or with one of the wrong kind (maybe_extract_prompt)', () => {
    const implicit = resolveLayout('auto', cols([['chosen', 'messages'], ['rejected', 'messages'], ['images', 'list']]), mapping, 'f');
    expect(implicit).toMatchObject({ format: 'conversational', implicitPrompt: true, columns: { prompt: null } });
    const textPrompt = resolveLayout('auto', cols([['prompt', 'text'], ['chosen', 'messages'], ['rejected', 'messages'], ['images', 'list']]), mapping, 'f');
    expect(textPrompt).toMatchObject({ implicitPrompt: true, columns: { prompt: null } });
    expect(resolveLayout('auto', cols([['chosen', 'text'], ['rejected', 'text'], ['images', 'list']]), mapping, 'f')).toMatchObject({ format: 'standard', implicitPrompt: true });
  });

  it('names the columns found and the layouts accepted when it cannot tell', () => {
    const attempt = () => resolveLayout('auto', cols([['prompt', 'text'], ['answer', 'text'], ['images', 'list']]), mapping, 'data/x.parquet');
    expect(attempt).toThrow(LayoutError);
    expect(attempt).toThrow(/dataset file "data\/x.parquet" cannot tell the dataset layout from its columns: prompt \(text\), answer \(text\), images \(list\); accepted layouts: rlaif_v .*standard .*conversational/);
    // Answers but no image column.
    expect(() => resolveLayout('auto', cols([['prompt', 'text'], ['chosen', 'text'], ['rejected', 'text']]), mapping, 'f')).toThrow(/accepted layouts/);
  });

  it('refuses a declared layout the columns do not have', () => {
    expect(() => resolveLayout('conversational', cols([['prompt', 'text'], ['chosen', 'text'], ['rejected', 'text'], ['images', 'list']]), mapping, 'f')).toThrow(
      /does not have the columns of dataset.format "conversational"/,
    );
    expect(() => resolveLayout('rlaif_v', cols([['prompt', 'text'], ['chosen', 'text'], ['rejected', 'text'], ['images', 'list']]), mapping, 'f')).toThrow(
      /has no column "image" \(dataset.columns.image\)/,
    );
  });
});

describe('extractPrompt (TRL extract_prompt)', () => {
  it('splits conversations at the first message they differ in', () => {
    const user = { role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'Q' }] };
    const a = { role: 'assistant', content: [{ type: 'text', text: 'A' }] };
    const b = { role: 'assistant', content: [{ type: 'text', text: 'B' }] };
    // Arrow structs decode to fresh objects: equality is by value, as Python's ==.
    const out = extractPrompt([user, a], [structuredClone(user), b], deepEqual);
    expect(out).toEqual({ prompt: [user], chosen: [a], rejected: [b] });
  });

  it('splits strings by character, a space before the split going to the answers', () => {
    expect(extractPrompt('The sky is blue.', 'The sky is green.')).toEqual({ prompt: 'The sky is', chosen: ' blue.', rejected: ' green.' });
    expect(extractPrompt('Q: A', 'Q: B')).toEqual({ prompt: 'Q:', chosen: ' A', rejected: ' B' });
  });

  it("keeps Python's edge cases: one a prefix of the other, and a split at index 0", () => {
    // The loop runs out: the prompt stops one element short of the shorter.
    expect(extractPrompt('abc', 'abcd')).toEqual({ prompt: 'ab', chosen: 'c', rejected: 'cd' });
    // chosen[-1] is the last character: a trailing space moves the split to -1.
    expect(extractPrompt('x ', 'y ')).toEqual({ prompt: 'x', chosen: ' ', rejected: ' ' });
    expect(() => extractPrompt('', 'a')).toThrow(LayoutError);
  });
});

describe('prepareMultimodal (TRL prepare_multimodal_messages)', () => {
  it('puts the images before the first user text when contents are strings', () => {
    const messages = [
      { role: 'system', content: 'S' },
      { role: 'user', content: 'Q1' },
      { role: 'assistant', content: 'A1' },
      { role: 'user', content: 'Q2' },
    ];
    const out = prepareMultimodal(messages, 2);
    expect(out.imageParts).toBe(2);
    expect(out.messages).toEqual([
      { role: 'system', content: [{ type: 'text', text: 'S' }] },
      { role: 'user', content: [{ type: 'image' }, { type: 'image' }, { type: 'text', text: 'Q1' }] },
      { role: 'assistant', content: [{ type: 'text', text: 'A1' }] },
      { role: 'user', content: [{ type: 'text', text: 'Q2' }] },
    ]);
  });

  it("counts existing image parts (Arrow's `text: null` on them dropped)", () => {
    const out = prepareMultimodal([{ role: 'user', content: [{ type: 'image', text: null }, { type: 'text', text: 'Q' }, { type: 'image', text: null }] }], 1);
    expect(out.imageParts).toBe(2);
    expect(out.messages[0]!.content).toEqual([{ type: 'image' }, { type: 'text', text: 'Q' }, { type: 'image' }]);
  });
});

describe('parseMessages', () => {
  it('accepts string and part contents and names what is wrong', () => {
    expect(parseMessages([{ role: 'user', content: 'hi' }])).toEqual([{ role: 'user', content: 'hi' }]);
    expect(parseMessages('hi')).toEqual({ problem: 'not a list of messages' });
    expect(parseMessages([{ role: 'robot', content: 'x' }])).toEqual({ problem: 'message 0 has role "robot" (expected system, user or assistant)' });
    expect(parseMessages([{ role: 'user', content: [{ type: 'video' }] }])).toMatchObject({ problem: expect.stringContaining('neither {type: "image"}') });
  });
});

describe('resolveLayout with a renamed RLAIF-V column missing', () => {
  it('names the mapped column instead of guessing a TRL layout', () => {
    const columns = cols([['image', 'image_struct'], ['question', 'text'], ['chosen', 'text'], ['rejected', 'text']]);
    expect(() => resolveLayout('auto', columns, { ...mapping, rejected: 'worse' }, 'train.jsonl')).toThrow(
      'dataset file "train.jsonl" has no column "worse" (dataset.columns.rejected); its columns are: image, question, chosen, rejected',
    );
  });
});
