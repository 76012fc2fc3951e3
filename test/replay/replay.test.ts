/**
 * Determinism guard: recorded histories of real runs (a demo-like run whose training child
 * continues as new, and a run whose trainer ran out of memory and backed off) replay against the
 * workflow bundle built from the code under test. A workflow change that would break a run in
 * flight -- a new, removed or reordered command without `patched()` -- fails here
 * (docs/architecture.md, "Upgrading workers"). The histories are recorded by
 * scripts/recordReplayHistories.ts; no server is needed to replay them.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import proto from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import { describe, expect, inject, it } from 'vitest';
import { HISTORIES_DIR, type RecordedHistory } from '../../scripts/recordReplayHistories.js';

const History = proto.temporal.api.history.v1.History;

describe('workflow replay', async () => {
  const recorded = JSON.parse(await readFile(join(HISTORIES_DIR, 'index.json'), 'utf8')) as RecordedHistory[];
  const files = recorded.map((r) => r.file);

  it('has histories of a demo run, its continued-as-new training runs, and a faulted run', () => {
    expect(files.some((f) => f.startsWith('demo.pipeline'))).toBe(true);
    expect(files.filter((f) => f.startsWith('demo.training.run')).length).toBeGreaterThan(1);
    expect(files.some((f) => f.startsWith('oom-backoff.pipeline'))).toBe(true);
    expect(files.some((f) => f.startsWith('oom-backoff.training'))).toBe(true);
  });

  it.each(recorded)('$file replays on the current workflow code', async ({ file, workflowId }) => {
    const history = History.decode(await readFile(join(HISTORIES_DIR, file)));
    expect(history.events.length).toBeGreaterThan(10);
    const code = await readFile(inject('workflowBundlePath'), 'utf8');
    // Throws DeterminismViolationError (or another replay failure) naming the first mismatch.
    // The workflow id matters: child workflow ids are derived from it.
    await Worker.runReplayHistory({ workflowBundle: { code } }, history, workflowId);
  });
});
