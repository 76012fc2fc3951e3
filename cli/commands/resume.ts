/** `dpo resume <runId> [--set key=value ...] [--detach]`: a new run reusing finished stages and checkpoints. */
import { parseArgs } from 'node:util';
import { storageRunId, type RunLineage } from '../../contracts/lineage.js';
import { describeRun, withClient } from '../client.js';
import { NotFoundError, requirePositional, UsageError } from '../errors.js';
import { applyOverride } from '../overrides.js';
import { checkConfig, startPipeline } from '../runPipeline.js';
import { follow } from './run.js';

const RESUMABLE = ['FAILED', 'CANCELLED', 'TERMINATED', 'TIMED_OUT'];

export async function resumeCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { set: { type: 'string', multiple: true, default: [] }, detach: { type: 'boolean', default: false }, 'run-id': { type: 'string' } },
  });
  const previous = requirePositional(positionals, 'run id');
  return withClient(async (client) => {
    const { handle, description } = await describeRun(client, previous);
    const state = description.status.name;
    if (!RESUMABLE.includes(state)) {
      const hint = state === 'RUNNING' ? `it is still running; \`dpo cancel ${previous}\` first` : 'only failed, cancelled, terminated or timed-out runs are resumed; start a new one with `dpo run`';
      throw new UsageError(`run "${previous}" is ${state.toLowerCase()}: nothing to resume`, hint);
    }
    const history = await handle.fetchHistory();
    const started = history.events?.[0]?.workflowExecutionStartedEventAttributes;
    const payload = started?.input?.payloads?.[0]?.data;
    if (!payload) throw new NotFoundError(`run "${previous}" has no pipeline config in its history`, 'was it started as dpoPipeline?');
    const raw = JSON.parse(Buffer.from(payload).toString('utf8')) as Record<string, unknown>;
    for (const assignment of values.set) applyOverride(raw, assignment);
    // Checkpoints live under the run's storage name (scheduled runs' ids lose their ":").
    raw.resume_from_run = storageRunId(previous);
    // The resumed run is not started by the schedule: pin `previous` to the adapter the old run used.
    if (raw.init_from === 'previous') {
      const initFromRun = (description.memo?.lineage as RunLineage | undefined)?.initFromRun;
      if (initFromRun) raw.init_from = initFromRun;
      else delete raw.init_from;
    }
    const config = checkConfig(raw, `resume ${previous}`);
    const next = await startPipeline(client, raw, config, values['run-id']);
    console.log(`resuming ${previous} as ${next.workflowId}: finished data stages are reused, training continues from the newest checkpoint`);
    if (values.detach) return 0;
    return follow(next);
  });
}
