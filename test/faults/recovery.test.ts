/**
 * Out of memory, corrupt checkpoints and zombie writers, on the real stack. The GPU worker runs
 * as its own process with the trainer's fault hooks in its environment.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { describe, expect, it } from 'vitest';
import { listFences, publishedWhileCurrent } from '../../io/fencing.js';
import { MANIFEST_FILE } from '../../contracts/keys.js';
import type { PipelineResult } from '../../contracts/payloads.js';
import { TEST_BUCKET, uniqueId } from '../harness.js';
import {
  publishedCheckpoints,
  readEvents,
  stopWorker,
  trainerPids,
  trainerRuns,
  useFaultSuite,
  waitFor,
  workRoot,
} from './faultKit.js';
import { PIPELINE_WORKFLOW, statusQuery } from '../../contracts/messages.js';

const suite = useFaultSuite();

const config = (train: Record<string, unknown> = {}) => suite.config({ checkpoint_every_steps: 3, segment_steps: 8, ...train });

const gpuWorker = (name: string, eventsFile: string, env: Record<string, string> = {}) =>
  suite.startWorker(name, eventsFile, { DPO_FAULT_SLEEP_PER_STEP: '0.3', ...env });

const tag = () => randomBytes(3).toString('hex');

describe('fault injection: memory, storage and zombies', () => {
  it('OOM above micro-batch 1: finishes at micro-batch 1 with doubled accumulation, same effective batch', async () => {
    const t = tag();
    const worker = await gpuWorker(`oom-${t}`, join(suite.datasetDir, `oom-${t}.jsonl`), { DPO_FAULT_OOM_ABOVE_MICRO_BATCH: '1' });
    const runId = uniqueId('faults-oom');
    const result: PipelineResult = await suite.stack.client.workflow.execute(PIPELINE_WORKFLOW, {
      taskQueue: suite.stack.queues.cpu,
      workflowId: runId,
      args: [config({ per_device_train_batch_size: 2, gradient_accumulation_steps: 2, segment_steps: null })],
    });
    await stopWorker(worker);
    const train = result.trainings.train!;
    expect(train.finalStep).toBe(16);
    expect(train.finalMemorySettings).toEqual({ per_device_train_batch_size: 1, gradient_accumulation_steps: 4, gradient_checkpointing: false });
    expect(train.replans).toEqual(['trainer backed off in process: micro-batch 2 -> 1, gradient accumulation 2 -> 4']);
    // The replan is in the pipeline's status and in the training child's history.
    const status = await suite.stack.client.workflow.getHandle(runId).query(statusQuery);
    expect(status.stages.train!.replans).toEqual(train.replans);
    const events = (await suite.stack.client.workflow.getHandle(`${runId}.train.train`).fetchHistory()).events ?? [];
    const signalled = events
      .flatMap((e) => e.signalExternalWorkflowExecutionInitiatedEventAttributes?.input?.payloads ?? [])
      .map((p) => Buffer.from(p.data!).toString('utf8'));
    expect(signalled.join('\n')).toContain('trainer backed off in process: micro-batch 2 -> 1');
  });

  it('OOM even at micro-batch 1 with gradient checkpointing: fails, saying what was tried', async () => {
    const t = tag();
    const worker = await gpuWorker(`oom0-${t}`, join(suite.datasetDir, `oom0-${t}.jsonl`), { DPO_FAULT_OOM_ABOVE_MICRO_BATCH: '0' });
    const err = await suite.stack.client.workflow
      .execute(PIPELINE_WORKFLOW, { taskQueue: suite.stack.queues.cpu, workflowId: uniqueId('faults-oom0'), args: [config({ per_device_train_batch_size: 1, gradient_accumulation_steps: 4 })] })
      .catch((e: unknown) => e);
    await stopWorker(worker);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    let cause: unknown = (err as WorkflowFailedError).cause;
    while (cause && !(cause instanceof ApplicationFailure && cause.type === 'OutOfMemory')) cause = (cause as { cause?: unknown }).cause;
    const message = (cause as ApplicationFailure).message;
    expect(message).toContain('nothing smaller is left to try');
    expect(message).toContain('turned on gradient checkpointing');
    expect(message).toContain('at micro-batch 1 with gradient checkpointing on');
  });

  it('the newest checkpoint corrupt (manifest removed; next one truncated): resumes from the one before', async () => {
    const t = tag();
    const eventsFile = join(suite.datasetDir, `corrupt-${t}.jsonl`);
    const runId = uniqueId('faults-corrupt');
    let worker = await gpuWorker(`corrupt-${t}`, eventsFile);
    const handle = await suite.stack.client.workflow.start(PIPELINE_WORKFLOW, { taskQueue: suite.stack.queues.cpu, workflowId: runId, args: [config({ segment_steps: null })] });
    // Checkpoints 3, 6, 9 are published ... then the worker is killed.
    await waitFor(async () => (await publishedCheckpoints(suite.stack.deps, TEST_BUCKET, runId, 'train')).some((c) => c.step === 9), 180_000, 'checkpoint 9');
    worker.child.kill('SIGKILL');
    await worker.exited;
    const published = await publishedCheckpoints(suite.stack.deps, TEST_BUCKET, runId, 'train');
    const at = (step: number) => published.filter((c) => c.step === step).at(-1)!;
    // Newest (9): no manifest. The one before (6): a truncated adapter. So 3 is the newest usable.
    await suite.stack.deps.storage.client.removeObject(TEST_BUCKET, `${at(9).prefix}${MANIFEST_FILE}`);
    const weights = `${at(6).prefix}adapter/adapter_model.safetensors`;
    const bytes = await suite.stack.deps.storage.getBuffer(TEST_BUCKET, weights);
    await suite.stack.deps.storage.putBuffer(TEST_BUCKET, weights, bytes.subarray(0, bytes.length >> 1));
    expect(published.map((c) => c.step).filter((s) => s > 9)).toEqual([]);
    worker = await gpuWorker(`corrupt2-${t}`, eventsFile);
    const result: PipelineResult = await handle.result();
    await stopWorker(worker);
    expect(result.trainings.train!.finalStep).toBe(16);
    const runs = trainerRuns(await readEvents(eventsFile));
    expect(runs.map((r) => r.startStep)).toEqual([0, 3]);
    expect(runs[0]!.lastStep).toBeGreaterThanOrEqual(9);
  });

  it('a worker SIGSTOPped past the heartbeat timeout, then SIGCONT while a retry runs elsewhere: its trainer stops, nothing it writes is used', async () => {
    const t = tag();
    const runId = uniqueId('faults-zombie');
    // Slow steps, so its trainer is still mid-run when the worker wakes up.
    const zombie = await gpuWorker(`zombie-${t}`, join(suite.datasetDir, `zombie-${t}.jsonl`), { DPO_FAULT_SLEEP_PER_STEP: '3' });
    const handle = await suite.stack.client.workflow.start(PIPELINE_WORKFLOW, { taskQueue: suite.stack.queues.cpu, workflowId: runId, args: [config({ segment_steps: null })] });
    await waitFor(async () => trainerRuns(await readEvents(join(suite.datasetDir, `zombie-${t}.jsonl`))).some((r) => r.lastStep >= 2), 180_000, 'step 2');
    const zombieFence = (await listFences(suite.stack.deps.storage, TEST_BUCKET, runId, 'train')).at(-1)!.token;
    const zombieTrainers = await trainerPids(workRoot(`zombie-${t}`));
    expect(zombieTrainers).toHaveLength(1);
    zombie.child.kill('SIGSTOP');
    // Its trainer keeps training and checkpointing locally; the heartbeat timeout (10 s) passes
    // and the retry runs on a healthy worker.
    const healthy = await gpuWorker(`healthy-${t}`, join(suite.datasetDir, `healthy-${t}.jsonl`));
    await waitFor(async () => (await listFences(suite.stack.deps.storage, TEST_BUCKET, runId, 'train')).some((f) => f.token > zombieFence), 120_000, 'the retry');
    await waitFor(async () => trainerRuns(await readEvents(join(suite.datasetDir, `healthy-${t}.jsonl`))).length > 0, 120_000, 'the retry to train');
    zombie.child.kill('SIGCONT');
    // The zombie's activity learns it was fenced out (or timed out) and kills its trainer.
    await waitFor(async () => (await trainerPids(workRoot(`zombie-${t}`))).length === 0, 30_000, 'the stale trainer to stop');
    const result: PipelineResult = await handle.result();
    await stopWorker(healthy);
    await stopWorker(zombie);
    expect(result.trainings.train!.finalStep).toBe(16);
    // Everything the stale attempt published, it published before the retry took over.
    const fences = await listFences(suite.stack.deps.storage, TEST_BUCKET, runId, 'train');
    const objects = await suite.stack.deps.storage.list(TEST_BUCKET, `runs/${runId}/train/checkpoints/`);
    for (const c of await publishedCheckpoints(suite.stack.deps, TEST_BUCKET, runId, 'train')) {
      if (c.token !== zombieFence) continue;
      const manifest = objects.find((o) => o.key === `${c.prefix}${MANIFEST_FILE}`)!;
      expect(publishedWhileCurrent(c.token, manifest.lastModified?.getTime(), fences)).toBe(true);
    }
  });
});
