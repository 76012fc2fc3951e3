/**
 * LLaVA-NeXT (LLaVA-1.6, "anyres"): the image is fitted into the best of the processor's grid
 * pinpoints (the resolution that keeps the most of the image's pixels and wastes the fewest),
 * cut into crop_size tiles, and encoded with one extra tile of the whole image. Its `<image>`
 * becomes the base tile's patch features, plus the grid's patch features with the letterbox
 * padding removed, plus one newline feature per remaining row (LlavaNextProcessor's
 * `_get_number_of_features`), minus the CLS feature under vision_feature_select_strategy
 * "default". The count depends on the image's size, so expansion needs each image's size.
 */
import { expandPerImage, type FamilySpec, type ImageSize, type Json } from './types.js';

export interface LlavaNextSettings {
  /** (height, width) pairs the image may be fitted into. */
  pinpoints: Array<[number, number]>;
  tileHeight: number;
  tileWidth: number;
  patchSize: number;
  additionalTokens: number;
  dropCls: boolean;
}

export function llavaNextSettings(modelConfig: Json, processorConfig: Json, imageProcessorConfig: Json): LlavaNextSettings {
  const pinpoints = (imageProcessorConfig.image_grid_pinpoints ?? modelConfig.image_grid_pinpoints) as Array<[number, number]> | undefined;
  const crop = (imageProcessorConfig.crop_size ?? imageProcessorConfig.size ?? {}) as Record<string, number>;
  const settings = {
    pinpoints: pinpoints ?? [],
    tileHeight: Number(crop.height ?? crop.shortest_edge),
    tileWidth: Number(crop.width ?? crop.shortest_edge),
    patchSize: Number(processorConfig.patch_size ?? (modelConfig.vision_config as Json | undefined)?.patch_size),
    additionalTokens: Number(processorConfig.num_additional_image_tokens ?? 0),
    dropCls: String(processorConfig.vision_feature_select_strategy ?? modelConfig.vision_feature_select_strategy ?? 'default') === 'default',
  };
  if (!settings.pinpoints.length || !settings.tileHeight || !settings.tileWidth || !settings.patchSize) {
    throw new Error('LLaVA-NeXT processor config lacks image_grid_pinpoints, crop_size or patch_size');
  }
  return settings;
}

/** transformers' select_best_resolution: the pinpoint (height, width) that fits the image best. */
export function selectBestResolution(height: number, width: number, pinpoints: Array<[number, number]>): [number, number] {
  let best: [number, number] = pinpoints[0]!;
  let maxEffective = 0;
  let minWasted = Infinity;
  for (const [h, w] of pinpoints) {
    const scale = Math.min(w / width, h / height);
    const effective = Math.min(Math.floor(width * scale) * Math.floor(height * scale), width * height);
    const wasted = w * h - effective;
    if (effective > maxEffective || (effective === maxEffective && wasted < minWasted)) {
      maxEffective = effective;
      minWasted = wasted;
      best = [h, w];
    }
  }
  return best;
}

/** Python's int(round(x, 7)) for x >= 0: float noise below 1e-7 removed, then truncated. */
const truncateAfterRounding = (x: number) => Math.floor(Number(x.toFixed(7)));

/** Copies of `<image>` for an image of this size. */
export function llavaNextImageTokens(size: ImageSize, s: LlavaNextSettings): number {
  const [bestHeight, bestWidth] = selectBestResolution(size.height, size.width, s.pinpoints);
  const patchesHigh = Math.floor(s.tileHeight / s.patchSize);
  const patchesWide = Math.floor(s.tileWidth / s.patchSize);
  let rows = patchesHigh * Math.floor(bestHeight / s.tileHeight);
  let columns = patchesWide * Math.floor(bestWidth / s.tileWidth);
  // The letterbox the processor pads the image with, in patch features, taken off again.
  if (size.width / size.height > columns / rows) {
    rows -= 2 * Math.floor((rows - truncateAfterRounding(size.height * (columns / size.width))) / 2);
  } else {
    columns -= 2 * Math.floor((columns - truncateAfterRounding(size.width * (rows / size.height))) / 2);
  }
  const base = patchesHigh * patchesWide + s.additionalTokens;
  return rows * columns + rows + base - (s.dropCls ? 1 : 0);
}

export const llavaNext: FamilySpec = {
  matches: (processorClass, modelType) => processorClass === 'LlavaNextProcessor' || modelType === 'llava_next',
  create({ modelConfig, processorConfig, imageProcessorConfig }) {
    const settings = llavaNextSettings(modelConfig, processorConfig, imageProcessorConfig ?? {});
    const imageToken = String(processorConfig.image_token ?? '<image>');
    const tokensFor = (size: ImageSize) => llavaNextImageTokens(size, settings);
    return {
      name: 'llava_next',
      imageToken,
      imageTokensPerImage: null,
      imageTokensFor: tokensFor,
      imageBlockTokens: [imageToken],
      chatTurns: 'prompt-prefix',
      // Images stacked in placeholder order (tiles padded, sizes kept), each expanded for its size.
      multiImage: true,
      expandPrompt: (prompt, images) => expandPerImage('LLaVA-NeXT', prompt, imageToken, images, tokensFor),
    };
  },
};
