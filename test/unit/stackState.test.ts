import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { otherTemporalDbs, temporalDbPath } from '../../scripts/localStack.js';

describe('the local stack state folder', () => {
  it('keys the dev server history by Temporal CLI version and names the files of other versions', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dpo-state-'));
    expect(basename(temporalDbPath(dir, 'v1.9.1'))).toBe('temporal-v1.9.1.db');
    expect(temporalDbPath(dir, 'v1.9.1')).not.toBe(temporalDbPath(dir, 'v1.10.0'));
    // What an older checkout left behind: an unversioned file and an older version's.
    for (const f of ['temporal.db', 'temporal-v1.5.1.db', 'temporal-v1.9.1.db', 'temporal.log', 'minio.pid']) await writeFile(join(dir, f), '');
    expect(otherTemporalDbs(dir, 'v1.9.1').sort()).toEqual(['temporal-v1.5.1.db', 'temporal.db']);
    expect(otherTemporalDbs(join(dir, 'absent'), 'v1.9.1')).toEqual([]);
  });
});
