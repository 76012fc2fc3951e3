#!/usr/bin/env -S npx tsx
/**
 * The `dpo` command (run with `npm run dpo -- <command>`):
 *   dpo run <config.yaml|json> [--run-id ID] [--detach]   start dpoPipeline and follow it
 *   dpo validate <config>                                 check a config, listing every problem
 *   dpo config-json <config>                              print the workflow input (for `temporal workflow start --input @file`)
 *   dpo schema                                            print the config's JSON Schema
 *   dpo data demo --out DIR [--train N --test N --seed S] generate the demo dataset
 * Exit codes: 0 ok, 1 the run failed, 2 bad usage or invalid config, 3 cannot reach Temporal.
 */
import { parseArgs } from 'node:util';
import { generateDemoDataset } from '../datagen/demoShapes.js';
import { pipelineConfigJsonSchema } from '../lib/config.js';
import { ConfigFileError, connectClient, describeFailure, followPipeline, loadConfigFile, startPipeline } from './runPipeline.js';
import { renderSummary, webUiUrl } from './summary.js';

const USAGE = `usage: dpo <run|validate|config-json|schema|data> ...  (see the README)`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'run':
      return run(rest);
    case 'validate': {
      const { config } = await loadConfigFile(requirePositional(rest, 'config file'));
      console.log(`ok: ${config.name} (${config.model.source}, ${config.dataset.source})`);
      return 0;
    }
    case 'config-json': {
      const { raw } = await loadConfigFile(requirePositional(rest, 'config file'));
      console.log(JSON.stringify(raw, null, 2));
      return 0;
    }
    case 'schema':
      console.log(JSON.stringify(pipelineConfigJsonSchema(), null, 2));
      return 0;
    case 'data':
      return data(rest);
    default:
      console.error(USAGE);
      return 2;
  }
}

async function run(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { 'run-id': { type: 'string' }, detach: { type: 'boolean', default: false } },
  });
  const { raw, config } = await loadConfigFile(requirePositional(positionals, 'config file'));
  const client = await connectClient().catch((err: Error) => {
    throw new UnreachableError(`cannot reach Temporal at ${process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233'}: ${err.message}\n  hint: start the local stack with \`npm run stack\``);
  });
  const handle = await startPipeline(client, raw, config, values['run-id']);
  console.log(`started run ${handle.workflowId}  (${webUiUrl(handle.workflowId)})`);
  if (values.detach) return 0;
  console.log('following progress; Ctrl-C detaches, the run goes on');
  process.once('SIGINT', () => {
    console.log(`\ndetached; the run goes on. Temporal UI: ${webUiUrl(handle.workflowId)}`);
    process.exit(0);
  });
  try {
    const result = await followPipeline(handle, (line) => console.log(line));
    console.log(renderSummary(result));
    return 0;
  } catch (err) {
    console.error(`run ${handle.workflowId} failed:\n  ${describeFailure(err)}`);
    return 1;
  } finally {
    await client.connection.close();
  }
}

async function data(args: string[]): Promise<number> {
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
  if (positionals[0] !== 'demo' || !values.out) {
    console.error('usage: dpo data demo --out DIR [--train N] [--test N] [--seed S]');
    return 2;
  }
  const files = await generateDemoDataset({
    outDir: values.out,
    trainRows: Number(values.train),
    testRows: Number(values.test),
    seed: Number(values.seed),
  });
  for (const [split, path] of Object.entries(files)) console.log(`${split}: ${path}`);
  return 0;
}

class UnreachableError extends Error {}

function requirePositional(args: string[], what: string): string {
  const value = args.find((a) => !a.startsWith('--'));
  if (!value) throw new ConfigFileError(`missing ${what}\n${USAGE}`);
  return value;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: Error) => {
    if (err instanceof ConfigFileError) {
      console.error(err.message);
      process.exit(2);
    }
    if (err instanceof UnreachableError) {
      console.error(err.message);
      process.exit(3);
    }
    console.error(`dpo: ${err.stack ?? err.message}`);
    process.exit(1);
  },
);
