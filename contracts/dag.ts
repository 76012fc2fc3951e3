/**
 * The pipeline as a DAG of typed stages. Each stage kind declares the artifacts it consumes and
 * produces; the planner checks a config's stage list (ids, kinds, dependencies, cycles, artifact
 * contracts, per-kind parameters) before anything runs, and orders it. A config without a stage
 * list gets the standard chain. Pure code: it runs inside the workflow.
 */
import { z } from 'zod';
import { DatasetSchema, EvaluateSchema, FormatSchema, ShardSchema, SFT_REFUSED_TRAIN_FIELDS, sftBaseSettings, StageDeclSchema, TokenizeSchema, TrainSchema, type PipelineConfig } from './config.js';
import { REFERENCE_DEFAULTS } from './trainerContract.js';
import { HubRefError, parseHubRef } from './hubRepo.js';

/** `model`: a base model folder (an sft stage's adapter merged into the base) a later stage starts from. */
export type Artifact = 'dataset' | 'formatted' | 'tokens' | 'shards' | 'reference' | 'adapter' | 'model' | 'metrics' | 'report' | 'published';

export interface StageKindSpec {
  /** Artifacts this kind needs from its dependencies, each from exactly one of them. */
  consumes: Artifact[];
  /** Artifacts consumed from any number (at least one) of dependencies. */
  consumesMany?: Artifact[];
  /** Artifacts consumed from at most one dependency, when one provides them. */
  consumesOptional?: Artifact[];
  produces: Artifact;
  /** Further artifacts the kind's output also provides (an sft stage: its adapter, and the merged model). */
  alsoProduces?: Artifact[];
  /**
   * The config section a stage's `params` override (checked merged, with the section's schema),
   * or a schema of the kind's own params.
   */
  params: SettingsSection | z.ZodType;
  queue: 'cpu' | 'gpu';
}

/** `sft`: the train section without its DPO settings (config.ts sftBaseSettings), parsed as train settings. */
type SettingsSection = 'format' | 'tokenize' | 'shard' | 'train' | 'evaluate' | 'sft';
const SECTION_SCHEMAS = { format: FormatSchema, tokenize: TokenizeSchema, shard: ShardSchema, train: TrainSchema, evaluate: EvaluateSchema, sft: TrainSchema };
type SectionSettings = { format: PipelineConfig['format']; tokenize: PipelineConfig['tokenize']; shard: PipelineConfig['shard']; train: PipelineConfig['train']; evaluate: PipelineConfig['evaluate']; sft: PipelineConfig['train'] };

/** The settings a stage's params override: its config section (an sft stage: the train section less the DPO settings). */
function sectionBase(config: PipelineConfig, section: SettingsSection): Record<string, unknown> {
  return section === 'sft' ? sftBaseSettings(config.train) : config[section];
}

