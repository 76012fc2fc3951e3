/**
 * The pytorch evaluate engine (contracts/evalEngine.ts), for model families the ONNX exporter
 * cannot build a correct graph for: each held-out shard is scored by the trainer's evaluator on
 * this CPU worker, once with the base model and once with the base plus the DPO adapter. Its means
 * come back as counts, so the shards sum in `finishEvaluation` exactly as the ONNX engine's do.
 * The yes/no suite and the greedy generations are the ONNX engine's activities with the trainer
 * answering the prompts (`python -m dpo_trainer.score_prompts`): the same prompts, the same
 * counting code, so the report reads the same whichever engine ran.
 */
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ApplicationFailure, Context } from '@temporalio/activity';
import { FailureType } from '../../contracts/errors.js';
import sharp from 'sharp';
import {
  addGenerativeCounts,
  addShortAnswerCounts,
  countsFromMetrics,
  countYesNo,
  describeCounts,
  emptyYesNoCounts,
  type PreferenceCounts,
} from '../../contracts/evalMetrics.js';
import type { AmberShardResult, GeneratedExample } from '../../contracts/payloads.js';
import type { ActivityDeps } from '../../io/deps.js';
import { sha256Hex } from '../../io/files.js';
import { stageModel } from '../../io/models.js';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import type { ImageSize } from '../../vlm/processors/types.js';
import { answerWithPytorch, evaluateWithPytorch, TorchEvalFailed, type PromptAnswer, type PromptRequest } from '../../bridge/torchEvaluate.js';
import {
  amberShardResult,
  assistantOpening,
  decoderFor,
  describePrompt,
  DESCRIPTION_TOKENS,
  differingExample,
  generatedExample,
  readShard,
  SHORT_ANSWER_TOKENS,
  shortCounts,
  suiteItems,
  suiteTally,
  yesNoPrompt,
} from './evaluate.js';
import { trainerFailure } from '../../bridge/trainerFailure.js';
import { withHeartbeat } from '../heartbeat.js';

export interface TorchShardInput {
  runId: string;
  stageId: string;
  bucket: string;
  modelSource: string;
  adapterBucket: string;
  adapterPrefix: string;
  shard: { key: string; sha256: string };
  beta: number;
  batchSize: number;
}

