/**
 * LLaVA (llava-1.5 and the demo model): each `<image>` becomes as many copies as the vision
 * tower has patch features: (height // patch) * (width // patch) + num_additional_image_tokens,
 * minus one when the CLS feature is dropped (vision_feature_select_strategy "default").
 */
import { replaceAll, type FamilySpec, type Json } from './types.js';

export const llava: FamilySpec = {
  matches: (processorClass, modelType) => processorClass === 'LlavaProcessor' || modelType === 'llava',
  create({ modelConfig, processorConfig, imageProcessorConfig }) {
    const image = imageProcessorConfig ?? {};
    const patch = Number(processorConfig.patch_size ?? (modelConfig.vision_config as Json | undefined)?.patch_size);
    const crop = (image.crop_size ?? image.size ?? {}) as Json;
    const height = Number(crop.height ?? crop.shortest_edge);
    const width = Number(crop.width ?? crop.shortest_edge);
    const additional = Number(processorConfig.num_additional_image_tokens ?? 0);
    const strategy = String(processorConfig.vision_feature_select_strategy ?? modelConfig.vision_feature_select_strategy ?? 'default');
    if (!patch || !height || !width) throw new Error('LLaVA processor config lacks patch_size or crop_size');
    const count = Math.floor(height / patch) * Math.floor(width / patch) + additional - (strategy === 'default' ? 1 : 0);
    const imageToken = String(processorConfig.image_token ?? '<image>');
    return {
      name: 'llava',
      imageToken,
      imageTokensPerImage: count,
      imageBlockTokens: [imageToken],
      // Images stacked in placeholder order, each filling its own block.
      multiImage: true,
      expandPrompt: (prompt) => replaceAll(prompt, imageToken, imageToken.repeat(count)),
    };
  },
};
