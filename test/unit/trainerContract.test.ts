/**
 * The Node side of the trainer contract: the generated constants are the committed schema files,
 * the pipeline config's train defaults and enums are the trainer's, whatever the pipeline config
 * accepts the trainer accepts too, and an invalid trainer config fails naming its field.
 * (trainer/tests/test_config_schema.py checks the generated files against the dataclasses.)
 */
import { readFile } from 'node:fs/promises';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { describe, expect, it } from 'vitest';
import { LOSS_TYPES, parsePipelineConfig, type TrainConfig } from '../../contracts/config.js';
import { FailureType } from '../../contracts/errors.js';
import { trainerConfigProblems, trainRunConfig, writeTrainerConfig, type TrainerConfigFile } from '../../bridge/trainerConfig.js';
import { TRAINER_CONFIG_SCHEMA, TRAINER_EXIT_CODES } from '../../contracts/trainerContract.generated.js';
import { trainerConfigFields } from '../../contracts/trainerContract.js';
import { TrainerExit } from '../../bridge/trainerProcess.js';

const minimal = { name: 'x', model: { source: 's3://b/m' }, dataset: { source: './data' } };
const RUN = { modelDir: '/m', shards: ['/s/a.parquet'], outputDir: '/o', resumeFrom: null, initAdapter: null, referenceFiles: [] };
/** Pipeline train settings the trainer never reads: the training workflow's. */
const WORKFLOW_ONLY_TRAIN_FIELDS = ['segment_steps', 'segments_per_workflow_run'];
/** Trainer fields the pipeline config does not have: the activity's paths, or the trainer's own defaults. */
const ACTIVITY_OR_TRAINER_FIELDS = ['model_dir', 'train_shards', 'output_dir', 'resume_from', 'init_adapter', 'ref_log_probs_files', 'log_every_steps', 'device', 'preemption_grace_seconds', 'logging_dir', 'run_name', 'run_tags',
  // The stage's kind decides them (an sft stage; merging when a later stage consumes its model).
  'objective', 'merge_model',
  // Read only with several trainer processes (accelerate launch / torchrun); a GPU worker starts one.
  'fsdp'];

function pipelineTrain(train: Record<string, unknown> = {}): TrainConfig {
  const parsed = parsePipelineConfig({ ...minimal, train });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.problems));
  return parsed.config.train;
}

type Properties = Record<string, Record<string, unknown>>;
const trainProperties = TRAINER_CONFIG_SCHEMA.$defs.TrainConfig.properties as unknown as Properties;
const loraProperties = TRAINER_CONFIG_SCHEMA.$defs.LoraSettings.properties as unknown as Properties;

