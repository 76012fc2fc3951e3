/**
 * Lineage of a run: where it came from (parent run, schedule, dataset revision, config hash).
 * Recorded in the run manifest (runs/<runId>/run.json), in the workflow memo, and as custom search
 * attributes so runs are findable by model, dataset and status in the Temporal Web UI
 * (`DpoModel = "s3://..." AND ExecutionStatus = "Completed"`). Pure code: bundled into workflows.
 */
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import type { PipelineConfig } from './config.js';
import { keys } from './keys.js';

/**
 * The custom search attributes dpoPipeline sets. They must be registered on the namespace before
 * a run starts: `npm run stack` does it for the local dev server; on a production cluster run
 * `temporal operator search-attribute create --name <name> --type Keyword` once per name.
 */
export const SEARCH_ATTRIBUTES = {
  model: defineSearchAttributeKey('DpoModel', SearchAttributeType.KEYWORD),
  dataset: defineSearchAttributeKey('DpoDataset', SearchAttributeType.KEYWORD),
  datasetRevision: defineSearchAttributeKey('DpoDatasetRevision', SearchAttributeType.KEYWORD),
  modelRevision: defineSearchAttributeKey('DpoModelRevision', SearchAttributeType.KEYWORD),
  configHash: defineSearchAttributeKey('DpoConfigHash', SearchAttributeType.KEYWORD),
  parentRun: defineSearchAttributeKey('DpoParentRun', SearchAttributeType.KEYWORD),
  schedule: defineSearchAttributeKey('DpoSchedule', SearchAttributeType.KEYWORD),
} as const;

/** Set by the Temporal server on workflows started by a Schedule. */
export const SCHEDULED_BY_ID = defineSearchAttributeKey('TemporalScheduledById', SearchAttributeType.KEYWORD);

export interface RunLineage {
  runId: string;
  name: string;
  model: string;
  dataset: string;
  /** The Hub commit sha a Hub model source resolved to at run start; null for s3:// and local models. */
  modelRevision?: string | null;
  /** Content fingerprint of the dataset this run read (the download stage's input hash, or the revision it records). */
  datasetRevision: string | null;
  /** Hash of the resolved config without its lineage fields: equal hashes, equal recipe. */
  configHash: string;
  /** The run this one continues (resume) or, without one, starts from (init_from). */
  parentRun: string | null;
  parentRelation: 'resume' | 'init_from' | null;
  /** The run whose adapters the train stages start from (`init_from`), if any. */
  initFromRun: string | null;
  /** The Temporal Schedule that started this run. */
  schedule: string | null;
}

/**
 * Storage name of a run: its workflow id, minus the ":" of the timestamp Temporal appends to the
 * workflow ids of scheduled runs (`nightly-2026-11-28T02:00:00Z` -> `nightly-2026-11-28T020000Z`).
 */
export function storageRunId(workflowId: string): string {
  return workflowId.replace(/:/g, '');
}

/** FNV-1a 64-bit over a canonical JSON form (sorted keys): stable, and cheap inside a workflow. */
export function configHash(config: PipelineConfig): string {
  const { resume_from_run: _resume, init_from: _init, ...recipe } = config;
  let h = 0xcbf29ce484222325n;
  const text = canonicalJson(recipe);
  for (let i = 0; i < text.length; i++) {
    h ^= BigInt(text.charCodeAt(i));
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h.toString(16).padStart(16, '0');
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value)
      .sort()
      .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/** Storage keys of lineage records (see contracts/keys.ts for the layout). */
export const lineageKeys = {
  runManifest: (runId: string) => `${keys.runPrefix(runId)}run.json`,
  /** The last successful run of a schedule: where `init_from: previous` looks. */
  scheduleLastSuccess: (scheduleId: string) => `schedules/${encodeURIComponent(scheduleId)}/last-success.json`,
};
