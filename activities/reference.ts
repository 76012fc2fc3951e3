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
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { basename, join, relative } from 'node:path';
import { ApplicationFailure, Context, heartbeat } from '@temporalio/activity';
import { FailureType } from '../lib/errors.js';
import { MANIFEST_FILE } from '../lib/keys.js';
import type { ReferenceInput, StageResult } from '../lib/stages.js';
import type { ActivityDeps } from './deps.js';
import { stageModel } from './models.js';
import { runCachedStage, stageHash, type StageManifestBase } from './stageCache.js';
import { stageShards } from './train.js';
import { runTrainer, TrainerExit } from './trainerProcess.js';
import { referenceRunConfig, writeTrainerConfig } from '../lib/trainerConfig.js';

export interface ReferenceManifest extends StageManifestBase {
  /** Key prefix of the trainer's output folder (ref_logps.parquet + its manifest.json). */
  logpsPrefix: string;
  files: string[];
  samples: number;
}

export async function computeReference(deps: ActivityDeps, input: ReferenceInput): Promise<StageResult> {
  const ctx = Context.current();
  const progress = { phase: 'staging', samplesDone: 0, samples: 0 };
  const ticker = setInterval(() => heartbeat(progress), 5_000);
  try {
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
        const shards = await stageShards(deps, input.bucket, input.shards.manifestKey, input.trainSplit);
        const configPath = join(dir, 'reference-config.json');
        const outputDir = join(dir, 'out');
        await writeTrainerConfig(configPath, 'ReferenceConfig', referenceRunConfig({ modelDir, shards, outputDir, batchSize: input.batchSize, dtype: input.dtype }));
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
        if (outcome.exitCode !== TrainerExit.Finished || !finished) {
          const said = outcome.error ? `${outcome.error.error_type}: ${outcome.error.message}` : outcome.stderrTail.slice(-800);
          if (outcome.exitCode === TrainerExit.InvalidInput) {
            const type = outcome.error?.error_type === 'ModelLoadError' ? FailureType.ModelLoadError : FailureType.InvalidInput;
            throw ApplicationFailure.nonRetryable(`reference refused its input: ${said}`, type);
          }
          throw ApplicationFailure.retryable(`reference exited with ${outcome.exitCode ?? outcome.signal}: ${said}`, 'TrainerCrash');
        }
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
  } finally {
    clearInterval(ticker);
  }
}

/**
 * Downloads a reference stage's output for the train activity; returns the local parquet paths
 * (each beside the trainer's manifest.json, which the trainer verifies).
 */
export async function stageReference(deps: ActivityDeps, bucket: string, manifestKey: string, dir: string): Promise<string[]> {
  const manifest = await deps.storage.getJson<ReferenceManifest>(bucket, manifestKey);
  await rm(dir, { recursive: true, force: true });
  await deps.storage.downloadPrefix(bucket, manifest.logpsPrefix, dir);
  return manifest.files.map((f) => join(dir, f));
}

/**
 * Identifies the base model's content. Staged s3:// models live in a folder named by the hash of
 * their objects' etags; a local folder is hashed file by file (names and bytes).
 */
export async function modelFingerprint(modelDir: string): Promise<string> {
  const staged = stagedModelFingerprint(modelDir);
  if (staged) return staged;
  const digest = createHash('sha256');
  for (const file of (await listFiles(modelDir)).sort()) {
    digest.update(`${file}\0`);
    for await (const chunk of createReadStream(join(modelDir, file))) digest.update(chunk as Buffer);
  }
  return digest.digest('hex').slice(0, 32);
}

function stagedModelFingerprint(modelDir: string): string {
  // stageModel's cache: <workDir>/models/<24-hex fingerprint of the source objects>.
  const name = basename(modelDir);
  return basename(join(modelDir, '..')) === 'models' && /^[0-9a-f]{24}$/.test(name) ? `s3:${name}` : '';
}

async function listFiles(root: string, dir = root): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await listFiles(root, path)));
    else if (entry.isFile() && !entry.name.startsWith('.dpo-')) out.push(relative(root, path));
  }
  return out;
}
