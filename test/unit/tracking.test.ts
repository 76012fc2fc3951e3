/** train.report_to: TRL's values in the pipeline config, resolved to the trainer's list; where the runs are. */
import { describe, expect, it } from 'vitest';
import { trainerConfigProblems, trainRunConfig } from '../../bridge/trainerConfig.js';
import { parsePipelineConfig } from '../../contracts/config.js';
import { keys } from '../../contracts/keys.js';
import { describeTracking, lineageTags, resolveReportTo } from '../../contracts/tracking.js';

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

describe('describeTracking', () => {
  it('names each tracker with its run page or files, and failed calls', () => {
    const lines = describeTracking(
      {
        failures: { tensorboard: 0, mlflow: 0, wandb: 2 },
        uploadFailures: 1,
        seconds: 0.5,
        links: { mlflow: 'http://mlflow:5000/#/experiments/1/runs/abc', tensorboard: 's3://b/runs/r/train/tensorboard/', wandb: 's3://b/runs/r/train/wandb/' },
      },
      'r',
    );
    expect(lines).toEqual([
      'mlflow: http://mlflow:5000/#/experiments/1/runs/abc',
      'tensorboard: s3://b/runs/r/train/tensorboard/ (`dpo tensorboard r`), 1 failed call',
      'wandb: s3://b/runs/r/train/wandb/ (offline run: `wandb sync` it), 3 failed calls',
    ]);
    expect(describeTracking({ failures: { mlflow: 4 }, uploadFailures: 0, seconds: 0, links: {} }, 'r')).toEqual(['mlflow: no run, 4 failed calls']);
  });
});
