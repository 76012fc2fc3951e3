/**
 * The model's own tokenizer and chat template, run in Node from its folder (tokenizer.json,
 * tokenizer_config.json, chat template, processor configs), doing what the Python processor does:
 * render the chat template (or the family's prompt convention), expand each image placeholder as
 * the model family's processor does (vlm/processors/), tokenize. Parity with
 * transformers' processors is tested in test/integration/tokenizerParity.test.ts and
 * test/unit/processorParity.test.ts.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';
import { gemma3 } from './processors/gemma3.js';
import { idefics2 } from './processors/idefics2.js';
import { llava } from './processors/llava.js';
import { paligemma } from './processors/paligemma.js';
import { qwen2vl } from './processors/qwen2vl.js';
import { llavaNext } from './processors/llavaNext.js';
import type { FamilySpec, ImageSize, Json, ProcessorConfigs, ProcessorFamily } from './processors/types.js';

export interface ChatMessage {
  role: 'user' | 'assistant' | 'system';
  content: Array<{ type: 'image' } | { type: 'text'; text: string }>;
}

const FAMILIES: FamilySpec[] = [llava, llavaNext, idefics2, paligemma, qwen2vl, gemma3];

/**
 * Model folders are content-addressed (staged by fingerprint) or local folders that do not change
 * under a running worker, so a folder's tokenizer can be reused. Bounded: a worker sees few models.
 */
const loadedTokenizers = new Map<string, Promise<ChatTokenizer>>();

export class ChatTokenizer {
  /** Token ids that belong to an image block: truncation must never cut one. */
  readonly imageRelatedTokenIds: ReadonlySet<number>;

  private constructor(
    private readonly tokenizer: Tokenizer,
    private readonly template: Template | null,
    private readonly specialTokens: Record<string, string>,
    /** Null for text-only models. */
    readonly family: ProcessorFamily | null,
    readonly eosTokenId: number,
  ) {
    const ids = (family?.imageBlockTokens ?? []).map((t) => tokenizer.token_to_id(t)).filter((id): id is number => id !== undefined);
    this.imageRelatedTokenIds = new Set(ids);
  }

  /** The placeholder the chat template emits for an image, e.g. `<image>`. */
  get imageToken(): string | null {
    return this.family?.imageToken ?? null;
  }

  /** Copies of the image token per image in the expanded prompt; 0 where it depends on the image's size. */
  get imageTokenCount(): number {
    return this.family?.imageTokensPerImage ?? 0;
  }

  /** Whether prompts need their images' sizes to be expanded (`encodePrompt`'s second argument). */
  get needsImageSizes(): boolean {
    return this.family !== null && this.family.imageTokensPerImage === null;
  }

  /** Copies of the image token for one image of this size. */
  imageTokensFor(size: ImageSize): number {
    if (!this.family) return 0;
    return this.family.imageTokensFor ? this.family.imageTokensFor(size) : (this.family.imageTokensPerImage ?? 0);
  }

  /** Loads once per folder and process: chunk activities of one stage share it. */
  static load(modelDir: string): Promise<ChatTokenizer> {
    let loaded = loadedTokenizers.get(modelDir);
    if (!loaded) {
      loaded = ChatTokenizer.loadUncached(modelDir);
      loaded.catch(() => loadedTokenizers.delete(modelDir));
      loadedTokenizers.set(modelDir, loaded);
    }
    return loaded;
  }

  private static async loadUncached(modelDir: string): Promise<ChatTokenizer> {
    const tokenizerJson = await readJson(join(modelDir, 'tokenizer.json'));
    const configs = await loadProcessorConfigs(modelDir);
    const tokenizer = new Tokenizer(tokenizerJson, configs.tokenizerConfig);
    const eos = configs.specialTokens.eos_token;
    const eosTokenId = eos !== undefined ? tokenizer.token_to_id(eos) : undefined;
    if (eosTokenId === undefined) throw new Error(`${modelDir}: tokenizer_config.json names no usable eos_token`);

    let family: ProcessorFamily | null = null;
    if (configs.imageProcessorConfig) {
      const processorClass = String(configs.processorConfig.processor_class ?? configs.imageProcessorConfig.processor_class ?? configs.tokenizerConfig.processor_class ?? '');
      const modelType = String(configs.modelConfig.model_type ?? '');
      const spec = FAMILIES.find((f) => f.matches(processorClass, modelType));
      if (!spec) {
        throw new Error(
          `image-token expansion for processor "${processorClass || modelType}" is not implemented ` +
            '(supported: LlavaProcessor, LlavaNextProcessor, Idefics2Processor, PaliGemmaProcessor, Qwen2VLProcessor, Qwen2_5_VLProcessor, Qwen3VLProcessor, Gemma3Processor)',
        );
      }
      family = spec.create(configs);
    }
    const template = await findChatTemplate(modelDir, configs.tokenizerConfig, configs.processorConfig);
    if (!template && !family?.renderUserWithoutTemplate) {
      throw new Error(`${modelDir}: no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json)`);
    }
    return new ChatTokenizer(tokenizer, template ? new Template(template) : null, configs.specialTokens, family, eosTokenId);
  }

  /** Renders messages with the chat template, as `processor.apply_chat_template(..., tokenize=False)`. */
  render(messages: ChatMessage[], addGenerationPrompt = false): string {
    if (this.template) return this.template.render({ ...this.specialTokens, messages, add_generation_prompt: addGenerationPrompt });
    // Families without a template (PaliGemma): a user turn is its prefix, an answer its text.
    return messages
      .map((m) => {
        const text = m.content.map((c) => (c.type === 'text' ? c.text : '')).join('');
        if (m.role !== 'user') return text;
        return this.family!.renderUserWithoutTemplate!(m.content.filter((c) => c.type === 'image').length, text);
      })
      .join('');
  }

