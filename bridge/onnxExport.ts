/**
 * Runs the trainer's ONNX export (`python -m dpo_trainer.export`, trainer/dpo_trainer/export.py):
 * base model, or base + LoRA adapter merged, into one folder with model.onnx, signature.json and
 * manifest.json (written last: an export without it is incomplete).
 */
import { access, mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { runTrainer, TrainerExit } from './trainerProcess.js';
import { exitIsRetryable, trainerSaid } from './trainerFailure.js';
import { exportRunConfig, writeTrainerConfig } from './trainerConfig.js';

/** The model could not be exported: names the stage and the model; retrying cannot help. */
export class OnnxExportError extends Error {
  constructor(
    readonly stageId: string,
    readonly model: string,
    reason: string,
    readonly retryable = false,
  ) {
    super(`stage "${stageId}": cannot export ${model} to ONNX: ${reason}`);
    this.name = 'OnnxExportError';
  }
}

export interface ExportRequest {
  pythonBin: string;
  modelDir: string;
  adapterDir: string | null;
  outDir: string;
  stageId: string;
  /** Names the model in errors, e.g. `base model s3://models/tiny` or `adapter s3://dpo/runs/x/train/final/adapter`. */
  modelLabel: string;
  signal?: AbortSignal;
}

export async function isCompleteExport(dir: string): Promise<boolean> {
  return access(join(dir, 'manifest.json')).then(
    () => true,
    () => false,
  );
}

export async function exportOnnx(req: ExportRequest): Promise<string> {
  if (await isCompleteExport(req.outDir)) return req.outDir;
  const configPath = `${req.outDir}.export-config-${process.pid}.json`;
  await mkdir(dirname(configPath), { recursive: true });
  await writeTrainerConfig(configPath, 'ExportConfig', exportRunConfig({ modelDir: req.modelDir, adapterDir: req.adapterDir, outDir: req.outDir }));
  const outcome = await runTrainer({ pythonBin: req.pythonBin, module: 'dpo_trainer.export', configPath, signal: req.signal, onEvent: () => {} });
  if (outcome.exitCode === TrainerExit.Finished && (await isCompleteExport(req.outDir))) return req.outDir;
  const said = trainerSaid(outcome);
  throw new OnnxExportError(req.stageId, req.modelLabel, said || `exporter exited with ${outcome.exitCode ?? outcome.signal}`, exitIsRetryable(outcome));
}
