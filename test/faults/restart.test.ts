/**
 * Service restarts mid-training, on a PRIVATE stack (its own ports and state folder: the shared
 * stack on 7233/9000 is never touched): the Temporal dev server restarted mid-training, MinIO
 * restarted during a checkpoint upload. The run completes and every visible checkpoint is intact.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { REPO_ROOT } from '../../io/deps.js';
import { PIPELINE_WORKFLOW } from '../../contracts/messages.js';

// Before anything reads them: workers, clients, storage and the stack script use these.
const suffix = randomBytes(3).toString('hex');
const base = 17_300 + Math.floor(Math.random() * 500) * 4;
process.env.TEMPORAL_ADDRESS = `127.0.0.1:${base}`;
process.env.DPO_TEMPORAL_UI_PORT = String(base + 1);
process.env.DPO_S3_ENDPOINT = `http://127.0.0.1:${base + 2}`; // console on base + 3
process.env.DPO_STATE_DIR = join(REPO_ROOT, '.dpo/test-work', `private-stack-${suffix}`);

const { stackDown, stackUp, STATE_DIR } = await import('../../scripts/localStack.js');
const { generateDemoDataset } = await import('../../datagen/demoShapes.js');
const { publishFolder } = await import('../../scripts/assets.js');
const { startTestStack, TEST_BUCKET, uniqueId } = await import('../harness.js');
const { faultPipelineConfig, publishedCheckpoints, readEvents, startGpuWorker, trainerRuns, waitFor, workRoot } = await import('./faultKit.js');
type Stack = Awaited<ReturnType<typeof startTestStack>>;
type Gpu = Awaited<ReturnType<typeof startGpuWorker>>;

let stack: Stack;
let gpu: Gpu | undefined;
let datasetDir: string;
let modelSource: string;

beforeAll(async () => {
  expect(STATE_DIR).toContain('private-stack-');
  await stackUp();
  stack = await startTestStack({ serveGpu: false });
  modelSource = await publishFolder(stack.deps.storage, TEST_BUCKET, 'models/tiny-llava/', inject('modelDir'));
  datasetDir = await mkdtemp(join(tmpdir(), 'dpo-faults-'));
  await generateDemoDataset({ outDir: datasetDir, trainRows: 64, testRows: 8, seed: 21 });
});

afterAll(async () => {
  gpu?.child.kill('SIGKILL');
  await stack?.stop().catch(() => {});
  await stackDown();
});

/** Stops one private service by the pid its stack recorded, waits, starts it again. */
async function restart(name: 'temporal' | 'minio', downMs: number) {
  const pid = Number(await readFile(join(STATE_DIR, `${name}.pid`), 'utf8'));
  process.kill(pid, 'SIGKILL');
  await new Promise((r) => setTimeout(r, downMs));
  await stackUp();
}

async function intact(prefix: string): Promise<boolean> {
  const manifest = await stack.deps.storage.getJson<{ files: Array<{ path: string; sha256: string }> }>(TEST_BUCKET, `${prefix}manifest.json`);
  for (const f of manifest.files) {
    const bytes = await stack.deps.storage.getBuffer(TEST_BUCKET, prefix + f.path);
    if (createHash('sha256').update(bytes).digest('hex') !== f.sha256) return false;
  }
  return true;
}

describe('fault injection: service restarts (private stack)', () => {
  it('Temporal restarted mid-training, then MinIO restarted during a checkpoint upload: completes, no corrupt checkpoint visible', async () => {
    const eventsFile = join(datasetDir, `restart-${suffix}.jsonl`);
    gpu = await startGpuWorker({ queues: stack.queues, workDir: workRoot(`restart-${suffix}`), eventsFile, env: { DPO_FAULT_SLEEP_PER_STEP: '0.5' } });
    const runId = uniqueId('faults-restart');
    const config = faultPipelineConfig({ datasetDir, modelSource, queues: stack.queues, bucket: TEST_BUCKET, train: { checkpoint_every_steps: 3 } });
    await stack.client.workflow.start(PIPELINE_WORKFLOW, { taskQueue: stack.queues.cpu, workflowId: runId, args: [config] });
    await waitFor(async () => trainerRuns(await readEvents(eventsFile)).some((r) => r.lastStep >= 2), 180_000, 'step 2');
    await restart('temporal', 2_000);
    // Next checkpoint written by the trainer: MinIO goes away while it is being uploaded.
    const saved = (await readEvents(eventsFile)).filter((e) => e.event === 'checkpoint_saved').length;
    await waitFor(async () => (await readEvents(eventsFile)).filter((e) => e.event === 'checkpoint_saved').length > saved, 180_000, 'a checkpoint');
    await restart('minio', 3_000);
    const result = await stack.client.workflow.getHandle(runId).result();
    gpu.child.kill('SIGTERM');
    await gpu.exited;
    expect(result.trainings.train!.finalStep).toBe(16);
    const published = await publishedCheckpoints(stack.deps, TEST_BUCKET, runId, 'train');
    expect(published.length).toBeGreaterThan(0);
    for (const c of published) expect(await intact(c.prefix)).toBe(true);
  });
});
