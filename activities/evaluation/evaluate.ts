/**
 * evaluate (cpu queue), with onnxruntime-node on ONNX exports of the base model and of the base
 * with the DPO adapter merged (trainer/dpo_trainer/export.py):
 *
 *   prepareEvaluation      export both models (the base once per base model: a content-addressed
 *                          stage output), stage the AMBER suite, plan the shards
 *   scorePreferenceShard   held-out pairs of one token shard: preference accuracy, implicit reward
 *                          accuracy against the base, reward margin (as trainer/dpo_trainer/evaluate.py)
 *   scoreAmberShard        a row range of the yes/no suite, answered from p("Yes") vs p("No")
 *   generateExamples       a few greedy answers of base and DPO, side by side
 *   finishEvaluation       sums the shards' counts into metrics and stores them
 *
 * The workflow fans the scoring activities out in parallel, so more CPU workers finish sooner.
 * Families the exporter cannot build a correct graph for (contracts/evalEngine.ts, decided here
 * from the model's config.json before any export) are scored by the pytorch engine instead:
 * prepareEvaluation then exports nothing (it still stages the suite and plans the shards), and
 * ./torchScoring.ts computes every metric above with the trainer's PyTorch model.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ApplicationFailure, Context, heartbeat } from '@temporalio/activity';
import { Tokenizer } from '@huggingface/tokenizers';
import { amberToParquet, readAmberSuite, type AmberDescription, type AmberQuestion } from '../../io/amberSuite.js';
import { FailureType } from '../../contracts/errors.js';
import {
  addAmberCounts,
  addGenerativeCounts,
  addPreferenceCounts,
  addShortAnswerCounts,
  amberMetrics,
  countYesNo,
  describeCounts,
  emptyGenerativeCounts,
  emptyPreferenceCounts,
  emptyShortAnswerCounts,
  emptyYesNoCounts,
  generativeMetrics,
  preferenceCounts,
  preferenceMetrics,
  shortAnswerMetrics,
  shortAnswerOf,
  type AmberCounts,
  type GenerativeCounts,
  type PreferenceCounts,
  type ShortAnswerCounts,
} from '../../contracts/evalMetrics.js';
import { keys } from '../../contracts/keys.js';
import type { AmberExample, AmberShardResult, EvaluateInput, EvaluateResult, EvaluationPlan, GeneratedExample, ScoreShardInput } from '../../contracts/payloads.js';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import type { ImageSize } from '../../vlm/processors/types.js';
import { REPO_ROOT, type ActivityDeps } from '../../io/deps.js';
import { FormatSchema } from '../../contracts/config.js';
import { thumbnail } from '../../vlm/formatRows.js';
import { loadImageProcessorConfig, pixelValues, type ImageProcessorConfig } from '../../vlm/imageProcessor.js';
import { isTokenizerFile, stageModel } from '../../io/models.js';
import { exportOnnx, OnnxExportError } from '../../bridge/onnxExport.js';
import { OnnxLoadError, OnnxModel, type ScoredRow } from '../../vlm/onnxModel.js';
import { listToNumbers, readParquetTable } from '../../io/parquet.js';
import type { ShardManifest } from '../data/shard.js';
import { runCachedStage, stageHash } from '../../io/stageCache.js';
import { parseS3Uri } from '../../io/storage.js';
import { listFilesRecursive, sha256Hex } from '../../io/files.js';
import { withHeartbeat } from '../heartbeat.js';
import { defaultImageEdge } from '../../vlm/imageSize.js';
import { modelFingerprint } from '../../io/fingerprint.js';
import { chooseEvalEngine, EngineChoiceError, type EngineChoice, type EvalEngine } from '../../contracts/evalEngine.js';

const exportFailure = (err: unknown): never => {
  if (err instanceof OnnxExportError) {
    if (err.retryable) throw ApplicationFailure.retryable(err.message, 'OnnxExportCrash');
    throw ApplicationFailure.nonRetryable(err.message, FailureType.ModelLoadError);
  }
  throw err;
};

export async function prepareEvaluation(deps: ActivityDeps, input: EvaluateInput): Promise<EvaluationPlan> {
  const ctx = Context.current();
  return withHeartbeat({ phase: 'exporting' }, async () => {
    const { storage } = deps;
    const modelDir = await stageModel(deps, input.modelSource);
    const manifest = await storage.getJson<ShardManifest>(input.bucket, input.shards.manifestKey);
    const split = manifest.splits[input.evalSplit];
    if (!split) throw ApplicationFailure.nonRetryable(`stage "${input.stageId}": the shards have no split "${input.evalSplit}"`, FailureType.InvalidDataset);
    const preferenceShards = split.shards.map((s) => ({ key: s.key, sha256: s.sha256, rows: s.rows }));
    const imageLongestEdge = input.imageLongestEdge ?? (await defaultImageEdge(modelDir));

    // The engine follows from the model's family and the rows' image count, before anything is exported.
    const choice = await engineFor(modelDir, input, split.maxImagesPerRow ?? 1);
    if (choice.engine === 'pytorch') {
      // Nothing to export: the trainer answers from the model folder and the adapter.
      const amber = input.evaluate.amber_suite ? await stageAmberSuite(deps, input, imageLongestEdge) : null;
      return { engine: 'pytorch', engineReason: choice.reason, onnx: null, baseExportCached: false, preferenceShards, amber, imageLongestEdge };
    }

    const work = join(deps.workDir, 'runs', input.runId, `${input.stageId}-${ctx.info.attempt}-${process.pid}`);
    await rm(work, { recursive: true, force: true });
    await mkdir(work, { recursive: true });
    try {
      // The base export is a stage output addressed by the base model's content and the exporter's
      // code: every run (and every evaluation) of the same base model reuses it.
      const exporter = await readFile(join(REPO_ROOT, 'trainer/dpo_trainer/export.py'));
      const baseHash = stageHash('export', { model: await modelFingerprint(modelDir), exporter: sha256Hex(exporter) });
      const base = await runCachedStage(storage, input.bucket, 'export', baseHash, async (prefix) => {
        const dir = await exportOnnx({
          pythonBin: deps.pythonBin,
          modelDir,
          adapterDir: null,
          outDir: join(work, 'onnx-base'),
          stageId: input.stageId,
          modelLabel: `base model ${input.modelSource}`,
          signal: ctx.cancellationSignal,
        }).catch(exportFailure);
        await storage.uploadDir(input.bucket, dir, `${prefix}onnx/`, 'manifest.json');
        return { summary: { model: input.modelSource }, onnx: `${prefix}onnx/` };
      });
      const basePrefix = `${keys.stagePrefix('export', base.hash)}onnx/`;

      // The DPO policy: adapter merged into the base. Per run; a retried attempt reuses it.
      const trainedPrefix = keys.policyOnnxPrefix(input.runId, input.stageId);
      if (!(await storage.exists(input.bucket, `${trainedPrefix}manifest.json`))) {
        const adapterDir = join(work, 'adapter');
        const adapter = `s3://${input.adapterBucket}/${input.adapterPrefix}`;
        const files = await storage.downloadPrefix(input.adapterBucket, input.adapterPrefix, adapterDir);
        if (!files.length) throw ApplicationFailure.nonRetryable(`stage "${input.stageId}": no adapter under ${adapter}`, FailureType.ModelLoadError);
        const dir = await exportOnnx({
          pythonBin: deps.pythonBin,
          modelDir,
          adapterDir,
          outDir: join(work, 'onnx-trained'),
          stageId: input.stageId,
          modelLabel: `${input.modelSource} with adapter ${adapter}`,
          signal: ctx.cancellationSignal,
        }).catch(exportFailure);
        await storage.uploadDir(input.bucket, dir, trainedPrefix, 'manifest.json');
      }

      const amber = input.evaluate.amber_suite
        ? await stageAmberSuite(deps, input, imageLongestEdge)
        : null;
      return {
        engine: 'onnxruntime-node',
        engineReason: choice.reason,
        onnx: { base: basePrefix, trained: trainedPrefix },
        baseExportCached: base.cached,
        preferenceShards,
        amber,
        imageLongestEdge,
      };
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
}

/** contracts/evalEngine.ts on the model folder's config.json; `evaluate.engine: onnx` on a family that cannot export is the config's error. */
async function engineFor(modelDir: string, input: EvaluateInput, imagesPerRow: number): Promise<EngineChoice> {
  // A missing or broken config.json is the exporter's to report (it names the model folder).
  const text = await readFile(join(modelDir, 'config.json'), 'utf8').catch(() => '{}');
  const config = ((): { model_type?: unknown } => {
    try {
      return JSON.parse(text) as { model_type?: unknown };
    } catch {
      return {};
    }
  })();
  try {
    return chooseEvalEngine(input.evaluate.engine, String(config.model_type ?? ''), input.engineField, imagesPerRow);
  } catch (err) {
    if (err instanceof EngineChoiceError) throw ApplicationFailure.nonRetryable(`stage "${input.stageId}": ${err.message}`, FailureType.InvalidConfig);
    throw err;
  }
}