describe('trainer contract (generated from the trainer dataclasses)', () => {
  it('holds the committed schema files verbatim', async () => {
    expect(JSON.parse(await readFile('schemas/trainer-config.schema.json', 'utf8'))).toEqual(TRAINER_CONFIG_SCHEMA);
    expect(JSON.parse(await readFile('schemas/trainer-exit-codes.json', 'utf8')).exit_codes).toEqual(TRAINER_EXIT_CODES);
  });

  it('keeps the exit statuses and loss types the two sides always had', () => {
    expect(TrainerExit).toEqual({ Finished: 0, Crash: 1, InvalidInput: 65, Preempted: 75, OutOfMemory: 76 });
    // TRL 1.16's DPOConfig loss types, in its order (the trainer's parity test checks them against TRL).
    expect(LOSS_TYPES).toEqual([
      'sigmoid', 'hinge', 'ipo', 'exo_pair', 'nca_pair', 'robust', 'bco_pair', 'sppo_hard', 'aot',
      'aot_unpaired', 'apo_zero', 'apo_down', 'discopop', 'sft', 'sigmoid_norm',
    ]);
  });

  it('gives the pipeline config the trainer defaults: the config written for a minimal pipeline is all defaults', () => {
    const written = trainRunConfig(pipelineTrain(), RUN) as Record<string, unknown>;
    expect(trainerConfigProblems('TrainConfig', written)).toEqual([]);
    const defaults = Object.fromEntries(Object.entries(trainProperties).filter(([, p]) => 'default' in p).map(([k, p]) => [k, p.default]));
    const settings = Object.fromEntries(Object.keys(written).filter((k) => !ACTIVITY_OR_TRAINER_FIELDS.includes(k)).map((k) => [k, written[k]]));
    expect(Object.keys(settings).length).toBeGreaterThan(15);
    for (const [name, value] of Object.entries(settings)) expect([name, value]).toEqual([name, defaults[name]]);
    // The seed recipe, as the pipeline config has always shown it.
    expect(written).toMatchObject({ learning_rate: 5e-6, gradient_accumulation_steps: 32, per_device_train_batch_size: 2, dtype: 'bfloat16' });
  });

  it('has every pipeline train setting either read by the trainer under its name or kept by the workflow', () => {
    const trainer = new Set(trainerConfigFields('TrainConfig'));
    const pipeline = Object.keys(pipelineTrain({ total_train_batch_size: 64 }));
    expect(pipeline.filter((k) => !trainer.has(k))).toEqual(WORKFLOW_ONLY_TRAIN_FIELDS);
    expect([...trainer].filter((k) => !pipeline.includes(k)).sort()).toEqual([...ACTIVITY_OR_TRAINER_FIELDS].sort());
  });

  it('refuses in the pipeline config every value just outside a trainer bound', () => {
    // Else a run would pass `dpo validate`, run its data stages, and only then fail at train.
    const cases: Array<{ path: string[]; value: number }> = [];
    const outside = (path: string[], p: Record<string, unknown>) => {
      const step = p.type === 'integer' || (Array.isArray(p.type) && p.type.includes('integer')) || 'anyOf' in p ? 1 : 1e-9;
      if (typeof p.minimum === 'number') cases.push({ path, value: p.minimum - step });
      if (typeof p.maximum === 'number') cases.push({ path, value: p.maximum + step });
      if (typeof p.exclusiveMinimum === 'number') cases.push({ path, value: p.exclusiveMinimum });
      if (typeof p.exclusiveMaximum === 'number') cases.push({ path, value: p.exclusiveMaximum });
    };
    const pipelineFields = new Set(Object.keys(pipelineTrain()));
    for (const [name, p] of Object.entries(trainProperties)) if (pipelineFields.has(name)) outside([name], p);
    for (const [name, p] of Object.entries(loraProperties)) outside(['lora', name], p);
    expect(cases.length).toBeGreaterThan(10);
    const accepted = cases.filter(({ path, value }) => {
      const train = path.length === 1 ? { [path[0]!]: value } : { lora: { [path[1]!]: value } };
      return parsePipelineConfig({ ...minimal, train }).ok;
    });
    expect(accepted.map((c) => `train.${c.path.join('.')} = ${c.value}`)).toEqual([]);
  });

  it('names every field an invalid trainer config gets wrong', () => {
    const config = {
      ...trainRunConfig(pipelineTrain(), RUN),
      learning_rate: -1,
      loss_type: 'dpo',
      per_device_train_batch_size: 'big',
      lora: { r: 4, alpha: 8, dropout: 1, target_modules: 'all-linear' },
      device: 'tpu',
      surprise: 1,
    };
    const problems = trainerConfigProblems('TrainConfig', config);
    expect(problems.map((p) => p.path).sort()).toEqual(['device', 'learning_rate', 'lora.dropout', 'loss_type', 'per_device_train_batch_size', 'surprise']);
    const message = (path: string) => problems.find((p) => p.path === path)!.message;
    expect(message('learning_rate')).toBe('must be > 0, got -1');
    const names = LOSS_TYPES.map((t) => JSON.stringify(t)).join(', ');
    expect(message('loss_type')).toBe(`must be one of ${names} or a list of one of ${names}, got "dpo"`);
    expect(message('per_device_train_batch_size')).toBe('must be integer or "auto", got "big"');
    expect(message('surprise')).toMatch(/^unknown key \(valid keys: .*learning_rate/);
    expect(trainerConfigProblems('TrainConfig', { ...trainRunConfig(pipelineTrain(), RUN), device: 'cuda:1' })).toEqual([]);
    const { model_dir: _, ...noModel } = trainRunConfig(pipelineTrain(), RUN);
    expect(trainerConfigProblems('TrainConfig', noModel)).toEqual([{ path: 'model_dir', message: 'required' }]);
  });

  it('writes nothing and fails non-retryably as InvalidConfig when the config is invalid', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'trainer-config-'));
    const bad = { ...trainRunConfig(pipelineTrain(), RUN), warmup_ratio: 1 };
    const err = await writeTrainerConfig(join(dir, 'bad.json'), 'TrainConfig', bad).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect((err as ApplicationFailure).type).toBe(FailureType.InvalidConfig);
    expect((err as ApplicationFailure).nonRetryable).toBe(true);
    expect((err as Error).message).toContain('warmup_ratio: must be < 1, got 1');
    await expect(readFile(join(dir, 'bad.json'))).rejects.toThrow(/ENOENT/);
    await writeTrainerConfig(join(dir, 'ok.json'), 'ReferenceConfig', { model_dir: '/m', shards: ['/a'], output_dir: '/o', dtype: 'float32' });
    expect(JSON.parse(await readFile(join(dir, 'ok.json'), 'utf8'))).toEqual({ model_dir: '/m', shards: ['/a'], output_dir: '/o', dtype: 'float32' });
  });

  it('types the config files from the schema', () => {
    const ok: TrainerConfigFile<'ReferenceConfig'> = { model_dir: '/m', shards: [], output_dir: '/o', dtype: 'bfloat16', batch_size: 8 };
    // @ts-expect-error dtype is one of the trainer's DType values
    const badDtype: TrainerConfigFile<'ReferenceConfig'> = { model_dir: '/m', shards: [], output_dir: '/o', dtype: 'int8' };
    // @ts-expect-error output_dir is required
    const missing: TrainerConfigFile<'ReferenceConfig'> = { model_dir: '/m', shards: [] };
    expect([ok, badDtype, missing]).toHaveLength(3);
  });
});
