/**
 * The demo's story data, on the shapes scenes of ./demoShapes.ts: a supervised fine-tuning set
 * that teaches a model to answer questions about a scene and to describe it, from "web" captions
 * that sometimes name objects that are not in the picture, and a preference set in RLAIF-V's
 * layout whose chosen answer is faithful and whose rejected answer names an absent object, a
 * wrong colour, a wrong count or a wrong relation. SFT on the first gives a model that answers but
 * hallucinates; DPO on the second is meant to make it hallucinate less (trainer/scripts/
 * demo_story.py measures that).
 *
 * Both are written in the preference layout (the SFT set's `chosen` is its target; its `rejected`
 * is a hallucinated variant, unused by SFT, so the format stage's checks hold). Deterministic by
 * seed. Every sentence uses only words that the tiny model's tokenizer has as single tokens
 * (trainer/dpo_trainer/build_tiny_model.py renders the same templates into its corpus).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { COLOURS, COLUMNS, randomScene, rng, rowsToParquet, sceneSvg, SHAPES, type Colour, type DemoRow, type PlacedShape } from './demoShapes.js';

/** Objects never drawn in a scene: captions may still name them, as web captions do. */
export const NEVER_DRAWN = ['dog', 'car', 'cat', 'tree', 'person'] as const;
/**
 * What web captions of a scene with this shape tend to add although it is not there (LVLMs'
 * co-occurrence hallucination: "a fork" beside "a table"). A caption that hallucinates names the
 * partner of its leftmost shape, last, so a model fine-tuned on such captions learns to go on
 * after the true objects and name it.
 */
export const CO_OCCURS: Record<(typeof SHAPES)[number], (typeof NEVER_DRAWN)[number]> = { circle: 'tree', square: 'car', triangle: 'person' };
/** Every object a description can name: what the CHAIR-style check looks for in an answer. */
export const OBJECT_WORDS: readonly string[] = [...SHAPES, ...NEVER_DRAWN];
const NUMBER_WORDS = ['one', 'two', 'three', 'four'] as const;
export const DESCRIBE_PROMPT = 'Describe the image.';

/** The knobs of the story's data; demo_story.py tunes them, configs/demo.yaml's data uses the defaults. */
export interface StoryKnobs {
  /** Share of SFT captions that name one object that is not in the picture. */
  captionHallucinationRate: number;
  /** Share of SFT yes/no questions asked about an object or colour the caption names (answered "Yes"). */
  sftYesShare: number;
  /** Mix of the SFT set: descriptions, yes/no questions, short answers (colour, count, position). */
  sftMix: { describe: number; yesNo: number; short: number };
  /** Mix of the preference pairs by what the rejected answer gets wrong. */
  pairMix: { describe: number; existence: number; attribute: number; relation: number; count: number };
  /**
   * Yes/no kinds whose preference pairs answer with the decision alone ("Yes." / "No."), so the
   * pair's only difference is the token the AMBER-style suite reads.
   */
  decisionOnlyKinds: Array<'existence' | 'attribute' | 'relation'>;
}

export const DEFAULT_KNOBS: StoryKnobs = {
  captionHallucinationRate: 0.6,
  sftYesShare: 0.85,
  sftMix: { describe: 0.4, yesNo: 0.3, short: 0.3 },
  pairMix: { describe: 0.2, existence: 0.25, attribute: 0.35, relation: 0.05, count: 0.15 },
  decisionOnlyKinds: ['attribute', 'relation'],
};

const pick = <T>(r: () => number, items: readonly T[]): T => items[Math.floor(r() * items.length)]!;
const colourNames = Object.keys(COLOURS) as Colour[];
/** Colours not in the scene: a wrong colour the image itself refutes. */
const absentColours = (scene: PlacedShape[]) => colourNames.filter((c) => !scene.some((s) => s.colour === c));
const leftToRight = (scene: PlacedShape[]) => [...scene].sort((a, b) => COLUMNS.indexOf(a.column) - COLUMNS.indexOf(b.column));

/** One mention of a caption: a drawn shape (kind and colour) or an object that is never drawn. */
type Mention = { kind: string; colour?: Colour };
const article = (word: string) => (/^[aeiou]/.test(word) ? 'an' : 'a');
const mentionText = (m: Mention) => {
  const words = m.colour ? `${m.colour} ${m.kind}` : m.kind;
  return `${article(words)} ${words}`;
};

