/** `dpo estimate <config> [--gpu-memory 80GB] [--json]`: GPU memory estimate and a starting micro-batch. */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { depsFromEnv, trainerPython } from '../../io/deps.js';
import { parseS3Uri } from '../../io/storage.js';
import { requirePositional } from '../errors.js';
import { loadConfigFile } from '../runPipeline.js';

/**
 * `dpo estimate`: the trainer's memory estimator (python -m dpo_trainer.estimate) on the resolved
 * config, so it sees the same defaults the run would. It reads the model's config.json only.
 */
export async function estimateCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { 'gpu-memory': { type: 'string' }, 'model-dir': { type: 'string' }, json: { type: 'boolean', default: false } },
  });
  const { config } = await loadConfigFile(requirePositional(positionals, 'config file'));
  const dir = await mkdtemp(join(tmpdir(), 'dpo-estimate-'));
  try {
    const path = join(dir, 'config.json');
    await writeFile(path, JSON.stringify(config));
    const pyArgs = ['-m', 'dpo_trainer.estimate', '--config', path];
    if (values['gpu-memory']) pyArgs.push('--gpu-memory', values['gpu-memory']);
    let modelDir = values['model-dir'];
    if (!modelDir && config.model.source.startsWith('s3://')) {
      // The estimator needs config.json only: fetch it from object storage.
      const { bucket, prefix } = parseS3Uri(config.model.source);
      modelDir = join(dir, 'model');
      await depsFromEnv()
        .storage.downloadFile(bucket, `${prefix}config.json`, join(modelDir, 'config.json'))
        .catch((err: Error) => {
          throw new Error(`cannot read ${config.model.source}config.json from object storage: ${err.message}`);
        });
    }
    if (modelDir) pyArgs.push('--model-dir', modelDir);
    if (values.json) pyArgs.push('--json');
    const child = spawnSync(trainerPython(), pyArgs, { stdio: 'inherit', env: { OMP_NUM_THREADS: '1', ...process.env } });
    if (child.error) throw new Error(`cannot run the trainer's Python (${trainerPython()}): ${child.error.message}; run scripts/setup.sh`);
    return child.status === 0 ? 0 : child.status === 65 ? 2 : 1;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
