/**
 * An AMBER-style discriminative hallucination suite for the demo scenes (AMBER: Wang et al. 2023,
 * "An LLM-free Multi-dimensional Benchmark for MLLMs Hallucination Evaluation"): yes/no questions
 * about an image with ground truth, of three kinds --
 *   existence  "Is there a triangle in the image?"  (absent shapes and objects never drawn: dog, car...)
 *   attribute  "Is the circle red?"
 *   relation   "Is the square on the left of the image?"
 * -- about half of them answered "no", which is where hallucinating models fail.
 *
 * -- exactly half of each kind answered "no", which is where hallucinating models fail (and where a
 * model that ignores the image scores 50% whichever way it leans). Its generative half, as AMBER's:
 * "Describe the image." prompts whose greedy descriptions are scored CHAIR-style against the
 * scene's objects (the share of named objects that are not in the image).
 *
 * Written as one Parquet file, `amber/amber-00000-of-00001.parquet`, next to the demo dataset, in
 * io/amberSuite.ts's format. Deterministic by seed.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { AMBER_KINDS, amberToParquet, type AmberDescription, type AmberQuestion } from '../io/amberSuite.js';
import { COLOURS, COLUMNS, rng, randomScene, sceneSvg, SHAPES, type Colour, type PlacedShape } from './demoShapes.js';
import { CO_OCCURS, DESCRIBE_PROMPT, NEVER_DRAWN, OBJECT_WORDS, relationQuestion } from './demoStory.js';

const pick = <T>(r: () => number, items: readonly T[]): T => items[Math.floor(r() * items.length)]!;

type Draft = Omit<AmberQuestion, 'id' | 'image'>;

function existence(r: () => number, scene: PlacedShape[], yes: boolean): Draft {
  if (yes) return { question: `Is there a ${pick(r, scene).kind} in the image?`, answer: 'yes', kind: 'existence' };
  const absent = SHAPES.filter((s) => !scene.some((x) => x.kind === s));
  // Absent shapes, the objects web captions add to such scenes, and other objects never drawn.
  const roll = r();
  const object = absent.length && roll < 0.4 ? pick(r, absent) : roll < 0.7 ? CO_OCCURS[pick(r, scene).kind] : pick(r, NEVER_DRAWN);
  return { question: `Is there a ${object} in the image?`, answer: 'no', kind: 'existence' };
}

function attribute(r: () => number, scene: PlacedShape[], yes: boolean): Draft {
  const s = pick(r, scene);
  if (yes) return { question: `Is the ${s.kind} ${s.colour}?`, answer: 'yes', kind: 'attribute' };
  // A colour that is nowhere in the image: the picture alone refutes it.
  const other = (Object.keys(COLOURS) as Colour[]).filter((c) => !scene.some((x) => x.colour === c));
  return { question: `Is the ${s.kind} ${pick(r, other)}?`, answer: 'no', kind: 'attribute' };
}

function relation(r: () => number, scene: PlacedShape[], yes: boolean): Draft | null {
  const asked = relationQuestion(r, scene, yes);
  return asked && { question: asked.question, answer: yes ? 'yes' : 'no', kind: 'relation' };
}

/** `count` questions, cycling through the kinds and, within each kind, yes and no; one fresh scene each. */
export async function generateAmberSuite(count: number, seed: number): Promise<AmberQuestion[]> {
  const r = rng(seed);
  const out: AmberQuestion[] = [];
  for (let i = 0; out.length < count; ) {
    const scene = randomScene(r);
    const kind = AMBER_KINDS[i % AMBER_KINDS.length]!;
    const yes = Math.floor(i / AMBER_KINDS.length) % 2 === 0;
    const qa = kind === 'existence' ? existence(r, scene, yes) : kind === 'attribute' ? attribute(r, scene, yes) : relation(r, scene, yes);
    if (!qa) continue;
    i++;
    out.push({ id: `amber-${out.length}`, image: await sceneImage(scene, `amber/${String(out.length).padStart(6, '0')}.jpg`), ...qa });
  }
  return out;
}

/** `count` description prompts, one fresh scene each: truth = the shapes drawn, hallu = every other object word. */
export async function generateAmberDescriptions(count: number, seed: number): Promise<AmberDescription[]> {
  const r = rng(seed);
  const out: AmberDescription[] = [];
  for (let i = 0; i < count; i++) {
    const scene = randomScene(r);
    const truthObjects = SHAPES.filter((s) => scene.some((x) => x.kind === s));
    out.push({
      id: `amber-gen-${i}`,
      image: await sceneImage(scene, `amber/gen-${String(i).padStart(6, '0')}.jpg`),
      question: DESCRIBE_PROMPT,
      truthObjects,
      halluObjects: OBJECT_WORDS.filter((o) => !truthObjects.includes(o as (typeof SHAPES)[number])),
    });
  }
  return out;
}

async function sceneImage(scene: PlacedShape[], path: string): Promise<{ bytes: Uint8Array; path: string }> {
  return { bytes: await sharp(Buffer.from(sceneSvg(scene))).jpeg({ quality: 92 }).toBuffer(), path };
}

export { AMBER_KINDS, amberFromParquet, amberToParquet, readAmberSuite, type AmberDescription, type AmberKind, type AmberQuestion } from '../io/amberSuite.js';

export const AMBER_FILE = 'amber/amber-00000-of-00001.parquet';

/** Writes the suite: `count` yes/no questions and `descriptions` description prompts. */
export async function writeAmberSuite(outDir: string, count: number, seed: number, descriptions = 0): Promise<string> {
  const path = join(outDir, AMBER_FILE);
  await mkdir(join(outDir, 'amber'), { recursive: true });
  const suite = { questions: await generateAmberSuite(count, seed), descriptions: await generateAmberDescriptions(descriptions, seed + 17) };
  await writeFile(path, amberToParquet(suite));
  return path;
}
