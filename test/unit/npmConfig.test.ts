/**
 * npm must not warn on every command about the project's own config (an `.npmrc` key it does
 * not know, like the old `onnxruntime-node-install=skip`); setup skips onnxruntime-node's CUDA
 * download with the environment variable its install script reads instead.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../io/deps.js';

const exec = promisify(execFile);

describe('npm configuration', () => {
  it('prints no unknown-config warning in this project', async () => {
    const { stderr } = await exec('npm', ['config', 'list'], { cwd: REPO_ROOT });
    expect(stderr).not.toMatch(/Unknown (project|user|env) config/i);
  });

  it("skips onnxruntime-node's CUDA download in setup's npm ci", async () => {
    const setup = await readFile(join(REPO_ROOT, 'scripts/setup.sh'), 'utf8');
    expect(setup).toMatch(/ONNXRUNTIME_NODE_INSTALL=skip npm ci/);
  });
});
