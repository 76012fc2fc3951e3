// The worker's workflowsPath: every workflow type the `dpo` queue serves. Their queries and
// signals are defined once in contracts/messages.ts.
export { dpoPipeline } from './pipeline.js';
export { dpoTraining } from './training.js';