/** Reads the suite (every row checked), thumbnails its images like the format stage, stores one file. */
/** The format stage's image guards and quality, applied to the AMBER suite's images too. */
const FORMAT_DEFAULTS = FormatSchema.parse({});

async function stageAmberSuite(deps: ActivityDeps, input: EvaluateInput, edge: number): Promise<EvaluationPlan['amber']> {
  const source = input.evaluate.amber_suite!;
  const files: Array<{ name: string; bytes: Uint8Array }> = [];
  if (source.startsWith('s3://')) {
    const { bucket, prefix } = parseS3Uri(source);
    for (const o of await deps.storage.list(bucket, prefix)) {
      if (o.key.endsWith('.parquet')) files.push({ name: `s3://${bucket}/${o.key}`, bytes: await deps.storage.getBuffer(bucket, o.key) });
    }
  } else {
    const root = source.startsWith('file://') ? source.slice('file://'.length) : source;
    const info = await stat(root).catch(() => null);
    const paths = info?.isDirectory() ? (await listFilesRecursive(root)).filter((p) => p.endsWith('.parquet')).map((p) => join(root, p)) : info ? [root] : [];
    for (const p of paths) files.push({ name: p, bytes: await readFile(p) });
  }
  if (!files.length) {
    throw ApplicationFailure.nonRetryable(`evaluate.amber_suite "${source}": no Parquet files there`, FailureType.InvalidConfig);
  }
  const questions: AmberQuestion[] = [];
  const descriptions: AmberDescription[] = [];
  for (const f of files) {
    try {
      const suite = readAmberSuite(f.bytes, f.name);
      questions.push(...suite.questions);
      descriptions.push(...suite.descriptions);
    } catch (err) {
      throw ApplicationFailure.nonRetryable(`evaluate.amber_suite: ${(err as Error).message}`, FailureType.InvalidDataset);
    }
  }
  for (const q of [...questions, ...descriptions]) {
    try {
      q.image = { ...q.image, bytes: await thumbnail(q.image.bytes, { edge, maxPixels: FORMAT_DEFAULTS.max_image_pixels, jpegQuality: FORMAT_DEFAULTS.jpeg_quality }) };
    } catch (err) {
      throw ApplicationFailure.nonRetryable(`evaluate.amber_suite: question ${q.id}: image cannot be decoded (${(err as Error).message})`, FailureType.InvalidDataset);
    }
  }
  const key = `${keys.runStagePrefix(input.runId, input.stageId)}amber-suite.parquet`;
  await deps.storage.putBuffer(input.bucket, key, Buffer.from(amberToParquet({ questions, descriptions })));
  // Ranges index the suite's items in suiteItems order: the yes/no questions, then the description prompts.
  const total = questions.length + descriptions.length;
  const per = input.evaluate.amber_questions_per_shard;
  const ranges: Array<[number, number]> = [];
  for (let start = 0; start < total; start += per) ranges.push([start, Math.min(start + per, total)]);
  return { key, ranges };
}

