// The worker's workflowsPath: every workflow type the `dpo` queue serves.
export { dpoPipeline, statusQuery } from './pipeline.js';
