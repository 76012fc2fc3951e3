/**
 * reference (dpo-gpu queue): the base model's log-probs of every train pair's chosen and rejected
 * completion, computed once by `python -m dpo_trainer.reference` and stored as a content-addressed
 * stage output. The key is (base model fingerprint, shard stage hash, split, dtype, length
 * settings), none of which a sweep over beta/loss/learning rate or a resume changes, so those runs
 * all reuse one output; train stages then skip their reference forward pass
 * (`precompute_ref_log_probs`).
 *
 *   stages/reference/<hash>/logps/ref_logps.parquet + logps/manifest.json (the trainer's, sha256)
 *   stages/reference/<hash>/manifest.json                                 (the stage's, last)
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Context, heartbeat } from '@temporalio/activity';
import { MANIFEST_FILE } from '../../contracts/keys.js';
import type { ReferenceInput, StageResult } from '../../contracts/payloads.js';
import type { ActivityDeps } from '../../io/deps.js';
import { stageModel } from '../../io/models.js';
import { runCachedStage, stageHash } from '../../io/stageCache.js';
import type { ReferenceManifest } from '../../contracts/manifests.js';
import { stageShards } from '../../io/staging.js';
import { modelFingerprint } from '../../io/fingerprint.js';
import { runTrainer, TrainerExit } from '../../bridge/trainerProcess.js';
import { trainerFailure } from '../../bridge/trainerFailure.js';
import { withHeartbeat } from '../heartbeat.js';
import { referenceRunConfig, writeTrainerConfig } from '../../bridge/trainerConfig.js';

export async function computeReference(deps: ActivityDeps, input: ReferenceInput): Promise<StageResult> {
  const ctx = Context.current();
  const progress = { phase: 'staging', samplesDone: 0, samples: 0 };
  return withHeartbeat(progress, async () => {
    const modelDir = await stageModel(deps, input.modelSource);
    const hash = stageHash('reference', {
      model: await modelFingerprint(modelDir),
      shards: input.shards.hash,
      split: input.trainSplit,
      dtype: input.dtype,
      lengths: input.lengths,
    });
    return await runCachedStage<ReferenceManifest>(deps.storage, input.bucket, 'reference', hash, async (prefix) => {
      const dir = join(deps.workDir, 'reference', `${hash}-${ctx.info.attempt}-${process.pid}`);
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true });
      try {
        const shards = await stageShards(deps, { bucket: input.bucket, manifestKey: input.shards.manifestKey, split: input.trainSplit });
        const configPath = join(dir, 'reference-config.json');
        const outputDir = join(dir, 'out');
        await writeTrainerConfig(configPath, 'ReferenceConfig', referenceRunConfig({ modelDir, shards, outputDir, batchSize: input.batchSize, dtype: input.dtype, paddingFree: input.paddingFree }));
        progress.phase = 'scoring';
        let finished: { samples: number; files: string[]; seconds: number } | undefined;
        const outcome = await runTrainer({
          pythonBin: deps.pythonBin,
          module: 'dpo_trainer.reference',
          configPath,
          signal: ctx.cancellationSignal,
          onEvent: (event) => {
            if (event.event === 'reference_progress') {
              progress.samplesDone = event.samples_done as number;
              progress.samples = event.samples as number;
              heartbeat(progress);
            } else if (event.event === 'reference_finished') {
              finished = { samples: event.samples as number, files: event.files as string[], seconds: event.seconds as number };
            }
          },
        });
        if (outcome.exitCode !== TrainerExit.Finished || !finished) throw trainerFailure(outcome, 'reference');
        progress.phase = 'uploading';
        const logpsPrefix = `${prefix}logps/`;
        // The trainer's manifest goes last, under logps/, so it never shadows the stage manifest.
        await deps.storage.uploadDir(input.bucket, outputDir, logpsPrefix, MANIFEST_FILE);
        return {
          logpsPrefix,
          files: finished.files,
          samples: finished.samples,
          summary: { samples: finished.samples, seconds: Math.round(finished.seconds * 10) / 10 },
        };
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  });
}