/** The registry of stage kinds: adding a kind is one entry here plus its activity. */
export const STAGE_KINDS = {
  download: {
    consumes: [],
    produces: 'dataset',
    params: z.strictObject({
      dataset: z
        .record(z.string(), z.unknown())
        .optional()
        .describe("fields of the dataset section this chain reads instead (source, splits, columns, limits); e.g. a separate SFT dataset"),
    }),
    queue: 'cpu',
  },
  format: { consumes: ['dataset'], produces: 'formatted', params: 'format', queue: 'cpu' },
  tokenize: { consumes: ['formatted'], produces: 'tokens', params: 'tokenize', queue: 'cpu' },
  shard: { consumes: ['tokens'], produces: 'shards', params: 'shard', queue: 'cpu' },
  /** Reference log-probs of the base model on the train shards, computed once and cached by content. */
  reference: {
    consumes: ['shards'],
    // The model whose log-probs are the reference: an sft stage's merged model, else model.source.
    consumesOptional: ['model'],
    produces: 'reference',
    params: z.strictObject({ batch_size: z.int().positive().default(REFERENCE_DEFAULTS.batch_size).describe('pairs per forward pass') }),
    queue: 'gpu',
  },
  /** DPO; with a `model` (an sft stage), that model is both the policy's start and the reference. */
  train: { consumes: ['shards'], consumesOptional: ['reference', 'model'], produces: 'adapter', params: 'train', queue: 'gpu' },
  /**
   * Supervised fine-tuning on the chosen answers (TRL SFTTrainer's completion-only loss) in the train
   * loop; its adapter, and merged into the base when a later stage consumes the model.
   */
  sft: { consumes: ['shards'], produces: 'adapter', alsoProduces: ['model'], params: 'sft', queue: 'gpu' },
  /** An adapter trained elsewhere (or by an earlier run), for evaluation-only pipelines. */
  adapter: {
    consumes: [],
    produces: 'adapter',
    params: z.strictObject({ source: z.string().regex(/^s3:\/\/[^/]+\/.+/, 'must be s3://bucket/prefix of a PEFT adapter folder') }),
    queue: 'cpu',
  },
  evaluate: { consumes: ['shards', 'adapter'], produces: 'metrics', params: 'evaluate', queue: 'cpu' },
  report: { consumes: [], consumesMany: ['metrics'], produces: 'report', params: z.strictObject({}), queue: 'cpu' },
  /** The adapter and its model card (with the evaluation, from a report it needs) pushed to a Hub model repository. */
  publish: {
    consumes: ['adapter'],
    consumesOptional: ['report'],
    produces: 'published',
    params: z.strictObject({
      repo: z
        .string()
        .superRefine((repo, ctx) => {
          try {
            parseHubRef(repo, 'repo', { bare: true, kind: 'model' });
            if (repo.includes('@')) ctx.addIssue({ code: 'custom', message: 'a repository id, Org/name, without a revision' });
          } catch (err) {
            if (!(err instanceof HubRefError)) throw err;
            ctx.addIssue({ code: 'custom', message: err.message.replace(/^repo "[^"]*": /, '') });
          }
        })
        .transform((repo) => repo.replace(/^hf:\/\/(models\/)?/, ''))
        .describe('Hub model repository to push to: Org/name (created if missing; HF_TOKEN with write access comes from the worker env)'),
      private: z.boolean().default(true).describe('create the repository private (an existing one keeps its visibility)'),
    }),
    queue: 'cpu',
  },
} satisfies Record<string, StageKindSpec>;

export type StageKindName = keyof typeof STAGE_KINDS;
export const STAGE_KIND_NAMES = Object.keys(STAGE_KINDS) as StageKindName[];

export type StageDecl = z.output<typeof StageDeclSchema>;
export { StageDeclSchema };

export interface PlannedStage extends StageDecl {
  kind: StageKindName;
  /** For each consumed artifact, the id(s) of the dependency that provides it. */
  inputs: Partial<Record<Artifact, string[]>>;
}

export interface PipelinePlan {
  /** Stages in a dependency-respecting order. */
  stages: PlannedStage[];
  edges: Array<[from: string, to: string]>;
}

export class PlanError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid pipeline stages (${problems.length} problem${problems.length > 1 ? 's' : ''}):\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  }
}

/**
 * The chain a config gets when it declares no stages; with `train.precompute_ref_log_probs` a
 * `reference` stage sits between shard and train.
 */
export function standardChain(config?: Pick<PipelineConfig, 'train'>): StageDecl[] {
  const reference = config?.train.precompute_ref_log_probs === true;
  const chain: Array<[string, StageKindName, string[]]> = [
    ['download', 'download', []],
    ['format', 'format', ['download']],
    ['tokenize', 'tokenize', ['format']],
    ['shard', 'shard', ['tokenize']],
    ...(reference ? [['reference', 'reference', ['shard']] as [string, StageKindName, string[]]] : []),
    ['train', 'train', reference ? ['shard', 'reference'] : ['shard']],
    ['evaluate', 'evaluate', ['shard', 'train']],
    ['report', 'report', ['evaluate']],
  ];
  return chain.map(([id, kind, needs]) => ({ id, kind, needs, params: {} }));
}

