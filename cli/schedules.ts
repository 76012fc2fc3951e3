/**
 * Recurring fine-tunes as Temporal Schedules. A schedule starts dpoPipeline with a fixed
 * config on a cron expression or an interval; overlapping starts are skipped by default (a nightly
 * run that is still training when the next night comes). Pause, trigger and backfill are
 * Temporal's own. Each run it starts is tagged with the schedule (search attribute DpoSchedule),
 * which is what `init_from: previous` and lineage use.
 */
import { ScheduleAlreadyRunning, ScheduleNotFoundError, ScheduleOverlapPolicy, type Client, type ScheduleDescription } from '@temporalio/client';
import type { PipelineConfig } from '../contracts/config.js';
import { isSafeKeySegment } from '../contracts/keys.js';
import { SEARCH_ATTRIBUTES } from '../contracts/lineage.js';
import { ConfigFileError } from './runPipeline.js';
import { PIPELINE_WORKFLOW } from '../contracts/messages.js';

export class ScheduleInputError extends ConfigFileError {}
export class ScheduleMissingError extends Error {}

export const OVERLAP_POLICIES = {
  skip: ScheduleOverlapPolicy.SKIP,
  buffer_one: ScheduleOverlapPolicy.BUFFER_ONE,
  buffer_all: ScheduleOverlapPolicy.BUFFER_ALL,
  cancel_other: ScheduleOverlapPolicy.CANCEL_OTHER,
  terminate_other: ScheduleOverlapPolicy.TERMINATE_OTHER,
  allow_all: ScheduleOverlapPolicy.ALLOW_ALL,
} as const;
export type OverlapName = keyof typeof OVERLAP_POLICIES;

export interface CreateScheduleOptions {
  scheduleId: string;
  raw: unknown;
  config: PipelineConfig;
  cron?: string;
  every?: string;
  overlap?: string;
  paused?: boolean;
  note?: string;
}

/** Checks the options before anything is created; every problem is a ScheduleInputError. */
export function checkScheduleOptions(o: CreateScheduleOptions): void {
  // Run ids are `<schedule id>-<timestamp>` and name storage folders.
  if (!isSafeKeySegment(o.scheduleId) || o.scheduleId.length > 100) {
    throw new ScheduleInputError(`schedule id "${o.scheduleId}": use 1-100 letters, digits, ".", "_" or "-" (it prefixes run ids)`);
  }
  if (!!o.cron === !!o.every) throw new ScheduleInputError('schedule create: give exactly one of --cron "0 3 * * *" or --every 1d');
  if (o.every !== undefined && !(parseDuration(o.every) > 0)) {
    throw new ScheduleInputError(`--every "${o.every}": not a duration; use e.g. 30m, 6h, 1d, 1w`);
  }
  if (o.cron !== undefined) {
    const problem = cronProblem(o.cron);
    if (problem) throw new ScheduleInputError(`--cron "${o.cron}": ${problem}`);
  }
  if (o.overlap !== undefined && !(o.overlap in OVERLAP_POLICIES)) {
    throw new ScheduleInputError(`--overlap "${o.overlap}": valid policies are ${Object.keys(OVERLAP_POLICIES).join(', ')}`);
  }
}

const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

/** `30m`, `6h`, `1d`, `2w` in milliseconds; NaN when it is not one. */
export function parseDuration(text: string): number {
  const m = /^(\d+)(s|m|h|d|w)$/.exec(text.trim());
  return m ? Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS] : NaN;
}

function formatDuration(msValue: number): string {
  for (const unit of ['w', 'd', 'h', 'm', 's'] as const) if (msValue % UNIT_MS[unit] === 0) return `${msValue / UNIT_MS[unit]}${unit}`;
  return `${msValue}ms`;
}

const CRON_FIELDS: Array<[name: string, min: number, max: number]> = [
  ['minute', 0, 59],
  ['hour', 0, 23],
  ['day of month', 1, 31],
  ['month', 1, 12],
  ['day of week', 0, 7],
];
const CRON_NAMES = /^(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|sun|mon|tue|wed|thu|fri|sat)$/i;

/**
 * Why a cron expression is invalid, or null. Checked here so the message names the field; the
 * server checks again (and also accepts @daily-style macros and an optional seconds/year field).
 */
export function cronProblem(cron: string): string | null {
  const text = cron.trim();
  if (/^@(yearly|annually|monthly|weekly|daily|midnight|hourly)$/.test(text) || /^@every\s+\S+$/.test(text)) return null;
  const fields = text.replace(/^CRON_TZ=\S+\s+/, '').split(/\s+/);
  if (fields.length !== 5) return `expected 5 fields (minute hour day-of-month month day-of-week), got ${fields.length}`;
  for (const [i, field] of fields.entries()) {
    const [name, min, max] = CRON_FIELDS[i]!;
    for (const part of field.split(',')) {
      const m = /^(\*|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:\/(\d+))?$/.exec(part);
      if (!m) return `${name} field "${field}" is not a cron list, range or step`;
      if (m[1] === '*') continue;
      for (const v of m[1]!.split('-')) {
        if (CRON_NAMES.test(v)) continue;
        const n = Number(v);
        if (!Number.isInteger(n) || n < min || n > max) return `${name} field "${field}": ${v} is outside ${min}-${max}`;
      }
    }
  }
  return null;
}