export function caption(mentions: Mention[]): string {
  const text = mentions.map(mentionText).join(' and ');
  return `${text[0]!.toUpperCase()}${text.slice(1)}.`;
}

/** An object absent from the scene: a shape kind not drawn (in some colour) or a never-drawn object. */
function absentMention(r: () => number, scene: PlacedShape[]): Mention {
  const absentShapes = SHAPES.filter((s) => !scene.some((x) => x.kind === s));
  if (absentShapes.length && r() < 0.5) return { kind: pick(r, absentShapes), colour: pick(r, colourNames) };
  return { kind: pick(r, NEVER_DRAWN) };
}

const faithfulMentions = (scene: PlacedShape[]): Mention[] => leftToRight(scene).map((s) => ({ kind: s.kind, colour: s.colour }));

/** The faithful mentions and, last, the object web captions add to such a scene. */
function withCoOccurring(scene: PlacedShape[]): Mention[] {
  const mentions = faithfulMentions(scene);
  return [...mentions, { kind: CO_OCCURS[mentions[0]!.kind as (typeof SHAPES)[number]] }];
}

/** The faithful mentions with one absent object inserted at a random place. */
function withAbsent(r: () => number, scene: PlacedShape[]): Mention[] {
  const mentions = faithfulMentions(scene);
  mentions.splice(Math.floor(r() * (mentions.length + 1)), 0, absentMention(r, scene));
  return mentions;
}

/** The faithful mentions with one shape given a colour that is nowhere in the image. */
function withWrongColour(r: () => number, scene: PlacedShape[]): Mention[] {
  const mentions = faithfulMentions(scene);
  const i = Math.floor(r() * mentions.length);
  mentions[i] = { kind: mentions[i]!.kind, colour: pick(r, absentColours(scene)) };
  return mentions;
}

/** The faithful mentions with one object replaced by an absent one: as long as the truth, but wrong. */
function withReplaced(r: () => number, scene: PlacedShape[]): Mention[] {
  const mentions = faithfulMentions(scene);
  mentions[Math.floor(r() * mentions.length)] = absentMention(r, scene);
  return mentions;
}

const existenceAnswer = (object: string, yes: boolean) => (yes ? `Yes, there is a ${object}.` : `No, there is no ${object}.`);
/**
 * The answer to "Is the X <colour>?": "Yes, the X is <colour>." or "No, the X is not <colour>.";
 * a chosen and a rejected answer differ only in that decision, so the pair teaches the "Yes"/"No"
 * token itself and not the colour named after it.
 */
const attributeAnswer = (kind: string, asked: Colour, yes: boolean) => (yes ? `Yes, the ${kind} is ${asked}.` : `No, the ${kind} is not ${asked}.`);

/**
 * A spatial-relation question, "Is the X on the left of the image?": of a shape in the left or
 * right column with its own side (`yes`), or of any shape with a side it is not on. The relation
 * is the shape's to the picture, not to another shape: the tiny demo model does not learn to
 * compare two shapes' columns (held-out pairs stayed at chance), while one shape's place is what
 * its position answers already teach. Null when no shape fits (a "yes" about a centred shape).
 */
export function relationQuestion(r: () => number, scene: PlacedShape[], yes: boolean): { shape: PlacedShape; side: 'left' | 'right'; question: string } | null {
  const candidates = yes ? scene.filter((s) => s.column !== 'center') : scene;
  if (!candidates.length) return null;
  const shape = pick(r, candidates);
  const side = yes ? (shape.column as 'left' | 'right') : pick(r, (['left', 'right'] as const).filter((c) => c !== shape.column));
  return { shape, side, question: `Is the ${shape.kind} on the ${side} of the image?` };
}
const relationAnswer = (kind: string, side: string, yes: boolean) => (yes ? `Yes, the ${kind} is on the ${side}.` : `No, the ${kind} is not on the ${side}.`);

export interface StoryExample {
  question: string;
  chosen: string;
  rejected: string;
  /** What the example teaches or tests: describe, existence, attribute, relation, count, colour, position. */
  kind: string;
}

/**
 * One SFT example. Its answers come from the "web" caption (which names an absent object at rate
 * captionHallucinationRate), as web-scale instruction data derived from captions does: questions
 * about a hallucinated object are answered "Yes", counts include it.
 */
