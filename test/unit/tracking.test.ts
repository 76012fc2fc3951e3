/** train.report_to: TRL's values in the pipeline config, resolved to the trainer's list. */
import { describe, expect, it } from 'vitest';
import { trainerConfigProblems, trainRunConfig } from '../../bridge/trainerConfig.js';
import { parsePipelineConfig } from '../../contracts/config.js';
import { keys } from '../../contracts/keys.js';
import { lineageTags, resolveReportTo } from '../../contracts/tracking.js';

const minimal = { name: 'r', model: { source: 's3://b/m' }, dataset: { source: 's3://b/d' } };
const RUN = { modelDir: '/m', shards: ['/s/a.parquet'], outputDir: '/o', resumeFrom: null, initAdapter: null, referenceFiles: [] };

function reportTo(value: unknown) {
  const parsed = parsePipelineConfig({ ...minimal, train: { report_to: value } });
  return parsed.ok ? resolveReportTo(parsed.config.train.report_to) : parsed.problems;
}

describe('train.report_to', () => {
  it("takes TRL's values: none (the default), all, a name or a list", () => {
    const parsed = parsePipelineConfig(minimal);
    expect(parsed.ok && parsed.config.train.report_to).toBe('none');
    expect(reportTo('none')).toEqual([]);
    expect(reportTo('all')).toEqual(['tensorboard', 'mlflow', 'wandb']);
    expect(resolveReportTo('all', { mlflow: false })).toEqual(['tensorboard', 'wandb']); // no MLflow server configured
    expect(reportTo(['mlflow', 'tensorboard'])).toEqual(['mlflow', 'tensorboard']);
    expect(reportTo('tensorboard')).toEqual(['tensorboard']);
    expect(reportTo(['tensorboard', 'tensorboard'])).toEqual(['tensorboard']);
  });

  it('refuses a tracker it does not write to, naming the field', () => {
    const problems = reportTo(['comet_ml']) as Array<{ path: string }>;
    expect(problems.map((p) => p.path)).toContain('train.report_to');
    expect((reportTo([]) as Array<{ path: string }>).map((p) => p.path)).toContain('train.report_to');
  });

  it('reaches the trainer as a valid config file, with the lineage as key=value tags', () => {
    const parsed = parsePipelineConfig({ ...minimal, train: { report_to: 'all' } });
    if (!parsed.ok) throw new Error('does not parse');
    const tags = lineageTags({ run_id: 'r1', stage: 'train', resumed_from_run: undefined, temporal_run_id: '' });
    expect(tags).toEqual(['run_id=r1', 'stage=train']);
    const file = trainRunConfig(parsed.config.train, { ...RUN, tracking: { reportTo: ['tensorboard'], loggingDir: '/o/runs', runName: 'r1/train', tags } });
    expect(trainerConfigProblems('TrainConfig', file)).toEqual([]);
    expect(file).toMatchObject({ report_to: ['tensorboard'], logging_dir: '/o/runs', run_name: 'r1/train', run_tags: tags });
    expect(trainRunConfig(parsed.config.train, RUN)).toMatchObject({ report_to: [], logging_dir: null });
  });

  it("stores a stage's event files beside its checkpoints", () => {
    expect(keys.tensorboardPrefix('r1', 'train-beta-0.1')).toBe('runs/r1/train-beta-0.1/tensorboard/');
  });
});