  /** The prompt text of a one-image question, as the format stage stores it. */
  promptText(question: string): string {
    const user: ChatMessage = { role: 'user', content: [{ type: 'image' }, { type: 'text', text: question }] };
    return this.render([user], this.family?.chatTurns === 'prompt-prefix');
  }

  /** The answer text to `question`'s prompt, as the format stage stores it (see ProcessorFamily.chatTurns). */
  completionText(question: string, answer: string): string {
    const assistant: ChatMessage = { role: 'assistant', content: [{ type: 'text', text: answer }] };
    if (this.family?.chatTurns !== 'prompt-prefix') return this.render([assistant]);
    const prompt = this.promptText(question);
    const whole = this.render([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: question }] }, assistant]);
    if (!whole.startsWith(prompt)) throw new Error('the chat template renders the prompt differently once an answer follows it');
    return whole.slice(prompt.length);
  }

  /**
   * A conversational preference row rendered as TRL's apply_chat_template renders it: the prompt
   * with the generation prompt (or, when it ends with an assistant turn, continuing that turn),
   * cut back to what prompt + chosen and prompt + rejected share, and each answer what its whole
   * conversation adds after that prompt.
   */
  renderPreference(prompt: ChatMessage[], chosen: ChatMessage[], rejected: ChatMessage[]): { prompt: string; chosen: string; rejected: string } {
    const last = prompt[prompt.length - 1]?.role;
    let text = last === 'assistant' ? this.renderContinuingFinalMessage(prompt) : this.render(prompt, true);
    const withChosen = this.render([...prompt, ...chosen]);
    const withRejected = this.render([...prompt, ...rejected]);
    text = commonPrefix(commonPrefix(text, withChosen), withRejected);
    return { prompt: text, chosen: withChosen.slice(text.length), rejected: withRejected.slice(text.length) };
  }

  /** transformers' continue_final_message: the rendering cut right after the last message's text. */
  private renderContinuingFinalMessage(messages: ChatMessage[]): string {
    const rendered = this.render(messages);
    const parts = messages[messages.length - 1]!.content;
    const final = [...parts].reverse().find((c): c is { type: 'text'; text: string } => c.type === 'text')?.text;
    if (final === undefined) throw new Error('the prompt ends with an assistant turn without text to continue');
    const at = rendered.lastIndexOf(final.trim());
    if (!final.trim() || at < 0) throw new Error('the final assistant turn is not in the rendered prompt');
    const kept = rendered.slice(at, at + final.trimStart().length) === final ? final.trimStart().length : final.trim().length;
    return rendered.slice(0, at + kept);
  }

  /**
   * Prompt ids as the processor computes them: placeholders expanded, special tokens added.
   * `images` (one per placeholder) is required where the image token count depends on the size.
   */
  encodePrompt(prompt: string, images?: ImageSize[]): number[] {
    const text = this.family ? this.family.expandPrompt(prompt, images) : prompt;
    return this.tokenizer.encode(text, { add_special_tokens: this.family?.addSpecialTokens ?? true }).ids;
  }

  /** Completion ids as TRL's tokenize_row: no special tokens, eos appended. */
  encodeCompletion(completion: string): number[] {
    return [...this.tokenizer.encode(completion, { add_special_tokens: false }).ids, this.eosTokenId];
  }

  countImagePlaceholders(prompt: string): number {
    return this.family ? prompt.split(this.family.imageToken).length - 1 : 0;
  }
}

/** The longest common prefix, never splitting a surrogate pair (Python compares code points). */
function commonPrefix(a: string, b: string): string {
  let i = 0;
  while (i < a.length && i < b.length && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  if (i > 0 && i < a.length && /[\uD800-\uDBFF]/.test(a[i - 1]!)) i--;
  return a.slice(0, i);
}

/** The configs of a model folder; image-processor settings from preprocessor_config.json or nested. */
export async function loadProcessorConfigs(modelDir: string): Promise<ProcessorConfigs> {
  const tokenizerConfig = await readJson(join(modelDir, 'tokenizer_config.json'));
  const processorConfig = await readJson(join(modelDir, 'processor_config.json')).catch(() => ({}) as Json);
  const imageProcessorConfig =
    (await readJson(join(modelDir, 'preprocessor_config.json')).catch(() => null)) ?? ((processorConfig.image_processor as Json | undefined) ?? null);
  const modelConfig = await readJson(join(modelDir, 'config.json')).catch(() => ({}) as Json);
  return { tokenizerConfig, processorConfig, imageProcessorConfig, modelConfig, specialTokens: specialTokenStrings(tokenizerConfig) };
}

async function findChatTemplate(modelDir: string, tokenizerConfig: Json, processorConfig: Json): Promise<string | null> {
  // Processors (what the seed calls apply_chat_template on) take precedence over the tokenizer.
  const jinja = await readFile(join(modelDir, 'chat_template.jinja'), 'utf8').catch(() => null);
  if (jinja) return jinja;
  const json = await readJson(join(modelDir, 'chat_template.json')).catch(() => null);
  if (typeof json?.chat_template === 'string') return json.chat_template;
  if (typeof processorConfig.chat_template === 'string') return processorConfig.chat_template;
  if (typeof tokenizerConfig.chat_template === 'string') return tokenizerConfig.chat_template;
  return null;
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
