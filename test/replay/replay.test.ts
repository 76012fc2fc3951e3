/**
 * Determinism guard: recorded histories of real runs (a demo-like run whose training child
 * continues as new, and a run whose trainer ran out of memory and backed off) replay against the
 * workflow bundle built from the code under test. A workflow change that would break a run in
 * flight -- a new, removed or reordered command without `patched()` -- fails here
 * (docs/architecture.md, "Upgrading workers"). The histories are recorded by
 * scripts/recordReplayHistories.ts; no server is needed to replay them.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils.js';
import { Worker } from '@temporalio/worker';
import { describe, expect, inject, it } from 'vitest';
import { REPO_ROOT } from '../../io/deps.js';

const HISTORIES = join(REPO_ROOT, 'test/replay/histories');

describe('workflow replay', async () => {
  const files = (await readdir(HISTORIES)).filter((f) => f.endsWith('.json')).sort();

  it('has histories of a demo run, its continued-as-new training runs, and a faulted run', () => {
    expect(files.some((f) => f.startsWith('demo.pipeline'))).toBe(true);
    expect(files.filter((f) => f.startsWith('demo.training.run')).length).toBeGreaterThan(1);
    expect(files.some((f) => f.startsWith('oom-backoff.pipeline'))).toBe(true);
    expect(files.some((f) => f.startsWith('oom-backoff.training'))).toBe(true);
  });

  it.each(files)('%s replays on the current workflow code', async (file) => {
    const history = historyFromJSON(JSON.parse(await readFile(join(HISTORIES, file), 'utf8')));
    const code = await readFile(inject('workflowBundlePath'), 'utf8');
    // Throws DeterminismViolationError (or another replay failure) naming the first mismatch.
    await Worker.runReplayHistory({ workflowBundle: { code } }, history, file.replace(/\.json$/, ''));
  });
});
