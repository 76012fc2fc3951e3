import { readFile } from 'node:fs/promises';
import YAML from 'yaml';
import { describe, expect, it } from 'vitest';
import { parsePipelineConfig, type PipelineConfig } from '../../contracts/config.js';
import { configStages, PlanError, planPipeline, planToMermaid, stageSettings, standardChain, upstreamStage, type StageDecl } from '../../contracts/dag.js';
import { checkConfig } from '../../cli/runPipeline.js';

function config(extra: object = {}): PipelineConfig {
  const parsed = parsePipelineConfig({ name: 'x', model: { source: 's3://b/m' }, dataset: { source: './d' }, ...extra });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.problems));
  return parsed.config;
}

const stage = (id: string, kind: string, needs: string[] = [], params: Record<string, unknown> = {}): StageDecl => ({ id, kind, needs, params });
const data = [stage('dl', 'download'), stage('fmt', 'format', ['dl']), stage('tok', 'tokenize', ['fmt']), stage('sh', 'shard', ['tok'])];

function problemsOf(decls: StageDecl[]): string[] {
  try {
    planPipeline(decls, config());
  } catch (err) {
    if (err instanceof PlanError) return err.problems;
    throw err;
  }
  return [];
}

describe('DAG planning', () => {
  it('gives a config without stages the standard chain', () => {
    const plan = planPipeline(standardChain(), config());
    expect(plan.stages.map((s) => s.id)).toEqual(['download', 'format', 'tokenize', 'shard', 'train', 'evaluate', 'report']);
    expect(plan.stages.find((s) => s.id === 'evaluate')!.inputs).toEqual({ shards: ['shard'], adapter: ['train'] });
  });

  it('puts a cached reference stage between shard and train when train.precompute_ref_log_probs is set', () => {
    const cfg = config({ train: { precompute_ref_log_probs: true } });
    const plan = planPipeline(standardChain(cfg), cfg);
    expect(plan.stages.map((s) => s.id)).toEqual(['download', 'format', 'tokenize', 'shard', 'reference', 'train', 'evaluate', 'report']);
    expect(plan.stages.find((s) => s.id === 'reference')!.inputs).toEqual({ shards: ['shard'] });
    expect(plan.stages.find((s) => s.id === 'train')!.inputs).toEqual({ shards: ['shard'], reference: ['reference'] });
  });

  it('plans the reference stage for a config without stages that sets precompute_ref_log_probs (workflow and CLI alike)', () => {
    const raw = { name: 'x', model: { source: 's3://b/m' }, dataset: { source: './d' }, train: { precompute_ref_log_probs: true } };
    const cfg = config({ train: { precompute_ref_log_probs: true } });
    const plan = planPipeline(configStages(cfg), cfg);
    expect(plan.stages.map((s) => s.id)).toEqual(['download', 'format', 'tokenize', 'shard', 'reference', 'train', 'evaluate', 'report']);
    expect(plan.stages.find((s) => s.id === 'train')!.inputs).toEqual({ shards: ['shard'], reference: ['reference'] });
    expect(plan.edges).toEqual(expect.arrayContaining([['shard', 'reference'], ['reference', 'train']]));
    // The CLI's pre-flight check (what `dpo run` does before starting anything) accepts it too.
    expect(checkConfig(raw).train.precompute_ref_log_probs).toBe(true);
    expect(checkConfig({ ...raw, sweep: { 'train.beta': [0.05, 0.1] } }).sweep).toBeDefined();
    // Declared stages are taken as written.
    const declared = config({ stages: data });
    expect(configStages(declared).map((s) => s.id)).toEqual(['dl', 'fmt', 'tok', 'sh']);
  });

  it('checks that precompute_ref_log_probs and a reference dependency go together', () => {
    const withRef = [...data, stage('ref', 'reference', ['sh'], { batch_size: 4 })];
    const mismatch = (decls: StageDecl[], cfg: PipelineConfig) => {
      try {
        planPipeline(decls, cfg);
        return [];
      } catch (err) {
        return (err as PlanError).problems;
      }
    };
    // A sweep: two train stages share one reference stage (computed once, cached by content).
    const sweep = [...withRef, stage('ta', 'train', ['sh', 'ref'], { beta: 0.1 }), stage('tb', 'train', ['sh', 'ref'], { beta: 0.5 })];
    expect(mismatch(sweep, config({ train: { precompute_ref_log_probs: true } }))).toEqual([]);
    expect(mismatch([...withRef, stage('t', 'train', ['sh', 'ref'])], config())).toEqual([
      'stage "t" (train): needs reference stage "ref" but precompute_ref_log_probs is false',
    ]);
    expect(mismatch([...data, stage('t', 'train', ['sh'], { precompute_ref_log_probs: true })], config())[0]).toMatch(/precompute_ref_log_probs is true but it needs no stage that produces reference/);
    expect(mismatch([...data, stage('ref', 'reference', ['sh'], { batch_size: 0 })], config())[0]).toMatch(/stage "ref": params.batch_size/);
  });

  it("sizes an evaluate stage's images by the format stage upstream of its shards, not by config.format", () => {
    const decls = [
      stage('dl', 'download'),
      stage('fmt', 'format', ['dl'], { image_longest_edge: 64 }),
      stage('tok', 'tokenize', ['fmt']),
      stage('sh', 'shard', ['tok']),
      stage('tr', 'train', ['sh']),
      stage('ev', 'evaluate', ['sh', 'tr']),
    ];
    const cfg = config();
    const plan = planPipeline(decls, cfg);
    const evaluate = plan.stages.find((s) => s.id === 'ev')!;
    const format = upstreamStage(plan, evaluate, 'format');
    expect(format?.id).toBe('fmt');
    expect(stageSettings(cfg, 'format', format!.params).image_longest_edge).toBe(64);
    expect(stageSettings(cfg, 'format', {}).image_longest_edge ?? null).toBeNull(); // what evaluate used before
    expect(upstreamStage(plan, evaluate, 'reference')).toBeUndefined();
  });

  it('orders parallel branches after what they share', () => {
    const plan = planPipeline(
      [
        stage('report', 'report', ['eval-a', 'eval-b']),
        stage('eval-b', 'evaluate', ['sh', 'train-b']),
        stage('eval-a', 'evaluate', ['sh', 'train-a']),
        stage('train-a', 'train', ['sh'], { beta: 0.05 }),
        stage('train-b', 'train', ['sh'], { beta: 0.5 }),
        ...data,
      ],
      config(),
    );
    const order = plan.stages.map((s) => s.id);
    expect(order.indexOf('sh')).toBeLessThan(order.indexOf('train-a'));
    expect(order.indexOf('train-b')).toBeLessThan(order.indexOf('eval-b'));
    expect(order.at(-1)).toBe('report');
    expect(plan.stages.find((s) => s.id === 'report')!.inputs.metrics!.sort()).toEqual(['eval-a', 'eval-b']);
    expect(planToMermaid(plan)).toContain('s_train_a --> s_eval_a');
  });

  it('names the stage in each planning error', () => {
    expect(problemsOf([...data, stage('x', 'distill', ['sh'])])).toEqual([
      'stage "x": unknown kind "distill" (valid: download, format, tokenize, shard, reference, train, sft, adapter, evaluate, report, publish)',
    ]);
    expect(problemsOf([...data, stage('t', 'train', ['nope'])])).toContain('stage "t": needs unknown stage "nope"');
    expect(problemsOf([...data, stage('sh', 'shard', ['tok'])])).toContain('stage "sh": duplicate id');
    expect(problemsOf([stage('a', 'format', ['b']), stage('b', 'format', ['a'])])).toContain('stages form a cycle: a -> b -> a');
    expect(problemsOf([...data, stage('t', 'train', ['fmt'])])).toContain(
      'stage "t" (train) needs a stage that produces shards; its dependencies produce formatted ("fmt")',
    );
    expect(problemsOf([...data, stage('e', 'evaluate', ['sh'])])).toContain(
      'stage "e" (evaluate) needs a stage that produces adapter; its dependencies produce shards ("sh")',
    );
    expect(problemsOf([...data, stage('t', 'train', ['sh'], { beta: -1, betta: 2 })]).sort()).toEqual([
      'stage "t": params.beta: Too small: expected number to be >0',
      'stage "t": params: unknown key "betta"',
    ]);
    const train = stage('t', 'train', ['sh']);
    expect(problemsOf([...data, train, stage('p', 'publish', ['t'], { repo: 'o/n@../../x' })])).toEqual([
      'stage "p": params.repo: the path leaves the repository ("." or ".." segments are not allowed)',
    ]);
    expect(problemsOf([...data, train, stage('p', 'publish', ['t'], { repo: 'o/n@v1' })])).toEqual(['stage "p": params.repo: a repository id, Org/name, without a revision']);
    expect(problemsOf([...data, train, stage('p', 'publish', ['t'], {})])).toEqual([expect.stringMatching(/^stage "p": params\.repo: /)]);
    expect(problemsOf([...data, train, stage('p', 'publish', ['t'], { repo: 'hf://o/n', private: false })])).toEqual([]);
    expect(problemsOf([...data, stage('r', 'report', [])])).toContain(
      'stage "r" (report) needs at least one stage that produces metrics; its dependencies produce nothing (it has no dependencies)',
    );
  });

  it('refuses stage ids that would escape the run folder', () => {
    for (const id of ['../up', '/abs', 'a/b', 'sp ace', '..']) {
      const parsed = parsePipelineConfig({ ...config(), stages: [{ id, kind: 'download' }] });
      expect(parsed.ok, id).toBe(false);
      if (!parsed.ok) expect(parsed.problems[0]!.path).toBe('stages.0.id');
    }
  });

  it('ships example DAG configs that plan cleanly', async () => {
    for (const file of ['configs/demo-beta-sweep.yaml', 'configs/evaluate-adapter.yaml', 'configs/demo-sft-dpo.yaml']) {
      const parsed = parsePipelineConfig(YAML.parse(await readFile(file, 'utf8')));
      expect(parsed.ok, file).toBe(true);
      if (parsed.ok) expect(() => planPipeline(parsed.config.stages ?? standardChain(), parsed.config)).not.toThrow();
    }
  });
});
