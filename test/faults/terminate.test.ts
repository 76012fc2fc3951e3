/**
 * Terminating or cancelling a run mid-training frees the GPU worker's slot within seconds: the
 * trainer is stopped (killed on terminate, checkpointed on cancel) and the next run's training
 * starts on the same single-slot worker right away.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { uniqueId } from '../harness.js';
import { readEvents, stopWorker, trainerPids, trainerRuns, useFaultSuite, waitFor, workRoot } from './faultKit.js';
import { PIPELINE_WORKFLOW, pauseTrainingSignal, resumeTrainingSignal, setCheckpointIntervalSignal, trainingStatusQuery } from '../../contracts/messages.js';

const suite = useFaultSuite();

describe('pausing a run and changing its checkpoint interval', () => {
  it('pauseTraining holds the trainer between steps; setCheckpointInterval applies while it runs; resumeTraining finishes', async () => {
    const t = randomBytes(3).toString('hex');
    const eventsFile = join(suite.datasetDir, `pause-${t}.jsonl`);
    const w = await suite.startWorker(`pause-${t}`, eventsFile, { DPO_FAULT_SLEEP_PER_STEP: '0.5' });
    const config = suite.config({ checkpoint_every_steps: 5 });
    const runId = uniqueId('faults-pause');
    const handle = await suite.stack.client.workflow.start(PIPELINE_WORKFLOW, { taskQueue: suite.stack.queues.cpu, workflowId: runId, args: [config] });
    const steps = async () => (await readEvents(eventsFile)).filter((e) => e.event === 'step').map((e) => e.step!);
    await waitFor(async () => (await steps()).length >= 2, 180_000, 'step 2');
    await handle.signal(pauseTrainingSignal);
    await handle.signal(setCheckpointIntervalSignal, 2);
    // The segment reads the controls every few seconds; then no step runs while paused.
    await new Promise((r) => setTimeout(r, 8_000));
    const pausedAt = (await steps()).length;
    await new Promise((r) => setTimeout(r, 6_000));
    expect((await steps()).length).toBe(pausedAt);
    expect(pausedAt).toBeLessThan(16);
    const status = await suite.stack.client.workflow.getHandle(`${runId}.train.train`).query(trainingStatusQuery);
    expect(status).toMatchObject({ paused: true, checkpointEverySteps: 2 });
    await handle.signal(resumeTrainingSignal);
    const result = (await handle.result()) as { trainings: Record<string, { finalStep: number }> };
    await stopWorker(w);
    expect(result.trainings.train!.finalStep).toBe(16);
    // After the pause, checkpoints come every 2 steps (the pause itself checkpointed its step).
    const saves = (await readEvents(eventsFile)).filter((e) => e.event === 'checkpoint_saved').map((e) => e.step!);
    const after = saves.filter((s) => s > pausedAt);
    expect(after.length).toBeGreaterThan(0);
    expect(after.every((s) => s % 2 === 0)).toBe(true);
    expect(saves).toContain(pausedAt);
  });
});

describe('fault injection: stopping a run', () => {
  it('terminate, then cancel, mid-training: the trainer stops and the slot serves the next run at once', async () => {
    const t = randomBytes(3).toString('hex');
    const eventsFile = join(suite.datasetDir, `stop-${t}.jsonl`);
    const worker = await suite.startWorker(`stop-${t}`, eventsFile, { DPO_FAULT_SLEEP_PER_STEP: '1' });
    // Default heartbeat timeout (20 s): what a user gets.
    const config = suite.config({ checkpoint_every_steps: 3 }, '20s');
    for (const [i, how] of (['terminate', 'cancel'] as const).entries()) {
      const handle = await suite.stack.client.workflow.start(PIPELINE_WORKFLOW, { taskQueue: suite.stack.queues.cpu, workflowId: uniqueId(`faults-${how}`), args: [config] });
      await waitFor(async () => (trainerRuns(await readEvents(eventsFile))[i]?.lastStep ?? 0) >= 1, 180_000, 'training');
      const stoppedAt = Date.now();
      if (how === 'terminate') await handle.terminate('test');
      else await handle.cancel();
      await waitFor(async () => (await trainerPids(workRoot(`stop-${t}`))).length === 0, 30_000, `the trainer to stop after ${how}`);
      // Heartbeats reach the server every 0.8 x 20 s at most: the stop is noticed within that.
      expect(Date.now() - stoppedAt).toBeLessThan(25_000);
    }
    // The single slot is free: the next run trains right away.
    const next = await suite.stack.client.workflow.start(PIPELINE_WORKFLOW, { taskQueue: suite.stack.queues.cpu, workflowId: uniqueId('faults-next'), args: [config] });
    const startedAt = Date.now();
    await waitFor(async () => trainerRuns(await readEvents(eventsFile)).length === 3, 120_000, 'the next run to train');
    const waited = (Date.now() - startedAt) / 1000;
    await next.terminate('done');
    await stopWorker(worker);
    expect(waited).toBeLessThan(90); // data stages are cached; this is model load time on a loaded 2-core machine
  });
});
