/** `dpo list [--model M --dataset D --status S --schedule ID --limit N] [--json]`: recent runs. */
import { parseArgs } from 'node:util';
import type { RunLineage } from '../../contracts/lineage.js';
import { PIPELINE_WORKFLOW } from '../../contracts/messages.js';
import { withClient } from '../client.js';
import { UsageError } from '../errors.js';

export async function listCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      json: { type: 'boolean', default: false },
      limit: { type: 'string', default: '20' },
      model: { type: 'string' },
      dataset: { type: 'string' },
      status: { type: 'string' },
      schedule: { type: 'string' },
    },
  });
  // The same filters work in the Web UI's search box (contracts/lineage.ts names the attributes).
  const quote = (v: string) => `"${v.replace(/(["\\])/g, '\\$1')}"`;
  const clauses = [`WorkflowType = '${PIPELINE_WORKFLOW}'`];
  if (values.model) clauses.push(`DpoModel = ${quote(values.model)}`);
  if (values.dataset) clauses.push(`DpoDataset = ${quote(values.dataset)}`);
  if (values.schedule) clauses.push(`DpoSchedule = ${quote(values.schedule)}`);
  if (values.status) clauses.push(`ExecutionStatus = ${quote(capitalize(values.status))}`);
  return withClient(async (client) => {
    const runs: Array<{ runId: string; status: string; started: string; model?: unknown; dataset?: unknown; parentRun?: unknown; schedule?: unknown }> = [];
    for await (const w of client.workflow.list({ query: clauses.join(' AND ') })) {
      const lineage = w.memo?.lineage as RunLineage | undefined;
      runs.push({
        runId: w.workflowId,
        status: w.status.name,
        started: w.startTime.toISOString(),
        ...(lineage && { model: lineage.model, dataset: lineage.dataset, parentRun: lineage.parentRun, schedule: lineage.schedule }),
      });
      if (runs.length >= Number(values.limit)) break;
    }
    if (values.json) console.log(JSON.stringify(runs, null, 2));
    else for (const r of runs) console.log(`${r.started}  ${r.status.padEnd(10)}  ${r.runId}${r.parentRun ? `  (from ${r.parentRun})` : ''}`);
    return 0;
  });
}

/** `failed`, `timed_out`, `cancelled` -> the ExecutionStatus values visibility queries use. */
function capitalize(status: string): string {
  const names: Record<string, string> = { running: 'Running', completed: 'Completed', failed: 'Failed', cancelled: 'Canceled', canceled: 'Canceled', terminated: 'Terminated', timedout: 'TimedOut', continuedasnew: 'ContinuedAsNew' };
  const name = names[status.toLowerCase().replace(/[_-]/g, '')];
  if (!name) throw new UsageError(`--status "${status}": not a run status`, `one of ${Object.keys(names).join(', ')}`);
  return name;
}
