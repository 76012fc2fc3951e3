/**
 * `dpo pull <runId> [--stage ID] [--what adapter|report] --to DIR`: a finished run's final adapter
 * (with its model card as README.md; `model.load_adapter(DIR)` loads it) or its report, from the
 * run's storage into a local folder.
 */
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import type { PipelineResult } from '../../contracts/payloads.js';
import { depsFromEnv } from '../../io/deps.js';
import { pullAdapter, pullReport, PullTargetError } from '../../io/pull.js';
import { describeRun, withClient } from '../client.js';
import { CliError, NotFoundError, requirePositional, UsageError } from '../errors.js';

const PULL_USAGE = 'usage: dpo pull <runId> [--stage ID] [--what adapter|report] --to DIR';

export async function pullCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { stage: { type: 'string' }, what: { type: 'string', default: 'adapter' }, to: { type: 'string' } },
  });
  const runId = requirePositional(positionals, 'run id');
  if (values.what !== 'adapter' && values.what !== 'report') throw new UsageError(`--what "${values.what}": expected adapter or report`, PULL_USAGE);
  if (!values.to) throw new UsageError('missing --to DIR', PULL_USAGE);
  const to = resolve(values.to);
  return withClient(async (client) => {
    const { handle, description } = await describeRun(client, runId);
    if (description.status.name !== 'COMPLETED') {
      throw new CliError(`run "${runId}" is ${description.status.name}: only a completed run has a final ${values.what}`, `see \`dpo status ${runId}\``);
    }
    const result = (await handle.result()) as PipelineResult;
    const { storage } = depsFromEnv();
    try {
      if (values.what === 'adapter') {
        const stage = pickStage(runId, 'train', Object.keys(result.trainings), values.stage);
        const t = result.trainings[stage]!;
        const cardKey = Object.values(result.reports).find((r) => r.modelCards?.[stage])?.modelCards?.[stage];
        const files = await pullAdapter(storage, t.adapterBucket, t.adapterPrefix, to, cardKey ? { bucket: result.bucket, key: cardKey } : undefined);
        console.log(`pulled the adapter of ${runId}/${stage} into ${to}: ${files.join(', ')}`);
      } else {
        const stage = pickStage(runId, 'report', Object.keys(result.reports), values.stage);
        const files = await pullReport(storage, result.bucket, result.reports[stage]!.manifestKey!, to);
        console.log(`pulled the report of ${runId}/${stage} into ${to}: ${files.join(', ')}`);
      }
    } catch (err) {
      if (err instanceof PullTargetError) throw new UsageError(err.message, PULL_USAGE);
      throw err;
    }
    return 0;
  });
}

function pickStage(runId: string, kind: string, ids: string[], wanted: string | undefined): string {
  if (wanted) {
    if (!ids.includes(wanted)) throw new NotFoundError(`run "${runId}" has no ${kind} stage "${wanted}"`, `its ${kind} stages: ${ids.join(', ') || 'none'}`);
    return wanted;
  }
  if (ids.length === 1) return ids[0]!;
  if (!ids.length) throw new NotFoundError(`run "${runId}" has no ${kind} stage`);
  throw new UsageError(`run "${runId}" has ${ids.length} ${kind} stages (${ids.join(', ')}): name one with --stage`, PULL_USAGE);
}
