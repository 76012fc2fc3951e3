/**
 * Stages a model folder (as written by save_pretrained) onto local disk: from the Hub into the
 * worker's Hub cache (io/hubModels.ts), from s3://bucket/prefix into a cache keyed by the objects'
 * etags, or used in place when it is a local folder.
 */
import { createHash, randomUUID } from 'node:crypto';
import { access, mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { FailureType, nonRetryable } from '../contracts/errors.js';
import { isHubModelSource } from '../contracts/hubRepo.js';
import type { ActivityDeps } from './deps.js';
import { stageHubModel } from './hubModels.js';
import { parseS3Uri } from './storage.js';

const COMPLETE_MARKER = '.dpo-complete';

export async function stageModel(deps: ActivityDeps, source: string, only?: (file: string) => boolean): Promise<string> {
  if (isHubModelSource(source)) return stageHubModel(deps.workDir, source, only);
  if (!source.startsWith('s3://')) {
    const dir = resolve(source.startsWith('file://') ? source.slice('file://'.length) : source);
    if (!(await stat(dir).catch(() => null))?.isDirectory()) {
      throw nonRetryable(`model.source "${source}": no such folder (${dir})`, FailureType.ModelLoadError);
    }
    return dir;
  }
  const { bucket, prefix } = parseS3Uri(source);
  const objects = (await deps.storage.list(bucket, prefix).catch(() => [])).filter(
    (o) => !only || only(o.key.slice(prefix.length)),
  );
  if (!objects.some((o) => o.key.endsWith('config.json'))) {
    throw nonRetryable(
      `model.source "${source}": no model files there (expected config.json and weights saved by save_pretrained)`,
      FailureType.ModelLoadError,
    );
  }
  const fingerprint = createHash('sha256')
    .update(JSON.stringify(objects.map((o) => [o.key, o.etag])))
    .digest('hex')
    .slice(0, 24);
  const dir = join(deps.workDir, 'models', fingerprint);
  if (await exists(join(dir, COMPLETE_MARKER))) return dir;
  // Unique per call: parallel activities in one worker may stage the same model in the same millisecond.
  const tmp = `${dir}.tmp-${process.pid}-${randomUUID()}`;
  await mkdir(tmp, { recursive: true });
  for (const o of objects) await deps.storage.downloadFile(bucket, o.key, join(tmp, ...o.key.slice(prefix.length).split('/')));
  await writeFile(join(tmp, COMPLETE_MARKER), source);
  try {
    await rename(tmp, dir);
  } catch (err) {
    // Another activity staged the same model meanwhile: folders are renamed whole, so theirs is complete.
    await rm(tmp, { recursive: true, force: true });
    if (!(await exists(join(dir, COMPLETE_MARKER)))) throw err;
  }
  return dir;
}

/** Files the CPU stages need: tokenizer, chat template and processor configs, not weights. */
export const isTokenizerFile = (file: string) => !/\.(safetensors|bin|pt|onnx|gguf)$/.test(file);

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
