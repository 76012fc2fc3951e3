/**
 * `dpo stack up [--mlflow]|down` (also `npm run stack` / `npm run stack:stop`): the local Temporal
 * dev server and MinIO, and with --mlflow (or DPO_STACK_MLFLOW=1) an MLflow tracking server.
 */
import { UsageError } from '../errors.js';

export async function stackCommand(args: string[]): Promise<number> {
  const { stackDown, stackUp, STATE_DIR, temporalUiUrl } = await import('../../scripts/localStack.js');
  const log = (line: string) => console.log(`stack: ${line}`);
  if (args[0] === 'up') {
    if (args.includes('--mlflow')) process.env.DPO_STACK_MLFLOW = '1';
    await stackUp(log);
    const temporal = process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233';
    const minio = process.env.DPO_S3_ENDPOINT ?? 'http://127.0.0.1:9000';
    log(`ready. Temporal at ${temporal} (Web UI ${temporalUiUrl()}), MinIO at ${minio}; state in ${STATE_DIR}`);
    if (process.env.DPO_STACK_MLFLOW === '1') {
      log(`MLflow at http://127.0.0.1:${process.env.DPO_MLFLOW_PORT ?? 5000}: start GPU workers with MLFLOW_TRACKING_URI set to it`);
    }
    return 0;
  }
  if (args[0] === 'down') {
    const stopped = await stackDown(log);
    if (!stopped.length) log('nothing to stop (services this stack did not start are left alone)');
    return 0;
  }
  throw new UsageError(`stack: expected up or down${args[0] ? `, got "${args[0]}"` : ''}`, 'dpo stack up');
}