/** Both ONNX models, from a per-worker cache of exports keyed by their storage prefix. */
async function loadModels(deps: ActivityDeps, input: ScoreShardInput): Promise<{ base: OnnxModel; trained: OnnxModel }> {
  const load = async (prefix: string, label: string) => {
    const dir = join(deps.workDir, 'onnx', sha256Hex(Buffer.from(`${input.bucket}/${prefix}`)).slice(0, 24));
    // Parallel scoring activities in one worker share one download of each export.
    let staged = stagingExports.get(dir);
    if (!staged) {
      staged = stageExport(deps, input.bucket, prefix, dir, label);
      stagingExports.set(dir, staged);
      staged.catch(() => stagingExports.delete(dir));
    }
    await staged;
    try {
      return await OnnxModel.load(dir, `${label} (s3://${input.bucket}/${prefix})`, input.threads);
    } catch (err) {
      if (err instanceof OnnxLoadError) throw ApplicationFailure.nonRetryable(`evaluate: ${err.message}`, FailureType.ModelLoadError);
      throw err;
    }
  };
  const [base, trained] = await Promise.all([load(input.onnx.base, 'the base model'), load(input.onnx.trained, 'the DPO model')]);
  return { base, trained };
}

const stagingExports = new Map<string, Promise<void>>();

