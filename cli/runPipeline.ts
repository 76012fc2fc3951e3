/**
 * Starting dpoPipeline and following it: shared by `dpo run` and `npm run demo`.
 * Progress comes from the workflow's status query (stages) and the train activity's heartbeat
 * details (step, loss), read through `describe`.
 */
import { readFile } from 'node:fs/promises';
import { Client, Connection, WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import YAML from 'yaml';
import { formatConfigProblems, parsePipelineConfig, type PipelineConfig } from '../lib/config.js';
import type { PipelineResult } from '../lib/stages.js';
import type { TrainProgress } from '../activities/train.js';
import { temporalEnv } from '../worker/connection.js';
import type { PipelineStatus, StageName } from '../workflows/pipeline.js';
import { STAGE_ORDER } from '../workflows/pipeline.js';

export class ConfigFileError extends Error {}

/** Reads a YAML or JSON config file and validates it, listing every problem. */
export async function loadConfigFile(path: string): Promise<{ raw: unknown; config: PipelineConfig }> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new ConfigFileError(`cannot read config file ${path}`);
  }
  let raw: unknown;
  try {
    raw = path.endsWith('.json') ? JSON.parse(text) : YAML.parse(text);
  } catch (err) {
    throw new ConfigFileError(`${path} is not valid ${path.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message}`);
  }
  const parsed = parsePipelineConfig(raw);
  if (!parsed.ok) throw new ConfigFileError(`${path}: ${formatConfigProblems(parsed.problems)}`);
  return { raw, config: parsed.config };
}

export async function connectClient(): Promise<Client> {
  const env = temporalEnv();
  const connection = await Connection.connect({ address: env.address, tls: env.tls, apiKey: env.apiKey });
  return new Client({ connection, namespace: env.namespace });
}

export function newRunId(name: string, now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `${name}-${stamp}`.slice(0, 128);
}

export async function startPipeline(client: Client, raw: unknown, config: PipelineConfig, runId = newRunId(config.name)) {
  return client.workflow.start('dpoPipeline', {
    args: [raw],
    taskQueue: config.queues.cpu,
    workflowId: runId,
  });
}

/** Prints stage transitions and training steps until the run ends; returns its result. */
export async function followPipeline(
  handle: WorkflowHandle,
  print: (line: string) => void,
  pollMs = 1000,
): Promise<PipelineResult> {
  const seen = new Map<StageName, string>();
  let lastStep = -1;
  let lastPrint = 0;
  const result = handle.result() as Promise<PipelineResult>;
  let done = false;
  void result.finally(() => (done = true)).catch(() => {});
  while (!done) {
    try {
      const status = await handle.query<PipelineStatus>('status');
      for (const stage of STAGE_ORDER) {
        const s = status.stages[stage];
        const key = `${s.state}${s.cached ? '-cached' : ''}`;
        if (s.state === 'pending' || seen.get(stage) === key) continue;
        seen.set(stage, key);
        print(describeStage(stage, s));
      }
      if (status.current === 'train') {
        const progress = await trainProgress(handle);
        if (progress && progress.step !== lastStep && Date.now() - lastPrint > 2000) {
          lastStep = progress.step;
          lastPrint = Date.now();
          print(describeTrainProgress(progress));
        }
      }
    } catch {
      // The workflow may not have started its first task yet, or just finished.
    }
    await Promise.race([result.catch(() => {}), new Promise((r) => setTimeout(r, pollMs))]);
  }
  return result;
}

async function trainProgress(handle: WorkflowHandle): Promise<TrainProgress | undefined> {
  const description = await handle.describe();
  const raw = await description.raw;
  const pending = raw.pendingActivities?.find((a) => a.activityType?.name === 'trainModel');
  const details = pending?.heartbeatDetails?.payloads?.[0];
  if (!details?.data) return undefined;
  return JSON.parse(Buffer.from(details.data).toString('utf8')) as TrainProgress;
}

function describeStage(stage: StageName, s: PipelineStatus['stages'][StageName]): string {
  const pad = stage.padEnd(9);
  if (s.state === 'running') return `  ${pad} running...`;
  if (s.state === 'failed') return `  ${pad} FAILED`;
  const seconds = s.startedAt && s.finishedAt ? ` in ${((s.finishedAt - s.startedAt) / 1000).toFixed(1)}s` : '';
  const summary = s.summary ? `  ${Object.entries(s.summary).map(([k, v]) => `${k}=${typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(4) : v}`).join(' ')}` : '';
  return `  ${pad} ${s.cached ? 'cached' : 'done'}${seconds}${summary}`;
}

function describeTrainProgress(p: TrainProgress): string {
  const of = p.totalSteps ? `/${p.totalSteps}` : '';
  const m = p.metrics;
  const metric = (name: string) => (m[name] !== undefined ? ` ${name}=${m[name]!.toFixed(4)}` : '');
  const rate = p.samplesPerSecond ? ` ${p.samplesPerSecond.toFixed(1)} samples/s` : '';
  return `  train     step ${p.step}${of}${metric('loss')}${metric('rewards/accuracies')}${metric('rewards/margins')}${rate}`;
}

export function describeFailure(err: unknown): string {
  if (err instanceof WorkflowFailedError) {
    let cause: unknown = err.cause;
    const parts: string[] = [];
    while (cause instanceof Error) {
      parts.push(cause.message);
      cause = (cause as { cause?: unknown }).cause;
    }
    return parts.join('\n  caused by: ') || err.message;
  }
  return (err as Error).message ?? String(err);
}
