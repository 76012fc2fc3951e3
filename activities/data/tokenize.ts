/**
 * tokenize: the model's tokenizer and chat template in Node. Prompts get their image placeholders
 * expanded as the model's processor does; completions get eos. Truncation follows TRL's DPO
 * (see `truncateSample`), except that it never cuts through image tokens: such a sample is dropped
 * and counted. Length statistics of what is kept go into the manifest.
 *
 * Fanned out like format: `tokenizeDataset` plans (or finds the cached output), `tokenizeChunk`
 * tokenizes one formatted part, `tokenizeFinish` gathers counts and statistics and writes the
 * manifest last.
 */
import * as arrow from 'apache-arrow';
import sharp from 'sharp';
import { keys } from '../../contracts/keys.js';
import type { PipelineConfig } from '../../contracts/config.js';
import type { StageResult, TokenizeChunkInput, TokenizeChunkResult, TokenizeFinishInput, TokenizeInput, TokenizePlan } from '../../contracts/payloads.js';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import { UnprocessableImageError } from '../../vlm/processors/qwen2vl.js';
import type { ImageSize } from '../../vlm/processors/types.js';
import type { ActivityDeps } from '../../io/deps.js';
import type { FormatManifest } from './format.js';
import { isTokenizerFile, stageModel } from '../../io/models.js';
import { int32List, readParquetTable, rowImages, tableFromColumns, writeParquetTable } from '../../io/parquet.js';
import { progress } from '../heartbeat.js';
import { findCachedStage, stageHash, writeStageManifest, type StageManifestBase } from '../../io/stageCache.js';

export type TokenizeDropReason = 'image_placeholder_mismatch' | 'image_unprocessable' | 'image_tokens_truncated' | 'prompt_too_long' | 'completion_empty';

export interface LengthStats {
  min: number;
  mean: number;
  p50: number;
  p95: number;
  max: number;
}

export interface TokenizedPart {
  /** Token ids (sample_id and the three token lists; no images). */
  key: string;
  /** The formatted part the rows come from, which holds their images (read by shard). */
  formatKey: string;
  rows: number;
}

export interface TokenizedSplit {
  parts: TokenizedPart[];
  inputRows: number;
  rows: number;
  /** Kept samples that TRL-style truncation shortened. */
  truncated: number;
  dropped: Partial<Record<TokenizeDropReason, number>>;
  tokens: number;
  lengths: { prompt: LengthStats; chosen: LengthStats; rejected: LengthStats } | null;
}

export interface TokenizeManifest extends StageManifestBase {
  imageTokenCount: number;
  splits: Record<string, TokenizedSplit>;
}

export async function tokenizeDataset(deps: ActivityDeps, input: TokenizeInput): Promise<TokenizePlan> {
  const { storage } = deps;
  const modelDir = await stageModel(deps, input.modelSource, isTokenizerFile);
  const hash = stageHash('tokenize', {
    upstream: input.upstream.hash,
    tokenize: input.tokenize,
    // The staged folder name is a fingerprint of the model's files.
    model: input.modelSource.startsWith('s3://') ? modelDir.split('/').pop() : input.modelSource,
  });
  const { imageTokenCount } = await ChatTokenizer.load(modelDir);
  const cached = await findCachedStage(storage, input.bucket, 'tokenize', hash);
  if (cached) return { hash, cached, imageTokenCount, splits: [], chunks: [] };
  const upstream = await storage.getJson<FormatManifest>(input.bucket, input.upstream.manifestKey);
  const chunks = Object.entries(upstream.splits).flatMap(([split, s]) => s.parts.map((p, index) => ({ split, index, key: p.key })));
  return { hash, imageTokenCount, chunks, splits: Object.keys(upstream.splits) };
}

