/**
 * What "the same base model" means for every content-addressed cache (the reference stage's
 * log-probs, the evaluate stage's base-model ONNX export): one fingerprint of a model folder.
 */
import { createReadStream } from 'node:fs';
import { createHash } from 'node:crypto';
import { basename, join } from 'node:path';
import { listFilesRecursive } from './files.js';

/** Files the staging caches write beside a model (markers, locks), never part of it. */
const isStagingMarker = (name: string) => name.startsWith('.dpo-');

/**
 * Identifies the base model's content. A model staged from s3:// lives in a folder named by the
 * hash of its objects' etags (io/models.ts), one from the Hub in a snapshot named by its commit
 * sha (io/hubModels.ts); both already are content fingerprints; a local
 * folder is hashed file by file (relative names and bytes).
 */
export async function modelFingerprint(modelDir: string): Promise<string> {
  const staged = stagedModelFingerprint(modelDir);
  if (staged) return staged;
  const digest = createHash('sha256');
  for (const file of await listFilesRecursive(modelDir, isStagingMarker)) {
    digest.update(`${file}\0`);
    for await (const chunk of createReadStream(join(modelDir, file))) digest.update(chunk as Buffer);
  }
  return digest.digest('hex').slice(0, 32);
}

function stagedModelFingerprint(modelDir: string): string {
  // stageModel's cache: <workDir>/models/<24-hex fingerprint of the source objects>.
  const name = basename(modelDir);
  // The Hub cache: models--Org--name/snapshots/<commit sha>; a commit names its content.
  const repo = basename(join(modelDir, '..', '..'));
  if (basename(join(modelDir, '..')) === 'snapshots' && /^[0-9a-f]{40}$/.test(name) && repo.startsWith('models--')) return `hf:${repo}@${name}`;
  return basename(join(modelDir, '..')) === 'models' && /^[0-9a-f]{24}$/.test(name) ? `s3:${name}` : '';
}
