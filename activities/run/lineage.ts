/**
 * Lineage records: which adapter a scheduled run starts from, and the run manifest
 * (runs/<runId>/run.json) with parent run, schedule, dataset revision and config hash.
 */
import { ApplicationFailure } from '@temporalio/activity';
import { FailureType } from '../../contracts/errors.js';
import { keys } from '../../contracts/keys.js';
import { lineageKeys, type RunLineage } from '../../contracts/lineage.js';
import type { ActivityDeps } from '../../io/deps.js';
import { resolveHubModel } from '../../io/hubModels.js';

export interface ResolveInitFromInput {
  bucket: string;
  /** `previous` or a run id (config field `init_from`). */
  initFrom: string;
  /** The Schedule that started this run, if any. */
  scheduleId: string | null;
  /** The train stages that will load the adapter: each must exist in the parent run. */
  trainStageIds: string[];
}

interface ScheduleLastSuccess {
  runId: string;
  finishedAt: string;
}

/**
 * The run whose adapters this run's train stages start from: the schedule's last successful run
 * (`previous`; null on a schedule's first run) or the named run, whose final adapters must exist.
 */
export async function resolveInitFrom(deps: ActivityDeps, input: ResolveInitFromInput): Promise<string | null> {
  const { storage } = deps;
  let parent = input.initFrom;
  if (input.initFrom === 'previous') {
    if (!input.scheduleId) {
      throw ApplicationFailure.nonRetryable(
        'init_from: "previous" means the last successful run of the schedule that started this run, but no schedule started it; name a run id instead',
        FailureType.InvalidConfig,
      );
    }
    const key = lineageKeys.scheduleLastSuccess(input.scheduleId);
    if (!(await storage.exists(input.bucket, key))) return null;
    parent = (await storage.getJson<ScheduleLastSuccess>(input.bucket, key)).runId;
  }
  for (const stageId of input.trainStageIds) {
    const adapter = `${keys.finalAdapterPrefix(parent, stageId)}adapter/adapter_config.json`;
    if (!(await storage.exists(input.bucket, adapter))) {
      throw ApplicationFailure.nonRetryable(
        `init_from: run "${parent}" has no final adapter for stage "${stageId}" (s3://${input.bucket}/${adapter})`,
        FailureType.InvalidConfig,
      );
    }
  }
  return parent;
}

/**
 * The runs a resume may continue, newest first: `runId`, the run it resumed, that run's own
 * parent... (from the run manifests), so resuming a resumed run that failed before its first
 * checkpoint still finds the older checkpoints.
 */
export async function resumeChain(deps: ActivityDeps, bucket: string, runId: string, maxDepth = 20): Promise<string[]> {
  const chain = [runId];
  for (let i = 0; i < maxDepth; i++) {
    const key = lineageKeys.runManifest(chain.at(-1)!);
    if (!(await deps.storage.exists(bucket, key))) break;
    const manifest = await deps.storage.getJson<Partial<RunLineage>>(bucket, key);
    if (manifest.parentRelation !== 'resume' || !manifest.parentRun || chain.includes(manifest.parentRun)) break;
    chain.push(manifest.parentRun);
  }
  return chain;
}

export interface RecordRunInput {
  bucket: string;
  lineage: RunLineage;
  outcome: 'running' | 'completed' | 'failed';
}

/**
 * Writes the run manifest; a scheduled run that completed becomes its schedule's `previous`.
 * It is a run's first write, so it creates the run's bucket when missing (as the stage cache does).
 */
export async function recordRun(deps: ActivityDeps, input: RecordRunInput): Promise<void> {
  const { lineage, bucket } = input;
  await ensureRunBucket(deps, bucket);
  const finishedAt = new Date().toISOString();
  await deps.storage.putJson(bucket, lineageKeys.runManifest(lineage.runId), {
    ...lineage,
    outcome: input.outcome,
    ...(input.outcome === 'running' ? { startedAt: finishedAt } : { finishedAt }),
  });
  if (input.outcome === 'completed' && lineage.schedule) {
    const pointer: ScheduleLastSuccess = { runId: lineage.runId, finishedAt };
    await deps.storage.putJson(bucket, lineageKeys.scheduleLastSuccess(lineage.schedule), pointer);
  }
}

/**
 * Refusals no retry changes: no permission (403), a name taken by another account, or one the S3
 * client rejects (the config schema's pattern is looser than S3's rules, e.g. "a..b").
 */
const BUCKET_REFUSALS = ['AccessDenied', 'BucketAlreadyExists', 'InvalidBucketNameError'];

async function ensureRunBucket(deps: ActivityDeps, bucket: string): Promise<void> {
  try {
    await deps.storage.ensureBucket(bucket);
  } catch (err) {
    const code = (err as { code?: string }).code ?? (err as Error).name;
    if (!BUCKET_REFUSALS.includes(code)) throw err;
    throw ApplicationFailure.nonRetryable(
      `storage.bucket "${bucket}": the bucket is missing or not ours, and creating it was refused (${code}: ${(err as Error).message}); ` +
        "create it, or name a bucket the workers' DPO_S3_* credentials can write",
      FailureType.InvalidConfig,
    );
  }
}

export interface ResolvedModelSource {
  /** `Org/name` */
  name: string;
  /** The commit sha the revision resolved to. */
  sha: string;
  /** `hf://Org/name@<sha>`: the source every stage reads. */
  pinned: string;
}

/**
 * A Hub model source at run start: its revision resolved to a commit sha, and its files checked
 * to make a loadable model (config, safetensors, processor, chat template) before any stage runs.
 */
export async function resolveModelSource(_deps: ActivityDeps, input: { source: string }): Promise<ResolvedModelSource> {
  const model = await resolveHubModel(input.source);
  return { name: model.name, sha: model.sha, pinned: model.pinned };
}
