/**
 * report: Markdown and JSON in the run's folder in storage: the evaluation table (base vs DPO
 * with deltas, one column pair per evaluation), the planned DAG as a Mermaid diagram, the stage
 * timeline (cache hits, failures) and where every output is.
 */
import type { EvalMetrics, ReportInput, ReportResult } from '../lib/stages.js';
import { keys } from '../lib/keys.js';
import { renderSweepTable } from '../lib/sweep.js';
import type { ActivityDeps } from './deps.js';

export async function writeReport(deps: ActivityDeps, input: ReportInput): Promise<ReportResult> {
  const prefix = keys.reportPrefix(input.runId, input.stageId);
  const markdownKey = `${prefix}report.md`;
  const jsonKey = `${prefix}report.json`;
  const report = {
    runId: input.runId,
    name: input.config.name,
    model: input.config.model.source,
    dataset: input.config.dataset.source,
    timeline: input.timeline,
    dataStages: input.dataStages,
    trainings: input.trainings,
    evaluations: input.evaluations,
    ...(input.sweep && { sweep: input.sweep }),
    config: input.config,
  };
  // JSON first, Markdown last: the Markdown report's presence means the report is complete.
  await deps.storage.putJson(input.bucket, jsonKey, report);
  await deps.storage.putBuffer(input.bucket, markdownKey, renderMarkdown(input), 'text/markdown; charset=utf-8');
  return { markdownKey, jsonKey };
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const num = (x: number) => x.toFixed(4);
const signed = (s: string) => (s.startsWith('-') ? s : `+${s}`);

const METRIC_ROWS: Array<[string, (m: EvalMetrics) => number, (x: number) => string]> = [
  ['preference accuracy (held-out)', (m) => m.preference_accuracy, pct],
  ['reward accuracy vs reference', (m) => m.reward_accuracy, pct],
  ['mean reward margin', (m) => m.reward_margin_mean, num],
  ['mean log-prob margin', (m) => m.logp_margin_mean, num],
];

/** Base vs DPO, one DPO column (and delta) per evaluation stage. */
export function evaluationTable(evaluations: ReportInput['evaluations']): string[] {
  const entries = Object.entries(evaluations);
  if (!entries.length) return ['(no evaluation)'];
  const base = entries[0]![1].base;
  const header = ['metric', 'base', ...entries.flatMap(([id]) => [id, 'delta'])];
  return [
    `| ${header.join(' | ')} |`,
    `| --- | ${header.slice(1).map(() => '---:').join(' | ')} |`,
    ...METRIC_ROWS.map(
      ([name, get, fmt]) =>
        `| ${name} | ${fmt(get(base))} | ${entries.flatMap(([, e]) => [fmt(get(e.trained)), signed(fmt(get(e.trained) - get(e.base)))]).join(' | ')} |`,
    ),
  ];
}

function renderMarkdown(input: ReportInput): string {
  const s3 = (key: string) => `s3://${input.bucket}/${key}`;
  const evaluations = Object.entries(input.evaluations);
  const anyEval = evaluations[0]?.[1];
  const lines = [
    `# DPO run ${input.runId}`,
    '',
    `- model: \`${input.config.model.source}\``,
    `- dataset: \`${input.config.dataset.source}\`${anyEval ? ` (${anyEval.base.samples} held-out pairs)` : ''}`,
    '',
    '## Evaluation',
    '',
    ...evaluationTable(input.evaluations),
    '',
    ...evaluations.map(([id, e]) => `- ${id}: adapter \`${e.adapter}\`, metrics \`${s3(e.metricsKey)}\``),
    '',
    // issue 7: a sweep ends in one comparison table, one row per branch.
    ...(input.sweep?.length ? ['## Sweep', '', ...renderSweepTable(input.sweep, 'markdown'), ''] : []),
    '## Training',
    '',
    ...Object.entries(input.trainings).flatMap(([id, t]) => [
      `### ${id}`,
      '',
      `- adapter: \`s3://${t.adapterBucket}/${t.adapterPrefix}\``,
      `- steps: ${t.finalStep}, wall time ${t.trainSeconds.toFixed(1)} s` + (t.resumedFromStep !== null ? `, resumed from step ${t.resumedFromStep}` : ''),
      `- final metrics: ${Object.entries(t.metrics).map(([k, v]) => `${k}=${num(v)}`).join(', ')}`,
      ...(t.replans?.length ? [`- out-of-memory replans: ${t.replans.join('; ')}`] : []),
      `- checkpoints: ${t.checkpointKeys.map((k) => `\`${s3(k)}\``).join(', ') || '(none)'}`,
      '',
    ]),
    '## Pipeline',
    '',
    '```mermaid',
    input.dagMermaid,
    '```',
    '',
    '| stage | kind | state | cached | seconds | summary |',
    '| --- | --- | --- | --- | ---: | --- |',
    ...input.timeline.map((t) => {
      const data = input.dataStages[t.id];
      const seconds = t.startedAt && t.finishedAt ? ((t.finishedAt - t.startedAt) / 1000).toFixed(1) : '';
      const summary = data ? Object.entries(data.summary).map(([k, v]) => `${k}=${v}`).join(', ') : (t.error ?? '');
      return `| ${t.id} | ${t.kind} | ${t.state} | ${t.cached ? 'yes' : ''} | ${seconds} | ${summary} |`;
    }),
    '',
  ];
  return lines.join('\n');
}