/**
 * The stages a config runs: its declared `stages`, or else the standard chain for its settings.
 * The workflow and the CLI's pre-flight check both take them from here, so they plan the same DAG.
 */
export function configStages(config: PipelineConfig): StageDecl[] {
  return config.stages ?? standardChain(config);
}

/**
 * Validates and orders the stages; throws PlanError listing every problem, naming the stage.
 * `config` supplies the sections that stage params override, so merged settings are checked too.
 */
export function planPipeline(decls: StageDecl[], config: PipelineConfig): PipelinePlan {
  const problems: string[] = [];
  const byId = new Map<string, StageDecl>();
  for (const decl of decls) {
    if (byId.has(decl.id)) problems.push(`stage "${decl.id}": duplicate id`);
    byId.set(decl.id, decl);
  }
  for (const decl of decls) {
    if (!(decl.kind in STAGE_KINDS)) {
      problems.push(`stage "${decl.id}": unknown kind "${decl.kind}" (valid: ${STAGE_KIND_NAMES.join(', ')})`);
    } else {
      const paramSpec: StageKindSpec['params'] = STAGE_KINDS[decl.kind as StageKindName].params;
      let stageParams = decl.params;
      if (paramSpec === 'sft') {
        for (const field of Object.keys(decl.params).filter((k) => (SFT_REFUSED_TRAIN_FIELDS as readonly string[]).includes(k))) {
          problems.push(`stage "${decl.id}": params.${field}: a DPO setting; an sft stage trains on the chosen answers alone and takes no ${field}`);
        }
        stageParams = Object.fromEntries(Object.entries(decl.params).filter(([k]) => !(SFT_REFUSED_TRAIN_FIELDS as readonly string[]).includes(k)));
      }
      const params =
        typeof paramSpec === 'string'
          ? SECTION_SCHEMAS[paramSpec].safeParse({ ...sectionBase(config, paramSpec), ...stageParams })
          : paramSpec.safeParse(decl.params);
      if (!params.success) {
        for (const issue of params.error.issues) {
          const where = issue.path.length ? `params.${issue.path.join('.')}` : 'params';
          const message = issue.code === 'unrecognized_keys' ? `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}` : issue.message;
          problems.push(`stage "${decl.id}": ${where}: ${message}`);
        }
      }
    }
    if (decl.kind === 'download' && decl.params.dataset && typeof decl.params.dataset === 'object') {
      const dataset = DatasetSchema.safeParse({ ...config.dataset, ...decl.params.dataset });
      for (const issue of dataset.success ? [] : dataset.error.issues) {
        const where = ['params', 'dataset', ...issue.path].join('.');
        const message = issue.code === 'unrecognized_keys' ? `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}` : issue.message;
        problems.push(`stage "${decl.id}": ${where}: ${message}`);
      }
    }
    for (const need of decl.needs) {
      if (!byId.has(need)) problems.push(`stage "${decl.id}": needs unknown stage "${need}"`);
      if (need === decl.id) problems.push(`stage "${decl.id}": needs itself`);
    }
  }
  const cycle = findCycle(decls, byId);
  if (cycle) problems.push(`stages form a cycle: ${cycle.join(' -> ')}`);

  const planned: PlannedStage[] = [];
  for (const decl of decls) {
    if (!(decl.kind in STAGE_KINDS)) continue;
    const spec: StageKindSpec = STAGE_KINDS[decl.kind as StageKindName];
    const inputs: PlannedStage['inputs'] = {};
    const deps = decl.needs.map((n) => byId.get(n)).filter((d): d is StageDecl => !!d && d.kind in STAGE_KINDS);
    const produced = (artifact: Artifact) => deps.filter((d) => producesOf(d.kind as StageKindName).includes(artifact)).map((d) => d.id);
    for (const artifact of spec.consumes) {
      const from = produced(artifact);
      if (from.length === 0) problems.push(`stage "${decl.id}" (${decl.kind}) needs a stage that produces ${artifact}; its dependencies produce ${describeProduced(deps)}`);
      else if (from.length > 1) problems.push(`stage "${decl.id}" (${decl.kind}) takes one ${artifact} but ${from.map((f) => `"${f}"`).join(' and ')} both produce one`);
      else inputs[artifact] = from;
    }
    for (const artifact of spec.consumesMany ?? []) {
      const from = produced(artifact);
      if (from.length === 0) problems.push(`stage "${decl.id}" (${decl.kind}) needs at least one stage that produces ${artifact}; its dependencies produce ${describeProduced(deps)}`);
      else inputs[artifact] = from;
    }
    for (const artifact of spec.consumesOptional ?? []) {
      const from = produced(artifact);
      if (from.length > 1) problems.push(`stage "${decl.id}" (${decl.kind}) takes at most one ${artifact} but ${from.map((f) => `"${f}"`).join(' and ')} both produce one`);
      else if (from.length === 1) inputs[artifact] = from;
    }
    if (decl.kind === 'train' && decl.kind in STAGE_KINDS) {
      const precompute = stageSettingsSafe(config, decl.params)?.precompute_ref_log_probs;
      if (precompute && !inputs.reference) problems.push(`stage "${decl.id}" (train): precompute_ref_log_probs is true but it needs no stage that produces reference (add a "reference" stage on its shards to needs)`);
      if (!precompute && inputs.reference) problems.push(`stage "${decl.id}" (train): needs reference stage "${inputs.reference[0]}" but precompute_ref_log_probs is false`);
    }
    const used = new Set(Object.values(inputs).flat());
    for (const d of deps) {
      if (!used.has(d.id)) problems.push(`stage "${decl.id}" (${decl.kind}) does not consume what "${d.id}" produces (${producesOf(d.kind as StageKindName).join(', ')})`);
    }
    planned.push({ ...decl, kind: decl.kind as StageKindName, inputs });
  }
  problems.push(...referenceModelProblems(planned));
  if (problems.length) throw new PlanError(problems);

  return { stages: topologicalOrder(planned), edges: planned.flatMap((s) => s.needs.map((n) => [n, s.id] as [string, string])) };
}

