/**
 * Lineage of a dpoPipeline run: resolves `init_from` and a Hub model's revision, and records
 * parent run, schedule, model and dataset revisions and config hash in the memo, as search attributes (findable in the Web UI) and
 * in the run manifest. Orchestration only.
 */
import { CancellationScope, log, patched, proxyActivities, upsertMemo, upsertSearchAttributes, workflowInfo } from '@temporalio/workflow';
import type { Activities } from '../activities/index.js';
import type { PipelineConfig } from '../contracts/config.js';
import type { PipelinePlan } from '../contracts/dag.js';
import { NON_RETRYABLE_FAILURES } from '../contracts/errors.js';
import { isHubModelSource } from '../contracts/hubRepo.js';
import { configHash, SCHEDULED_BY_ID, SEARCH_ATTRIBUTES, type RunLineage } from '../contracts/lineage.js';
import { resolveReportTo } from '../contracts/tracking.js';
import type { PipelineTrackingInput, StageResult, TrackerLinks, TrackingSummary } from '../contracts/payloads.js';

/** Small storage reads and writes. */
const lineageActivities = (config: PipelineConfig) =>
  proxyActivities<Activities>({
    taskQueue: config.queues.cpu,
    startToCloseTimeout: '2 minutes',
    retry: { initialInterval: '1 second', maximumInterval: '20 seconds', maximumAttempts: 5, nonRetryableErrorTypes: NON_RETRYABLE_FAILURES },
  });

/** The lineage, and the model source every stage reads (a Hub source pinned to its commit sha). */
export async function startLineage(config: PipelineConfig, runId: string, plan: PipelinePlan): Promise<{ lineage: RunLineage; modelSource: string }> {
  const attrs = workflowInfo().typedSearchAttributes;
  // `dpo schedule create` sets DpoSchedule; a schedule made with the Temporal CLI still has the server's own.
  const schedule = attrs.get(SEARCH_ATTRIBUTES.schedule) ?? attrs.get(SCHEDULED_BY_ID) ?? null;
  const lineage: RunLineage = {
    runId,
    name: config.name,
    model: config.model.source,
    dataset: config.dataset.source,
    datasetRevision: null,
    configHash: configHash(config),
    parentRun: config.resume_from_run ?? null,
    parentRelation: config.resume_from_run ? 'resume' : null,
    initFromRun: null,
    schedule,
  };
  let modelSource = config.model.source;
  // Pinned before anything runs, so every stage (and a retry hours later) reads the same commit,
  // and a missing repository, revision or token fails the run before any stage starts.
  if (isHubModelSource(config.model.source) && patched('pin-hub-model-revision')) {
    const model = await lineageActivities(config).resolveModelSource({ source: config.model.source });
    lineage.modelRevision = model.sha;
    modelSource = model.pinned;
  }
  if (config.init_from) {
    const parent = await lineageActivities(config).resolveInitFrom({
      bucket: config.storage.bucket,
      initFrom: config.init_from,
      scheduleId: schedule,
      trainStageIds: plan.stages.filter((s) => s.kind === 'train').map((s) => s.id),
    });
    lineage.initFromRun = parent;
    if (parent && !lineage.parentRun) Object.assign(lineage, { parentRun: parent, parentRelation: 'init_from' });
    if (!parent) log.info('init_from: previous: this is the schedule\'s first successful run; training starts fresh', { schedule });
  }
  publish(lineage);
  // The manifest exists from the start: a run that is terminated still names its parent (resume chains).
  await lineageActivities(config).recordRun({ bucket: config.storage.bucket, lineage, outcome: 'running' });
  await trackPipelineRun(config, runId, 'RUNNING');
  return { lineage, modelSource };
}

/**
 * The pipeline's parent MLflow run opens before any stage (sweep branches would otherwise race to
 * create it) and ends with an unsuccessful pipeline (the report ends a successful one). A
 * tracker's trouble is never the run's: the activity answers with failed calls, never throws.
 * Histories from before replay without it.
 */
async function trackPipelineRun(config: PipelineConfig, runId: string, status: PipelineTrackingInput['status']): Promise<void> {
  const reportTo = config.train.report_to ?? 'none';
  // `all` may name MLflow: the worker, which knows its MLFLOW_TRACKING_URI, decides.
  if (!resolveReportTo(reportTo).includes('mlflow') || !patched('pipeline-tracker-run')) return;
  const { workflowId, runId: temporalRunId } = workflowInfo();
  try {
    const answer = await lineageActivities(config).trackPipelineRun({ runId, reportTo, workflow: { workflowId, runId: temporalRunId }, status });
    // The parent run's page, in the Web UI and `dpo status` from the start.
    if (status === 'RUNNING' && answer && Object.keys(answer.links).length) upsertMemo({ pipelineTrackerLinks: answer.links });
  } catch (err) {
    log.warn('could not update the pipeline\'s MLflow run', { status, error: String(err) });
  }
}

/** The dataset revision is what the download stage read: the revision it records, else its input hash (file fingerprints). */
export function noteDatasetRevision(lineage: RunLineage, download: StageResult): void {
  if (lineage.datasetRevision) return;
  lineage.datasetRevision = String(download.summary.revision ?? download.hash);
  publish(lineage);
}

export async function finishLineage(config: PipelineConfig, lineage: RunLineage, outcome: 'completed' | 'failed', cancelled = false): Promise<void> {
  // Also after a cancellation: the manifest and the trackers say how the run ended.
  await CancellationScope.nonCancellable(async () => {
    if (outcome === 'failed') await trackPipelineRun(config, lineage.runId, cancelled ? 'KILLED' : 'FAILED');
    try {
      await lineageActivities(config).recordRun({ bucket: config.storage.bucket, lineage, outcome });
    } catch (err) {
      // A completed run that cannot be recorded would be invisible to `init_from: previous`.
      if (outcome === 'completed') throw err;
      log.warn('could not write the run manifest of a failed run', { error: String(err) });
    }
  });
}

/**
 * A finished train stage's tracker runs (their pages, or their files' folders) added to the run's
 * `links` (stage id -> tracker -> link) and to the memo, so the Web UI and `dpo status` link them
 * while the run goes on. Histories from before have no such memo update: the patch keeps them
 * replaying.
 */
export function noteTrackerLinks(links: TrackerLinks, stageId: string, tracking: TrackingSummary): void {
  if (!Object.keys(tracking.links).length || !patched('memo-tracker-links')) return;
  links[stageId] = tracking.links;
  upsertMemo({ trackerLinks: { ...links } });
}

function publish(lineage: RunLineage): void {
  upsertMemo({ lineage });
  const pairs = [
    { key: SEARCH_ATTRIBUTES.model, value: lineage.model },
    { key: SEARCH_ATTRIBUTES.dataset, value: lineage.dataset },
    { key: SEARCH_ATTRIBUTES.configHash, value: lineage.configHash },
    ...(lineage.datasetRevision ? [{ key: SEARCH_ATTRIBUTES.datasetRevision, value: lineage.datasetRevision }] : []),
    ...(lineage.modelRevision ? [{ key: SEARCH_ATTRIBUTES.modelRevision, value: lineage.modelRevision }] : []),
    ...(lineage.parentRun ? [{ key: SEARCH_ATTRIBUTES.parentRun, value: lineage.parentRun }] : []),
    ...(lineage.schedule ? [{ key: SEARCH_ATTRIBUTES.schedule, value: lineage.schedule }] : []),
  ];
  upsertSearchAttributes(pairs);
}
