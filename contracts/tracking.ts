/**
 * Experiment tracking (TRL's `report_to`): the pipeline config's value as the list of trackers
 * the trainer writes to, and the lineage every tracker shows beside the curves. Pure code:
 * bundled into workflows.
 */
import type { EvaluateResult, TrackingSummary } from './payloads.js';
import { REPORT_TO_INTEGRATIONS, type ReportToIntegration } from './trainerContract.js';

/** What `train.report_to` accepts: TRL's values. */
export type ReportTo = 'none' | 'all' | ReportToIntegration | ReportToIntegration[];

/**
 * `none` -> [], one name or a list -> those, each once, in order. `all` -> every integration this
 * worker can reach, as transformers' `all` means every one installed: MLflow only where
 * MLFLOW_TRACKING_URI names a server (`available`).
 */
export function resolveReportTo(value: ReportTo, available: { mlflow: boolean } = { mlflow: true }): ReportToIntegration[] {
  if (value === 'none') return [];
  if (value === 'all') return REPORT_TO_INTEGRATIONS.filter((name) => name !== 'mlflow' || available.mlflow);
  return [...new Set(typeof value === 'string' ? [value] : value)];
}

/** Lineage as `key=value` tags (the trainer's run_tags): links a tracker's run back to Temporal. */
export function lineageTags(lineage: Record<string, string | number | null | undefined>): string[] {
  return Object.entries(lineage)
    .filter((entry): entry is [string, string | number] => entry[1] !== null && entry[1] !== undefined && entry[1] !== '')
    .map(([key, value]) => `${key}=${value}`);
}

/**
 * Where a train stage's tracker runs are, one phrase per tracker, for the report and `dpo
 * status`: the run's page (MLflow, online W&B) or its files' s3:// folder (TensorBoard, with the
 * command that serves them; an offline W&B run, for `wandb sync`), and failed calls when any.
 */
export function describeTracking(tracking: TrackingSummary, runId: string): string[] {
  const names = [...new Set([...Object.keys(tracking.links), ...Object.keys(tracking.failures)])];
  return names.map((name) => {
    const link = tracking.links[name];
    const failed = (tracking.failures[name] ?? 0) + (name === 'tensorboard' || name === 'wandb' ? tracking.uploadFailures : 0);
    const how = name === 'tensorboard' ? ` (\`dpo tensorboard ${runId}\`)` : name === 'wandb' && link?.startsWith('s3://') ? ' (offline run: `wandb sync` it)' : '';
    return `${name}: ${link ?? 'no run'}${link ? how : ''}${failed ? `, ${failed} failed call${failed === 1 ? '' : 's'}` : ''}`;
  });
}

/**
 * An evaluate stage's metrics under the names the trackers show them by, TRL's `eval/` prefix
 * then the model (`base`, or `dpo`: the trained adapter) then the metric, with TRL's names where
 * TRL has one (`eval/dpo/rewards/accuracies`, `eval/dpo/rewards/margins`), and the AMBER-style
 * suite under `amber/<question kind>/` (`eval/dpo/amber/existence/f1`, `.../overall/yes_ratio`),
 * its generative metrics under `amber/generative/` (`chair`, `cover`, `hal`) and the short
 * answers under `short_answers/`. docs/experiment-tracking.md lists them.
 */
export function evaluationTrackerMetrics(e: EvaluateResult): Record<string, number> {
  const out: Record<string, number> = {};
  const models = [['base', 'base'], ['dpo', 'trained']] as const;
  const put = (name: string, value: unknown) => {
    // MLflow's metric names allow letters, digits, _ - . / and space; a question kind is data.
    if (typeof value === 'number' && Number.isFinite(value)) out[name.replace(/[^A-Za-z0-9_\-./ ]/g, '_')] = value;
  };
  for (const [model, field] of models) {
    const p = e[field];
    put(`eval/${model}/rewards/accuracies`, p.reward_accuracy);
    put(`eval/${model}/rewards/margins`, p.reward_margin_mean);
    put(`eval/${model}/logps/margins`, p.logp_margin_mean);
    put(`eval/${model}/preference_accuracy`, p.preference_accuracy);
    put(`eval/${model}/samples`, p.samples);
    for (const [kind, metrics] of Object.entries(e.amber?.[field] ?? {})) {
      for (const [name, value] of Object.entries(metrics)) put(`eval/${model}/amber/${kind}/${name}`, value);
    }
    for (const [name, value] of Object.entries(e.generative?.[field] ?? {})) put(`eval/${model}/amber/generative/${name}`, value);
    for (const [name, value] of Object.entries(e.shortAnswers?.[field] ?? {})) put(`eval/${model}/short_answers/${name}`, value);
  }
  return out;
}
