/** The table printed at the end of a run: base vs DPO per evaluation, and where everything is. */
import type { PipelineResult } from '../contracts/payloads.js';
import { renderSweepTable } from '../contracts/sweep.js';

export function webUiUrl(runId: string, namespace = process.env.TEMPORAL_NAMESPACE ?? 'default'): string {
  const base = process.env.DPO_TEMPORAL_UI_URL ?? `http://127.0.0.1:${process.env.DPO_TEMPORAL_UI_PORT ?? 8233}`;
  return `${base}/namespaces/${encodeURIComponent(namespace)}/workflows/${encodeURIComponent(runId)}`;
}

export function renderSummary(result: PipelineResult): string {
  const s3 = (key: string) => `s3://${result.bucket}/${key}`;
  const lines = [''];
  for (const [id, evaluation] of Object.entries(result.evaluations)) {
    const { base, trained } = evaluation;
    const rows: Array<[string, number, number, (x: number) => string]> = [
      ['held-out preference accuracy', base.preference_accuracy, trained.preference_accuracy, (x) => `${(x * 100).toFixed(1)}%`],
      ['mean reward margin', base.reward_margin_mean, trained.reward_margin_mean, (x) => x.toFixed(4)],
      ['mean log-prob margin (chosen - rejected)', base.logp_margin_mean, trained.logp_margin_mean, (x) => x.toFixed(3)],
    ];
    const p = (x: number) => `${(x * 100).toFixed(1)}%`;
    const overall = evaluation.amber;
    if (overall) {
      for (const kind of Object.keys(overall.base)) {
        const b = overall.base[kind]!;
        const t = overall.trained[kind]!;
        rows.push([`AMBER ${kind} accuracy`, b.accuracy, t.accuracy, p], [`AMBER ${kind} F1 ("no" positive)`, b.f1, t.f1, p]);
      }
      const truth = overall.base.overall!.truth_yes_ratio;
      rows.push([`AMBER "Yes" ratio (truth ${p(truth)})`, overall.base.overall!.yes_ratio, overall.trained.overall!.yes_ratio, p]);
    }
    const short = evaluation.shortAnswers;
    if (short) rows.push(['greedy short answers correct', short.base.short_answer_accuracy, short.trained.short_answer_accuracy, p]);
    const generative = evaluation.generative;
    if (generative) {
      rows.push(
        ['CHAIR of greedy descriptions (lower better)', generative.base.chair, generative.trained.chair, p],
        ['Cover of greedy descriptions', generative.base.cover, generative.trained.cover, p],
      );
    }
    const width = Math.max(...rows.map((r) => r[0].length));
    lines.push(
      `${id}: ${trained.samples} held-out pairs, adapter ${evaluation.adapter}`,
      '',
      `  ${'metric'.padEnd(width)}  ${'base'.padStart(10)}  ${'DPO'.padStart(10)}  ${'delta'.padStart(10)}`,
      ...rows.map(([name, b, t, fmt]) => `  ${name.padEnd(width)}  ${fmt(b).padStart(10)}  ${fmt(t).padStart(10)}  ${fmt(t - b).padStart(10)}`),
      '',
    );
  }
  if (result.sweep?.length) lines.push('sweep (one row per branch):', '', ...renderSweepTable(result.sweep, 'text'), '');
  for (const [id, t] of Object.entries(result.trainings)) {
    const checkpoints = t.checkpointKeys.length ? s3(t.checkpointKeys[0]!.replace(/step-\d+\/$/, '')) : '(none)';
    lines.push(
      `  ${`${id}:`.padEnd(12)} ${t.finalStep} steps in ${t.trainSeconds.toFixed(0)} s`,
      `  ${'adapter'.padEnd(12)} s3://${t.adapterBucket}/${t.adapterPrefix}`,
      `  ${'checkpoints'.padEnd(12)} ${checkpoints} (${t.checkpointKeys.length})`,
    );
  }
  for (const r of Object.values(result.reports)) {
    lines.push(`  ${'report'.padEnd(12)} ${s3(r.markdownKey)}`);
    if (r.htmlKey) lines.push(`  ${'report HTML'.padEnd(12)} ${s3(r.htmlKey)}`);
  }
  for (const e of Object.values(result.evaluations)) lines.push(`  ${'metrics'.padEnd(12)} ${s3(e.metricsKey)}`);
  const cached = result.timeline.filter((t) => t.cached).map((t) => t.id);
  if (cached.length) lines.push(`  ${'cached'.padEnd(12)} ${cached.join(', ')} (reused from an earlier run)`);
  const l = result.lineage;
  if (l?.parentRun) lines.push(`  ${(l.parentRelation === 'resume' ? 'resumed' : 'init from').padEnd(12)} ${l.parentRun}`);
  if (l) lines.push(`  ${'lineage'.padEnd(12)} dataset revision ${l.datasetRevision ?? '-'}, config ${l.configHash}${l.schedule ? `, schedule ${l.schedule}` : ''}`);
  lines.push(`  ${'Temporal UI'.padEnd(12)} ${webUiUrl(result.runId)}`, '');
  return lines.join('\n');
}
