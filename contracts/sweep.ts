/**
 * Sweeps: a config's `sweep` (e.g. `{"train.beta": [0.05, 0.1]}`) expands the stage list into one
 * branch per combination of values. Each branch gets its own copy of every train stage and of every
 * stage downstream of one (evaluate), with the swept values as stage params; stages upstream (the
 * data stages) stay single, so they are planned and cached once; stages that gather many inputs
 * (report) gather every branch. Pure code: it runs inside the workflow and in the CLI.
 */
import type { PipelineConfig } from './config.js';
import { STAGE_KINDS, type StageDecl, type StageKindName } from './dag.js';
import { isSafeKeySegment } from './keys.js';
import type { EvaluateResult, SweepRow, TrainResult } from './payloads.js';

export type { SweepRow, SweepValue } from './payloads.js';
import type { SweepValue } from './payloads.js';

export interface SweepBranch {
  /** Short, storage-safe label, e.g. `beta-0.05`; branch stage ids are `<stage id>-<label>`. */
  label: string;
  /** The swept fields and this branch's values, by dotted path (`train.beta`). */
  values: Record<string, SweepValue>;
  /** Original stage id -> this branch's copy. */
  stageIds: Record<string, string>;
}

export interface SweepExpansion {
  decls: StageDecl[];
  branches: SweepBranch[];
}

export class SweepError extends Error {}

/** Every combination of the swept values, in declaration order (the first field varies slowest). */
export function sweepCombinations(sweep: Record<string, SweepValue[]>): Array<Record<string, SweepValue>> {
  let combos: Array<Record<string, SweepValue>> = [{}];
  for (const [field, values] of Object.entries(sweep)) {
    combos = combos.flatMap((c) => values.map((v) => ({ ...c, [field]: v })));
  }
  return combos;
}

export function expandSweep(decls: StageDecl[], sweep: PipelineConfig['sweep']): SweepExpansion {
  if (!sweep || !Object.keys(sweep).length) return { decls, branches: [] };
  const combos = sweepCombinations(sweep);
  const byId = new Map(decls.map((d) => [d.id, d]));
  const isTrain = (d: StageDecl) => d.kind === 'train';
  const gathers = (d: StageDecl) => !!(STAGE_KINDS[d.kind as StageKindName] as { consumesMany?: unknown } | undefined)?.consumesMany;
  if (!decls.some(isTrain)) throw new SweepError('sweep: the pipeline has no train stage to sweep');

  // Stages that depend (transitively) on a train stage and consume one input each: copied per branch.
  const perBranch = new Set<string>();
  const dependsOnBranch = (d: StageDecl, seen = new Set<string>()): boolean => {
    if (isTrain(d)) return true;
    if (seen.has(d.id)) return false;
    seen.add(d.id);
    return d.needs.some((n) => byId.has(n) && dependsOnBranch(byId.get(n)!, seen));
  };
  for (const d of decls) if (!gathers(d) && dependsOnBranch(d)) perBranch.add(d.id);

  const labels = branchLabels(combos);
  const branches: SweepBranch[] = combos.map((values, i) => ({
    label: labels[i]!,
    values,
    stageIds: Object.fromEntries([...perBranch].map((id) => [id, `${id}-${labels[i]}`])),
  }));
  for (const b of branches) {
    for (const id of Object.values(b.stageIds)) {
      if (!isSafeKeySegment(id)) throw new SweepError(`sweep: branch stage id "${id}" is too long or not storage-safe; shorten the stage id`);
    }
  }

  const out: StageDecl[] = [];
  for (const d of decls) {
    if (!perBranch.has(d.id)) {
      // Shared stage; a gathering stage (report) takes every branch of what it needed.
      const needs = d.needs.flatMap((n) => (perBranch.has(n) ? branches.map((b) => b.stageIds[n]!) : [n]));
      out.push({ ...d, needs });
      continue;
    }
    for (const b of branches) {
      const params = isTrain(d) ? withSweptParams(d.params, b.values) : d.params;
      out.push({ ...d, id: b.stageIds[d.id]!, needs: d.needs.map((n) => b.stageIds[n] ?? n), params });
    }
  }
  return { decls: out, branches };
}

