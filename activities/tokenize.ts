/**
 * tokenize: the model's tokenizer and chat template in Node. Prompts get their image placeholders
 * expanded as the processor does; completions get eos. Samples longer than the limits are dropped
 * and counted (never truncated: truncation could cut image tokens).
 */
import * as arrow from 'apache-arrow';
import { heartbeat } from '@temporalio/activity';
import type { StageResult, TokenizeInput } from '../lib/stages.js';
import { ChatTokenizer } from './chatTokenizer.js';
import type { ActivityDeps } from './deps.js';
import type { FormatManifest } from './format.js';
import { isTokenizerFile, stageModel } from './models.js';
import { int32List, readParquetTable, tableFromColumns, writeParquetTable } from './parquet.js';
import { runCachedStage, stageHash, type StageManifestBase } from './stageCache.js';

export type TokenizeDropReason = 'prompt_too_long' | 'too_long' | 'image_placeholder_mismatch';

export interface TokenizedSplit {
  key: string;
  rows: number;
  dropped: Partial<Record<TokenizeDropReason, number>>;
  tokens: number;
  maxPromptTokens: number;
  maxTotalTokens: number;
}

export interface TokenizeManifest extends StageManifestBase {
  imageTokenCount: number;
  splits: Record<string, TokenizedSplit>;
}

export async function tokenizeDataset(deps: ActivityDeps, input: TokenizeInput): Promise<StageResult> {
  const { storage } = deps;
  const modelDir = await stageModel(deps, input.modelSource, isTokenizerFile);
  const chat = await ChatTokenizer.load(modelDir);
  const hash = stageHash('tokenize', {
    upstream: input.upstream.hash,
    tokenize: input.tokenize,
    // The staged folder name is a fingerprint of the model's files.
    model: input.modelSource.startsWith('s3://') ? modelDir.split('/').pop() : input.modelSource,
  });
  const upstream = await storage.getJson<FormatManifest>(input.bucket, input.upstream.manifestKey);

  return runCachedStage<TokenizeManifest>(storage, input.bucket, 'tokenize', hash, async (prefix) => {
    const splits: Record<string, TokenizedSplit> = {};
    for (const [split, formatted] of Object.entries(upstream.splits)) {
      const table = readParquetTable(await storage.getBuffer(input.bucket, formatted.key));
      const cols = {
        ids: [] as string[],
        prompt: [] as number[][],
        chosen: [] as number[][],
        rejected: [] as number[][],
        image: [] as Uint8Array[],
      };
      const dropped: TokenizedSplit['dropped'] = {};
      let tokens = 0;
      let maxPromptTokens = 0;
      let maxTotalTokens = 0;
      const [sid, prompt, chosen, rejected, image] = ['sample_id', 'prompt', 'chosen', 'rejected', 'image'].map((c) => table.getChild(c)!);
      for (let i = 0; i < table.numRows; i++) {
        if (i % 256 === 0) heartbeat({ split, rows: i });
        const promptText = prompt!.get(i) as string;
        const promptIds = chat.encodePrompt(promptText);
        const chosenIds = chat.encodeCompletion(chosen!.get(i) as string);
        const rejectedIds = chat.encodeCompletion(rejected!.get(i) as string);
        const total = promptIds.length + Math.max(chosenIds.length, rejectedIds.length);
        let reason: TokenizeDropReason | undefined;
        if (chat.countImagePlaceholders(promptText) !== 1) reason = 'image_placeholder_mismatch';
        else if (promptIds.length > input.tokenize.max_prompt_length) reason = 'prompt_too_long';
        else if (total > input.tokenize.max_length) reason = 'too_long';
        if (reason) {
          dropped[reason] = (dropped[reason] ?? 0) + 1;
          continue;
        }
        cols.ids.push(sid!.get(i) as string);
        cols.prompt.push(promptIds);
        cols.chosen.push(chosenIds);
        cols.rejected.push(rejectedIds);
        cols.image.push(image!.get(i) as Uint8Array);
        tokens += promptIds.length + chosenIds.length + rejectedIds.length;
        maxPromptTokens = Math.max(maxPromptTokens, promptIds.length);
        maxTotalTokens = Math.max(maxTotalTokens, total);
      }
      const key = `${prefix}${split}/part-00000.parquet`;
      const out = tableFromColumns({
        sample_id: { type: new arrow.Utf8(), values: cols.ids },
        prompt_input_ids: { type: int32List(), values: cols.prompt },
        chosen_input_ids: { type: int32List(), values: cols.chosen },
        rejected_input_ids: { type: int32List(), values: cols.rejected },
        image: { type: new arrow.Binary(), values: cols.image },
      });
      await storage.putBuffer(input.bucket, key, Buffer.from(writeParquetTable(out)));
      splits[split] = { key, rows: cols.ids.length, dropped, tokens, maxPromptTokens, maxTotalTokens };
    }
    const summary: Record<string, number> = { image_tokens: chat.imageTokenCount };
    for (const [split, s] of Object.entries(splits)) {
      summary[`${split}_rows`] = s.rows;
      summary[`${split}_tokens`] = s.tokens;
    }
    return { imageTokenCount: chat.imageTokenCount, splits, summary };
  });
}
