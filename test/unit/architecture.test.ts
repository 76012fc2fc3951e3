/**
 * The tree's rules (docs/architecture.md, "The tree"), checked on the import statements of every
 * source file: no import cycles, each folder imports only the layers below it, io/ has no Temporal
 * imports, and only the demo's tooling imports datagen/.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../io/deps.js';

const SOURCE_DIRS = ['contracts', 'io', 'vlm', 'bridge', 'activities', 'workflows', 'worker', 'cli', 'datagen', 'scripts', 'bench'];

function sourceFiles(dir: string): string[] {
  return readdirSync(join(REPO_ROOT, dir)).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(join(REPO_ROOT, path)).isDirectory()) return sourceFiles(path);
    return /\.(ts|mjs)$/.test(name) ? [path] : [];
  });
}

interface Imports {
  local: string[];
  packages: string[];
}

/** Static and dynamic imports of a file: repo-relative targets and package names. */
function importsOf(file: string): Imports {
  const text = readFileSync(join(REPO_ROOT, file), 'utf8');
  const specs = [...text.matchAll(/(?:from\s+|import\s*\(\s*|^import\s+)'([^']+)'/gm)].map((m) => m[1]!);
  const local = specs.filter((s) => s.startsWith('.')).map((s) => normalize(join(dirname(file), s)).replace(/\.js$/, '.ts'));
  const packages = specs.filter((s) => !s.startsWith('.') && !s.startsWith('node:'));
  return { local, packages };
}

const files = SOURCE_DIRS.flatMap(sourceFiles);
const graph = new Map(files.map((f) => [f, importsOf(f)]));
const layer = (file: string) => file.split('/')[0]!;

describe('the tree', () => {
  it('reads the import graph it checks', () => {
    expect(files.length).toBeGreaterThan(60);
    expect(graph.get('activities/training/train.ts')!.local).toContain('io/staging.ts');
    expect(graph.get('workflows/pipeline.ts')!.packages).toContain('@temporalio/workflow');
  });

  it('has no import cycles', () => {
    const cycles: string[] = [];
    const state = new Map<string, 'visiting' | 'done'>();
    const visit = (file: string, path: string[]) => {
      if (state.get(file) === 'done') return;
      if (state.get(file) === 'visiting') {
        cycles.push([...path.slice(path.indexOf(file)), file].join(' -> '));
        return;
      }
      state.set(file, 'visiting');
      for (const next of graph.get(file)?.local ?? []) if (graph.has(next)) visit(next, [...path, file]);
      state.set(file, 'done');
    };
    for (const file of files) visit(file, []);
    expect(cycles).toEqual([]);
  });

  it('imports only the layers below each folder', () => {
    const allowed: Record<string, string[]> = {
      contracts: ['contracts'],
      io: ['contracts', 'io'],
      vlm: ['contracts', 'io', 'vlm'],
      bridge: ['contracts', 'io', 'bridge'],
      activities: ['contracts', 'io', 'vlm', 'bridge', 'activities'],
      workflows: ['contracts', 'workflows', 'activities'],
      datagen: ['contracts', 'io', 'datagen'],
    };
    const wrong = files.flatMap((file) => {
      const ok = allowed[layer(file)];
      if (!ok) return [];
      return graph.get(file)!.local.filter((to) => !ok.includes(layer(to))).map((to) => `${file} -> ${to}`);
    });
    expect(wrong).toEqual([]);
  });

  it('keeps workflows to types from activities, and io/ free of Temporal', () => {
    const workflowValueImports = files
      .filter((f) => layer(f) === 'workflows')
      .flatMap((f) => [...readFileSync(join(REPO_ROOT, f), 'utf8').matchAll(/^import (?!type )[^;]*from '(\.\.\/activities\/[^']+)'/gm)].map((m) => `${f} -> ${m[1]}`));
    expect(workflowValueImports).toEqual([]);
    const temporalInIo = files.filter((f) => layer(f) === 'io' && graph.get(f)!.packages.some((p) => p.startsWith('@temporalio/')));
    expect(temporalInIo).toEqual([]);
  });

  it('lets no production code import the demo data generator', () => {
    const production = ['contracts', 'io', 'vlm', 'bridge', 'activities', 'workflows', 'worker'];
    const wrong = files
      .filter((f) => production.includes(layer(f)))
      .flatMap((f) => graph.get(f)!.local.filter((to) => layer(to) === 'datagen').map((to) => `${f} -> ${to}`));
    expect(wrong).toEqual([]);
    // The CLI loads it lazily, for `dpo data` only.
    const eager = files.filter((f) => layer(f) === 'cli' && /^import [^(]*datagen/m.test(readFileSync(join(REPO_ROOT, f), 'utf8')));
    expect(eager).toEqual([]);
  });
});
