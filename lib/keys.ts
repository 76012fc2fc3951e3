/**
 * Object-storage key layout. Everything a pipeline stores lives under one of two roots:
 *
 *   stages/<kind>/<inputHash>/...   outputs of data stages, addressed by a hash of their inputs,
 *                                   so reruns with the same inputs reuse them (DESIGN invariant 6)
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
  finalAdapterPrefix: (runId: string, stageId: string) => `${keys.runStagePrefix(runId, stageId)}final/`,
  evalMetrics: (runId: string, stageId: string) => `${keys.runStagePrefix(runId, stageId)}metrics.json`,
  reportPrefix: (runId: string, stageId: string) => keys.runStagePrefix(runId, stageId),
  /** The ONNX export of a run's adapter merged into the base (the base's own is a stage output). */
  policyOnnxPrefix: (runId: string, stageId: string) => `${keys.runStagePrefix(runId, stageId)}onnx/policy/`,
  stepMetrics: (runId: string, stageId: string) => `${keys.runStagePrefix(runId, stageId)}step-metrics.json`,
};

/** `step-00000100`: zero-padded so lexical order is step order. */
export function checkpointName(step: number): string {
  return `step-${String(step).padStart(8, '0')}`;
}

export function parseCheckpointName(name: string): number | undefined {
  const m = /^step-(\d{8})$/.exec(name);
  return m ? Number(m[1]) : undefined;
}
