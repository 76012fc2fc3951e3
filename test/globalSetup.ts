/**
 * Once per test run: the local stack (reused if already up, stopped afterwards only if started
 * here), the tiny model built and published to MinIO, the workflow bundle built once.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { depsFromEnv } from '../io/deps.js';
import { bundleWorkflowsInThread } from '../worker/createWorkers.js';
import { ensureTinyModel, publishFolder } from '../scripts/assets.js';
import { stackDown, stackUp, STATE_DIR } from '../scripts/localStack.js';

import { TEST_BUCKET } from './harness.js';

declare module 'vitest' {
  export interface ProvidedContext {
    modelDir: string;
    modelSource: string;
    workflowBundlePath: string;
  }
}

export default async function setup(project: TestProject) {
  const stack = await stackUp((line) => console.log(`[stack] ${line}`));
  const deps = depsFromEnv();
  const modelDir = await ensureTinyModel();
  const modelSource = await publishFolder(deps.storage, TEST_BUCKET, 'models/tiny-llava/', modelDir);
  // Built the way worker/main.ts builds it (in a worker thread), once for every test file.
  const bundle = await bundleWorkflowsInThread();
  const workflowBundlePath = join(STATE_DIR, 'test-workflow-bundle.js');
  await writeFile(workflowBundlePath, bundle.code);
  project.provide('modelDir', modelDir);
  project.provide('modelSource', modelSource);
  project.provide('workflowBundlePath', workflowBundlePath);
  return async () => {
    if (stack.started.length) await stackDown((line) => console.log(`[stack] ${line}`));
  };
}
