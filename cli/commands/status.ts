/** `dpo status <runId> [--json]`: stages, training progress, replans, lineage. */
import { isTrainingKind } from '../../contracts/dag.js';
import { parseArgs } from 'node:util';
import { attemptCells } from '../../contracts/attempts.js';
import type { RunLineage } from '../../contracts/lineage.js';
import type { TrackerLinks } from '../../contracts/payloads.js';
import { statusQuery, type PipelineStatus } from '../../contracts/messages.js';
import { describeRun, withClient } from '../client.js';
import { requirePositional } from '../errors.js';
import { closedRunStatus, describeTrainProgress, trainProgress } from '../runPipeline.js';
import { webUiUrl } from '../summary.js';
import { describeTracking } from '../../contracts/tracking.js';

export async function statusCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean', default: false } } });
  const runId = requirePositional(positionals, 'run id');
  return withClient(async (client) => {
    const { handle, description } = await describeRun(client, runId);
    if (description.status.name !== 'RUNNING') {
      // An ended run answers from its result and memo: no worker needs to poll its queue.
      const closed = await closedRunStatus(handle, description);
      if (values.json) {
        console.log(JSON.stringify(closed, null, 2));
        return 0;
      }
      console.log(`run ${runId}: ${closed.status}  (${webUiUrl(runId)})`);
      for (const { id } of closed.plan ?? []) console.log(stageLine(id, closed.stages![id]!));
      if (closed.error) console.log(`  ${closed.status.toLowerCase()}: ${closed.error}\n  hint: ${closed.hint}`);
      if (closed.lineage) console.log(lineageLine(closed.lineage));
      for (const [id, tracking] of Object.entries(closed.tracking ?? {})) {
        for (const line of describeTracking(tracking, runId)) console.log(`  ${id} tracking: ${line}`);
      }
      return 0;
    }
    const lineage = (description.memo?.lineage ?? null) as RunLineage | null;
    const state = await handle.query(statusQuery).catch(() => null);
    const trainIds = state ? state.running.filter((id) => isTrainingKind(state.stages[id]?.kind)) : [];
    const progress = [...(await trainProgress(handle, trainIds)).values()];
    if (!state) {
      // Queries are answered by a worker of the run's task queue.
      const message = `no worker polls task queue "${description.taskQueue}" to answer the status query; start one with \`npm run worker\``;
      if (values.json) console.log(JSON.stringify({ runId, status: description.status.name, lineage, error: message }, null, 2));
      else console.log(`run ${runId}: ${description.status.name}\n  (${message})`);
      return 0;
    }
    if (values.json) {
      console.log(JSON.stringify({ ...state, status: description.status.name, training: progress, lineage }, null, 2));
      return 0;
    }
    console.log(`run ${runId}: ${description.status.name}  (${webUiUrl(runId)})`);
    for (const { id } of state.plan) console.log(stageLine(id, state.stages[id]!));
    for (const p of progress) console.log(describeTrainProgress(p));
    if (lineage) console.log(lineageLine(lineage));
    // The pipeline's own tracker run (MLflow's parent run) and the finished train stages', from the memo (the run goes on).
    for (const [name, link] of Object.entries((description.memo?.pipelineTrackerLinks ?? {}) as Record<string, string>)) console.log(`  run tracking: ${name}: ${link}`);
    for (const [id, links] of Object.entries((description.memo?.trackerLinks ?? {}) as TrackerLinks)) {
      for (const [name, link] of Object.entries(links)) console.log(`  ${id} tracking: ${name}: ${link}`);
    }
    return 0;
  });
}

function stageLine(id: string, s: PipelineStatus['stages'][string]): string {
  const seconds = s.startedAt ? `${(((s.finishedAt ?? Date.now()) - s.startedAt) / 1000).toFixed(0)}s` : '';
  const retried = s.retries ? `retries: ${attemptCells(s).retries}` : '';
  const extra = [s.cached ? 'cached' : '', retried, s.error ?? '', ...(s.replans ?? []).map((r) => `replan: ${r}`)].filter(Boolean).join('; ');
  return `  ${id.padEnd(16)} ${s.kind.padEnd(9)} ${s.state.padEnd(8)} ${seconds.padStart(6)}  ${extra}`;
}

function lineageLine(lineage: RunLineage): string {
  const parent = lineage.parentRun ? `${lineage.parentRelation === 'resume' ? 'resumes' : 'init from'} ${lineage.parentRun}; ` : '';
  const model = lineage.modelRevision ? `model revision ${lineage.modelRevision}; ` : '';
  return `  lineage: ${parent}${model}dataset revision ${lineage.datasetRevision ?? '(not yet)'}; config ${lineage.configHash}${lineage.schedule ? `; schedule ${lineage.schedule}` : ''}`;
}
