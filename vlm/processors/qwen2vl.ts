/**
 * Qwen2-VL, Qwen2.5-VL and Qwen3-VL (one processor logic): the image is resized by `smart_resize` to
 * multiples of patch_size x merge_size with its pixel count clamped to [min_pixels, max_pixels],
 * cut into patch_size patches (grid t=1, h, w), and every merge_size x merge_size block of patches
 * becomes one `<|image_pad|>`: grid_h * grid_w / merge_size^2 copies per image, between the
 * `<|vision_start|>` and `<|vision_end|>` the chat template writes. The count depends on the
 * image's size, so expansion needs each image's width and height (Qwen2VLProcessor).
 */
import { roundHalfEven } from '../../contracts/pythonRound.js';
import { expandPerImage, type FamilySpec, type ImageSize, type Json } from './types.js';

export interface QwenVisionSettings {
  patchSize: number;
  mergeSize: number;
  minPixels: number;
  maxPixels: number;
}

/** The settings as Qwen2VLImageProcessor reads them: legacy min_pixels/max_pixels win over size. */
export function qwenVisionSettings(imageProcessorConfig: Json): QwenVisionSettings {
  const size = (imageProcessorConfig.size ?? {}) as Record<string, number>;
  const number = (value: unknown, fallback: number) => (value === undefined || value === null ? fallback : Number(value));
  const settings = {
    patchSize: number(imageProcessorConfig.patch_size, 14),
    mergeSize: number(imageProcessorConfig.merge_size, 2),
    minPixels: number(imageProcessorConfig.min_pixels ?? size.shortest_edge, 56 * 56),
    maxPixels: number(imageProcessorConfig.max_pixels ?? size.longest_edge, 28 * 28 * 1280),
  };
  for (const [name, value] of Object.entries(settings)) {
    if (!Number.isInteger(value) || value <= 0) throw new Error(`Qwen2-VL image processor config: ${name} must be a positive integer, got ${String(value)}`);
  }
  return settings;
}

/** Thrown for an image the processor refuses (transformers raises ValueError). */
export class UnprocessableImageError extends Error {}

/**
 * transformers' smart_resize, operation for operation in float64 (as Python computes it), so the
 * rounding is the same: (height, width) after resizing.
 */
export function smartResize(height: number, width: number, factor: number, minPixels: number, maxPixels: number): { height: number; width: number } {
  if (Math.max(height, width) / Math.min(height, width) > 200) {
    throw new UnprocessableImageError(`absolute aspect ratio must be smaller than 200, got ${Math.max(height, width) / Math.min(height, width)}`);
  }
  let hBar = roundHalfEven(height / factor) * factor;
  let wBar = roundHalfEven(width / factor) * factor;
  if (hBar * wBar > maxPixels) {
    const beta = Math.sqrt((height * width) / maxPixels);
    hBar = Math.max(factor, Math.floor(height / beta / factor) * factor);
    wBar = Math.max(factor, Math.floor(width / beta / factor) * factor);
  } else if (hBar * wBar < minPixels) {
    const beta = Math.sqrt(minPixels / (height * width));
    hBar = Math.ceil((height * beta) / factor) * factor;
    wBar = Math.ceil((width * beta) / factor) * factor;
  }
  return { height: hBar, width: wBar };
}

/** image_grid_thw of one image: [1, height / patch, width / patch]. */
export function qwenImageGrid(size: ImageSize, settings: QwenVisionSettings): [number, number, number] {
  const resized = smartResize(size.height, size.width, settings.patchSize * settings.mergeSize, settings.minPixels, settings.maxPixels);
  return [1, resized.height / settings.patchSize, resized.width / settings.patchSize];
}

/** The processors (and model types) of this logic: Qwen3-VL's differs only in its settings (16 px patches). */
const QWEN_PROCESSORS = new Set(['Qwen2VLProcessor', 'Qwen2_5_VLProcessor', 'Qwen3VLProcessor']);
const QWEN_MODEL_TYPES = new Set(['qwen2_vl', 'qwen2_5_vl', 'qwen3_vl']);

export const qwen2vl: FamilySpec = {
  matches: (processorClass, modelType) => QWEN_PROCESSORS.has(processorClass) || QWEN_MODEL_TYPES.has(modelType),
  create({ imageProcessorConfig, tokenizerConfig }) {
    const settings = qwenVisionSettings(imageProcessorConfig ?? {});
    const imageToken = String(tokenizerConfig.image_token ?? '<|image_pad|>');
    const tokensFor = (size: ImageSize) => {
      const [t, h, w] = qwenImageGrid(size, settings);
      return (t * h * w) / settings.mergeSize ** 2;
    };
    return {
      name: 'qwen2vl',
      imageToken,
      imageTokensPerImage: null,
      imageTokensFor: tokensFor,
      imageBlockTokens: [imageToken, '<|vision_start|>', '<|vision_end|>'],
      chatTurns: 'prompt-prefix',
      // Flat pixel layout: every image's patches concatenated, one grid per image.
      multiImage: true,
      expandPrompt: (prompt, images) => expandPerImage('Qwen2-VL', prompt, imageToken, images, tokensFor),
    };
  },
};


