/**
 * How large the format stage makes images when `format.image_longest_edge` is not set: half the
 * processor's longest edge, the seed recipe's rule (for anyres processors, the longest edge of
 * their largest grid pinpoint). The evaluate stage sizes the yes/no suite's
 * images by the same edge as the run's format stage, so both see what training saw.
 *
 * Qwen2-VL-style processors have no edge: they keep an image's own resolution between min_pixels
 * and max_pixels. For them the thumbnail is bounded by max_pixels (`defaultMaxPixels`) and the edge
 * only by the schema's limit, so the trainer never receives more pixels than its processor keeps
 * and loses none that it would keep.
 */
import { FailureType, nonRetryable } from '../contracts/errors.js';
import { loadProcessorConfigs } from './chatTokenizer.js';
import { qwenVisionSettings } from './processors/qwen2vl.js';
import type { Json } from './processors/types.js';

/** format.image_longest_edge's largest value. */
const MAX_EDGE = 8192;

function isPixelBudgetProcessor(config: Json | null): boolean {
  return /^Qwen2VLImageProcessor(Fast|Pil)?$/.test(String(config?.image_processor_type ?? ''));
}

/** The processor's max_pixels where it has one (Qwen2-VL-style), else null: no pixel bound. */
export async function defaultMaxPixels(modelDir: string): Promise<number | null> {
  const { imageProcessorConfig } = await loadProcessorConfigs(modelDir);
  return isPixelBudgetProcessor(imageProcessorConfig) ? qwenVisionSettings(imageProcessorConfig!).maxPixels : null;
}

/** Half the processor's longest edge, as in the seed. */
export async function defaultImageEdge(modelDir: string): Promise<number> {
  const { imageProcessorConfig } = await loadProcessorConfigs(modelDir);
  if (isPixelBudgetProcessor(imageProcessorConfig)) return MAX_EDGE;
  const size = (imageProcessorConfig?.size ?? {}) as Record<string, number>;
  // Anyres processors (LLaVA-NeXT) fit the image into their largest grid pinpoint, not `size`.
  const pinpoints = (imageProcessorConfig?.image_grid_pinpoints ?? []) as Array<[number, number]>;
  const longest = pinpoints.length
    ? Math.max(...pinpoints.flat())
    : (size.longest_edge ?? Math.max(size.height ?? 0, size.width ?? 0, size.shortest_edge ?? 0));
  if (!longest) throw nonRetryable('format.image_longest_edge is required: the processor declares no size', FailureType.InvalidConfig);
  return Math.max(8, Math.floor(longest / 2));
}
