/**
 * Runs the trainer's PyTorch evaluator (`python -m dpo_trainer.evaluate`,
 * trainer/dpo_trainer/evaluate.py) on local shard files: the preference metrics of the base model
 * (no adapter) or of the base with an adapter, its implicit rewards against the base; and
 * `python -m dpo_trainer.score_prompts`, the yes/no log-probs and greedy answers the AMBER suite and
 * the report's generations are computed from.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeTrainerConfig, evalRunConfig } from './trainerConfig.js';
import { runTrainer, TrainerExit, type TrainerOutcome } from './trainerProcess.js';
import type { EvalMetrics } from '../contracts/evalMetrics.js';

export interface TorchEvalRequest {
  pythonBin: string;
  modelDir: string;
  adapterDir: string | null;
  shards: string[];
  batchSize: number;
  beta: number;
  /** Where the config file is written. */
  configPath: string;
  signal?: AbortSignal;
}

/** The evaluator did not finish: its outcome, for `trainerFailure` to type. */
export class TorchEvalFailed extends Error {
  constructor(readonly outcome: TrainerOutcome) {
    super(`dpo_trainer.evaluate exited with ${outcome.exitCode ?? outcome.signal}`);
    this.name = 'TorchEvalFailed';
  }
}

export async function evaluateWithPytorch(req: TorchEvalRequest): Promise<EvalMetrics> {
  await writeTrainerConfig(req.configPath, 'EvalConfig', evalRunConfig(req));
  let metrics: EvalMetrics | undefined;
  const outcome = await runTrainer({
    pythonBin: req.pythonBin,
    module: 'dpo_trainer.evaluate',
    configPath: req.configPath,
    ...(req.signal && { signal: req.signal }),
    onEvent: (event) => {
      // Validated against schemas/trainer-events.schema.json by runTrainer.
      if (event.event === 'eval_result') metrics = event.metrics as EvalMetrics;
    },
  });
  if (outcome.exitCode !== TrainerExit.Finished || !metrics) throw new TorchEvalFailed(outcome);
  return metrics;
}

/** One prompt for `python -m dpo_trainer.score_prompts` (trainer/dpo_trainer/score_prompts.py). */
export interface PromptRequest {
  id: string;
  /** Prompt ids with the image tokens expanded, as the tokenize stage writes them. */
  ids: number[];
  image: Uint8Array | null;
  /** The row's images after the first, in placeholder order. */
  extraImages?: Uint8Array[];
  /** Tokens whose next-token log-probability is wanted (the yes/no answer tokens). */
  nextTokens: number[];
  /** 0: no greedy answer. */
  maxNewTokens: number;
}

export interface PromptAnswer {
  id: string;
  nextLogprobs: number[];
  /** Greedy answer ids, the end-of-sequence token left out (as OnnxModel.greedy). */
  generated: number[];
}

export interface PromptScoreRequest {
  pythonBin: string;
  modelDir: string;
  adapterDir: string | null;
  prompts: PromptRequest[];
  eosTokenId: number;
  /** Folder for the config, requests and answers files. */
  workDir: string;
  /** Names the files, so both models' runs can share `workDir`. */
  label: string;
  signal?: AbortSignal;
}

/** The trainer's answers to each prompt: next-token log-probs and a greedy answer, in request order. */
export async function answerWithPytorch(req: PromptScoreRequest): Promise<PromptAnswer[]> {
  const requests = join(req.workDir, `prompts-${req.label}.json`);
  const output = join(req.workDir, `answers-${req.label}.json`);
  const configPath = join(req.workDir, `score-prompts-${req.label}.json`);
  const items = req.prompts.map((p) => ({
    id: p.id,
    prompt_input_ids: p.ids,
    image: p.image ? Buffer.from(p.image).toString('base64') : null,
    extra_images: (p.extraImages ?? []).map((b) => Buffer.from(b).toString('base64')),
    next_tokens: p.nextTokens,
    max_new_tokens: p.maxNewTokens,
  }));
  await writeFile(requests, JSON.stringify({ eos_token_id: req.eosTokenId, items }));
  await writeTrainerConfig(configPath, 'PromptScoreConfig', { model_dir: req.modelDir, adapter_dir: req.adapterDir, requests, output, device: 'cpu', dtype: 'float32' });
  const outcome = await runTrainer({ pythonBin: req.pythonBin, module: 'dpo_trainer.score_prompts', configPath, ...(req.signal && { signal: req.signal }), onEvent: () => {} });
  if (outcome.exitCode !== TrainerExit.Finished) throw new TorchEvalFailed(outcome);
  const answers = (JSON.parse(await readFile(output, 'utf8')) as { items: Array<{ id: string; next_logprobs: number[]; generated: number[] }> }).items;
  if (answers.length !== req.prompts.length) throw new TorchEvalFailed(outcome);
  return answers.map((a) => ({ id: a.id, nextLogprobs: a.next_logprobs, generated: a.generated }));
}
