/** `dpo logs <runId> [--json]`: stage events and trainer progress, from the run's history. */
import { parseArgs } from 'node:util';
import { describeRun, withClient } from '../client.js';
import { requirePositional } from '../errors.js';
import { historyLog, renderLogLine } from '../historyLog.js';

export async function logsCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean', default: false } } });
  const runId = requirePositional(positionals, 'run id');
  return withClient(async (client) => {
    const { handle } = await describeRun(client, runId);
    const entries = await historyLog(handle);
    if (values.json) console.log(JSON.stringify(entries, null, 2));
    else for (const e of entries) console.log(renderLogLine(e));
    return 0;
  });
}
