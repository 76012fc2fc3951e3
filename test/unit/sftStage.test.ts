import { describe, expect, it } from 'vitest';
import { parsePipelineConfig, type PipelineConfig } from '../../contracts/config.js';
import { PlanError, planPipeline, stageDataset, stageSettings, type StageDecl } from '../../contracts/dag.js';
import { planRun } from '../../contracts/runPlan.js';
import { TRAIN_DEFAULTS } from '../../contracts/trainerContract.js';

function config(extra: object = {}): PipelineConfig {
  const parsed = parsePipelineConfig({ name: 'x', model: { source: 's3://b/m' }, dataset: { source: './d' }, ...extra });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.problems));
  return parsed.config;
}

const stage = (id: string, kind: string, needs: string[] = [], params: Record<string, unknown> = {}): StageDecl => ({ id, kind, needs, params });
const data = [stage('dl', 'download'), stage('fmt', 'format', ['dl']), stage('tok', 'tokenize', ['fmt']), stage('sh', 'shard', ['tok'])];

function problemsOf(decls: StageDecl[], cfg = config()): string[] {
  try {
    planPipeline(decls, cfg);
  } catch (err) {
    if (err instanceof PlanError) return err.problems;
    throw err;
  }
  return [];
}

describe('the sft stage kind', () => {
  it('plans sft -> train (model from sft) -> evaluate, and evaluating the SFT adapter itself', () => {
    const plan = planPipeline(
      [
        ...data,
        stage('sft', 'sft', ['sh'], { learning_rate: 2e-4 }),
        stage('dpo', 'train', ['sh', 'sft']),
        stage('eval-dpo', 'evaluate', ['sh', 'dpo']),
        stage('eval-sft', 'evaluate', ['sh', 'sft']),
        stage('report', 'report', ['eval-dpo', 'eval-sft']),
      ],
      config(),
    );
    const inputs = Object.fromEntries(plan.stages.map((s) => [s.id, s.inputs]));
    expect(inputs.sft).toEqual({ shards: ['sh'] });
    expect(inputs.dpo).toEqual({ shards: ['sh'], model: ['sft'] });
    expect(inputs['eval-sft']).toEqual({ shards: ['sh'], adapter: ['sft'] });
    expect(plan.stages.map((s) => s.id).indexOf('sft')).toBeLessThan(plan.stages.map((s) => s.id).indexOf('dpo'));
  });

  it('takes the train section without its DPO settings, and its params over them', () => {
    const cfg = config({ train: { beta: 0.3, loss_type: 'ipo', learning_rate: 1e-5, dtype: 'float32', precompute_ref_log_probs: true } });
    const sft = stageSettings(cfg, 'sft', { learning_rate: 2e-4 });
    expect(sft.learning_rate).toBe(2e-4);
    expect(sft.dtype).toBe('float32');
    // The DPO settings are the trainer's defaults, which objective sft accepts.
    expect([sft.beta, sft.loss_type, sft.precompute_ref_log_probs]).toEqual([TRAIN_DEFAULTS.beta, TRAIN_DEFAULTS.loss_type, false]);
  });

  it('refuses DPO settings in its params, naming the stage and the field', () => {
    const problems = problemsOf([...data, stage('sft', 'sft', ['sh'], { beta: 0.2, loss_type: 'sft', precompute_ref_log_probs: true, epochs: 0 })]);
    expect(problems).toEqual([
      'stage "sft": params.beta: a DPO setting; an sft stage trains on the chosen answers alone and takes no beta',
      'stage "sft": params.loss_type: a DPO setting; an sft stage trains on the chosen answers alone and takes no loss_type',
      'stage "sft": params.precompute_ref_log_probs: a DPO setting; an sft stage trains on the chosen answers alone and takes no precompute_ref_log_probs',
      expect.stringMatching(/^stage "sft": params\.epochs: /),
    ]);
  });

  it('names the stages of wrong wirings', () => {
    // Two models for one train stage.
    expect(problemsOf([...data, stage('a', 'sft', ['sh']), stage('b', 'sft', ['sh']), stage('dpo', 'train', ['sh', 'a', 'b'])])).toEqual([
      'stage "dpo" (train) takes at most one model but "a" and "b" both produce one',
      'stage "dpo" (train) does not consume what "a" produces (adapter, model)',
      'stage "dpo" (train) does not consume what "b" produces (adapter, model)',
    ]);
    // An sft stage has no model input (it starts from model.source).
    expect(problemsOf([...data, stage('a', 'sft', ['sh']), stage('b', 'sft', ['sh', 'a'])])).toEqual([
      'stage "b" (sft) does not consume what "a" produces (adapter, model)',
    ]);
    // Evaluate takes one adapter: an sft stage and the train stage on it both offer one.
    expect(problemsOf([...data, stage('a', 'sft', ['sh']), stage('dpo', 'train', ['sh', 'a']), stage('ev', 'evaluate', ['sh', 'a', 'dpo'])])).toContain(
      'stage "ev" (evaluate) takes one adapter but "a" and "dpo" both produce one',
    );
    // sft needs shards.
    expect(problemsOf([stage('dl', 'download'), stage('a', 'sft', ['dl'])])).toEqual([
      'stage "a" (sft) needs a stage that produces shards; its dependencies produce dataset ("dl")',
      'stage "a" (sft) does not consume what "dl" produces (dataset)',
    ]);
  });

  it('requires precomputed reference log-probs of the model the train stage starts from', () => {
    const cfg = config({ train: { precompute_ref_log_probs: true } });
    const base = [...data, stage('sft', 'sft', ['sh'])];
    expect(problemsOf([...base, stage('ref', 'reference', ['sh']), stage('dpo', 'train', ['sh', 'ref', 'sft'])], cfg)).toEqual([
      'stage "dpo" (train): its reference stage "ref" scores model.source but "dpo" starts from the model of sft stage "sft"; give both the same model in needs',
    ]);
    expect(problemsOf([...base, stage('ref', 'reference', ['sh', 'sft']), stage('dpo', 'train', ['sh', 'ref'])], cfg)).toEqual([
      'stage "dpo" (train): its reference stage "ref" scores the model of sft stage "sft" but "dpo" starts from model.source; give both the same model in needs',
    ]);
    const plan = planPipeline([...base, stage('ref', 'reference', ['sh', 'sft']), stage('dpo', 'train', ['sh', 'ref', 'sft'])], cfg);
    expect(plan.stages.find((s) => s.id === 'ref')!.inputs).toEqual({ shards: ['sh'], model: ['sft'] });
  });
});

