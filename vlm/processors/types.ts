/**
 * What differs between model families' processors, as the Node tokenizer needs it: the image
 * placeholder, how the processor expands it in the prompt text, and the tokens of an image block.
 */
export type Json = Record<string, unknown>;

/** The model folder's configs (image-processor settings may be nested in processor_config.json). */
export interface ProcessorConfigs {
  modelConfig: Json;
  processorConfig: Json;
  imageProcessorConfig: Json | null;
  tokenizerConfig: Json;
  specialTokens: Record<string, string>;
}

export interface ProcessorFamily {
  /** e.g. "llava", "idefics2", "paligemma" */
  name: string;
  /** The placeholder a rendered prompt holds per image, e.g. `<image>`. */
  imageToken: string;
  /** Copies of the image token per image in the expanded prompt (what the model's features fill). */
  imageTokensPerImage: number;
  /** Every token string of an image block (image token, boundary tokens): truncation may not cut them. */
  imageBlockTokens: string[];
  /** The prompt text exactly as the processor hands it to the tokenizer. */
  expandPrompt(prompt: string): string;
  /** Families without a chat template render user turns by their prompt convention. */
  renderUserWithoutTemplate?: (images: number, text: string) => string;
}

export interface FamilySpec {
  matches(processorClass: string, modelType: string): boolean;
  create(configs: ProcessorConfigs): ProcessorFamily;
}

export function replaceAll(text: string, search: string, replacement: string): string {
  return text.split(search).join(replacement);
}