export async function createSchedule(client: Client, o: CreateScheduleOptions): Promise<void> {
  checkScheduleOptions(o);
  try {
    await client.schedule.create({
      scheduleId: o.scheduleId,
      spec: o.cron ? { cronExpressions: [o.cron] } : { intervals: [{ every: parseDuration(o.every!) }] },
      action: {
        type: 'startWorkflow',
        workflowType: PIPELINE_WORKFLOW,
        args: [o.raw],
        taskQueue: o.config.queues.cpu,
        // Temporal appends the scheduled time: `<id>-2026-11-28T03:00:00Z`.
        workflowId: o.scheduleId,
        typedSearchAttributes: [{ key: SEARCH_ATTRIBUTES.schedule, value: o.scheduleId }],
      },
      policies: { overlap: OVERLAP_POLICIES[(o.overlap ?? 'skip') as OverlapName], catchupWindow: '1 day' },
      state: { paused: o.paused ?? false, ...(o.note && { note: o.note }) },
      memo: { spec: o.cron ? `cron "${o.cron}"` : `every ${o.every}`, name: o.config.name, model: o.config.model.source, dataset: o.config.dataset.source, initFrom: o.config.init_from ?? null },
    });
  } catch (err) {
    if (err instanceof ScheduleAlreadyRunning) {
      throw new ScheduleInputError(`schedule "${o.scheduleId}" already exists (\`dpo schedule delete ${o.scheduleId}\` first, or pick another --id)`);
    }
    const message = (err as Error).message ?? String(err);
    if (/invalid|cron|spec/i.test(message)) throw new ScheduleInputError(`schedule "${o.scheduleId}": the server refused its spec: ${message}`);
    throw err;
  }
}

export interface ScheduleSummary {
  scheduleId: string;
  paused: boolean;
  note?: string;
  spec: string;
  overlap: string;
  nextRuns: string[];
  recentRuns: Array<{ runId: string; scheduledAt: string }>;
  runningRuns: string[];
  memo?: Record<string, unknown>;
}

export async function listSchedules(client: Client): Promise<ScheduleSummary[]> {
  const out: ScheduleSummary[] = [];
  for await (const s of client.schedule.list()) {
    if (s.action?.type !== 'startWorkflow' || s.action.workflowType !== PIPELINE_WORKFLOW) continue;
    out.push(await describeSchedule(client, s.scheduleId));
  }
  return out;
}

export async function describeSchedule(client: Client, scheduleId: string): Promise<ScheduleSummary> {
  const d: ScheduleDescription = await withSchedule(scheduleId, () => client.schedule.getHandle(scheduleId).describe());
  // The server turns cron strings into calendar specs; `dpo schedule create` keeps the original in the memo.
  const spec =
    typeof d.memo?.spec === 'string'
      ? d.memo.spec
      : [
          ...(d.spec.intervals ?? []).map((i) => `every ${formatDuration(Number(i.every))}`),
          ...(d.spec.calendars?.length ? [`${d.spec.calendars.length} calendar spec(s)`] : []),
        ].join(', ');
  const overlapName = Object.entries(OVERLAP_POLICIES).find(([, v]) => v === d.policies.overlap)?.[0] ?? String(d.policies.overlap);
  return {
    scheduleId,
    paused: d.state.paused,
    ...(d.state.note && { note: d.state.note }),
    spec,
    overlap: overlapName,
    nextRuns: d.info.nextActionTimes.slice(0, 3).map((t) => t.toISOString()),
    recentRuns: d.info.recentActions.map((a) => ({ runId: a.action.workflow.workflowId, scheduledAt: a.scheduledAt.toISOString() })),
    runningRuns: d.info.runningActions.map((a) => a.workflow.workflowId),
    ...(d.memo && { memo: d.memo }),
  };
}

/** Runs a schedule operation, turning "no such schedule" into ScheduleMissingError. */
export async function withSchedule<T>(scheduleId: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ScheduleNotFoundError || /not found/i.test((err as Error).message ?? '')) {
      throw new ScheduleMissingError(`no schedule "${scheduleId}" (see \`dpo schedule list\`)`);
    }
    throw err;
  }
}

export function overlapPolicy(name: string | undefined): ScheduleOverlapPolicy | undefined {
  if (name === undefined) return undefined;
  if (!(name in OVERLAP_POLICIES)) throw new ScheduleInputError(`--overlap "${name}": valid policies are ${Object.keys(OVERLAP_POLICIES).join(', ')}`);
  return OVERLAP_POLICIES[name as OverlapName];
}