export async function scorePreferenceShardTorch(deps: ActivityDeps, input: TorchShardInput): Promise<{ base: PreferenceCounts; trained: PreferenceCounts }> {
  const ctx = Context.current();
  const progress = { shard: input.shard.key, engine: 'pytorch', scoring: 'staging' };
  return withHeartbeat(progress, async () => {
    const modelDir = await stageModel(deps, input.modelSource);
    const work = join(deps.workDir, 'runs', input.runId, `${input.stageId}-torch-${sha256Hex(Buffer.from(input.shard.key)).slice(0, 12)}-${ctx.info.attempt}-${process.pid}`);
    await rm(work, { recursive: true, force: true });
    await mkdir(work, { recursive: true });
    try {
      const shardPath = join(work, 'shard.parquet');
      await deps.storage.downloadFile(input.bucket, input.shard.key, shardPath);
      if (sha256Hex(await readFile(shardPath)) !== input.shard.sha256) throw ApplicationFailure.retryable(`shard ${input.shard.key} failed its sha256 check after download`);
      const adapterDir = join(work, 'adapter');
      const adapter = `s3://${input.adapterBucket}/${input.adapterPrefix}`;
      if (!(await deps.storage.downloadPrefix(input.adapterBucket, input.adapterPrefix, adapterDir)).length) {
        throw ApplicationFailure.nonRetryable(`stage "${input.stageId}": no adapter under ${adapter}`, FailureType.ModelLoadError);
      }
      const score = async (side: 'base' | 'trained') => {
        progress.scoring = side;
        try {
          return await evaluateWithPytorch({
            pythonBin: deps.pythonBin,
            modelDir,
            adapterDir: side === 'base' ? null : adapterDir,
            shards: [shardPath],
            batchSize: input.batchSize,
            beta: input.beta,
            configPath: join(work, `eval-${side}.json`),
            signal: ctx.cancellationSignal,
          });
        } catch (err) {
          if (err instanceof TorchEvalFailed) {
            const what = side === 'base' ? `the base model ${input.modelSource}` : `${input.modelSource} with adapter ${adapter}`;
            throw trainerFailure(err.outcome, `stage "${input.stageId}": the PyTorch evaluator on ${what}`);
          }
          throw err;
        }
      };
      const base = countsFromMetrics(await score('base'));
      const trained = countsFromMetrics(await score('trained'));
      return { base, trained };
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
}

export interface TorchAmberInput extends Omit<TorchShardInput, 'shard' | 'beta'> {
  suiteKey: string;
  range: [number, number];
}

export interface TorchGenerateInput extends Omit<TorchShardInput, 'beta'> {
  count: number;
  maxNewTokens: number;
}

/**
 * The model staged and the adapter downloaded into a fresh work folder, and `answer`, which runs
 * `python -m dpo_trainer.score_prompts` on one side (one process per side and activity: loading
 * the model is what costs).
 */
async function withTorchAnswers<T>(
  deps: ActivityDeps,
  input: { runId: string; stageId: string; modelSource: string; adapterBucket: string; adapterPrefix: string },
  tag: string,
  progress: Record<string, unknown>,
  body: (ctx: { modelDir: string; work: string; answer: (side: Side, prompts: PromptRequest[], eosTokenId: number) => Promise<PromptAnswer[]> }) => Promise<T>,
): Promise<T> {
  const ctx = Context.current();
  return withHeartbeat(progress, async () => {
    const modelDir = await stageModel(deps, input.modelSource);
    const work = join(deps.workDir, 'runs', input.runId, `${input.stageId}-torch-${sha256Hex(Buffer.from(tag)).slice(0, 12)}-${ctx.info.attempt}-${process.pid}`);
    await rm(work, { recursive: true, force: true });
    await mkdir(work, { recursive: true });
    try {
      const adapterDir = join(work, 'adapter');
      const adapter = `s3://${input.adapterBucket}/${input.adapterPrefix}`;
      if (!(await deps.storage.downloadPrefix(input.adapterBucket, input.adapterPrefix, adapterDir)).length) {
        throw ApplicationFailure.nonRetryable(`stage "${input.stageId}": no adapter under ${adapter}`, FailureType.ModelLoadError);
      }
      const answer = async (side: Side, prompts: PromptRequest[], eosTokenId: number) => {
        progress.scoring = side;
        if (!prompts.length) return [];
        try {
          return await answerWithPytorch({ pythonBin: deps.pythonBin, modelDir, adapterDir: side === 'base' ? null : adapterDir, prompts, eosTokenId, workDir: work, label: side, signal: ctx.cancellationSignal });
        } catch (err) {
          if (err instanceof TorchEvalFailed) {
            const what = side === 'base' ? `the base model ${input.modelSource}` : `${input.modelSource} with adapter ${adapter}`;
            throw trainerFailure(err.outcome, `stage "${input.stageId}": the PyTorch answers of ${what}`);
          }
          throw err;
        }
      };
      return await body({ modelDir, work, answer });
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
}

type Side = 'base' | 'trained';
const SIDES = ['base', 'trained'] as const;

/** Width and height of a staged (thumbnailed) suite image, for families whose image token count depends on it. */
async function sizeOf(bytes: Uint8Array): Promise<ImageSize> {
  const { width, height } = await sharp(bytes).metadata();
  if (!width || !height) throw ApplicationFailure.nonRetryable('evaluate.amber_suite: an image has no size', FailureType.InvalidDataset);
  return { width, height };
}

/**
 * scoreAmberShard (./evaluate.ts) with the trainer's PyTorch model: the same prompts, answer
 * tokens and greedy lengths, counted by the same code; only the forward passes are PyTorch's.
 */
export async function scoreAmberShardTorch(deps: ActivityDeps, input: TorchAmberInput): Promise<AmberShardResult> {
  const progress: Record<string, unknown> = { suite: input.suiteKey, range: input.range, engine: 'pytorch', scoring: 'staging' };
  return withTorchAnswers(deps, input, `${input.suiteKey}#${input.range.join('-')}`, progress, async ({ modelDir, answer }) => {
    const items = suiteItems(await deps.storage.getBuffer(input.bucket, input.suiteKey), input.suiteKey).slice(...input.range);
    const chat = await ChatTokenizer.load(modelDir);
    const decode = await decoderFor(modelDir);
    const tally = suiteTally(items);
    const { questions, descriptions, counts, generative, short } = tally;
    const sizes = async (bytes: Uint8Array) => (chat.needsImageSizes ? [await sizeOf(bytes)] : undefined);
    const prompts = await Promise.all(questions.map(async (q) => yesNoPrompt(chat, q.question, await sizes(q.image.bytes))));
    const opening = assistantOpening(chat);
    const requests: PromptRequest[] = [
      // The greedy short answer starts where the "Yes"/"No" token would: after the shared prefix.
      ...questions.map((q, i) => ({ id: q.id, ids: prompts[i]!.ids, image: q.image.bytes, nextTokens: [prompts[i]!.yes, prompts[i]!.no], maxNewTokens: SHORT_ANSWER_TOKENS })),
      ...(await Promise.all(
        descriptions.map(async (d) => ({
          id: d.id,
          ids: describePrompt(chat, d.question, opening, await sizes(d.image.bytes)),
          image: d.image.bytes,
          nextTokens: [],
          maxNewTokens: DESCRIPTION_TOKENS,
        })),
      )),
    ];
    const texts = { base: [] as string[], trained: [] as string[] };
    for (const side of SIDES) {
      const answers = await answer(side, requests, chat.eosTokenId);
      texts[side] = answers.map((a) => decode(a.generated));
      questions.forEach((q, i) => {
        const [yes, no] = answers[i]!.nextLogprobs;
        countYesNo((counts[side][q.kind] ??= emptyYesNoCounts()), q.answer, yes! > no! ? 'yes' : 'no');
      });
      short[side] = addShortAnswerCounts(short[side], shortCounts(questions.map((q) => q.answer), texts[side].slice(0, questions.length)));
      descriptions.forEach((d, i) => {
        generative[side] = addGenerativeCounts(generative[side], describeCounts(texts[side][questions.length + i]!, d.truthObjects, d.halluObjects));
      });
    }
    // Requests are the questions, then the descriptions: the same order as `items` filtered.
    const differing = [...questions, ...descriptions].flatMap((item, i) => differingExample(item, texts.base[i]!, texts.trained[i]!) ?? []);
    return amberShardResult(deps, input, tally, differing);
  });
}

/** generateExamples (./evaluate.ts) with the trainer's PyTorch model: the first held-out rows, answered greedily by both models. */
export async function generateExamplesTorch(deps: ActivityDeps, input: TorchGenerateInput): Promise<GeneratedExample[]> {
  const progress: Record<string, unknown> = { generating: input.count, engine: 'pytorch', scoring: 'staging' };
  return withTorchAnswers(deps, input, `${input.shard.key}#generations`, progress, async ({ modelDir, answer }) => {
    const rows = (await readShard(deps, input.bucket, input.shard)).slice(0, input.count);
    const chat = await ChatTokenizer.load(modelDir);
    const decode = await decoderFor(modelDir);
    const opening = assistantOpening(chat);
    const requests: PromptRequest[] = rows.map((r) => ({ id: r.sampleId, ids: [...r.prompt, ...opening], image: r.image, extraImages: r.extraImages, nextTokens: [], maxNewTokens: input.maxNewTokens }));
    const base = await answer('base', requests, chat.eosTokenId);
    const trained = await answer('trained', requests, chat.eosTokenId);
    return Promise.all(rows.map((r, i) => generatedExample(deps, input, i, r, { chat, decode }, { base: base[i]!.generated, trained: trained[i]!.generated })));
  });
}