/**
 * A train stage's precomputed reference log-probs must be those of the model it starts from (and
 * is referenced to): the same sft stage's merged model, or model.source for both.
 */
function referenceModelProblems(planned: PlannedStage[]): string[] {
  const byId = new Map(planned.map((p) => [p.id, p]));
  const describe = (model: string | undefined) => (model ? `the model of sft stage "${model}"` : 'model.source');
  return planned.flatMap((stage) => {
    const reference = stage.kind === 'train' && stage.inputs.reference ? byId.get(stage.inputs.reference[0]!) : undefined;
    if (!reference) return [];
    const [own, scored] = [stage.inputs.model?.[0], reference.inputs.model?.[0]];
    if (own === scored) return [];
    return [`stage "${stage.id}" (train): its reference stage "${reference.id}" scores ${describe(scored)} but "${stage.id}" starts from ${describe(own)}; give both the same model in needs`];
  });
}

function describeProduced(deps: StageDecl[]): string {
  if (!deps.length) return 'nothing (it has no dependencies)';
  return deps.map((d) => `${producesOf(d.kind as StageKindName).join(' and ')} ("${d.id}")`).join(', ');
}

/** Every artifact a kind's output provides. */
export function producesOf(kind: StageKindName): Artifact[] {
  const spec: StageKindSpec = STAGE_KINDS[kind];
  return [spec.produces, ...(spec.alsoProduces ?? [])];
}

