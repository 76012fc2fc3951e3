/**
 * The config files the activities hand to the Python trainer (`--config`): built from the
 * pipeline config and validated against schemas/trainer-config.schema.json (generated from the
 * trainer's dataclasses) before the trainer starts. A value the trainer would refuse fails here,
 * as a non-retryable InvalidConfig naming the field; the trainer's parser checks again.
 * Not for the workflow bundle (ajv, file system): activities only.
 */
import { writeFile } from 'node:fs/promises';
import { ApplicationFailure } from '@temporalio/common';
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import type { TrainConfig } from '../contracts/config.js';
import { FailureType } from '../contracts/errors.js';
import { TRAINER_CONFIG_SCHEMA } from '../contracts/trainerContract.generated.js';
import { trainerConfigFields, type ReportToIntegration, type TrainerConfigName } from '../contracts/trainerContract.js';

type Defs = typeof TRAINER_CONFIG_SCHEMA.$defs;
type Primitive<T> = T extends 'integer' | 'number' ? number : T extends 'string' ? string : T extends 'boolean' ? boolean : T extends 'null' ? null : never;
/** The TypeScript type of a value a (generated, `as const`) JSON Schema accepts. */
type FromSchema<S> = S extends { $ref: `#/$defs/${infer Name}` }
  ? Name extends keyof Defs
    ? FromSchema<Defs[Name]>
    : never
  : S extends { const: infer C }
    ? C
    : S extends { enum: readonly (infer E)[] }
      ? E
      : S extends { anyOf: readonly (infer Option)[] }
        ? FromSchema<Option>
        : S extends { type: 'object'; properties: infer P; required: readonly (infer R)[] }
          ? { -readonly [K in keyof P as K extends R ? K : never]: FromSchema<P[K]> } & {
              -readonly [K in keyof P as K extends R ? never : K]?: FromSchema<P[K]>;
            }
          : S extends { type: 'array'; items: infer I }
            ? FromSchema<I>[]
            : S extends { type: readonly (infer T)[] }
              ? Primitive<T>
              : S extends { type: infer T }
                ? Primitive<T>
                : unknown;

/** What a trainer config file may hold, by its dataclass name. */
export type TrainerConfigFile<Name extends TrainerConfigName> = FromSchema<Defs[Name]>;

export const TRAINER_MODULE_CONFIG = {
  'dpo_trainer.train': 'TrainConfig',
  'dpo_trainer.reference': 'ReferenceConfig',
  'dpo_trainer.evaluate': 'EvalConfig',
  'dpo_trainer.score_prompts': 'PromptScoreConfig',
  'dpo_trainer.export': 'ExportConfig',
} as const satisfies Record<string, TrainerConfigName>;

let ajv: Ajv2020 | undefined;

function validator(name: TrainerConfigName): ValidateFunction {
  if (!ajv) {
    // strictTypes off: the generated bounds sit beside anyOf / type lists (e.g. an integer or "auto").
    ajv = new Ajv2020({ allErrors: true, verbose: true, strictTypes: false });
    ajv.addSchema(TRAINER_CONFIG_SCHEMA as object);
  }
  const validate = ajv.getSchema(`${TRAINER_CONFIG_SCHEMA.$id}#/$defs/${name}`);
  if (!validate) throw new Error(`schemas/trainer-config.schema.json has no $defs/${name}`);
  return validate;
}

export interface TrainerConfigProblem {
  /** Dotted path in the config file, e.g. `lora.dropout`. */
  path: string;
  message: string;
}

function valueAt(config: unknown, path: string[]): unknown {
  let value = config;
  for (const key of path) value = (value as Record<string, unknown> | undefined)?.[key];
  return value;
}

function describeBranch(schema: Record<string, unknown>): string {
  if ('const' in schema) return JSON.stringify(schema.const);
  if (Array.isArray(schema.enum)) return `one of ${schema.enum.map((v) => JSON.stringify(v)).join(', ')}`;
  if (typeof schema.$ref === 'string') {
    const name = schema.$ref.split('/').at(-1)!;
    const def = (TRAINER_CONFIG_SCHEMA.$defs as Record<string, Record<string, unknown>>)[name];
    return def && Array.isArray(def.enum) ? describeBranch(def) : name;
  }
  if (schema.type === 'array' && schema.items) return `a list of ${describeBranch(schema.items as Record<string, unknown>)}`;
  return [schema.type].flat().join(' or ');
}

function problemOf(error: ErrorObject, config: unknown): TrainerConfigProblem {
  const path = error.instancePath.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  const got = (at: string[]) => `, got ${JSON.stringify(valueAt(config, at)) ?? 'nothing'}`;
  switch (error.keyword) {
    case 'required':
      return { path: [...path, error.params.missingProperty].join('.'), message: 'required' };
    case 'additionalProperties': {
      const known = Object.keys((error.parentSchema as { properties?: object }).properties ?? {}).sort();
      return { path: [...path, error.params.additionalProperty].join('.'), message: `unknown key (valid keys: ${known.join(', ')})` };
    }
    case 'enum':
      return { path: path.join('.'), message: `must be one of ${error.params.allowedValues.map((v: unknown) => JSON.stringify(v)).join(', ')}${got(path)}` };
    case 'anyOf': {
      const branches = ((error.schema as Record<string, unknown>[]) ?? []).map(describeBranch);
      return { path: path.join('.'), message: `must be ${branches.join(' or ')}${got(path)}` };
    }
    default:
      return { path: path.join('.'), message: `${error.message ?? error.keyword}${got(path)}` };
  }
}