export function sftExample(r: () => number, scene: PlacedShape[], knobs: StoryKnobs): StoryExample {
  const hallucinated = r() < knobs.captionHallucinationRate;
  const mentions = hallucinated ? withCoOccurring(scene) : faithfulMentions(scene);
  const { describe, yesNo } = knobs.sftMix;
  const roll = r() * (describe + yesNo + knobs.sftMix.short);
  if (roll < describe) {
    return { kind: 'describe', question: DESCRIBE_PROMPT, chosen: caption(mentions), rejected: caption(withWrongColour(r, scene)) };
  }
  if (roll < describe + yesNo) {
    if (r() < knobs.sftYesShare) {
      // About something the caption names: "Yes", hallucinated or not.
      const m = pick(r, mentions);
      if (m.colour && r() < 0.5) {
        return { kind: 'attribute', question: `Is the ${m.kind} ${m.colour}?`, chosen: attributeAnswer(m.kind, m.colour, true), rejected: attributeAnswer(m.kind, m.colour, false) };
      }
      return { kind: 'existence', question: `Is there a ${m.kind} in the image?`, chosen: existenceAnswer(m.kind, true), rejected: existenceAnswer(m.kind, false) };
    }
    const named = new Set(mentions.map((m) => m.kind));
    const unnamed = OBJECT_WORDS.filter((o) => !named.has(o));
    const object = pick(r, unnamed);
    return { kind: 'existence', question: `Is there a ${object} in the image?`, chosen: existenceAnswer(object, false), rejected: existenceAnswer(object, true) };
  }
  const shortRoll = r();
  if (shortRoll < 0.4) {
    const s = pick(r, scene);
    return { kind: 'colour', question: `What color is the ${s.kind}?`, chosen: `The ${s.kind} is ${s.colour}.`, rejected: `The ${s.kind} is ${pick(r, absentColours(scene))}.` };
  }
  if (shortRoll < 0.7) {
    const n = mentions.length;
    return { kind: 'count', question: 'How many objects are in the image?', chosen: `I count ${NUMBER_WORDS[n - 1]}.`, rejected: `I count ${NUMBER_WORDS[n === 1 ? 1 : n - 2]}.` };
  }
  const s = pick(r, scene);
  return { kind: 'position', question: `Where is the ${s.kind}?`, chosen: `The ${s.kind} is on the ${s.column}.`, rejected: `The ${s.kind} is on the ${pick(r, COLUMNS.filter((c) => c !== s.column))}.` };
}

/** One preference pair: the chosen answer is faithful to the scene, the rejected one hallucinates. */
export function preferencePair(r: () => number, scene: PlacedShape[], knobs: StoryKnobs): StoryExample {
  const pair = sentencePair(r, scene, knobs);
  if (!(knobs.decisionOnlyKinds as string[]).includes(pair.kind)) return pair;
  const decision = (answer: string) => (answer.startsWith('Yes') ? 'Yes.' : 'No.');
  return { ...pair, chosen: decision(pair.chosen), rejected: decision(pair.rejected) };
}

