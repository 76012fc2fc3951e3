/**
 * `npm run demo`: local stack up, demo model and dataset published to MinIO, a worker for both
 * queues in this process, dpoPipeline on configs/demo.yaml with live progress, and the
 * base-vs-DPO table at the end.
 */
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { depsFromEnv } from '../io/deps.js';
import { connectClient, describeFailure, followPipeline, loadConfigFile, startPipeline } from '../cli/runPipeline.js';
import { renderSummary, webUiUrl } from '../cli/summary.js';
import { DEFAULT_QUEUES, temporalEnv } from '../contracts/connection.js';
import { createWorkers } from '../worker/createWorkers.js';
import { ensureDemoDataset, ensureTinyModel, publishFolder } from './assets.js';
import { stackUp } from './localStack.js';

const say = (line: string) => console.log(`demo: ${line}`);
// The demo prints its own progress; the SDK only speaks up for warnings and errors.
Runtime.install({ logger: new DefaultLogger('WARN') });
const started = Date.now();

await stackUp(say);
const deps = depsFromEnv();
const { raw, config } = await loadConfigFile(process.argv[2] ?? 'configs/demo.yaml');

say('building the tiny random-init LLaVA (cached after the first time)...');
const modelDir = await ensureTinyModel();
await publishFolder(deps.storage, 'dpo', 'models/tiny-llava-demo/', modelDir);
say('generating the demo preference dataset (RLAIF-V layout, cached after the first time)...');
const datasetDir = await ensureDemoDataset({ trainRows: 2000, testRows: 300, seed: 7, amberQuestions: 300 });
await publishFolder(deps.storage, 'dpo', 'datasets/demo-shapes/', datasetDir);

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
