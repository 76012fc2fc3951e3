/**
 * Writes the demo story's data into one folder: sft/ (the SFT set), dpo/ (the preference pairs)
 * and dpo/amber/ (the AMBER-style suite with its generative half). Used by
 * trainer/scripts/demo_story.py, which tunes the knobs (--knobs JSON, merged over the defaults).
 *
 *   npx tsx scripts/demoStoryData.ts --out DIR [--seed 7] [--sft 3000] [--train 2000] [--test 300]
 *                                    [--questions 300] [--descriptions 60] [--knobs JSON]
 */
import { parseArgs } from 'node:util';
import { join } from 'node:path';
import { writeAmberSuite } from '../datagen/amber.js';
import { DEFAULT_KNOBS, generateStoryDatasets, type StoryKnobs } from '../datagen/demoStory.js';

const { values } = parseArgs({
  options: {
    out: { type: 'string' },
    seed: { type: 'string', default: '7' },
    sft: { type: 'string', default: '3000' },
    train: { type: 'string', default: '2000' },
    test: { type: 'string', default: '300' },
    questions: { type: 'string', default: '300' },
    descriptions: { type: 'string', default: '60' },
    knobs: { type: 'string', default: '{}' },
  },
});
if (!values.out) throw new Error('--out DIR is required');
const knobs: StoryKnobs = { ...DEFAULT_KNOBS, ...(JSON.parse(values.knobs!) as Partial<StoryKnobs>) };
const seed = Number(values.seed);
const files = await generateStoryDatasets({ outDir: values.out, sftRows: Number(values.sft), trainPairs: Number(values.train), testPairs: Number(values.test), seed, knobs });
files.amber = await writeAmberSuite(join(values.out, 'dpo'), Number(values.questions), seed + 2_000_003, Number(values.descriptions));
console.log(JSON.stringify({ files, knobs }));
