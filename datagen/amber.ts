/**
 * An AMBER-style discriminative hallucination suite for the demo scenes (AMBER: Wang et al. 2023,
 * "An LLM-free Multi-dimensional Benchmark for MLLMs Hallucination Evaluation"): yes/no questions
 * about an image with ground truth, of three kinds --
 *   existence  "Is there a triangle in the image?"  (absent shapes and objects never drawn: dog, car...)
 *   attribute  "Is the circle red?"
 *   relation   "Is the square to the left of the circle?"
 * -- about half of them answered "no", which is where hallucinating models fail.
 *
 * Written as one Parquet file, `amber/amber-00000-of-00001.parquet`, next to the demo dataset:
 * columns id, image {bytes, path}, question, answer ("yes" | "no"), kind. Deterministic by seed.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { AMBER_KINDS, amberToParquet, type AmberQuestion } from '../io/amberSuite.js';
import { COLOURS, COLUMNS, rng, randomScene, sceneSvg, SHAPES, type Colour, type PlacedShape } from './demoShapes.js';

/** Objects that never appear in a demo scene: asking about them probes hallucination. */
const NEVER_DRAWN = ['dog', 'car', 'cat', 'tree', 'person'];

const pick = <T>(r: () => number, items: readonly T[]): T => items[Math.floor(r() * items.length)]!;

function existence(r: () => number, scene: PlacedShape[]): Omit<AmberQuestion, 'id' | 'image'> {
  const absent = SHAPES.filter((s) => !scene.some((x) => x.kind === s));
  if (r() < 0.5) return { question: `Is there a ${pick(r, scene).kind} in the image?`, answer: 'yes', kind: 'existence' };
  const object = absent.length && r() < 0.6 ? pick(r, absent) : pick(r, NEVER_DRAWN);
  return { question: `Is there a ${object} in the image?`, answer: 'no', kind: 'existence' };
}

function attribute(r: () => number, scene: PlacedShape[]): Omit<AmberQuestion, 'id' | 'image'> {
  const s = pick(r, scene);
  if (r() < 0.5) return { question: `Is the ${s.kind} ${s.colour}?`, answer: 'yes', kind: 'attribute' };
  const other = (Object.keys(COLOURS) as Colour[]).filter((c) => c !== s.colour);
  return { question: `Is the ${s.kind} ${pick(r, other)}?`, answer: 'no', kind: 'attribute' };
}

function relation(r: () => number, scene: PlacedShape[]): Omit<AmberQuestion, 'id' | 'image'> | null {
  if (scene.length < 2) return null;
  const i = Math.floor(r() * scene.length);
  let j = Math.floor(r() * (scene.length - 1));
  if (j >= i) j++;
  const [x, y] = [scene[i]!, scene[j]!];
  const side = r() < 0.5 ? 'left' : 'right';
  const xi = COLUMNS.indexOf(x.column);
  const yi = COLUMNS.indexOf(y.column);
  const truth = side === 'left' ? xi < yi : xi > yi;
  return { question: `Is the ${x.kind} to the ${side} of the ${y.kind}?`, answer: truth ? 'yes' : 'no', kind: 'relation' };
}

/** `count` questions, cycling through the kinds, one fresh scene each. */
export async function generateAmberSuite(count: number, seed: number): Promise<AmberQuestion[]> {
  const r = rng(seed);
  const out: AmberQuestion[] = [];
  for (let i = 0; out.length < count; i++) {
    const scene = randomScene(r);
    const kind = AMBER_KINDS[i % AMBER_KINDS.length]!;
    const qa = kind === 'existence' ? existence(r, scene) : kind === 'attribute' ? attribute(r, scene) : relation(r, scene);
    if (!qa) continue;
    const path = `amber/${String(out.length).padStart(6, '0')}.jpg`;
    const bytes = await sharp(Buffer.from(sceneSvg(scene))).jpeg({ quality: 92 }).toBuffer();
    out.push({ id: `amber-${out.length}`, image: { bytes, path }, ...qa });
  }
  return out;
}

export { AMBER_KINDS, amberFromParquet, amberToParquet, type AmberKind, type AmberQuestion } from '../io/amberSuite.js';

export const AMBER_FILE = 'amber/amber-00000-of-00001.parquet';

export async function writeAmberSuite(outDir: string, count: number, seed: number): Promise<string> {
  const path = join(outDir, AMBER_FILE);
  await mkdir(join(outDir, 'amber'), { recursive: true });
  await writeFile(path, amberToParquet(await generateAmberSuite(count, seed)));
  return path;
}
