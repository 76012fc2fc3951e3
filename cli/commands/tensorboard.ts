/**
 * `dpo tensorboard <runId...> [--port N] [--dir D] [--bucket B] [--pull-only]`: pulls the
 * TensorBoard event files of one or more runs from storage (one run directory per train stage,
 * sweep branches side by side) and starts TensorBoard on them from the trainer's environment.
 */
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { storageRunId } from '../../contracts/lineage.js';
import { REPO_ROOT, trainerPython } from '../../io/deps.js';
import { Storage, storageEnvFromProcess } from '../../io/storage.js';
import { pullRunEvents } from '../../io/tensorboardEvents.js';
import { NotFoundError, UsageError } from '../errors.js';

export async function tensorboardCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      port: { type: 'string', default: '6006' },
      dir: { type: 'string', default: resolve(REPO_ROOT, '.dpo/tensorboard') },
      bucket: { type: 'string', default: 'dpo' },
      'pull-only': { type: 'boolean', default: false },
    },
  });
  if (!positionals.length) throw new UsageError('missing run id', 'usage: dpo tensorboard <runId...> [--port 6006] [--dir D] [--bucket dpo] [--pull-only]');
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`--port: "${values.port}" is not a port number`);
  const storage = new Storage(storageEnvFromProcess());
  for (const runId of positionals) {
    const stages = await pullRunEvents(storage, values.bucket, storageRunId(runId), values.dir);
    if (!stages.length) {
      throw new NotFoundError(
        `run ${runId} has no TensorBoard event files in bucket "${values.bucket}"`,
        'TensorBoard files are written when the run has train.report_to: tensorboard (or "all"); --bucket names another bucket',
      );
    }
    console.log(`pulled ${runId}: ${stages.join(', ')}`);
  }
  console.log(`event files in ${values.dir}`);
  if (values['pull-only']) return 0;
  console.log(`TensorBoard on http://127.0.0.1:${port}/ (Ctrl-C stops it)`);
  const child = spawn(trainerPython(), ['-m', 'tensorboard.main', '--logdir', values.dir, '--host', '127.0.0.1', '--port', String(port)], { stdio: 'inherit' });
  const stop = () => child.kill('SIGTERM');
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  return new Promise((done, fail) => {
    child.once('error', fail);
    child.once('exit', (code, signal) => done(signal ? 0 : (code ?? 1)));
  });
}