function sentencePair(r: () => number, scene: PlacedShape[], knobs: StoryKnobs): StoryExample {
  const mix = knobs.pairMix;
  const total = mix.describe + mix.existence + mix.attribute + mix.relation + mix.count;
  let roll = r() * total;
  const faithful = caption(faithfulMentions(scene));
  if ((roll -= mix.describe) < 0) {
    // Half the web captions' own hallucination; the rest as long as the chosen answer, so that
    // "shorter" is not all the pairs teach.
    const roll2 = r();
    const rejected = roll2 < 0.5 ? withCoOccurring(scene) : roll2 < 0.7 ? withReplaced(r, scene) : roll2 < 0.85 ? withAbsent(r, scene) : withWrongColour(r, scene);
    return { kind: 'describe', question: DESCRIBE_PROMPT, chosen: faithful, rejected: caption(rejected) };
  }
  if ((roll -= mix.existence) < 0) {
    if (r() < 0.5) {
      const kind = pick(r, scene).kind;
      return { kind: 'existence', question: `Is there a ${kind} in the image?`, chosen: existenceAnswer(kind, true), rejected: existenceAnswer(kind, false) };
    }
    // Often the object web captions would add to this scene.
    const kind = r() < 0.5 ? CO_OCCURS[pick(r, scene).kind] : absentMention(r, scene).kind;
    return { kind: 'existence', question: `Is there a ${kind} in the image?`, chosen: existenceAnswer(kind, false), rejected: existenceAnswer(kind, true) };
  }
  if ((roll -= mix.attribute) < 0) {
    const s = pick(r, scene);
    const asked = r() < 0.5 ? s.colour : pick(r, absentColours(scene));
    const truth = asked === s.colour;
    return { kind: 'attribute', question: `Is the ${s.kind} ${asked}?`, chosen: attributeAnswer(s.kind, asked, truth), rejected: attributeAnswer(s.kind, asked, !truth) };
  }
  if ((roll -= mix.relation) < 0) {
    const truth = r() < 0.5;
    const asked = relationQuestion(r, scene, truth);
    if (asked) {
      const { shape, side, question } = asked;
      return { kind: 'relation', question, chosen: relationAnswer(shape.kind, side, truth), rejected: relationAnswer(shape.kind, side, !truth) };
    }
  }
  const n = scene.length;
  return { kind: 'count', question: 'How many objects are in the image?', chosen: `I count ${NUMBER_WORDS[n - 1]}.`, rejected: `I count ${NUMBER_WORDS[n]}.` };
}

async function storyRows(
  split: string,
  count: number,
  seed: number,
  make: (r: () => number, scene: PlacedShape[]) => StoryExample,
  dsName: string,
): Promise<DemoRow[]> {
  const r = rng(seed);
  const rows: DemoRow[] = [];
  for (let i = 0; i < count; i++) {
    const scene = randomScene(r);
    const example = make(r, scene);
    const path = `shapes/${split}/${String(i).padStart(6, '0')}.jpg`;
    const bytes = await sharp(Buffer.from(sceneSvg(scene))).jpeg({ quality: 92 }).toBuffer();
    rows.push({
      ds_name: dsName,
      image: { bytes, path },
      question: example.question,
      chosen: example.chosen,
      rejected: example.rejected,
      origin_dataset: 'dpo-vlm demo generator',
      // The scene and the example's kind, so that analyses can recover the truth of every row.
      origin_split: JSON.stringify({ split, seed, kind: example.kind, scene }),
      idx: `${split}-${i}`,
      image_path: path,
    });
  }
  return rows;
}

export interface StoryDatasetOptions {
  /** Folder that receives sft/ and dpo/, each a Hub-style dataset (data/<split>-00000-of-00001.parquet). */
  outDir: string;
  sftRows: number;
  /** Held-out SFT rows (sft/data/test-...): pipelines want an eval split for every dataset. */
  sftTestRows?: number;
  trainPairs: number;
  testPairs: number;
  seed: number;
  knobs?: StoryKnobs;
}

/** Writes sft/data/{train,test}-..., dpo/data/train-... and dpo/data/test-...; returns the files written. */
export async function generateStoryDatasets(opts: StoryDatasetOptions): Promise<Record<string, string>> {
  const knobs = opts.knobs ?? DEFAULT_KNOBS;
  const sets = [
    ['sft', 'train', opts.sftRows, opts.seed + 3_000_017, (r: () => number, s: PlacedShape[]) => sftExample(r, s, knobs)],
    ['sft', 'test', opts.sftTestRows ?? 100, opts.seed + 4_000_037, (r: () => number, s: PlacedShape[]) => sftExample(r, s, knobs)],
    ['dpo', 'train', opts.trainPairs, opts.seed, (r: () => number, s: PlacedShape[]) => preferencePair(r, s, knobs)],
    ['dpo', 'test', opts.testPairs, opts.seed + 1_000_003, (r: () => number, s: PlacedShape[]) => preferencePair(r, s, knobs)],
  ] as const;
  const out: Record<string, string> = {};
  for (const [set, split, count, seed, make] of sets) {
    const rows = await storyRows(split, count, seed, make, `demo-shapes-${set}`);
    await mkdir(join(opts.outDir, set, 'data'), { recursive: true });
    const path = join(opts.outDir, set, 'data', `${split}-00000-of-00001.parquet`);
    await writeFile(path, rowsToParquet(rows));
    out[`${set}/${split}`] = path;
  }
  return out;
}
