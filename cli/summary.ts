/** The table printed at the end of a run: base vs DPO, and where everything is stored. */
import type { PipelineResult } from '../lib/stages.js';

export function webUiUrl(runId: string, namespace = process.env.TEMPORAL_NAMESPACE ?? 'default'): string {
  const base = process.env.DPO_TEMPORAL_UI_URL ?? `http://127.0.0.1:${process.env.DPO_TEMPORAL_UI_PORT ?? 8233}`;
  return `${base}/namespaces/${encodeURIComponent(namespace)}/workflows/${encodeURIComponent(runId)}`;
}

export function renderSummary(result: PipelineResult): string {
  const { base, trained } = result.evaluation;
  const rows: Array<[string, number, number, (x: number) => string]> = [
    ['held-out preference accuracy', base.preference_accuracy, trained.preference_accuracy, (x) => `${(x * 100).toFixed(1)}%`],
    ['mean reward margin', base.reward_margin_mean, trained.reward_margin_mean, (x) => x.toFixed(4)],
    ['mean log-prob margin', base.logp_margin_mean, trained.logp_margin_mean, (x) => x.toFixed(4)],
  ];
  const width = Math.max(...rows.map((r) => r[0].length));
  const s3 = (key: string) => `s3://${result.bucket}/${key}`;
  const lines = [
    '',
    `Run ${result.runId}: ${trained.samples} held-out pairs, ${result.train.finalStep} training steps`,
    '',
    `  ${'metric'.padEnd(width)}  ${'base'.padStart(10)}  ${'DPO'.padStart(10)}  ${'delta'.padStart(10)}`,
    ...rows.map(
      ([name, b, t, fmt]) => `  ${name.padEnd(width)}  ${fmt(b).padStart(10)}  ${fmt(t).padStart(10)}  ${fmt(t - b).padStart(10)}`,
    ),
    '',
    `  adapter      ${s3(result.train.adapterPrefix)}`,
    `  checkpoints  ${result.train.checkpointKeys.length ? s3(result.train.checkpointKeys[0]!.replace(/step-\d+\/$/, '')) : '(none)'} (${result.train.checkpointKeys.length})`,
    `  report       ${s3(result.report.markdownKey)}`,
    `  metrics      ${s3(result.evaluation.metricsKey)}`,
    `  Temporal UI  ${webUiUrl(result.runId)}`,
    '',
  ];
  return lines.join('\n');
}