export async function tokenizeChunk(deps: ActivityDeps, input: TokenizeChunkInput): Promise<TokenizeChunkResult> {
  const { storage } = deps;
  const { chunk } = input;
  const chat = await ChatTokenizer.load(await stageModel(deps, input.modelSource, isTokenizerFile));
  // Only the texts: images stay in the format part, where shard takes them from (carrying them
  // through a token part would cost a Parquet write, an upload and a read per image). Families
  // whose image-token count depends on the image's size (Qwen2-VL) read the images for their
  // sizes (a header parse each).
  const textColumns = ['sample_id', 'prompt', 'chosen', 'rejected'];
  const table = readParquetTable(await storage.getBuffer(input.bucket, chunk.key), chat.needsImageSizes ? undefined : [...textColumns, 'extra_images']);
  const [sid, prompt, chosen, rejected] = textColumns.map((c) => table.getChild(c)!);
  // Images per row: 1 + extra_images (parts written before multi-image rows have no such column).
  const extra = table.getChild('extra_images');
  const imageCounts = Array.from({ length: table.numRows }, (_, i) => 1 + ((extra?.get(i) as arrow.Vector | null)?.length ?? 0));
  const images = chat.needsImageSizes ? rowImages(table) : null;
  const cols = { ids: [] as string[], prompt: [] as number[][], chosen: [] as number[][], rejected: [] as number[][] };
  const lengths = { prompt: [] as number[], chosen: [] as number[], rejected: [] as number[] };
  const dropped: Partial<Record<TokenizeDropReason, number>> = {};
  let tokens = 0;
  let truncated = 0;
  for (let i = 0; i < table.numRows; i++) {
    if (i % 256 === 0) progress({ chunk: chunk.index, rows: i, of: table.numRows });
    const promptText = prompt!.get(i) as string;
    const result = await (async () => {
      if (chat.countImagePlaceholders(promptText) !== imageCounts[i]) return { dropped: 'image_placeholder_mismatch' as const };
      let sizes: ImageSize[] | undefined;
      if (images) {
        sizes = [];
        for (const bytes of images[i]!) {
          const size = await imageSize(bytes);
          if (!size) return { dropped: 'image_unprocessable' as const };
          sizes.push(size);
        }
      }
      let promptIds: number[];
      try {
        promptIds = chat.encodePrompt(promptText, sizes);
      } catch (err) {
        // e.g. an aspect ratio past 200, which the processor refuses.
        if (err instanceof UnprocessableImageError) return { dropped: 'image_unprocessable' as const };
        throw err;
      }
      const sample = { prompt: promptIds, chosen: chat.encodeCompletion(chosen!.get(i) as string), rejected: chat.encodeCompletion(rejected!.get(i) as string) };
      return truncateSample(sample, input.tokenize, chat.imageRelatedTokenIds);
    })();
    if ('dropped' in result) {
      dropped[result.dropped] = (dropped[result.dropped] ?? 0) + 1;
      continue;
    }
    if (result.truncated) truncated++;
    cols.ids.push(sid!.get(i) as string);
    cols.prompt.push(result.prompt);
    cols.chosen.push(result.chosen);
    cols.rejected.push(result.rejected);
    lengths.prompt.push(result.prompt.length);
    lengths.chosen.push(result.chosen.length);
    lengths.rejected.push(result.rejected.length);
    tokens += result.prompt.length + result.chosen.length + result.rejected.length;
  }
  const base = `${keys.stagePrefix('tokenize', input.hash)}${chunk.split}/part-${String(chunk.index).padStart(5, '0')}`;
  const out = tableFromColumns({
    sample_id: { type: new arrow.Utf8(), values: cols.ids },
    prompt_input_ids: { type: int32List(), values: cols.prompt },
    chosen_input_ids: { type: int32List(), values: cols.chosen },
    rejected_input_ids: { type: int32List(), values: cols.rejected },
  });
  await storage.putBuffer(input.bucket, `${base}.parquet`, writeParquetTable(out));
  await storage.putJson(input.bucket, `${base}.lengths.json`, lengths);
  return {
    split: chunk.split,
    index: chunk.index,
    key: `${base}.parquet`,
    formatKey: chunk.key,
    lengthsKey: `${base}.lengths.json`,
    inputRows: table.numRows,
    rows: cols.ids.length,
    tokens,
    truncated,
    dropped: dropped as Record<string, number>,
  };
}

export async function tokenizeFinish(deps: ActivityDeps, input: TokenizeFinishInput): Promise<StageResult> {
  const { storage } = deps;
  const splits: Record<string, TokenizedSplit> = {};
  for (const split of input.splits) {
    const chunks = input.chunks.filter((c) => c.split === split).sort((a, b) => a.index - b.index);
    const all = { prompt: [] as number[], chosen: [] as number[], rejected: [] as number[] };
    const s: TokenizedSplit = { parts: [], inputRows: 0, rows: 0, truncated: 0, dropped: {}, tokens: 0, lengths: null };
    for (const c of chunks) {
      s.inputRows += c.inputRows;
      s.rows += c.rows;
      s.tokens += c.tokens;
      s.truncated += c.truncated;
      for (const [reason, n] of Object.entries(c.dropped)) s.dropped[reason as TokenizeDropReason] = (s.dropped[reason as TokenizeDropReason] ?? 0) + n;
      if (c.rows) {
        s.parts.push({ key: c.key, formatKey: c.formatKey, rows: c.rows });
        const l = await storage.getJson<typeof all>(input.bucket, c.lengthsKey);
        for (const k of ['prompt', 'chosen', 'rejected'] as const) for (const v of l[k]) all[k].push(v);
      }
      progress({ split, chunk: c.index });
    }
    if (s.rows) s.lengths = { prompt: lengthStats(all.prompt), chosen: lengthStats(all.chosen), rejected: lengthStats(all.rejected) };
    splits[split] = s;
  }
  const summary: Record<string, number> = { image_tokens: input.imageTokenCount };
  for (const [split, s] of Object.entries(splits)) {
    summary[`${split}_rows`] = s.rows;
    summary[`${split}_tokens`] = s.tokens;
    summary[`${split}_dropped`] = s.inputRows - s.rows;
    summary[`${split}_truncated`] = s.truncated;
  }
  return writeStageManifest<TokenizeManifest>(storage, input.bucket, 'tokenize', input.hash, {
    imageTokenCount: input.imageTokenCount,
    splits,
    summary,
  });
}

