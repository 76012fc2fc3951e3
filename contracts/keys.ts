/**
 * Object-storage key layout. Everything a pipeline stores lives under one of two roots:
 *
 *   stages/<kind>/<inputHash>/...   outputs of data stages, addressed by a hash of their inputs,
 *                                   so reruns with the same inputs reuse them (invariant 6, docs/architecture.md)
 *   runs/<runId>/...                what belongs to one run: checkpoints, adapter, metrics, report
 *
 * Every segment that comes from users (run ids, split names, file names) goes through
 * `isSafeKeySegment`, so nothing can escape its prefix. Pure code: bundled into workflows.
 */

const SAFE_SEGMENT = /^[A-Za-z0-9._-]{1,128}$/;

export function isSafeKeySegment(segment: string): boolean {
  return SAFE_SEGMENT.test(segment) && segment !== '.' && segment !== '..';
}

export function assertSafeKeySegment(segment: string, what: string): string {
  if (!isSafeKeySegment(segment)) {
    throw new Error(
      `${what} "${segment}" is not a safe storage name: use 1-128 letters, digits, ".", "_" or "-"`,
    );
  }
  return segment;
}

export type StageKind = 'download' | 'format' | 'tokenize' | 'shard' | 'reference' | 'export';

export const MANIFEST_FILE = 'manifest.json';

export const keys = {
  stagePrefix: (kind: StageKind, inputHash: string) => `stages/${kind}/${assertSafeKeySegment(inputHash, 'stage hash')}/`,
  stageManifest: (kind: StageKind, inputHash: string) => `${keys.stagePrefix(kind, inputHash)}${MANIFEST_FILE}`,

  runPrefix: (runId: string) => `runs/${assertSafeKeySegment(runId, 'run id')}/`,
  /** Each stage of a run owns one folder, named by its stage id. */
  runStagePrefix: (runId: string, stageId: string) => `${keys.runPrefix(runId)}${assertSafeKeySegment(stageId, 'stage id')}/`,
  checkpointsPrefix: (runId: string, stageId: string) => `${keys.runStagePrefix(runId, stageId)}checkpoints/`,
  checkpointPrefix: (runId: string, stageId: string, step: number) =>
    `${keys.checkpointsPrefix(runId, stageId)}${checkpointName(step)}/`,
  /**
   * A checkpoint written by the attempt holding fence `token` (see fencesPrefix): attempts never
   * share a folder, so a stale attempt cannot overwrite a newer one's files.
   */
  fencedCheckpointPrefix: (runId: string, stageId: string, step: number, token: number) =>
    `${keys.checkpointsPrefix(runId, stageId)}${checkpointName(step)}.f${fenceName(token)}/`,
  /** One empty-ish object per train attempt, named by its fence token (docs/training-and-durability.md). */
  fencesPrefix: (runId: string, stageId: string) => `${keys.runStagePrefix(runId, stageId)}fences/`,
  fence: (runId: string, stageId: string, token: number) => `${keys.fencesPrefix(runId, stageId)}${fenceName(token)}`,
  finalAdapterPrefix: (runId: string, stageId: string) => `${keys.runStagePrefix(runId, stageId)}final/`,
  evalMetrics: (runId: string, stageId: string) => `${keys.runStagePrefix(runId, stageId)}metrics.json`,
  reportPrefix: (runId: string, stageId: string) => keys.runStagePrefix(runId, stageId),
  /** The ONNX export of a run's adapter merged into the base (the base's own is a stage output). */
  policyOnnxPrefix: (runId: string, stageId: string) => `${keys.runStagePrefix(runId, stageId)}onnx/policy/`,
  stepMetrics: (runId: string, stageId: string) => `${keys.runStagePrefix(runId, stageId)}step-metrics.json`,
  /** A train stage's TensorBoard run directory: the event files of all its attempts, side by side. */
  tensorboardPrefix: (runId: string, stageId: string) => `${keys.runStagePrefix(runId, stageId)}tensorboard/`,
  /** A train stage's W&B run folders (offline-run-*), for `wandb sync`. */
  wandbPrefix: (runId: string, stageId: string) => `${keys.runStagePrefix(runId, stageId)}wandb/`,
};

/** `step-00000100`: zero-padded so lexical order is step order. */
export function checkpointName(step: number): string {
  return `step-${String(step).padStart(8, '0')}`;
}

export function parseCheckpointName(name: string): number | undefined {
  return parseFencedCheckpointName(name)?.step;
}

/** Fence tokens are the server's schedule time of an attempt (ms): zero-padded, sortable. */
export function fenceName(token: number): string {
  return String(token).padStart(15, '0');
}

/** `step-00000100` (unfenced, older runs) or `step-00000100.f<token>`. */
export function parseFencedCheckpointName(name: string): { step: number; token: number | null } | undefined {
  const m = /^step-(\d{8})(?:\.f(\d{15}))?$/.exec(name);
  return m ? { step: Number(m[1]), token: m[2] ? Number(m[2]) : null } : undefined;
}

/** The training child workflow's id (workflows/training.ts): one per pipeline run and train stage. */
export function trainingWorkflowId(runId: string, stageId: string): string {
  return `${runId}.train.${stageId}`;
}
