/**
 * The per-user cache that scripts/setup.sh fills (tools, the JPEG decoder addon, demo models and
 * data), shared by every clone, and the versions scripts/versions.sh pins for it.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from './deps.js';

/** `DPO_CACHE_DIR`, else ~/.cache/dpo-vlm (as scripts/versions.sh computes it). */
export function userCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return (env.DPO_CACHE_DIR ?? join(homedir(), '.cache/dpo-vlm')).replace('$HOME', homedir());
}

/** scripts/versions.sh's `NAME="value"` pins. */
export function pinnedVersions(): Record<string, string> {
  const text = readFileSync(join(REPO_ROOT, 'scripts/versions.sh'), 'utf8');
  return Object.fromEntries([...text.matchAll(/^([A-Z_0-9]+)="([^"]*)"/gm)].map((m) => [m[1]!, m[2]!]));
}
