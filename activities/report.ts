/** report: a Markdown and a JSON summary of the run in its folder in storage. */
import type { EvalMetrics, ReportInput, ReportResult } from '../lib/stages.js';
import { keys } from '../lib/keys.js';
import type { ActivityDeps } from './deps.js';

export async function writeReport(deps: ActivityDeps, input: ReportInput): Promise<ReportResult> {
  const prefix = keys.reportPrefix(input.runId);
  const markdownKey = `${prefix}report.md`;
  const jsonKey = `${prefix}report.json`;
  const report = {
    runId: input.runId,
    name: input.config.name,
    model: input.config.model.source,
    dataset: input.config.dataset.source,
    stages: input.stages,
    train: input.train,
    evaluation: input.evaluation,
    config: input.config,
  };
  await deps.storage.putJson(input.bucket, jsonKey, report);
  await deps.storage.putBuffer(input.bucket, markdownKey, renderMarkdown(input), 'text/markdown; charset=utf-8');
  return { markdownKey, jsonKey };
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const num = (x: number) => x.toFixed(4);

export function evaluationTable(base: EvalMetrics, trained: EvalMetrics): string[] {
  const rows: Array<[string, (m: EvalMetrics) => number, (x: number) => string]> = [
    ['preference accuracy (held-out)', (m) => m.preference_accuracy, pct],
    ['reward accuracy vs reference', (m) => m.reward_accuracy, pct],
    ['mean reward margin', (m) => m.reward_margin_mean, num],
    ['mean log-prob margin', (m) => m.logp_margin_mean, num],
  ];
  return [
    '| metric | base | DPO | delta |',
    '| --- | ---: | ---: | ---: |',
    ...rows.map(([name, get, fmt]) => `| ${name} | ${fmt(get(base))} | ${fmt(get(trained))} | ${fmt(get(trained) - get(base))} |`),
  ];
}

function renderMarkdown(input: ReportInput): string {
  const { train, evaluation } = input;
  const lines = [
    `# DPO run ${input.runId}`,
    '',
    `- model: \`${input.config.model.source}\``,
    `- dataset: \`${input.config.dataset.source}\` (${evaluation.base.samples} held-out pairs)`,
    `- adapter: \`s3://${input.bucket}/${train.adapterPrefix}\``,
    `- steps: ${train.finalStep}, training time ${train.trainSeconds.toFixed(1)} s` +
      (train.resumedFromStep !== null ? `, resumed from step ${train.resumedFromStep}` : ''),
    '',
    '## Evaluation',
    '',
    ...evaluationTable(evaluation.base, evaluation.trained),
    '',
    '## Stages',
    '',
    '| stage | cached | summary |',
    '| --- | --- | --- |',
    ...input.stages.map((s) => `| ${s.kind} | ${s.cached ? 'yes' : 'no'} | ${Object.entries(s.summary).map(([k, v]) => `${k}=${v}`).join(', ')} |`),
    '',
    '## Final training metrics',
    '',
    ...Object.entries(train.metrics).map(([k, v]) => `- ${k}: ${num(v)}`),
    '',
    '## Checkpoints',
    '',
    ...train.checkpointKeys.map((k) => `- \`s3://${input.bucket}/${k}\``),
    '',
  ];
  return lines.join('\n');
}
