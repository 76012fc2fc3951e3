/**
 * Which engine scores an evaluate stage, decided up front from the model's family (config.json
 * `model_type`) and `evaluate.engine`, never by catching a failed export. Pure code.
 *
 * - onnxruntime-node: ONNX exports of base and DPO model, on CPU workers; every metric.
 * - pytorch: the trainer's PyTorch model on CPU workers, for families the exporter cannot build a
 *   correct graph for: `python -m dpo_trainer.evaluate` for the held-out pair metrics and
 *   `python -m dpo_trainer.score_prompts` for the yes/no suite and the greedy generations; every
 *   metric, counted by the same code as the ONNX engine's. The engine is named in the stage
 *   summary and the report.
 */
import { ONNX_UNEXPORTABLE_MODEL_TYPES } from './trainerContract.generated.js';

export type EvalEngineSetting = 'auto' | 'onnx' | 'pytorch';
export type EvalEngine = 'onnxruntime-node' | 'pytorch';

export interface EngineChoice {
  engine: EvalEngine;
  /** Why this engine, for the stage summary and the report. */
  reason: string;
}

/** The family and the reason when the ONNX exporter refuses this model type, else null. */
export function unexportableFamily(modelType: string): { family: string; reason: string } | null {
  return (ONNX_UNEXPORTABLE_MODEL_TYPES as Record<string, { family: string; reason: string }>)[modelType] ?? null;
}

export class EngineChoiceError extends Error {
  override name = 'EngineChoiceError';
}

/**
 * `field` names the setting in errors: `evaluate.engine`, or the stage's params override.
 * `imagesPerRow` is the most images a held-out row holds: the ONNX graphs take one per row.
 */
export function chooseEvalEngine(setting: EvalEngineSetting, modelType: string, field = 'evaluate.engine', imagesPerRow = 1): EngineChoice {
  const family = unexportableFamily(modelType);
  const refused = family
    ? { what: family.family, why: `cannot be exported to ONNX: ${family.reason}` }
    : imagesPerRow > 1
      ? { what: `held-out rows with ${imagesPerRow} images`, why: 'cannot be scored through ONNX: the exported graphs take one image per row' }
      : null;
  if (setting === 'pytorch') return { engine: 'pytorch', reason: `${field} is pytorch` };
  if (refused === null) return { engine: 'onnxruntime-node', reason: setting === 'onnx' ? `${field} is onnx` : `${modelType || 'the model'} exports to ONNX` };
  if (setting === 'onnx') {
    throw new EngineChoiceError(
      `${field}: onnx cannot score ${refused.what} (model_type "${modelType}"): ${refused.what} ${refused.why}; use auto or pytorch`,
    );
  }
  return { engine: 'pytorch', reason: `${refused.what} ${refused.why}` };
}