async function stageExport(deps: ActivityDeps, bucket: string, prefix: string, dir: string, label: string): Promise<void> {
  if (await stat(join(dir, 'manifest.json')).catch(() => null)) return;
  const tmp = `${dir}.tmp-${process.pid}-${randomUUID()}`;
  const files = await deps.storage.downloadPrefix(bucket, prefix, tmp);
  if (!files.some((f) => f.endsWith('manifest.json'))) {
    await rm(tmp, { recursive: true, force: true });
    throw ApplicationFailure.nonRetryable(`no complete ONNX export of ${label} under s3://${bucket}/${prefix}`, FailureType.ModelLoadError);
  }
  // Another worker process may have staged it meanwhile: folders are renamed whole.
  await rename(tmp, dir).catch(async () => rm(tmp, { recursive: true, force: true }));
}

export interface ShardRow {
  sampleId: string;
  prompt: number[];
  chosen: number[];
  rejected: number[];
  image: Uint8Array | null;
  /** The row's images after the first (shards written before several-image rows have none). */
  extraImages: Uint8Array[];
}

export async function readShard(deps: ActivityDeps, bucket: string, shard: { key: string; sha256: string }): Promise<ShardRow[]> {
  const bytes = await deps.storage.getBuffer(bucket, shard.key);
  if (sha256Hex(bytes) !== shard.sha256) throw ApplicationFailure.retryable(`shard ${shard.key} failed its sha256 check after download`);
  return readParquetTable(bytes)
    .toArray()
    .map((r: Record<string, unknown>) => ({
      sampleId: String(r.sample_id),
      prompt: listToNumbers(r.prompt_input_ids),
      chosen: listToNumbers(r.chosen_input_ids),
      rejected: listToNumbers(r.rejected_input_ids),
      image: (r.image as Uint8Array | null) ?? null,
      extraImages: r.extra_images ? Array.from(r.extra_images as Iterable<Uint8Array>) : [],
    }));
}

export async function scorePreferenceShard(
  deps: ActivityDeps,
  input: ScoreShardInput & { shard: { key: string; sha256: string }; beta: number },
): Promise<{ base: PreferenceCounts; trained: PreferenceCounts }> {
  return withHeartbeat({ shard: input.shard.key }, async () => {
    const rows = await readShard(deps, input.bucket, input.shard);
    const modelDir = await stageModel(deps, input.modelSource, isTokenizerFile);
    const imageConfig = await loadImageProcessorConfig(modelDir).catch(() => null);
    const models = await loadModels(deps, input);
    try {
      let base = emptyPreferenceCounts();
      let trained = emptyPreferenceCounts();
      for (let start = 0; start < rows.length; start += input.batchSize) {
        const batch = rows.slice(start, start + input.batchSize);
        const pixels = await Promise.all(batch.map((r) => rowPixels(r.image, imageConfig, r.sampleId)));
        // [chosen rows; rejected rows], as the trainer's collate builds them.
        const scored: ScoredRow[] = [
          ...batch.map((r, i) => ({ ids: [...r.prompt, ...r.chosen], completionStart: r.prompt.length, pixels: pixels[i]! })),
          ...batch.map((r, i) => ({ ids: [...r.prompt, ...r.rejected], completionStart: r.prompt.length, pixels: pixels[i]! })),
        ];
        const split = (xs: number[]) => ({ chosen: xs.slice(0, batch.length), rejected: xs.slice(batch.length) });
        const ref = split(await models.base.completionLogps(scored));
        const policy = split(await models.trained.completionLogps(scored));
        base = addPreferenceCounts(base, preferenceCounts(ref, ref, input.beta));
        trained = addPreferenceCounts(trained, preferenceCounts(policy, ref, input.beta));
        heartbeat({ shard: input.shard.key, scored: start + batch.length });
      }
      return { base, trained };
    } finally {
      await Promise.all([models.base.release(), models.trained.release()]);
    }
  });
}

