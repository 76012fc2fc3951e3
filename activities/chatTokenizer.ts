/**
 * The model's own tokenizer and chat template, run in Node from its folder (tokenizer.json,
 * tokenizer_config.json, chat template, processor configs), doing what the Python processor does:
 * render the chat template, expand each image placeholder to the model's number of image tokens,
 * tokenize. Parity with transformers' processor is tested in test/tokenizerParity.test.ts.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';

type Json = Record<string, unknown>;

export interface ChatMessage {
  role: 'user' | 'assistant' | 'system';
  content: Array<{ type: 'image' } | { type: 'text'; text: string }>;
}

export class ChatTokenizer {
  private constructor(
    private readonly tokenizer: Tokenizer,
    private readonly template: Template,
    private readonly specialTokens: Record<string, string>,
    /** The placeholder the chat template emits for an image, e.g. `<image>`. */
    readonly imageToken: string | null,
    /** How many copies of the placeholder the processor puts in the prompt per image. */
    readonly imageTokenCount: number,
    readonly eosTokenId: number,
  ) {
    const id = imageToken ? tokenizer.token_to_id(imageToken) : undefined;
    this.imageRelatedTokenIds = new Set(id === undefined ? [] : [id]);
  }

  /** Token ids that belong to an image block: truncation must never cut one. */
  readonly imageRelatedTokenIds: ReadonlySet<number>;

  static async load(modelDir: string): Promise<ChatTokenizer> {
    const tokenizerJson = await readJson(join(modelDir, 'tokenizer.json'));
    const tokenizerConfig = await readJson(join(modelDir, 'tokenizer_config.json'));
    const processorConfig = await readJson(join(modelDir, 'processor_config.json')).catch(() => ({}) as Json);
    const imageProcessorConfig = await readJson(join(modelDir, 'preprocessor_config.json')).catch(() => null);
    const modelConfig = await readJson(join(modelDir, 'config.json')).catch(() => ({}) as Json);

    const template = await findChatTemplate(modelDir, tokenizerConfig, processorConfig);
    const tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
    const specialTokens = specialTokenStrings(tokenizerConfig);
    const eos = specialTokens.eos_token;
    const eosTokenId = eos !== undefined ? tokenizer.token_to_id(eos) : undefined;
    if (eosTokenId === undefined) throw new Error(`${modelDir}: tokenizer_config.json names no usable eos_token`);

    let imageToken: string | null = null;
    let imageTokenCount = 0;
    if (imageProcessorConfig) {
      imageToken = (processorConfig.image_token as string) ?? (tokenizerConfig.image_token as string) ?? '<image>';
      imageTokenCount = countImageTokens(modelConfig, processorConfig, imageProcessorConfig);
    }
    return new ChatTokenizer(tokenizer, new Template(template), specialTokens, imageToken, imageTokenCount, eosTokenId);
  }

  /** Renders messages with the chat template, as `processor.apply_chat_template(..., tokenize=False)`. */
  render(messages: ChatMessage[], addGenerationPrompt = false): string {
    return this.template.render({ ...this.specialTokens, messages, add_generation_prompt: addGenerationPrompt });
  }

  /**
   * Prompt ids as the processor computes them: every image placeholder expanded to
   * `imageTokenCount` copies, special tokens added by the tokenizer's post-processor.
   */
  encodePrompt(prompt: string): number[] {
    const text = this.imageToken ? prompt.split(this.imageToken).join(this.imageToken.repeat(this.imageTokenCount)) : prompt;
    return this.tokenizer.encode(text, { add_special_tokens: true }).ids;
  }

  /** Completion ids as TRL's tokenize_row: no special tokens, eos appended. */
  encodeCompletion(completion: string): number[] {
    return [...this.tokenizer.encode(completion, { add_special_tokens: false }).ids, this.eosTokenId];
  }

  countImagePlaceholders(prompt: string): number {
    return this.imageToken ? prompt.split(this.imageToken).length - 1 : 0;
  }
}

/**
 * Image tokens per image, as the model's processor inserts them. Architectures are added here
 * one by one; an unknown processor is a clear error rather than silently wrong token counts.
 */
export function countImageTokens(modelConfig: Json, processorConfig: Json, imageProcessorConfig: Json): number {
  const processorClass = String(processorConfig.processor_class ?? imageProcessorConfig.processor_class ?? '');
  const modelType = String(modelConfig.model_type ?? '');
  if (processorClass === 'LlavaProcessor' || modelType === 'llava') {
    // LlavaProcessor: (height // patch) * (width // patch) + num_additional_image_tokens,
    // minus one when the CLS feature is dropped ("default" strategy).
    const patch = Number(processorConfig.patch_size ?? (modelConfig.vision_config as Json | undefined)?.patch_size);
    const crop = (imageProcessorConfig.crop_size ?? imageProcessorConfig.size) as Json;
    const height = Number(crop.height ?? crop.shortest_edge);
    const width = Number(crop.width ?? crop.shortest_edge);
    const additional = Number(processorConfig.num_additional_image_tokens ?? 0);
    const strategy = String(processorConfig.vision_feature_select_strategy ?? modelConfig.vision_feature_select_strategy ?? 'default');
    if (!patch || !height || !width) throw new Error('LLaVA processor config lacks patch_size or crop_size');
    return Math.floor(height / patch) * Math.floor(width / patch) + additional - (strategy === 'default' ? 1 : 0);
  }
  throw new Error(
    `image-token expansion for processor "${processorClass || modelType}" is not implemented (supported: LlavaProcessor)`,
  );
}

async function findChatTemplate(modelDir: string, tokenizerConfig: Json, processorConfig: Json): Promise<string> {
  // Processors (what the seed calls apply_chat_template on) take precedence over the tokenizer.
  const jinja = await readFile(join(modelDir, 'chat_template.jinja'), 'utf8').catch(() => null);
  if (jinja) return jinja;
  const json = await readJson(join(modelDir, 'chat_template.json')).catch(() => null);
  if (typeof json?.chat_template === 'string') return json.chat_template;
  if (typeof processorConfig.chat_template === 'string') return processorConfig.chat_template;
  if (typeof tokenizerConfig.chat_template === 'string') return tokenizerConfig.chat_template;
  throw new Error(`${modelDir}: no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json)`);
}

function specialTokenStrings(config: Json): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of ['bos_token', 'eos_token', 'pad_token', 'unk_token']) {
    const v = config[name];
    if (typeof v === 'string') out[name] = v;
    else if (v && typeof v === 'object' && typeof (v as Json).content === 'string') out[name] = (v as Json).content as string;
  }
  return out;
}

async function readJson(path: string): Promise<Json> {
  return JSON.parse(await readFile(path, 'utf8')) as Json;
}
