/**
 * Gemma 3: the chat template writes `<start_of_image>` per image; the processor replaces each with
 * "\n\n" + `<start_of_image>` + mm_tokens_per_image copies of `<image_soft_token>` +
 * `<end_of_image>` + "\n\n" (Gemma3Processor.full_image_sequence). Images are resized to a fixed
 * size, so the count does not depend on the image. The template writes bos itself, so prompts are
 * tokenized without special tokens, as TRL's vision collator does (the tokenizer's own bos would
 * double it). Pan-and-scan (extra crops per image, their count from each image's size) is refused:
 * a processor config that turns it on is an error, not a silently different token count.
 */
import { FailureType, nonRetryable } from '../../contracts/errors.js';
import { replaceAll, type FamilySpec, type Json } from './types.js';

function tokenFrom(config: Json, key: string, fallback: string): string {
  const value = config[key];
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object' && typeof (value as Json).content === 'string') return (value as Json).content as string;
  return fallback;
}

export const gemma3: FamilySpec = {
  matches: (processorClass, modelType) => processorClass === 'Gemma3Processor' || modelType === 'gemma3',
  create({ processorConfig, imageProcessorConfig, tokenizerConfig, modelConfig }) {
    if (imageProcessorConfig?.do_pan_and_scan === true || processorConfig.do_pan_and_scan === true) {
      // A setting of the model folder: retrying cannot help.
      throw nonRetryable(
        'Gemma 3 image processor config: do_pan_and_scan: true is not supported (its extra crops per image are not ' +
          'expanded by the Node tokenizer); set it to false or null in preprocessor_config.json',
        FailureType.InvalidConfig,
      );
    }
    const count = Number(processorConfig.image_seq_length ?? modelConfig.mm_tokens_per_image ?? 256);
    if (!Number.isInteger(count) || count <= 0) throw new Error(`Gemma 3 processor config: image_seq_length must be a positive integer, got ${String(count)}`);
    const boi = tokenFrom(tokenizerConfig, 'boi_token', '<start_of_image>');
    const eoi = tokenFrom(tokenizerConfig, 'eoi_token', '<end_of_image>');
    const soft = tokenFrom(tokenizerConfig, 'image_token', '<image_soft_token>');
    const block = `\n\n${boi}${soft.repeat(count)}${eoi}\n\n`;
    return {
      name: 'gemma3',
      // The placeholder in rendered prompts is boi; what the model's features fill is the soft token.
      imageToken: boi,
      imageTokensPerImage: count,
      imageBlockTokens: [soft, boi, eoi],
      chatTurns: 'prompt-prefix',
      addSpecialTokens: false,
      // Images stacked in placeholder order, each filling its own block.
      multiImage: true,
      expandPrompt: (prompt) => replaceAll(prompt, boi, block),
    };
  },
};