async function rowPixels(image: Uint8Array | null, config: ImageProcessorConfig | null, what: string): Promise<Float32Array | null> {
  if (!image) return null;
  if (!config) throw ApplicationFailure.nonRetryable(`${what}: the row has an image but the model has no image processor`, FailureType.InvalidDataset);
  return pixelValues(image, config);
}

/**
 * Prompt for a yes/no question and the ids of the "Yes" and "No" answer tokens: the assistant
 * turns "ASSISTANT: Yes" and "ASSISTANT: No" share a prefix, which goes into the prompt; the first
 * token after it is the answer token. Both must be single tokens.
 */
export function yesNoPrompt(chat: ChatTokenizer, question: string, sizes?: ImageSize[]): { ids: number[]; yes: number; no: number } {
  const prompt = chat.encodePrompt(chat.render([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: question }] }]), sizes);
  const answer = (text: string) => chat.encodeCompletion(chat.render([{ role: 'assistant', content: [{ type: 'text', text }] }])).slice(0, -1);
  const yes = answer('Yes');
  const no = answer('No');
  let shared = 0;
  while (shared < yes.length && yes[shared] === no[shared]) shared++;
  if (yes.length !== shared + 1 || no.length !== shared + 1) {
    throw ApplicationFailure.nonRetryable('the tokenizer splits "Yes" or "No" into several tokens; the yes/no suite needs one token each', FailureType.ModelLoadError);
  }
  return { ids: [...prompt, ...yes.slice(0, shared)], yes: yes[shared]!, no: no[shared]! };
}

/** A description prompt's ids, up to where the greedy description starts (the assistant opening). */
export function describePrompt(chat: ChatTokenizer, question: string, opening: number[], sizes?: ImageSize[]): number[] {
  return [...chat.encodePrompt(chat.render([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: question }] }]), sizes), ...opening];
}

type DifferingExample = Omit<AmberExample, 'imageKey'> & { image: Uint8Array };

/** The report's example of a suite item, when the two models answered it differently; else null. */
export function differingExample(item: SuiteItem, base: string, trained: string): DifferingExample | null {
  if (base === trained) return null;
  return item.type === 'question'
    ? { id: item.id, kind: item.kind, question: item.question, truth: item.answer, base, trained, image: item.image.bytes }
    : { id: item.id, kind: 'generative', question: item.question, truth: item.truthObjects.join(', '), base, trained, image: item.image.bytes };
}

/** Greedy answer lengths in the suite: a yes/no answer is one short sentence, a description a few. */
export const SHORT_ANSWER_TOKENS = 12;
export const DESCRIPTION_TOKENS = 32;
/** Suite items per range whose differing answers are kept (with their image) for the report. */
export const EXAMPLES_PER_RANGE = 4;

export type SuiteItem = ({ type: 'question' } & AmberQuestion) | ({ type: 'description' } & AmberDescription);

/** The staged suite's items in range order: yes/no questions first, then description prompts. */
export function suiteItems(bytes: Uint8Array, source: string): SuiteItem[] {
  const suite = readAmberSuite(bytes, source);
  return [...suite.questions.map((q) => ({ type: 'question' as const, ...q })), ...suite.descriptions.map((d) => ({ type: 'description' as const, ...d }))];
}

/**
 * A range of the suite, both models: each yes/no question answered from p("Yes") vs p("No") and
 * greedily (a short answer, right when it opens with the truth); each description prompt answered
 * greedily and scored CHAIR-style against the image's objects.
 */
