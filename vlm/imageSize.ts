/**
 * How large the format stage makes images when `format.image_longest_edge` is not set: half the
 * processor's longest edge, the seed recipe's rule. The evaluate stage sizes the yes/no suite's
 * images by the same edge as the run's format stage, so both see what training saw.
 */
import { FailureType, nonRetryable } from '../contracts/errors.js';
import { loadProcessorConfigs } from './chatTokenizer.js';

/** Half the processor's longest edge, as in the seed. */
export async function defaultImageEdge(modelDir: string): Promise<number> {
  const { imageProcessorConfig } = await loadProcessorConfigs(modelDir);
  const size = (imageProcessorConfig?.size ?? {}) as Record<string, number>;
  const longest = size.longest_edge ?? Math.max(size.height ?? 0, size.width ?? 0, size.shortest_edge ?? 0);
  if (!longest) throw nonRetryable('format.image_longest_edge is required: the processor declares no size', FailureType.InvalidConfig);
  return Math.max(8, Math.floor(longest / 2));
}
