/**
 * The pytorch evaluate engine (contracts/evalEngine.ts), for model families the ONNX exporter
 * cannot build a correct graph for: each held-out shard is scored by the trainer's evaluator on
 * this CPU worker, once with the base model and once with the base plus the DPO adapter. Its means
 * come back as counts, so the shards sum in `finishEvaluation` exactly as the ONNX engine's do.
 */
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ApplicationFailure, Context } from '@temporalio/activity';
import { FailureType } from '../../contracts/errors.js';
import { countsFromMetrics, type PreferenceCounts } from '../../contracts/evalMetrics.js';
import type { ActivityDeps } from '../../io/deps.js';
import { sha256Hex } from '../../io/files.js';
import { stageModel } from '../../io/models.js';
import { evaluateWithPytorch, TorchEvalFailed } from '../../bridge/torchEvaluate.js';
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