export async function scoreAmberShard(deps: ActivityDeps, input: ScoreShardInput & { suiteKey: string; range: [number, number] }): Promise<AmberShardResult> {
  return withHeartbeat({ suite: input.suiteKey, range: input.range }, async () => {
    const items = suiteItems(await deps.storage.getBuffer(input.bucket, input.suiteKey), input.suiteKey).slice(...input.range);
    const modelDir = await stageModel(deps, input.modelSource, isTokenizerFile);
    const chat = await ChatTokenizer.load(modelDir);
    const decode = await decoderFor(modelDir);
    const imageConfig = await loadImageProcessorConfig(modelDir);
    const models = await loadModels(deps, input);
    try {
      const tally = suiteTally(items);
      const { questions, descriptions, counts, generative, short } = tally;
      const differing: DifferingExample[] = [];
      for (let start = 0; start < questions.length; start += input.batchSize) {
        const batch = questions.slice(start, start + input.batchSize);
        const prompts = batch.map((q) => yesNoPrompt(chat, q.question));
        const rows = await Promise.all(batch.map(async (q, i) => ({ ids: prompts[i]!.ids, pixels: await pixelValues(q.image.bytes, imageConfig) })));
        const answers: Record<'base' | 'trained', string[]> = { base: [], trained: [] };
        for (const name of ['base', 'trained'] as const) {
          const logprobs = await models[name].nextTokenLogprobs(rows, [prompts[0]!.yes, prompts[0]!.no]);
          batch.forEach((q, i) => {
            const [yes, no] = logprobs[i]!;
            const kind = (counts[name][q.kind] ??= emptyYesNoCounts());
            countYesNo(kind, q.answer, yes! > no! ? 'yes' : 'no');
          });
          // The greedy answer starts where the "Yes"/"No" token would: after the shared prefix.
          answers[name] = (await models[name].greedyBatch(rows, SHORT_ANSWER_TOKENS, chat.eosTokenId)).map((ids) => decode(ids));
          short[name] = addShortAnswerCounts(short[name], shortCounts(batch.map((q) => q.answer), answers[name]));
        }
        batch.forEach((q, i) => {
          const example = differingExample(q, answers.base[i]!, answers.trained[i]!);
          if (example) differing.push(example);
        });
        heartbeat({ suite: input.suiteKey, scored: start + batch.length });
      }
      const opening = assistantOpening(chat);
      for (let start = 0; start < descriptions.length; start += input.batchSize) {
        const batch = descriptions.slice(start, start + input.batchSize);
        const rows = await Promise.all(
          batch.map(async (d) => ({ ids: describePrompt(chat, d.question, opening), pixels: await pixelValues(d.image.bytes, imageConfig) })),
        );
        const texts: Record<'base' | 'trained', string[]> = { base: [], trained: [] };
        for (const name of ['base', 'trained'] as const) {
          texts[name] = (await models[name].greedyBatch(rows, DESCRIPTION_TOKENS, chat.eosTokenId)).map((ids) => decode(ids));
          batch.forEach((d, i) => {
            generative[name] = addGenerativeCounts(generative[name], describeCounts(texts[name][i]!, d.truthObjects, d.halluObjects));
          });
        }
        batch.forEach((d, i) => {
          const example = differingExample(d, texts.base[i]!, texts.trained[i]!);
          if (example) differing.push(example);
        });
        heartbeat({ suite: input.suiteKey, described: start + batch.length });
      }
      return await amberShardResult(deps, input, tally, differing);
    } finally {
      await Promise.all([models.base.release(), models.trained.release()]);
    }
  });
}

/** A suite range's questions and description prompts, and both models' empty tallies over them (either engine fills them). */
export function suiteTally(items: SuiteItem[]) {
  return {
    questions: items.filter((i): i is Extract<SuiteItem, { type: 'question' }> => i.type === 'question'),
    descriptions: items.filter((i): i is Extract<SuiteItem, { type: 'description' }> => i.type === 'description'),
    counts: { base: {} as AmberCounts, trained: {} as AmberCounts },
    generative: { base: emptyGenerativeCounts(), trained: emptyGenerativeCounts() },
    short: { base: emptyShortAnswerCounts(), trained: emptyShortAnswerCounts() },
  };
}

