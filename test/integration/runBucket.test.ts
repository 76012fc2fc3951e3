/**
 * A run's bucket on the real MinIO: recordRun, a run's first write, creates `storage.bucket` when
 * it is missing, and a bucket the server refuses to create fails at once naming the field.
 */
import { randomBytes } from 'node:crypto';
import { ApplicationFailure } from '@temporalio/common';
import { afterAll, describe, expect, it } from 'vitest';
import { depsFromEnv } from '../../io/deps.js';
import { recordRun } from '../../activities/run/lineage.js';
import { FailureType } from '../../contracts/errors.js';
import type { RunLineage } from '../../contracts/lineage.js';

const deps = depsFromEnv();
const created: string[] = [];

afterAll(async () => {
  for (const bucket of created) {
    if (!(await deps.storage.client.bucketExists(bucket))) continue;
    const objects = await deps.storage.list(bucket, '');
    await deps.storage.client.removeObjects(bucket, objects.map((o) => o.key));
    await deps.storage.client.removeBucket(bucket);
  }
});

function lineage(runId: string): RunLineage {
  return {
    runId,
    name: 'bucket',
    model: 's3://m/m',
    dataset: './d',
    datasetRevision: null,
    configHash: 'abc',
    parentRun: null,
    parentRelation: null,
    initFromRun: null,
    schedule: null,
  };
}

describe('run bucket', () => {
  it('recordRun creates a missing storage.bucket and writes the manifest there', async () => {
    const bucket = `dpo-fresh-${randomBytes(4).toString('hex')}`;
    expect(await deps.storage.client.bucketExists(bucket)).toBe(false);
    created.push(bucket);
    await recordRun(deps, { bucket, lineage: lineage('run-a'), outcome: 'running' });
    expect(await deps.storage.client.bucketExists(bucket)).toBe(true);
    expect(await deps.storage.getJson(bucket, 'runs/run-a/run.json')).toMatchObject({ runId: 'run-a', outcome: 'running' });
    // The bucket exists now: the next record goes straight to it.
    await recordRun(deps, { bucket, lineage: lineage('run-a'), outcome: 'failed' });
    expect(await deps.storage.getJson(bucket, 'runs/run-a/run.json')).toMatchObject({ outcome: 'failed' });
  });

  it('fails non-retryable, naming storage.bucket, when the bucket cannot be created', async () => {
    // The config's pattern lets "a..b" through; S3 does not.
    const err = await recordRun(deps, { bucket: 'dpo..refused', lineage: lineage('run-b'), outcome: 'running' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect(err).toMatchObject({ type: FailureType.InvalidConfig, nonRetryable: true });
    expect((err as Error).message).toMatch(/^storage\.bucket "dpo\.\.refused": /);
  });
});