function findCycle(decls: StageDecl[], byId: Map<string, StageDecl>): string[] | null {
  const state = new Map<string, 'visiting' | 'done'>();
  const path: string[] = [];
  const visit = (id: string): string[] | null => {
    if (state.get(id) === 'done') return null;
    if (state.get(id) === 'visiting') return [...path.slice(path.indexOf(id)), id];
    state.set(id, 'visiting');
    path.push(id);
    for (const need of byId.get(id)?.needs ?? []) {
      if (!byId.has(need) || need === id) continue;
      const found = visit(need);
      if (found) return found;
    }
    path.pop();
    state.set(id, 'done');
    return null;
  };
  for (const d of decls) {
    const found = visit(d.id);
    if (found) return found.reverse();
  }
  return null;
}

function topologicalOrder(stages: PlannedStage[]): PlannedStage[] {
  const done = new Set<string>();
  const out: PlannedStage[] = [];
  while (out.length < stages.length) {
    for (const s of stages) {
      if (!done.has(s.id) && s.needs.every((n) => done.has(n))) {
        done.add(s.id);
        out.push(s);
      }
    }
  }
  return out;
}

/** The planned DAG as a Mermaid flowchart, for the report. */
export function planToMermaid(plan: PipelinePlan, states: Record<string, string> = {}): string {
  const node = (s: PlannedStage) => `  ${mermaidId(s.id)}["${s.id}<br/>${s.kind}${states[s.id] ? ` (${states[s.id]})` : ''}"]`;
  return ['flowchart LR', ...plan.stages.map(node), ...plan.edges.map(([a, b]) => `  ${mermaidId(a)} --> ${mermaidId(b)}`)].join('\n');
}

const mermaidId = (id: string) => `s_${id.replace(/[^A-Za-z0-9_]/g, '_')}`;

/** The config section a stage's params override, merged and resolved (checked by the planner). */
function stageSettingsSafe(config: PipelineConfig, params: Record<string, unknown>): PipelineConfig['train'] | undefined {
  const parsed = TrainSchema.safeParse({ ...config.train, ...params });
  return parsed.success ? parsed.data : undefined;
}

/**
 * The nearest stage of `kind` that `stage` depends on through any chain of inputs (the format
 * stage behind an evaluate stage's shards, for example), or undefined.
 */
export function upstreamStage(plan: PipelinePlan, stage: PlannedStage, kind: StageKindName): PlannedStage | undefined {
  const byId = new Map(plan.stages.map((s) => [s.id, s]));
  const queue = Object.values(stage.inputs).flat();
  for (let i = 0; i < queue.length; i++) {
    const s = byId.get(queue[i]!);
    if (!s) continue;
    if (s.kind === kind) return s;
    queue.push(...Object.values(s.inputs).flat());
  }
  return undefined;
}

export function stageSettings<K extends SettingsSection>(config: PipelineConfig, section: K, params: Record<string, unknown>): SectionSettings[K] {
  return SECTION_SCHEMAS[section].parse({ ...sectionBase(config, section), ...params }) as SectionSettings[K];
}

/**
 * The dataset settings behind a stage's data: those of the download stage at the root of its
 * shards (or tokens, formatted rows, dataset) chain -- the config's dataset section with that
 * stage's `params.dataset` over it.
 */
export function stageDataset(plan: PipelinePlan, config: PipelineConfig, stage: PlannedStage): PipelineConfig['dataset'] {
  const byId = new Map(plan.stages.map((s) => [s.id, s]));
  let at: PlannedStage | undefined = stage;
  while (at && at.kind !== 'download') {
    const from: string | undefined = (['shards', 'tokens', 'formatted', 'dataset'] as const).map((a) => at!.inputs[a]?.[0]).find(Boolean);
    at = from ? byId.get(from) : undefined;
  }
  const override = at?.params.dataset as Record<string, unknown> | undefined;
  return override ? DatasetSchema.parse({ ...config.dataset, ...override }) : config.dataset;
}

/** Kinds that run the training loop in a dpoTraining child workflow (their progress is its query). */
export function isTrainingKind(kind: string | undefined): boolean {
  return kind === 'train' || kind === 'sft';
}
