/**
 * Runs the trainer's PyTorch evaluator (`python -m dpo_trainer.evaluate`,
 * trainer/dpo_trainer/evaluate.py) on local shard files: the preference metrics of the base model
 * (no adapter) or of the base with an adapter, its implicit rewards against the base.
 */
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
