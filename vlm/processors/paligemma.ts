/**
 * PaliGemma: no chat template. The prompt convention is `<image>` per image, then the prefix
 * text; the processor puts bos after the last `<image>` and "\n" after the prefix, and expands
 * each `<image>` to image_seq_length copies (PaliGemmaProcessor). The tokenizer itself adds no
 * bos (the processor turns add_bos_token off).
 */
import { replaceAll, type FamilySpec } from './types.js';

export const paligemma: FamilySpec = {
  matches: (processorClass, modelType) => processorClass === 'PaliGemmaProcessor' || modelType === 'paligemma',
  create({ processorConfig, imageProcessorConfig, specialTokens, modelConfig }) {
    const imageToken = '<image>';
    const seqLen = Number(imageProcessorConfig?.image_seq_length ?? processorConfig.image_seq_length ?? (modelConfig.text_config as { num_image_tokens?: number } | undefined)?.num_image_tokens);
    if (!seqLen) throw new Error('PaliGemma image processor config lacks image_seq_length');
    const bos = specialTokens.bos_token ?? '<bos>';
    return {
      name: 'paligemma',
      imageToken,
      imageTokensPerImage: seqLen,
      imageBlockTokens: [imageToken],
      renderUserWithoutTemplate: (images, text) => imageToken.repeat(images) + text,
      expandPrompt(prompt) {
        const last = prompt.lastIndexOf(imageToken);
        const withBos = last < 0 ? `${imageToken}${bos}${prompt}\n` : `${prompt.slice(0, last + imageToken.length)}${bos}${prompt.slice(last + imageToken.length)}\n`;
        return replaceAll(withBos, imageToken, imageToken.repeat(seqLen));
      },
    };
  },
};