/** A range's result, from either engine: its tallies, and a few of the items the two models answered differently, stored. */
export async function amberShardResult(
  deps: ActivityDeps,
  input: { bucket: string; suiteKey: string },
  { questions, descriptions, counts, generative, short }: ReturnType<typeof suiteTally>,
  differing: DifferingExample[],
): Promise<AmberShardResult> {
  return {
    ...counts,
    ...(descriptions.length && { generative }),
    ...(questions.length && { shortAnswers: short }),
    examples: await storeExamples(deps, input, pickExamples(differing, EXAMPLES_PER_RANGE)),
  };
}

export function shortCounts(truths: Array<'yes' | 'no'>, answers: string[]): ShortAnswerCounts {
  return { questions: truths.length, correct: truths.filter((t, i) => shortAnswerOf(answers[i]!) === t).length };
}

/** Up to `count` differing items, description prompts and questions alternating, so both halves show. */
export function pickExamples<T extends { kind: string }>(differing: T[], count: number): T[] {
  const descriptions = differing.filter((d) => d.kind === 'generative');
  const questions = differing.filter((d) => d.kind !== 'generative');
  const out: T[] = [];
  while (out.length < count && (descriptions.length || questions.length)) {
    const next = (out.length % 2 === 0 ? questions.shift() ?? descriptions.shift() : descriptions.shift() ?? questions.shift())!;
    out.push(next);
  }
  return out;
}

export async function storeExamples(deps: ActivityDeps, input: { bucket: string; suiteKey: string }, picked: DifferingExample[]): Promise<AmberExample[]> {
  const prefix = input.suiteKey.replace(/[^/]*$/, '');
  return Promise.all(
    picked.map(async ({ image, ...e }) => {
      const imageKey = `${prefix}amber-examples/${e.id.replace(/[^\w.-]/g, '_')}.jpg`;
      await deps.storage.putBuffer(input.bucket, imageKey, Buffer.from(image), 'image/jpeg');
      return { ...e, imageKey };
    }),
  );
}

/**
 * The assistant turn's opening ("ASSISTANT:"), after which the model answers: the tokens two
 * different answers share. Not the rendering of an empty answer, whose trailing space ("ASSISTANT: ")
 * is a token of its own that no training sequence has there (it is merged into the answer's first
 * word), so greedy decoding after it starts from a context the model never saw.
 */
export function assistantOpening(chat: ChatTokenizer): number[] {
  const answer = (text: string) => chat.encodeCompletion(chat.render([{ role: 'assistant', content: [{ type: 'text', text }] }]));
  const [yes, no] = [answer('Yes'), answer('No')];
  let shared = 0;
  while (shared < yes.length && yes[shared] === no[shared]) shared++;
  return yes.slice(0, shared);
}

export async function decoderFor(modelDir: string): Promise<(ids: number[]) => string> {
  const tokenizer = new Tokenizer(JSON.parse(await readFile(join(modelDir, 'tokenizer.json'), 'utf8')), JSON.parse(await readFile(join(modelDir, 'tokenizer_config.json'), 'utf8')));
  return (ids: number[]) => tokenizer.decode(ids, { skip_special_tokens: true }).trim();
}

export async function generateExamples(
  deps: ActivityDeps,
  input: ScoreShardInput & { runId: string; stageId: string; shard: { key: string; sha256: string }; count: number; maxNewTokens: number },
): Promise<GeneratedExample[]> {
  return withHeartbeat({ generating: input.count }, async () => {
    const rows = (await readShard(deps, input.bucket, input.shard)).slice(0, input.count);
    const modelDir = await stageModel(deps, input.modelSource, isTokenizerFile);
    const chat = await ChatTokenizer.load(modelDir);
    const decode = await decoderFor(modelDir);
    const imageConfig = await loadImageProcessorConfig(modelDir).catch(() => null);
    const opening = assistantOpening(chat);
    const models = await loadModels(deps, input);
    try {
      const out: GeneratedExample[] = [];
      for (const [i, r] of rows.entries()) {
        const pixels = await rowPixels(r.image, imageConfig, r.sampleId);
        const prompt = [...r.prompt, ...opening];
        const [base, trained] = await Promise.all([
          models.base.greedy(prompt, pixels, input.maxNewTokens, chat.eosTokenId),
          models.trained.greedy(prompt, pixels, input.maxNewTokens, chat.eosTokenId),
        ]);
        out.push(await generatedExample(deps, input, i, r, { chat, decode }, { base, trained }));
      }
      return out;
    } finally {
      await Promise.all([models.base.release(), models.trained.release()]);
    }
  });
}

