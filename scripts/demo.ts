/**
 * `npm run demo`: local stack up, demo model and the story's datasets (the SFT set, the preference
 * pairs and the AMBER-style suite) published to MinIO, a worker for both queues in this process,
 * dpoPipeline on configs/demo.yaml with live progress, and the base-vs-DPO table at the end.
 */
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { depsFromEnv } from '../io/deps.js';
import { connectClient, describeFailure, followPipeline, loadConfigFile, startPipeline } from '../cli/runPipeline.js';
import { renderSummary, webUiUrl } from '../cli/summary.js';
import { DEFAULT_QUEUES, temporalEnv } from '../contracts/connection.js';
import { createWorkers } from '../worker/createWorkers.js';
import { DEMO_STORY, ensureStoryDatasets, ensureTinyModel, publishFolder, type TinyArch } from './assets.js';
import { stackUp } from './localStack.js';

const say = (line: string) => console.log(`demo: ${line}`);
// The demo prints its own progress; the SDK only speaks up for warnings and errors.
Runtime.install({ logger: new DefaultLogger('WARN') });
const started = Date.now();

// `npm run demo -- [--family ARCH] [config]`: the same story on a tiny model of another family.
const { values: args, positionals } = parseArgs({ allowPositionals: true, options: { family: { type: 'string', default: 'llava' } } });
const FAMILIES = ['llava', 'llava_next', 'qwen2_5_vl', 'qwen3_vl', 'gemma3'] as const satisfies readonly TinyArch[];
const family = args.family as TinyArch;
if (!(FAMILIES as readonly string[]).includes(family)) {
  console.error(`demo: --family must be one of ${FAMILIES.join(', ')} (got "${args.family}")`);
  process.exit(2);
}

await stackUp(say);
const deps = depsFromEnv();
const loaded = await loadConfigFile(positionals[0] ?? 'configs/demo.yaml');
let { raw, config } = loaded;

say(`building the tiny random-init ${family === 'llava' ? 'LLaVA' : family} (cached after the first time)...`);
const modelDir = await ensureTinyModel(0, family);
const modelPrefix = family === 'llava' ? 'models/tiny-llava-demo/' : `models/tiny-${family.replace(/_/g, '-')}-demo/`;
const modelSource = await publishFolder(deps.storage, 'dpo', modelPrefix, modelDir);
// Another family trains the same data from its own tiny model, under its own run name.
if (family !== 'llava') {
  const override = { name: `${config.name}-${family.replace(/_/g, '-')}`, model: { ...config.model, source: modelSource } };
  raw = { ...(raw as object), ...override };
  config = { ...config, ...override };
}
say('generating the SFT set, the preference pairs (RLAIF-V layout) and the AMBER-style suite (cached after the first time)...');
const story = await ensureStoryDatasets(DEMO_STORY);
await publishFolder(deps.storage, 'dpo', 'datasets/demo-story-sft/', join(story.dir, 'sft'), story.version);
await publishFolder(deps.storage, 'dpo', 'datasets/demo-story/', join(story.dir, 'dpo'), story.version);

const { workers, connection } = await createWorkers({ temporal: temporalEnv(), queues: DEFAULT_QUEUES, serve: { cpu: true, gpu: true }, deps });
const running = Promise.all(workers.map((w) => w.run()));
say(`worker polling "${DEFAULT_QUEUES.cpu}" and "${DEFAULT_QUEUES.gpu}"`);

const client = await connectClient();
let exitCode = 0;
try {
  const handle = await startPipeline(client, raw, config);
  say(`started run ${handle.workflowId} (${webUiUrl(handle.workflowId)})`);
  const result = await followPipeline(handle, (line) => console.log(line));
  console.log(renderSummary(result));
  say(`finished in ${((Date.now() - started) / 1000).toFixed(0)} s`);
} catch (err) {
  console.error(`demo: the run failed:\n  ${describeFailure(err)}`);
  exitCode = 1;
} finally {
  for (const w of workers) w.shutdown();
  await running;
  await connection.close();
  await client.connection.close();
}
process.exit(exitCode);
