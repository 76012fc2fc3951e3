/**
 * `dpo logs <runId>`: what happened in a run, read back from Temporal: each stage's activity
 * scheduled / started (attempt) / completed / failed with its message, the run's outcome, and the
 * latest heartbeat of stages still running (training step, loss, checkpoint). Nothing is stored
 * besides the history, so this works for any run any worker executed.
 */
import type { WorkflowHandle } from '@temporalio/client';
import type { TrainProgress } from '../contracts/progress.js';

export interface LogEntry {
  time: string;
  stage: string;
  event: string;
  detail?: string;
}

const KIND_OF_ACTIVITY: Record<string, string> = {
  downloadDataset: 'download',
  formatDataset: 'format',
  tokenizeDataset: 'tokenize',
  shardDataset: 'shard',
  resolveInitFrom: 'lineage',
  recordRun: 'lineage',
};

type Payloads = { payloads?: Array<{ data?: Uint8Array | null }> | null } | null | undefined;
type Failure = { message?: string | null; cause?: Failure | null } | null | undefined;
type Time = { seconds?: unknown; nanos?: number | null } | null | undefined;

function decode(p: Payloads): unknown {
  const data = p?.payloads?.[0]?.data;
  if (!data) return undefined;
  try {
    return JSON.parse(Buffer.from(data).toString('utf8'));
  } catch {
    return undefined;
  }
}

function messages(f: Failure): string {
  const parts: string[] = [];
  for (let e = f; e; e = e.cause) if (e.message) parts.push(e.message);
  return parts.join(': ');
}

const isoTime = (t: Time) => new Date((Number(t?.seconds ?? 0) + (t?.nanos ?? 0) / 1e9) * 1000).toISOString();

function resultDetail(result: unknown): string | undefined {
  if (!result || typeof result !== 'object') return undefined;
  const r = result as Record<string, unknown>;
  if (typeof r.cached === 'boolean') return `${r.cached ? 'cached (reused an earlier output)' : 'computed'} ${r.hash ?? ''}`.trim();
  if (typeof r.finalStep === 'number') {
    const m = (r.metrics ?? {}) as Record<string, number>;
    const from = r.resumedFromStep !== null && r.resumedFromStep !== undefined ? `, resumed from step ${r.resumedFromStep}` : '';
    return `step ${r.finalStep}${from}${m.loss !== undefined ? `, loss ${m.loss.toFixed(4)}` : ''}${r.initAdapter ? `, init from ${r.initAdapter}` : ''}`;
  }
  if (r.trained && typeof r.trained === 'object') return `held-out accuracy ${((r.trained as { preference_accuracy: number }).preference_accuracy * 100).toFixed(1)}%`;
  if (typeof r.markdownKey === 'string') return r.markdownKey;
  return undefined;
}

