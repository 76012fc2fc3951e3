/** Run lifecycle, pure parts: sweep expansion and its checks, cron and interval checks, lineage helpers. */
import { describe, expect, it } from 'vitest';
import { cronProblem, parseDuration } from '../../cli/schedules.js';
import { parsePipelineConfig, type PipelineConfig, type PipelineConfigInput } from '../../contracts/config.js';
import { planPipeline, standardChain } from '../../contracts/dag.js';
import { configHash, storageRunId } from '../../contracts/lineage.js';
import { expandSweep, renderSweepTable, sweepRows } from '../../contracts/sweep.js';

const base: PipelineConfigInput = { name: 'x', model: { source: 's3://m/tiny' }, dataset: { source: 's3://d/set' } };

function config(extra: Partial<PipelineConfigInput> = {}): PipelineConfig {
  const parsed = parsePipelineConfig({ ...base, ...extra });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.problems));
  return parsed.config;
}

describe('sweeps', () => {
  it('copy train and evaluate per branch and share the data stages, planned once', () => {
    const c = config({ sweep: { 'train.beta': [0.05, 0.5], 'train.lora.r': [4] } });
    const { decls, branches } = expandSweep(standardChain(), c.sweep);
    const plan = planPipeline(decls, c);
    expect(plan.stages.map((s) => s.id)).toEqual([
      'download', 'format', 'tokenize', 'shard',
      'train-beta-0.05_r-4', 'train-beta-0.5_r-4', 'evaluate-beta-0.05_r-4', 'evaluate-beta-0.5_r-4', 'report',
    ]);
    const train = plan.stages.find((s) => s.id === 'train-beta-0.5_r-4')!;
    expect(train.params).toEqual({ beta: 0.5, lora: { r: 4 } });
    expect(plan.stages.find((s) => s.id === 'evaluate-beta-0.5_r-4')!.needs).toEqual(['shard', 'train-beta-0.5_r-4']);
    expect(plan.stages.find((s) => s.id === 'report')!.needs).toEqual(['evaluate-beta-0.05_r-4', 'evaluate-beta-0.5_r-4']);
    expect(branches.map((b) => b.values)).toEqual([{ 'train.beta': 0.05, 'train.lora.r': 4 }, { 'train.beta': 0.5, 'train.lora.r': 4 }]);
  });

  it('names the unknown field of a bad sweep', () => {
    for (const field of ['train.betaa', 'tokenize.max_length', 'train.lora.rank', 'train.beta.x']) {
      const parsed = parsePipelineConfig({ ...base, sweep: { [field]: [1] } });
      expect(parsed.ok).toBe(false);
      if (!parsed.ok) {
        expect(parsed.problems).toHaveLength(1);
        expect(parsed.problems[0]!.message).toContain(`"${field}"`);
      }
    }
    const bad = parsePipelineConfig({ ...base, sweep: { 'train.beta': [-1] } });
    expect(bad.ok).toBe(true); // values are checked when the branch's params are planned:
    const c = (bad as { config: PipelineConfig }).config;
    expect(() => planPipeline(expandSweep(standardChain(), c.sweep).decls, c)).toThrow(/stage "train-beta--1": params.beta/);
  });

  it('renders one comparison row per branch', () => {
    const { branches } = expandSweep(standardChain(), { 'train.beta': [0.1, 0.2] });
    const train = { adapterBucket: 'b', adapterPrefix: 'p/', finalStep: 3, checkpointKeys: [], resumedFromStep: null, trainSeconds: 1 };
    const rows = sweepRows(
      branches,
      { 'train-beta-0.1': 'train', 'train-beta-0.2': 'train', 'evaluate-beta-0.1': 'evaluate', 'evaluate-beta-0.2': 'evaluate' },
      { 'train-beta-0.1': { ...train, metrics: { loss: 0.5 } }, 'train-beta-0.2': { ...train, metrics: { loss: 0.4 } } },
      {},
    );
    expect(rows.map((r) => [r.branch, r.loss])).toEqual([['beta-0.1', 0.5], ['beta-0.2', 0.4]]);
    const table = renderSweepTable(rows, 'markdown');
    expect(table[0]).toBe('| branch | train.beta | steps | loss | train acc | held-out acc | margin |');
    expect(table).toHaveLength(4);
  });
});

describe('schedules', () => {
  it('check cron expressions and intervals, naming the bad field', () => {
    expect(cronProblem('0 3 * * *')).toBeNull();
    expect(cronProblem('*/15 0-6 1,15 jan-jun mon-fri')).toBeNull();
    expect(cronProblem('@daily')).toBeNull();
    expect(cronProblem('61 * * * *')).toContain('minute field "61"');
    expect(cronProblem('0 3 * *')).toContain('expected 5 fields');
    expect(cronProblem('0 3 * * funday')).toContain('day of week');
    expect(parseDuration('1d')).toBe(86_400_000);
    expect(parseDuration('tomorrow')).toBeNaN();
  });
});

describe('lineage', () => {
  it('hashes the recipe, not how the run was started', () => {
    const a = configHash(config());
    expect(a).toMatch(/^[0-9a-f]{16}$/);
    expect(configHash(config({ resume_from_run: 'old-run' }))).toBe(a);
    expect(configHash(config({ init_from: 'previous' }))).toBe(a);
    expect(configHash(config({ train: { beta: 0.2 } }))).not.toBe(a);
  });

  it('maps scheduled workflow ids to storage-safe run ids', () => {
    expect(storageRunId('nightly-2026-11-28T03:00:00Z')).toBe('nightly-2026-11-28T030000Z');
    expect(storageRunId('plain-run')).toBe('plain-run');
  });
});
