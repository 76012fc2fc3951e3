/**
 * train.padding_free reaches the trainer under its own name (TRL's), on train and sft stages alike,
 * and the trainer's own parser accepts the config file the train activity writes.
 */
import { describe, expect, it } from 'vitest';
import { trainerConfigProblems, trainRunConfig } from '../../bridge/trainerConfig.js';
import { parsePipelineConfig, sftBaseSettings, type PipelineConfig, type PipelineConfigInput } from '../../contracts/config.js';

const base: PipelineConfigInput = { name: 'x', model: { source: 's3://m/tiny' }, dataset: { source: 's3://d/set' } };
const RUN = { modelDir: '/m', shards: ['/s/a.parquet'], outputDir: '/o', resumeFrom: null, initAdapter: null, referenceFiles: [] };

function config(train: Record<string, unknown>): PipelineConfig {
  const parsed = parsePipelineConfig({ ...base, train } as PipelineConfigInput);
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.problems));
  return parsed.config;
}

describe('train.padding_free', () => {
  it('defaults to false and is written to the trainer config when set', () => {
    expect(trainRunConfig(config({}).train, RUN)).toMatchObject({ padding_free: false });
    const written = trainRunConfig(config({ padding_free: true }).train, RUN) as Record<string, unknown>;
    expect(written.padding_free).toBe(true);
    expect(trainerConfigProblems('TrainConfig', written)).toEqual([]);
  });

  it('is inherited by an sft stage (the supervised forward packs the same way)', () => {
    const train = config({ padding_free: true }).train;
    expect(sftBaseSettings(train).padding_free).toBe(true);
  });

  it('refuses a non-boolean, naming the field', () => {
    const parsed = parsePipelineConfig({ ...base, train: { padding_free: 'yes' } } as unknown as PipelineConfigInput);
    expect(parsed.ok).toBe(false);
    if (parsed.ok) return;
    expect(parsed.problems.map((p) => p.path)).toContain('train.padding_free');
  });
});
