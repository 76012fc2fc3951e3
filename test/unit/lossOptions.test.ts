/**
 * TRL's loss options in the pipeline config: `dpo validate` accepts what the trainer accepts and
 * refuses, naming the field, the combinations TRL refuses -- checked against the trainer's own
 * parser through the config file the train activity writes.
 */
import { describe, expect, it } from 'vitest';
import { trainerConfigProblems, trainRunConfig } from '../../bridge/trainerConfig.js';
import { LOSS_TYPES, parsePipelineConfig, type PipelineConfig, type PipelineConfigInput } from '../../contracts/config.js';
import { planPipeline, standardChain } from '../../contracts/dag.js';
import { expandSweep, renderSweepTable, sweepRows } from '../../contracts/sweep.js';

const base: PipelineConfigInput = { name: 'x', model: { source: 's3://m/tiny' }, dataset: { source: 's3://d/set' } };
const RUN = { modelDir: '/m', shards: ['/s/a.parquet'], outputDir: '/o', resumeFrom: null, initAdapter: null, referenceFiles: [] };

function parse(train: Record<string, unknown>) {
  return parsePipelineConfig({ ...base, train } as PipelineConfigInput);
}

function config(extra: Partial<PipelineConfigInput>): PipelineConfig {
  const parsed = parsePipelineConfig({ ...base, ...extra });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.problems));
  return parsed.config;
}

describe('loss options', () => {
  it('accepts every TRL loss type, alone or as a weighted list, and writes them to the trainer config', () => {
    for (const loss_type of LOSS_TYPES) {
      const extra = loss_type === 'exo_pair' ? { label_smoothing: 1e-3 } : {};
      expect(parse({ loss_type, ...extra }).ok, loss_type).toBe(true);
    }
    const mpo = config({ train: { loss_type: ['sigmoid', 'bco_pair', 'sft'], loss_weights: [0.8, 0.2, 1.0], ld_alpha: 0.5, discopop_tau: 0.1 } });
    const written = trainRunConfig(mpo.train, RUN) as Record<string, unknown>;
    expect(written).toMatchObject({ loss_type: ['sigmoid', 'bco_pair', 'sft'], loss_weights: [0.8, 0.2, 1.0], ld_alpha: 0.5, use_weighting: false, discopop_tau: 0.1 });
    expect(trainerConfigProblems('TrainConfig', written)).toEqual([]);
    const defaults = trainRunConfig(config({}).train, RUN) as Record<string, unknown>;
    expect(defaults).toMatchObject({ loss_type: 'sigmoid', loss_weights: null, ld_alpha: null, use_weighting: false, discopop_tau: 0.05 });
  });

  const refused: Array<[Record<string, unknown>, string, RegExp]> = [
    [{ loss_type: ['sigmoid', 'sft'], loss_weights: [1] }, 'train.loss_weights', /1 weights for 2 loss types/],
    [{ loss_type: 'exo_pair' }, 'train.label_smoothing', /must be > 0 with loss_type exo_pair/],
    [{ loss_type: 'robust', label_smoothing: 0.5 }, 'train.label_smoothing', /must be < 0.5/],
    [{ loss_type: 'sigmoid', label_smoothing: 0.1 }, 'train.label_smoothing', /only robust, exo_pair, aot, aot_unpaired read it/],
    [{ loss_type: ['aot', 'sigmoid'], use_weighting: true }, 'train.use_weighting', /aot or aot_unpaired/],
    [{ loss_type: ['sigmoid', 'sft'], use_weighting: true }, 'train.use_weighting', /loss_type sft/],
    [{ ld_alpha: 0.5, precompute_ref_log_probs: true }, 'train.ld_alpha', /precompute_ref_log_probs/],
    [{ ld_alpha: 1.5 }, 'train.ld_alpha', /1/],
    [{ loss_type: [] }, 'train.loss_type', /./],
    [{ loss_type: ['sigmoid', 'kto'] }, 'train.loss_type', /./],
    [{ discopop_tau: 0 }, 'train.discopop_tau', /./],
  ];
  it.each(refused)('refuses %j naming %s', (train, path, message) => {
    const parsed = parse(train);
    expect(parsed.ok).toBe(false);
    if (parsed.ok) return;
    const problem = parsed.problems.find((p) => p.path === path || p.path.startsWith(`${path}.`));
    expect(problem, JSON.stringify(parsed.problems)).toBeDefined();
    expect(problem!.message).toMatch(message);
  });
});

describe('a sweep over train.loss_type', () => {
  it('takes strings and lists as values, one train branch each, planned with valid params', () => {
    const c = config({ sweep: { 'train.loss_type': ['sigmoid', 'ipo', ['sigmoid', 'sft']] } });
    const { decls, branches } = expandSweep(standardChain(), c.sweep);
    expect(branches.map((b) => b.label)).toEqual(['loss_type-sigmoid', 'loss_type-ipo', 'loss_type-sigmoid.sft']);
    const plan = planPipeline(decls, c);
    const train = plan.stages.find((s) => s.id === 'train-loss_type-sigmoid.sft')!;
    expect(train.params).toEqual({ loss_type: ['sigmoid', 'sft'] });
    const rows = sweepRows(branches, {}, {}, {});
    expect(renderSweepTable(rows, 'markdown').slice(2).map((line) => line.split(' | ')[1])).toEqual(['sigmoid', 'ipo', 'sigmoid+sft']);
  });

  it('refuses at planning a branch whose loss settings the trainer would refuse', () => {
    const c = config({ train: { loss_type: ['sigmoid', 'sft'], loss_weights: [0.5, 0.5] }, sweep: { 'train.loss_type': [['sigmoid', 'sft'], ['sigmoid', 'bco_pair', 'sft']] } });
    expect(() => planPipeline(expandSweep(standardChain(), c.sweep).decls, c)).toThrow(/stage "train-loss_type-sigmoid.bcopair.sft": params.loss_weights/);
  });
});
