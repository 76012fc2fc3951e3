/**
 * evaluate (cpu queue): held-out preference accuracy and reward margins of the base model and of
 * the DPO-trained adapter, scored by the Python trainer's evaluate command on the eval shards.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ApplicationFailure, Context, heartbeat } from '@temporalio/activity';
import { FailureType } from '../lib/errors.js';
import { keys } from '../lib/keys.js';
import type { EvalMetrics, EvaluateInput, EvaluateResult } from '../lib/stages.js';
import type { ActivityDeps } from './deps.js';
import { stageModel } from './models.js';
import { stageShards } from './train.js';
import { runTrainer, TrainerExit } from './trainerProcess.js';

export async function evaluateModel(deps: ActivityDeps, input: EvaluateInput): Promise<EvaluateResult> {
  const ctx = Context.current();
  const ticker = setInterval(() => heartbeat({ phase: 'evaluating' }), 5_000);
  const dir = join(deps.workDir, 'runs', input.runId, `${input.stageId}-${ctx.info.attempt}-${process.pid}`);
  try {
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    const modelDir = await stageModel(deps, input.modelSource);
    const shards = await stageShards(deps, input.bucket, input.shards.manifestKey, input.evalSplit);
    const adapterDir = join(dir, 'adapter');
    const files = await deps.storage.downloadPrefix(input.adapterBucket, input.adapterPrefix, adapterDir);
    if (!files.length) {
      throw ApplicationFailure.nonRetryable(`no adapter under s3://${input.adapterBucket}/${input.adapterPrefix}`, FailureType.ModelLoadError);
    }
    const score = (adapter: string | null, name: string) =>
      scoreModel(deps, join(dir, `${name}.json`), ctx.cancellationSignal, {
        model_dir: modelDir,
        adapter_dir: adapter,
        shards,
        batch_size: input.batchSize,
        beta: input.beta,
        device: 'auto',
        dtype: 'float32',
      });
    const base = await score(null, 'base');
    const trained = await score(adapterDir, 'trained');
    const metricsKey = keys.evalMetrics(input.runId, input.stageId);
    const adapter = `s3://${input.adapterBucket}/${input.adapterPrefix}`;
    await deps.storage.putJson(input.bucket, metricsKey, { base, trained, adapter });
    return { base, trained, metricsKey, adapter };
  } finally {
    clearInterval(ticker);
    await rm(dir, { recursive: true, force: true });
  }
}

async function scoreModel(deps: ActivityDeps, configPath: string, signal: AbortSignal, config: object): Promise<EvalMetrics> {
  await writeFile(configPath, JSON.stringify(config, null, 2));
  let metrics: EvalMetrics | undefined;
  const outcome = await runTrainer({
    pythonBin: deps.pythonBin,
    module: 'dpo_trainer.evaluate',
    configPath,
    signal,
    onEvent: (event) => {
      if (event.event === 'eval_result') metrics = event.metrics as EvalMetrics;
    },
  });
  if (outcome.exitCode === TrainerExit.Finished && metrics) return metrics;
  const said = outcome.error ? `${outcome.error.error_type}: ${outcome.error.message}` : outcome.stderrTail.slice(-800);
  if (outcome.exitCode === TrainerExit.InvalidInput) {
    throw ApplicationFailure.nonRetryable(`evaluate refused its input: ${said}`, FailureType.ModelLoadError);
  }
  throw ApplicationFailure.retryable(`evaluate exited with ${outcome.exitCode ?? outcome.signal}: ${said}`, 'EvaluatorCrash');
}
