// The worker's workflowsPath: every workflow type the `dpo` queue serves.
export { dpoPipeline, statusQuery } from './pipeline.js';
export {
  dpoTraining,
  pauseTrainingSignal,
  resumeTrainingSignal,
  setCheckpointIntervalSignal,
  trainingControlQuery,
  trainingStatusQuery,
} from './training.js';