/** One held-out row's greedy answers for the report, its image stored beside them. */
export async function generatedExample(
  deps: ActivityDeps,
  at: { bucket: string; runId: string; stageId: string },
  index: number,
  row: ShardRow,
  text: { chat: ChatTokenizer; decode: (ids: number[]) => string },
  answers: { base: number[]; trained: number[] },
): Promise<GeneratedExample> {
  let imageKey: string | null = null;
  if (row.image) {
    imageKey = `${keys.runStagePrefix(at.runId, at.stageId)}generations/${index}.jpg`;
    await deps.storage.putBuffer(at.bucket, imageKey, Buffer.from(row.image), 'image/jpeg');
  }
  const imageToken = text.chat.imageToken;
  return {
    sampleId: row.sampleId,
    question: text.decode(row.prompt).replace(imageToken ? new RegExp(escapeRegExp(imageToken), 'g') : /$^/, '').trim(),
    chosen: text.decode(row.chosen),
    base: text.decode(answers.base),
    trained: text.decode(answers.trained),
    imageKey,
  };
}

export async function finishEvaluation(
  deps: ActivityDeps,
  input: {
    runId: string;
    stageId: string;
    bucket: string;
    adapter: string;
    onnx: EvaluationPlan['onnx'];
    baseExportCached: boolean;
    /** Absent from workflows started before the pytorch engine: onnxruntime-node. */
    engine?: EvalEngine;
    engineReason?: string;
    notComputed?: string[];
    preference: Array<{ base: PreferenceCounts; trained: PreferenceCounts }>;
    amber: AmberShardResult[] | null;
    generations: GeneratedExample[];
  },
): Promise<EvaluateResult> {
  const amber = input.amber ?? [];
  const generative = amber.filter((a) => a.generative);
  const short = amber.filter((a) => a.shortAnswers);
  const genSum = (side: 'base' | 'trained') => generative.map((a) => a.generative![side]).reduce<GenerativeCounts>(addGenerativeCounts, emptyGenerativeCounts());
  const shortSum = (side: 'base' | 'trained') => short.map((a) => a.shortAnswers![side]).reduce<ShortAnswerCounts>(addShortAnswerCounts, emptyShortAnswerCounts());
  const amberExamples = amber.flatMap((a) => a.examples ?? []);
  const sum = (side: 'base' | 'trained') => input.preference.map((p) => p[side]).reduce(addPreferenceCounts, emptyPreferenceCounts());
  const amberSum = (side: 'base' | 'trained') => input.amber!.map((p) => p[side]).reduce(addAmberCounts, {});
  const result: EvaluateResult = {
    base: preferenceMetrics(sum('base')),
    trained: preferenceMetrics(sum('trained')),
    ...(input.amber && { amber: { base: amberMetrics(amberSum('base')), trained: amberMetrics(amberSum('trained')) } }),
    ...(generative.length && { generative: { base: generativeMetrics(genSum('base')), trained: generativeMetrics(genSum('trained')) } }),
    ...(short.length && { shortAnswers: { base: shortAnswerMetrics(shortSum('base')), trained: shortAnswerMetrics(shortSum('trained')) } }),
    ...(amberExamples.length && { amberExamples }),
    generations: input.generations,
    metricsKey: keys.evalMetrics(input.runId, input.stageId),
    adapter: input.adapter,
    ...(input.onnx && { onnx: input.onnx, baseExportCached: input.baseExportCached }),
    engine: input.engine ?? 'onnxruntime-node',
    ...(input.engineReason && { engineReason: input.engineReason }),
    ...(input.notComputed?.length && { notComputed: input.notComputed }),
  };
  const { metricsKey: _key, ...stored } = result;
  await deps.storage.putJson(input.bucket, result.metricsKey, stored);
  return result;
}

export const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
