/** `dpo data demo --out DIR [--train N --test N --seed S]`: generates the demo dataset. */
import { parseArgs } from 'node:util';
import { UsageError } from '../errors.js';

export async function dataCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      out: { type: 'string' },
      train: { type: 'string', default: '2000' },
      test: { type: 'string', default: '300' },
      seed: { type: 'string', default: '7' },
    },
  });
  if (positionals[0] !== 'demo' || !values.out) throw new UsageError('data: missing demo or --out', 'dpo data demo --out DIR [--train N] [--test N] [--seed S]');
  // The demo's generator is loaded only here: no other command (and no worker) needs it.
  const { generateDemoDataset } = await import('../../datagen/demoShapes.js');
  const files = await generateDemoDataset({
    outDir: values.out,
    trainRows: Number(values.train),
    testRows: Number(values.test),
    seed: Number(values.seed),
  });
  for (const [split, path] of Object.entries(files)) console.log(`${split}: ${path}`);
  return 0;
}
