/**
 * Idefics2: each `<image>` becomes `<fake_token_around_image>` + image_seq_len x `<image>` +
 * `<fake_token_around_image>`, five times over when the image processor splits images (four
 * crops and the whole); adjacent boundary tokens merge into one, and a boundary token directly
 * followed by text gets a space after it (Idefics2Processor.__call__).
 */
import { replaceAll, type FamilySpec } from './types.js';

export const idefics2: FamilySpec = {
  matches: (processorClass, modelType) => processorClass === 'Idefics2Processor' || modelType === 'idefics2',
  create({ processorConfig, imageProcessorConfig }) {
    const imageToken = String(processorConfig.image_token ?? '<image>');
    const fake = String(processorConfig.fake_image_token ?? '<fake_token_around_image>');
    const seqLen = Number(processorConfig.image_seq_len ?? 64);
    const copies = imageProcessorConfig?.do_image_splitting ? 5 : 1;
    const block = `${fake}${imageToken.repeat(seqLen)}${fake}`.repeat(copies);
    const closingFake = new RegExp(`${escapeRegExp(fake)}(?=[^\\s<])`, 'gu');
    return {
      name: 'idefics2',
      imageToken,
      imageTokensPerImage: seqLen * copies,
      imageBlockTokens: [imageToken, fake],
      expandPrompt(prompt) {
        const expanded = replaceAll(replaceAll(prompt, imageToken, block), `${fake}${fake}`, fake);
        return expanded.replace(closingFake, `${fake} `);
      },
    };
  },
};

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
