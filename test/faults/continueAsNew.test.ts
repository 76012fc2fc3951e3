/**
 * Long runs keep the training workflow's history bounded: after
 * `train.segments_per_workflow_run` segments the child continues-as-new with its state, and the
 * pipeline's signals reach whichever run is current. One segment per run here, so a 16-step
 * training crosses continue-as-new three times.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { WorkflowExecutionInfo } from '@temporalio/client';
import { describe, expect, it } from 'vitest';
import type { TrainResult } from '../../contracts/payloads.js';
import { uniqueId } from '../harness.js';
import { readEvents, stopWorker, useFaultSuite, waitFor } from './faultKit.js';
import { PIPELINE_WORKFLOW, setCheckpointIntervalSignal, trainingStatusQuery } from '../../contracts/messages.js';

const suite = useFaultSuite();

/** Every run of a workflow id, oldest first (visibility is eventually consistent: poll). */
async function runsOf(workflowId: string): Promise<WorkflowExecutionInfo[]> {
  const runs: WorkflowExecutionInfo[] = [];
  for await (const run of suite.stack.client.workflow.list({ query: `WorkflowId = '${workflowId}'` })) runs.push(run);
  return runs.sort((a, b) => a.startTime.getTime() - b.startTime.getTime());
}

describe('continue-as-new of the training workflow', () => {
  it('one segment per run: the state carries over, signals reach the current run, the result is whole', async () => {
    const t = randomBytes(3).toString('hex');
    const eventsFile = join(suite.datasetDir, `can-${t}.jsonl`);
    const worker = await suite.startWorker(`can-${t}`, eventsFile, { DPO_FAULT_SLEEP_PER_STEP: '0.5' });
    const config = suite.config({ segment_steps: 4, segments_per_workflow_run: 1, checkpoint_every_steps: 4 });
    const runId = uniqueId('faults-can');
    const childId = `${runId}.train.train`;
    const handle = await suite.stack.client.workflow.start(PIPELINE_WORKFLOW, { taskQueue: suite.stack.queues.cpu, workflowId: runId, args: [config] });

    // Once the child has continued as new, change the checkpoint interval through the pipeline:
    // the signal must reach the new run and the segments after it.
    await waitFor(async () => (await runsOf(childId)).length >= 2, 240_000, 'the first continue-as-new');
    const signalledAtStep = Math.max(0, ...(await readEvents(eventsFile)).filter((e) => e.event === 'step').map((e) => e.step!));
    await handle.signal(setCheckpointIntervalSignal, 2);
    // The pipeline forwards it to the child's current run (by workflow id, so any run).
    const status = () => suite.stack.client.workflow.getHandle(childId).query(trainingStatusQuery);
    await waitFor(async () => (await status()).checkpointEverySteps === 2, 15_000, 'the interval to reach the current run');
    expect((await status()).segments).toBeGreaterThanOrEqual(1); // carried from the run before

    const result = (await handle.result()) as { trainings: Record<string, TrainResult> };
    await stopWorker(worker);

    const train = result.trainings.train!;
    expect(train.finalStep).toBe(16);
    // Checkpoints of every run are in the result, in order, none lost at a continue-as-new.
    const steps = train.checkpointKeys.map((k) => Number(/step-(\d+)/.exec(k)![1]));
    expect(steps).toEqual([...steps].sort((a, b) => a - b));
    for (const end of [4, 8, 12]) expect(steps).toContain(end);
    // Attempt counts carry over too: four segments, one attempt each.
    expect(train.attempts).toEqual({ activities: 4, attempts: 4, retries: 0, preemptions: 0, workerLosses: 0 });
    // Segments after the signal checkpoint every 2 steps (before it: multiples of 4 only).
    const saved = (await readEvents(eventsFile)).filter((e) => e.event === 'checkpoint_saved').map((e) => e.step!);
    expect(saved.filter((s) => s <= signalledAtStep).every((s) => s % 4 === 0)).toBe(true);
    expect(saved.some((s) => s > signalledAtStep && s % 4 === 2)).toBe(true);

    // Four runs of the child: three continued as new, each one segment long; the last completed.
    await waitFor(async () => (await runsOf(childId)).length === 4, 30_000, 'visibility of all four runs');
    const runs = await runsOf(childId);
    expect(runs.map((r) => r.status.name)).toEqual(['CONTINUED_AS_NEW', 'CONTINUED_AS_NEW', 'CONTINUED_AS_NEW', 'COMPLETED']);
    for (const run of runs) {
      const history = await suite.stack.client.workflow.getHandle(childId, run.runId).fetchHistory();
      const scheduled = history.events!.filter((e) => e.activityTaskScheduledEventAttributes).length;
      expect(scheduled).toBe(1);
    }
  });
});
