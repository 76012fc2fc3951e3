// Worker-thread entry of worker/createWorkers.ts's `bundleWorkflowsInThread`: plain JS because
// Node starts threads only on JavaScript; the bundler compiles the TypeScript workflows itself.
import { parentPort, workerData } from 'node:worker_threads';
import { DefaultLogger, bundleWorkflowCode } from '@temporalio/worker';

const { code } = await bundleWorkflowCode({ workflowsPath: workerData.workflowsPath, logger: new DefaultLogger('WARN') });
parentPort.postMessage(code);