/** Stage params with the swept values set (`train.lora.r` -> params.lora.r), over the stage's own. */
function withSweptParams(params: Record<string, unknown>, values: Record<string, SweepValue>): Record<string, unknown> {
  // JSON copy: structuredClone is not available in the workflow sandbox.
  const out = JSON.parse(JSON.stringify(params)) as Record<string, unknown>;
  for (const [field, value] of Object.entries(values)) {
    const path = field.split('.').slice(1);
    let node = out;
    for (const key of path.slice(0, -1)) {
      const next = node[key];
      node = node[key] = next && typeof next === 'object' ? { ...(next as Record<string, unknown>) } : {};
    }
    node[path.at(-1)!] = value;
  }
  return out;
}

/** A swept value as the table and labels show it: lists joined with "+" (`sigmoid+sft`). */
export function sweepValueText(value: SweepValue): string {
  return Array.isArray(value) ? value.map(String).join('+') : String(value);
}

/** `beta-0.05`, `beta-0.05_r-8`, `loss_type-sigmoid.sft`; `b1`, `b2`... when values do not make safe, distinct names. */
function branchLabels(combos: Array<Record<string, SweepValue>>): string[] {
  const readable = combos.map((c) =>
    Object.entries(c)
      .map(([field, v]) => `${field.split('.').at(-1)}-${sweepValueText(v).replace(/\+/g, '.').replace(/[^A-Za-z0-9.-]+/g, '')}`)
      .join('_'),
  );
  const ok = new Set(readable).size === readable.length && readable.every((l) => l.length <= 60 && /^[A-Za-z0-9._-]+$/.test(l));
  return ok ? readable : combos.map((_, i) => `b${i + 1}`);
}

/** The comparison table's rows, from the branches and whatever their stages produced. */
export function sweepRows(
  branches: SweepBranch[],
  kinds: Record<string, string>,
  trainings: Record<string, TrainResult>,
  evaluations: Record<string, EvaluateResult>,
): SweepRow[] {
  return branches.map((b) => {
    const ids = Object.values(b.stageIds);
    const trainStage = ids.find((id) => kinds[id] === 'train')!;
    const evaluateStage = ids.find((id) => kinds[id] === 'evaluate' && evaluations[id]);
    const t = trainings[trainStage];
    const e = evaluateStage ? evaluations[evaluateStage] : undefined;
    return {
      branch: b.label,
      values: b.values,
      trainStage,
      ...(evaluateStage && { evaluateStage }),
      ...(t && {
        finalStep: t.finalStep,
        loss: t.metrics.loss,
        trainRewardAccuracy: t.metrics['rewards/accuracies'],
        adapter: `s3://${t.adapterBucket}/${t.adapterPrefix}`,
      }),
      ...(e && {
        heldOutAccuracy: e.trained.preference_accuracy,
        baseAccuracy: e.base.preference_accuracy,
        rewardMargin: e.trained.reward_margin_mean,
      }),
    };
  });
}

/** The comparison table as Markdown (report) or aligned text (CLI). */
export function renderSweepTable(rows: SweepRow[], style: 'markdown' | 'text'): string[] {
  if (!rows.length) return [];
  const fields = Object.keys(rows[0]!.values);
  const fmt = (x: number | undefined, pct = false) => (x === undefined ? '-' : pct ? `${(x * 100).toFixed(1)}%` : x.toFixed(4));
  const header = ['branch', ...fields, 'steps', 'loss', 'train acc', 'held-out acc', 'margin'];
  const body = rows.map((r) => [
    r.branch,
    ...fields.map((f) => sweepValueText(r.values[f]!)),
    r.finalStep === undefined ? 'failed' : String(r.finalStep),
    fmt(r.loss),
    fmt(r.trainRewardAccuracy, true),
    fmt(r.heldOutAccuracy, true),
    fmt(r.rewardMargin),
  ]);
  if (style === 'markdown') {
    return [`| ${header.join(' | ')} |`, `| ${header.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`, ...body.map((r) => `| ${r.join(' | ')} |`)];
  }
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `  ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')}`;
  return [line(header), ...body.map(line)];
}
