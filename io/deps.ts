/** What activities need from their host; tests and workers build it from their environment. */
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Storage, storageEnvFromProcess } from './storage.js';

export interface ActivityDeps {
  storage: Storage;
  /** Local scratch space: staged models, shards, trainer outputs. */
  workDir: string;
  /** Python interpreter of trainer/'s virtualenv. */
  pythonBin: string;
}

export const REPO_ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));

export function trainerPython(env: NodeJS.ProcessEnv = process.env): string {
  return env.DPO_TRAINER_PYTHON ?? resolve(REPO_ROOT, 'trainer/.venv/bin/python');
}

export function depsFromEnv(env: NodeJS.ProcessEnv = process.env): ActivityDeps {
  return {
    storage: new Storage(storageEnvFromProcess(env)),
    workDir: resolve(env.DPO_WORK_DIR ?? resolve(REPO_ROOT, '.dpo/work')),
    pythonBin: trainerPython(env),
  };
}
