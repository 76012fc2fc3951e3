/**
 * Demo and test assets: the tiny random-init LLaVA (built by the trainer's build_tiny_model and
 * cached per builder version in ~/.cache/dpo-vlm/models) and the generated demo dataset, both
 * published to object storage where pipelines read them like any real model or dataset.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { writeAmberSuite } from '../datagen/amber.js';
import { generateDemoDataset } from '../datagen/demoShapes.js';
import { DEFAULT_KNOBS, generateStoryDatasets } from '../datagen/demoStory.js';
import type { Storage } from '../io/storage.js';
import { REPO_ROOT, trainerPython } from '../io/deps.js';
import { userCacheDir } from '../io/toolsCache.js';

const run = promisify(execFile);
const CACHE = userCacheDir();

/**
 * Builds a tiny model once per version of its builder; returns the local folder. `llava` is the
 * demo model; `qwen2_5_vl` and `qwen3_vl` a tiny Qwen2.5-VL and Qwen3-VL (their builder uses
 * the Qwen processor module too); `llava_next` a tiny LLaVA-NeXT; `gemma3` a tiny Gemma 3.
 */
export type TinyArch = 'llava' | 'llava_next' | 'qwen2_5_vl' | 'qwen3_vl' | 'gemma3';

export async function ensureTinyModel(seed = 0, arch: TinyArch = 'llava'): Promise<string> {
  const sources = ['build_tiny_model.py', ...(arch === 'qwen2_5_vl' || arch === 'qwen3_vl' ? ['vision_processors.py'] : [])];
  const hash = createHash('sha256');
  for (const source of sources) hash.update(readFileSync(join(REPO_ROOT, 'trainer/dpo_trainer', source)));
  // The LLaVA's version string is what it always was, so its cached builds stay valid.
  const version = hash.update(`seed=${seed}`).digest('hex').slice(0, 12);
  const names = { llava: 'llava', llava_next: 'llava-next', qwen2_5_vl: 'qwen2.5-vl', qwen3_vl: 'qwen3-vl', gemma3: 'gemma3' } as const;
  const dir = join(CACHE, 'models', `tiny-${names[arch]}-${version}`);
  if (existsSync(join(dir, 'config.json'))) return dir;
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await run(trainerPython(), ['-m', 'dpo_trainer.build_tiny_model', '--arch', arch, '--out', tmp, '--seed', String(seed)], {
    cwd: REPO_ROOT,
  });
  await rename(tmp, dir).catch(async (err) => {
    if (!existsSync(join(dir, 'config.json'))) throw err;
    await rm(tmp, { recursive: true, force: true });
  });
  return dir;
}

/**
 * Uploads a folder unless `prefix` already holds this exact version of it (named in a
 * `.published` object, written last).
 */
export async function publishFolder(storage: Storage, bucket: string, prefix: string, dir: string, version = dir.split('/').pop()!): Promise<string> {
  await storage.ensureBucket(bucket);
  const marker = `${prefix}.published`;
  const published = (await storage.exists(bucket, marker)) ? (await storage.getBuffer(bucket, marker)).toString() : null;
  if (published !== version) {
    await storage.uploadDir(bucket, dir, prefix);
    await storage.putBuffer(bucket, marker, version);
  }
  return `s3://${bucket}/${prefix.replace(/\/$/, '')}`;
}

export interface DemoDatasetSpec {
  trainRows: number;
  testRows: number;
  seed: number;
  /** Questions of the AMBER-style yes/no suite written to amber/ next to the data (0: none). */
  amberQuestions?: number;
}

/** Generates the demo dataset into the cache (deterministic by spec) and returns its folder. */
export async function ensureDemoDataset(spec: DemoDatasetSpec): Promise<string> {
  const generator = readFileSync(join(REPO_ROOT, 'datagen/demoShapes.ts'));
  const amber = readFileSync(join(REPO_ROOT, 'datagen/amber.ts'));
  const version = createHash('sha256').update(generator).update(amber).update(JSON.stringify(spec)).digest('hex').slice(0, 12);
  const dir = join(CACHE, 'datasets', `demo-shapes-${version}`);
  if (existsSync(join(dir, '.complete'))) return dir;
  await generateDemoDataset({ outDir: dir, trainRows: spec.trainRows, testRows: spec.testRows, seed: spec.seed });
  if (spec.amberQuestions) await writeAmberSuite(dir, spec.amberQuestions, spec.seed + 2_000_003);
  await writeFile(join(dir, '.complete'), '');
  return dir;
}

export interface StoryDatasetSpec {
  sftRows: number;
  trainPairs: number;
  testPairs: number;
  seed: number;
  /** Yes/no questions and description prompts of the AMBER-style suite (dpo/amber/). */
  amberQuestions: number;
  amberDescriptions: number;
}

/** The demo's story data (configs/demo.yaml reads it from s3://dpo/datasets/demo-story and demo-story-sft). */
export const DEMO_STORY: StoryDatasetSpec = { sftRows: 3000, trainPairs: 2000, testPairs: 300, seed: 7, amberQuestions: 300, amberDescriptions: 60 };

/**
 * The demo story's data in the cache (deterministic by spec and generator source): `sft/` (the SFT
 * set: chosen = the target) and `dpo/` (the preference pairs, with the suite in `dpo/amber/`).
 * Returns the folder and its version, which names both published copies.
 */
export async function ensureStoryDatasets(spec: StoryDatasetSpec): Promise<{ dir: string; version: string }> {
  const hash = createHash('sha256');
  for (const source of ['datagen/demoStory.ts', 'datagen/amber.ts', 'datagen/demoShapes.ts', 'io/amberSuite.ts']) hash.update(readFileSync(join(REPO_ROOT, source)));
  const version = hash.update(JSON.stringify(spec)).digest('hex').slice(0, 12);
  const dir = join(CACHE, 'datasets', `demo-story-${version}`);
  if (existsSync(join(dir, '.complete'))) return { dir, version };
  await generateStoryDatasets({ outDir: dir, sftRows: spec.sftRows, trainPairs: spec.trainPairs, testPairs: spec.testPairs, seed: spec.seed, knobs: DEFAULT_KNOBS });
  await writeAmberSuite(join(dir, 'dpo'), spec.amberQuestions, spec.seed + 2_000_003, spec.amberDescriptions);
  await writeFile(join(dir, '.complete'), '');
  return { dir, version };
}
