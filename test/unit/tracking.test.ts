/** train.report_to: TRL's values in the pipeline config, resolved to the trainer's list; where the runs are. */
import { describe, expect, it } from 'vitest';
import { trainerConfigProblems, trainRunConfig } from '../../bridge/trainerConfig.js';
import { parsePipelineConfig } from '../../contracts/config.js';
import { keys } from '../../contracts/keys.js';
import { describeTracking, evaluationTrackerMetrics, lineageTags, resolveReportTo } from '../../contracts/tracking.js';

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

describe('evaluation metrics for the trackers', () => {
  it('names them eval/<model>/..., TRL names where TRL has one, AMBER per kind, and keeps names MLflow accepts', () => {
    const metrics = (reward: number) => ({ samples: 8, preference_accuracy: 0.5, reward_accuracy: reward, reward_margin_mean: 0.1, logp_margin_mean: 0.2 });
    const yesNo = { questions: 4, accuracy: 0.75, precision: 1, recall: 0.5, f1: 0.667, yes_ratio: 0.5, truth_yes_ratio: 0.5 };
    const out = evaluationTrackerMetrics({
      base: metrics(0), trained: metrics(0.75), metricsKey: 'k', adapter: 's3://b/a/',
      amber: { base: { overall: yesNo }, trained: { 'attribute (color)': yesNo } },
      shortAnswers: { base: { questions: 4, short_answer_accuracy: 0.25 }, trained: { questions: 4, short_answer_accuracy: 0.5 } },
    });
    expect(out['eval/base/rewards/accuracies']).toBe(0);
    expect(out['eval/dpo/rewards/accuracies']).toBe(0.75);
    expect(out['eval/dpo/rewards/margins']).toBe(0.1);
    expect(out['eval/base/amber/overall/yes_ratio']).toBe(0.5);
    expect(out['eval/dpo/amber/attribute _color_/f1']).toBe(0.667);
    expect(out['eval/dpo/short_answers/short_answer_accuracy']).toBe(0.5);
    expect(Object.keys(out).every((k) => /^eval\/(base|dpo)\/[A-Za-z0-9_\-./ ]+$/.test(k))).toBe(true);
  });
});