export async function historyLog(handle: WorkflowHandle): Promise<LogEntry[]> {
  const history = await handle.fetchHistory();
  const entries: LogEntry[] = [];
  const stageOf = new Map<string, string>();
  // Train stages run as child workflows (workflows/training.ts): their segments are read below.
  const children: Array<{ workflowId: string; stage: string }> = [];
  for (const e of history.events ?? []) {
    const time = isoTime(e.eventTime as Time);
    const id = String(e.eventId);
    const push = (stage: string, event: string, detail?: string) => entries.push({ time, stage, event, ...(detail && { detail }) });
    const scheduled = e.activityTaskScheduledEventAttributes;
    if (e.workflowExecutionStartedEventAttributes) {
      const input = decode(e.workflowExecutionStartedEventAttributes.input) as { name?: string; resume_from_run?: string } | undefined;
      push('run', 'started', [input?.name, input?.resume_from_run && `resuming ${input.resume_from_run}`].filter(Boolean).join(', '));
    } else if (scheduled) {
      const type = scheduled.activityType?.name ?? '?';
      const input = decode(scheduled.input) as { stageId?: string } | undefined;
      const stage = input?.stageId ?? KIND_OF_ACTIVITY[type] ?? type;
      stageOf.set(id, stage);
      push(stage, 'scheduled', `${type} on ${scheduled.taskQueue?.name ?? '?'}`);
    } else if (e.activityTaskStartedEventAttributes) {
      const a = e.activityTaskStartedEventAttributes;
      push(stageOf.get(String(a.scheduledEventId)) ?? '?', 'started', `attempt ${a.attempt ?? 1}${a.identity ? ` on ${a.identity}` : ''}`);
    } else if (e.activityTaskCompletedEventAttributes) {
      const a = e.activityTaskCompletedEventAttributes;
      push(stageOf.get(String(a.scheduledEventId)) ?? '?', 'completed', resultDetail(decode(a.result)));
    } else if (e.activityTaskFailedEventAttributes) {
      const a = e.activityTaskFailedEventAttributes;
      push(stageOf.get(String(a.scheduledEventId)) ?? '?', 'failed', messages(a.failure as Failure));
    } else if (e.activityTaskTimedOutEventAttributes) {
      const a = e.activityTaskTimedOutEventAttributes;
      push(stageOf.get(String(a.scheduledEventId)) ?? '?', 'timed out', messages(a.failure as Failure));
    } else if (e.activityTaskCanceledEventAttributes) {
      push(stageOf.get(String(e.activityTaskCanceledEventAttributes.scheduledEventId)) ?? '?', 'cancelled');
    } else if (e.startChildWorkflowExecutionInitiatedEventAttributes) {
      const c = e.startChildWorkflowExecutionInitiatedEventAttributes;
      const input = decode(c.input) as { train?: { stageId?: string } } | undefined;
      const stage = input?.train?.stageId ?? c.workflowType?.name ?? 'child';
      if (c.workflowId) children.push({ workflowId: c.workflowId, stage });
      push(stage, 'scheduled', `${c.workflowType?.name ?? 'child workflow'} ${c.workflowId ?? ''}`.trim());
    } else if (e.workflowExecutionCompletedEventAttributes) {
      push('run', 'completed');
    } else if (e.workflowExecutionFailedEventAttributes) {
      push('run', 'failed', messages(e.workflowExecutionFailedEventAttributes.failure as Failure));
    } else if (e.workflowExecutionCanceledEventAttributes) {
      push('run', 'cancelled');
    } else if (e.workflowExecutionTerminatedEventAttributes) {
      push('run', 'terminated', e.workflowExecutionTerminatedEventAttributes.reason ?? undefined);
    } else if (e.workflowExecutionTimedOutEventAttributes) {
      push('run', 'timed out');
    }
  }
  // Stages still running: their latest heartbeat (the trainer's step, loss, newest checkpoint).
  const description = await handle.describe();
  for (const a of description.raw.pendingActivities ?? []) {
    const beat = decode(a.heartbeatDetails) as Partial<TrainProgress> | undefined;
    const stage = beat?.stageId ?? KIND_OF_ACTIVITY[a.activityType?.name ?? ''] ?? a.activityType?.name ?? '?';
    const parts = [
      `attempt ${a.attempt ?? 1}`,
      beat?.phase,
      beat?.step !== undefined ? `step ${beat.step}${beat.totalSteps ? `/${beat.totalSteps}` : ''}` : undefined,
      beat?.metrics?.loss !== undefined ? `loss ${beat.metrics.loss.toFixed(4)}` : undefined,
      beat?.checkpointKey ? `checkpoint ${beat.checkpointKey}` : undefined,
      a.lastFailure ? `last failure: ${messages(a.lastFailure as Failure)}` : undefined,
    ].filter(Boolean);
    entries.push({ time: isoTime(a.lastHeartbeatTime as Time), stage, event: 'running', detail: parts.join(', ') });
  }
  for (const child of children) {
    const sub = await historyLog(handle.client.getHandle(child.workflowId)).catch(() => []);
    // The child's own start/end lines are the stage's; its segments are already named by stage.
    entries.push(...sub.filter((e) => !(e.stage === 'run' && e.event === 'started')).map((e) => (e.stage === 'run' ? { ...e, stage: child.stage } : e)));
  }
  return entries.sort((a, b) => a.time.localeCompare(b.time));
}

/** One line per entry; long failure messages are cut (`--json` has them whole). */
export function renderLogLine(e: LogEntry): string {
  const detail = e.detail && e.detail.length > 400 ? `${e.detail.slice(0, 400)}...` : (e.detail ?? '');
  return `${e.time}  ${e.stage.padEnd(16)} ${e.event.padEnd(10)} ${detail}`.trimEnd();
}