/** Every problem of `config` as the trainer's `name` config file; [] when it is valid. */
export function trainerConfigProblems(name: TrainerConfigName, config: unknown): TrainerConfigProblem[] {
  const validate = validator(name);
  if (validate(config)) return [];
  const errors = validate.errors ?? [];
  // An anyOf error says what the field accepts; its branches' own errors only repeat it in parts.
  const anyOfPaths = errors.filter((e) => e.keyword === 'anyOf').map((e) => `${e.instancePath}/`);
  // (A branch that is a $ref reports its errors at the referenced definition's schema path.)
  const inBranch = (e: ErrorObject) => e.schemaPath.includes('/anyOf/') || e.schemaPath.startsWith('#/$defs/');
  const kept = errors.filter((e) => e.keyword === 'anyOf' || !anyOfPaths.some((p) => `${e.instancePath}/`.startsWith(p) && inBranch(e)));
  const problems = kept.map((e) => problemOf(e, config));
  return problems.filter((p, i) => problems.findIndex((q) => q.path === p.path && q.message === p.message) === i);
}

/**
 * Validates, then writes, a trainer config file. Invalid: a non-retryable InvalidConfig listing
 * every problem with its field (a bad setting, or a worker and trainer of different versions).
 */
export async function writeTrainerConfig<Name extends TrainerConfigName>(path: string, name: Name, config: TrainerConfigFile<Name>): Promise<void> {
  const problems = trainerConfigProblems(name, config);
  if (problems.length) {
    const list = problems.map((p) => `${p.path || '(root)'}: ${p.message}`).join('; ');
    throw ApplicationFailure.nonRetryable(
      `the trainer's ${name} would be invalid (schemas/trainer-config.schema.json): ${list}`,
      FailureType.InvalidConfig,
    );
  }
  await writeFile(path, JSON.stringify(config, null, 2));
}

type TrainerTrainConfig = TrainerConfigFile<'TrainConfig'>;
/** The pipeline's train settings the trainer reads under the same names. */
type SharedTrainSettings = Pick<TrainConfig, keyof TrainConfig & keyof TrainerTrainConfig>;
const TRAINER_TRAIN_FIELDS = new Set(trainerConfigFields('TrainConfig'));

export interface TrainRun {
  modelDir: string;
  shards: string[];
  outputDir: string;
  resumeFrom: string | null;
  initAdapter: string | null;
  /** Precomputed reference log-prob files; empty: the trainer runs the reference forward pass. */
  referenceFiles: string[];
  /** Experiment tracking (report_to); absent: none. */
  tracking?: { reportTo: ReportToIntegration[]; loggingDir: string; runName: string; tags: string[] };
  /** What the trainer optimises; absent: dpo. */
  objective?: 'dpo' | 'sft';
  /** Also write the base with the adapter merged in (final/model). */
  mergeModel?: boolean;
}

/**
 * The train config file: every pipeline train setting the trainer knows, by name, plus this
 * attempt's paths. Settings the pipeline config does not have (log_every_steps, device,
 * preemption_grace_seconds) take the trainer's defaults.
 */
export function trainRunConfig(train: TrainConfig, run: TrainRun): TrainerTrainConfig {
  const shared = Object.fromEntries(Object.entries(train).filter(([name, value]) => TRAINER_TRAIN_FIELDS.has(name) && value !== undefined)) as SharedTrainSettings;
  return {
    ...shared,
    model_dir: run.modelDir,
    train_shards: run.shards,
    output_dir: run.outputDir,
    resume_from: run.resumeFrom,
    init_adapter: run.initAdapter,
    // The pipeline's precompute_ref_log_probs asks for a reference stage; the trainer's says the files are here.
    precompute_ref_log_probs: run.referenceFiles.length > 0,
    ref_log_probs_files: run.referenceFiles,
    report_to: run.tracking?.reportTo ?? [],
    logging_dir: run.tracking?.loggingDir ?? null,
    run_name: run.tracking?.runName ?? null,
    run_tags: run.tracking?.tags ?? [],
    objective: run.objective ?? 'dpo',
    merge_model: run.mergeModel ?? false,
  };
}

export function referenceRunConfig(run: { modelDir: string; shards: string[]; outputDir: string; batchSize: number; dtype: TrainConfig['dtype']; paddingFree?: boolean }): TrainerConfigFile<'ReferenceConfig'> {
  return { model_dir: run.modelDir, shards: run.shards, output_dir: run.outputDir, batch_size: run.batchSize, dtype: run.dtype, padding_free: run.paddingFree ?? false };
}

export function exportRunConfig(run: { modelDir: string; adapterDir: string | null; outDir: string }): TrainerConfigFile<'ExportConfig'> {
  return { model_dir: run.modelDir, adapter_dir: run.adapterDir, out_dir: run.outDir };
}

/** Held-out pairs scored on the CPU (the pytorch evaluate engine): same device as onnxruntime's, float32. */
export function evalRunConfig(run: { modelDir: string; adapterDir: string | null; shards: string[]; batchSize: number; beta: number }): TrainerConfigFile<'EvalConfig'> {
  return { model_dir: run.modelDir, adapter_dir: run.adapterDir, shards: run.shards, batch_size: run.batchSize, beta: run.beta, device: 'cpu', dtype: 'float32' };
}
