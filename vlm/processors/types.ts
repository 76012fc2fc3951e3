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
  /**
   * Copies of the image token per image in the expanded prompt (what the model's features fill);
   * null where the count depends on the image's size (Qwen2-VL).
   */
  imageTokensPerImage: number | null;
  /** Copies of the image token for an image of this size (families with a fixed count ignore it). */
  imageTokensFor?: (size: ImageSize) => number;
  /** Every token string of an image block (image token, boundary tokens): truncation may not cut them. */
  imageBlockTokens: string[];
  /**
   * The prompt text exactly as the processor hands it to the tokenizer. `images` (one per
   * placeholder, in order) is required by families whose count depends on the size.
   */
  expandPrompt(prompt: string, images?: ImageSize[]): string;
  /**
   * How prompt and answer texts are cut from the chat template. 'separate' (default): the user
   * turn and the assistant turn are rendered on their own, as the seed recipe does. 'prompt-prefix'
   * (TRL's maybe_apply_chat_template): the prompt is the user turn with the generation prompt, the
   * answer is what rendering user + assistant adds after it -- for templates that open every
   * conversation with a default system turn, which a lone assistant turn would repeat.
   */
  chatTurns?: 'separate' | 'prompt-prefix';
  /**
   * Whether prompt ids get the tokenizer's special tokens (default true). False where the chat
   * template writes bos itself (Gemma 3), as TRL's vision collator tokenizes such prompts.
   */
  addSpecialTokens?: boolean;
  /**
   * Whether a prompt may hold several images (each expanded on its own, the trainer collating
   * them in order). Families without it take one image per prompt: a multi-image row is dropped.
   */
  multiImage?: boolean;
  /** Families without a chat template render user turns by their prompt convention. */
  renderUserWithoutTemplate?: (images: number, text: string) => string;
}

/** An image's size in pixels, after the format stage (what the trainer's processor receives). */
export interface ImageSize {
  width: number;
  height: number;
}

export interface FamilySpec {
  matches(processorClass: string, modelType: string): boolean;
  create(configs: ProcessorConfigs): ProcessorFamily;
}

export function replaceAll(text: string, search: string, replacement: string): string {
  return text.split(search).join(replacement);
}

/**
 * Expands each placeholder to its own image's token count, for families whose count depends on
 * the image's size; `images` holds one size per placeholder, in order.
 */
export function expandPerImage(family: string, prompt: string, imageToken: string, images: ImageSize[] | undefined, tokensFor: (size: ImageSize) => number): string {
  const parts = prompt.split(imageToken);
  if (!images || images.length !== parts.length - 1) {
    throw new Error(`${family} prompt has ${parts.length - 1} ${imageToken} placeholders but ${images?.length ?? 0} image sizes were given`);
  }
  return parts.reduce((text, part, i) => text + imageToken.repeat(tokensFor(images[i - 1]!)) + part);
}