describe('a separate SFT dataset: its own download -> format -> tokenize -> shard chain', () => {
  const sftData = [
    stage('dl-sft', 'download', [], { dataset: { source: 's3://b/sft-data', train_split: 'train[:50%]', eval_split: 'train[50%:]', max_train_samples: 100 } }),
    stage('fmt-sft', 'format', ['dl-sft']),
    stage('tok-sft', 'tokenize', ['fmt-sft']),
    stage('sh-sft', 'shard', ['tok-sft']),
  ];

  it("gives each stage the dataset of the download at the root of its shards, the config's dataset under it", () => {
    const cfg = config({ dataset: { source: './d', max_eval_samples: 7 } });
    const plan = planPipeline([...data, ...sftData, stage('sft', 'sft', ['sh-sft']), stage('dpo', 'train', ['sh', 'sft']), stage('ev', 'evaluate', ['sh', 'dpo'])], cfg);
    const datasetOf = (id: string) => stageDataset(plan, cfg, plan.stages.find((s) => s.id === id)!);
    for (const id of ['fmt-sft', 'sh-sft', 'sft']) {
      expect(datasetOf(id)).toMatchObject({ source: 's3://b/sft-data', train_split: 'train[:50%]', max_train_samples: 100, max_eval_samples: 7 });
    }
    for (const id of ['fmt', 'dpo', 'ev']) expect(datasetOf(id)).toBe(cfg.dataset);
  });

  it('checks the merged dataset settings, naming the stage', () => {
    expect(problemsOf([stage('dl', 'download', [], { dataset: { source: 'ftp://x', train_split: 'test', colums: {} } })])).toEqual([
      expect.stringMatching(/^stage "dl": params\.dataset\.source: must be s3:\/\/bucket\/prefix/),
      'stage "dl": params.dataset: unknown key "colums"',
      expect.stringMatching(/^stage "dl": params\.dataset\.eval_split: dataset\.train_split "test" and dataset\.eval_split "test" both select rows of split "test"/),
    ]);
  });
});

describe('an sft stage in a sweep', () => {
  it('stays one shared stage; every DPO branch starts from its model', () => {
    const cfg = config({
      sweep: { 'train.beta': [0.05, 0.5] },
      stages: [...data, stage('sft', 'sft', ['sh']), stage('dpo', 'train', ['sh', 'sft']), stage('ev', 'evaluate', ['sh', 'dpo']), stage('report', 'report', ['ev'])],
    });
    const { plan, branches } = planRun(cfg);
    expect(branches).toHaveLength(2);
    expect(plan.stages.filter((s) => s.kind === 'sft').map((s) => s.id)).toEqual(['sft']);
    const trains = plan.stages.filter((s) => s.kind === 'train');
    expect(trains.map((s) => [s.params.beta, s.inputs.model])).toEqual([
      [0.05, ['sft']],
      [0.5, ['sft']],
    ]);
  });
});