/** Width and height of a formatted (upright, EXIF-free) thumbnail, from its header. */
async function imageSize(bytes: Uint8Array | null): Promise<ImageSize | null> {
  if (!bytes?.length) return null;
  const { width, height } = await sharp(bytes).metadata().catch(() => ({ width: undefined, height: undefined }));
  return width && height ? { width, height } : null;
}

export interface TokenizedSample {
  prompt: number[];
  chosen: number[];
  rejected: number[];
}

/**
 * TRL's DPO truncation (DPOConfig: max_prompt_length, max_completion_length, max_length,
 * truncation_mode), applied once per sample:
 *  1. a prompt longer than max_prompt_length keeps its last max_prompt_length tokens;
 *  2. answers longer than max_completion_length keep their first max_completion_length tokens;
 *  3. when prompt + the longer answer passes max_length, `keep_end` cuts the start of the
 *     prompt and `keep_start` cuts the end of the answers.
 * TRL cuts each concatenated sequence on its own; here chosen and rejected share one stored
 * prompt, so the prompt is cut by what the longer answer needs. Unlike TRL, a cut that would
 * remove any image token (or its markers) drops the sample instead, as does a cut that would
 * leave no answer token at all.
 */
export function truncateSample(
  sample: TokenizedSample,
  settings: Pick<PipelineConfig['tokenize'], 'max_length' | 'max_prompt_length' | 'max_completion_length' | 'truncation_mode'>,
  imageIds: ReadonlySet<number>,
): (TokenizedSample & { truncated: boolean }) | { dropped: TokenizeDropReason } {
  let { prompt, chosen, rejected } = sample;
  const cut: number[][] = [];
  if (prompt.length > settings.max_prompt_length) {
    cut.push(prompt.slice(0, prompt.length - settings.max_prompt_length));
    prompt = prompt.slice(-settings.max_prompt_length);
  }
  const maxCompletion = settings.max_completion_length;
  if (maxCompletion != null && Math.max(chosen.length, rejected.length) > maxCompletion) {
    chosen = chosen.slice(0, maxCompletion);
    rejected = rejected.slice(0, maxCompletion);
  }
  const over = prompt.length + Math.max(chosen.length, rejected.length) - settings.max_length;
  if (over > 0) {
    if (settings.truncation_mode === 'keep_start') {
      const room = settings.max_length - prompt.length;
      if (room <= 0) return { dropped: 'prompt_too_long' };
      chosen = chosen.slice(0, room);
      rejected = rejected.slice(0, room);
    } else {
      if (over >= prompt.length) return { dropped: prompt.some((t) => imageIds.has(t)) ? 'image_tokens_truncated' : 'prompt_too_long' };
      cut.push(prompt.slice(0, over));
      prompt = prompt.slice(over);
    }
  }
  if (cut.some((part) => part.some((t) => imageIds.has(t)))) return { dropped: 'image_tokens_truncated' };
  if (!chosen.length || !rejected.length) return { dropped: 'completion_empty' };
  const truncated = prompt !== sample.prompt || chosen.length !== sample.chosen.length || rejected.length !== sample.rejected.length;
  return { prompt, chosen, rejected, truncated };
}

/** min, mean, nearest-rank p50 and p95, max. */
export function lengthStats(values: number[]): LengthStats {
  const sorted = Float64Array.from(values).sort();
  const rank = (p: number) => sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)]!;
  const mean = sorted.reduce((a, b) => a + b, 0) / sorted.length;
  return { min: sorted[0]!, mean: Math.round(mean * 100) / 100, p50: rank(50), p95: rank(95), max: sorted[sorted.length - 1]! };
}
