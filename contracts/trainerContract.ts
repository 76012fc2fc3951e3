/**
 * The trainer's config contract as TypeScript: enums and defaults read from the generated
 * constants (contracts/trainerContract.generated.ts = schemas/trainer-config.schema.json), whose one
 * definition is the Python trainer's config dataclasses. The pipeline config's train section
 * takes its enums and defaults from here, so the seed recipe is written once. Pure data: it is
 * bundled into the workflow.
 */
import { TRAINER_CONFIG_SCHEMA } from './trainerContract.generated.js';

/** TrainConfig fields only objective dpo reads (objective sft refuses them). */
export { DPO_ONLY_FIELDS } from './trainerContract.generated.js';

const defs = TRAINER_CONFIG_SCHEMA.$defs;

export type TrainerConfigName = 'TrainConfig' | 'ReferenceConfig' | 'EvalConfig' | 'PromptScoreConfig' | 'ExportConfig';

export const LOSS_TYPES = defs.LossType.enum;
/** The loss types that read label_smoothing. */
export const LABEL_SMOOTHING_LOSS_TYPES = defs.LabelSmoothingLossType.enum;
export const LR_SCHEDULER_TYPES = defs.SchedulerType.enum;
export const DTYPES = defs.DType.enum;
/** TRL's report_to integrations the trainer writes to. */
export const REPORT_TO_INTEGRATIONS = defs.ReportTo.enum;
export type ReportToIntegration = (typeof REPORT_TO_INTEGRATIONS)[number];
export type LossType = (typeof LOSS_TYPES)[number];
export type LrSchedulerType = (typeof LR_SCHEDULER_TYPES)[number];
export type DType = (typeof DTYPES)[number];

type Properties = Record<string, object>;
/** `{field: default}` for the fields that have one, with the defaults' literal types. */
type DefaultsOf<P extends Properties> = {
  [K in keyof P as P[K] extends { default: unknown } ? K : never]: P[K] extends { default: infer D } ? D : never;
};

function defaultsOf<P extends Properties>(properties: P): DefaultsOf<P> {
  return Object.fromEntries(
    Object.entries(properties)
      .filter(([, property]) => 'default' in property)
      .map(([name, property]) => [name, (property as { default: unknown }).default]),
  ) as DefaultsOf<P>;
}

/** The seed recipe: the trainer's defaults, which the pipeline config shows as its own. */
export const TRAIN_DEFAULTS = defaultsOf(defs.TrainConfig.properties);
export const LORA_DEFAULTS = defaultsOf(defs.LoraSettings.properties);
export const REFERENCE_DEFAULTS = defaultsOf(defs.ReferenceConfig.properties);

/** Field names of a trainer config file. */
export function trainerConfigFields(name: TrainerConfigName): string[] {
  return Object.keys(defs[name].properties);
}
