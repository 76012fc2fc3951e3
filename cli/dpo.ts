#!/usr/bin/env -S npx tsx
/**
 * The `dpo` command (run with `npm run dpo -- <command>`):
 *   dpo run <config.yaml|json> [--run-id ID] [--detach]   start dpoPipeline and follow it (Ctrl-C detaches)
 *   dpo status <runId> [--json]                           stages, training progress, replans, lineage
 *   dpo list [--model M --dataset D --status S --schedule ID --limit N] [--json]   recent runs
 *   dpo logs <runId> [--json]                             stage events and trainer progress from the history
 *   dpo cancel <runId>                                    cancel a run (the trainer checkpoints first)
 *   dpo resume <runId> [--set key=value ...] [--detach]   a new run reusing finished stages and checkpoints
 *   dpo schedule create|list|describe|pause|unpause|trigger|backfill|delete ...   recurring fine-tunes
 *   dpo stack up|down                                     the local Temporal dev server and MinIO
 *   dpo validate <config>                                 check a config, listing every problem
 *   dpo config-json <config>                              print the workflow input (for `temporal workflow start --input @file`)
 *   dpo schema                                            print the config's JSON Schema
 *   dpo estimate <config> [--gpu-memory 80GB] [--json]    GPU memory estimate and a starting micro-batch
 *   dpo data demo --out DIR [--train N --test N --seed S] generate the demo dataset
 * Exit codes: 0 ok, 1 the run failed, 2 bad usage or invalid config, 3 cannot reach Temporal,
 * 4 no such run or schedule.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { generateDemoDataset } from '../datagen/demoShapes.js';
import type { Client } from '@temporalio/client';
import YAML from 'yaml';
import { depsFromEnv, trainerPython } from '../io/deps.js';
import { parseS3Uri } from '../io/storage.js';
import { attemptCells } from '../contracts/attempts.js';
import { formatConfigProblems, parsePipelineConfig, pipelineConfigJsonSchema } from '../contracts/config.js';
import { storageRunId, type RunLineage } from '../contracts/lineage.js';
import { historyLog, renderLogLine } from './logs.js';
import { ConfigFileError, checkConfig, closedRunStatus, connectClient, describeFailure, describeTrainProgress, failureHint, followPipeline, loadConfigFile, startPipeline, trainProgress } from './runPipeline.js';
import { createSchedule, describeSchedule, listSchedules, overlapPolicy, ScheduleMissingError, withSchedule, type ScheduleSummary } from './schedules.js';
import { renderSummary, webUiUrl } from './summary.js';
import { PIPELINE_WORKFLOW, statusQuery, type PipelineStatus } from '../contracts/messages.js';

const USAGE = `usage: dpo <run|status|list|logs|cancel|resume|schedule|stack|validate|config-json|schema|estimate|data> ...  (see the README)`;

/** Errors print as one line plus a hint; the class picks the exit code. */
class CliError extends Error {
  constructor(
    message: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}
class UsageError extends CliError {}
class UnreachableError extends CliError {}
class NotFoundError extends CliError {}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'run':
      return run(rest);
    case 'validate': {
      const { config } = await loadConfigFile(requirePositional(rest, 'config file'));
      console.log(`ok: ${config.name} (${config.model.source}, ${config.dataset.source})`);
      return 0;
    }
    case 'config-json': {
      const { raw } = await loadConfigFile(requirePositional(rest, 'config file'));
      console.log(JSON.stringify(raw, null, 2));
      return 0;
    }
    case 'schema':
      console.log(JSON.stringify(pipelineConfigJsonSchema(), null, 2));
      return 0;
    case 'estimate':
      return estimate(rest);
    case 'data':
      return data(rest);
    case 'status':
      return status(rest);
    case 'list':
      return list(rest);
    case 'logs':
      return logs(rest);
    case 'cancel':
      return cancel(rest);
    case 'resume':
      return resume(rest);
    case 'schedule':
      return schedule(rest);
    case 'stack':
      return stack(rest);
    default:
      throw new UsageError(command ? `unknown command "${command}"` : 'no command', USAGE);
  }
}

/**
 * `dpo estimate`: the trainer's memory estimator (python -m dpo_trainer.estimate) on the resolved
 * config, so it sees the same defaults the run would. It reads the model's config.json only.
 */
async function estimate(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { 'gpu-memory': { type: 'string' }, 'model-dir': { type: 'string' }, json: { type: 'boolean', default: false } },
  });
  const { config } = await loadConfigFile(requirePositional(positionals, 'config file'));
  const dir = await mkdtemp(join(tmpdir(), 'dpo-estimate-'));
  try {
    const path = join(dir, 'config.json');
    await writeFile(path, JSON.stringify(config));
    const pyArgs = ['-m', 'dpo_trainer.estimate', '--config', path];
    if (values['gpu-memory']) pyArgs.push('--gpu-memory', values['gpu-memory']);
    let modelDir = values['model-dir'];
    if (!modelDir && config.model.source.startsWith('s3://')) {
      // The estimator needs config.json only: fetch it from object storage.
      const { bucket, prefix } = parseS3Uri(config.model.source);
      modelDir = join(dir, 'model');
      await depsFromEnv()
        .storage.downloadFile(bucket, `${prefix}config.json`, join(modelDir, 'config.json'))
        .catch((err: Error) => {
          throw new Error(`cannot read ${config.model.source}config.json from object storage: ${err.message}`);
        });
    }
    if (modelDir) pyArgs.push('--model-dir', modelDir);
    if (values.json) pyArgs.push('--json');
    const child = spawnSync(trainerPython(), pyArgs, { stdio: 'inherit', env: { OMP_NUM_THREADS: '1', ...process.env } });
    if (child.error) throw new Error(`cannot run the trainer's Python (${trainerPython()}): ${child.error.message}; run scripts/setup.sh`);
    return child.status === 0 ? 0 : child.status === 65 ? 2 : 1;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function run(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { 'run-id': { type: 'string' }, detach: { type: 'boolean', default: false } },
  });
  const { raw, config } = await loadConfigFile(requirePositional(positionals, 'config file'));
  return withClient(async (client) => {
    const handle = await startPipeline(client, raw, config, values['run-id']);
    console.log(`started run ${handle.workflowId}  (${webUiUrl(handle.workflowId)})`);
    if (values.detach) return 0;
    return follow(handle);
  });
}

/** Follows a run until it ends; Ctrl-C detaches and leaves the run going. */
async function follow(handle: Awaited<ReturnType<typeof startPipeline>>): Promise<number> {
  console.log('following progress; Ctrl-C detaches, the run goes on');
  process.once('SIGINT', () => {
    console.log(`\ndetached; the run goes on. \`dpo status ${handle.workflowId}\`, Temporal UI: ${webUiUrl(handle.workflowId)}`);
    process.exit(0);
  });
  try {
    const result = await followPipeline(handle, (line) => console.log(line));
    console.log(renderSummary(result));
    return 0;
  } catch (err) {
    console.error(`run ${handle.workflowId} failed: ${describeFailure(err)}`);
    console.error(`  hint: ${failureHint(handle.workflowId, err)}`);
    return 1;
  }
}

async function withClient<T>(fn: (client: Client) => Promise<T>): Promise<T> {
  const address = process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233';
  const client = await connectClient().catch((err: Error) => {
    throw new UnreachableError(`cannot reach Temporal at ${address}: ${err.message}`, 'start the local stack with `npm run dpo -- stack up`, or set TEMPORAL_ADDRESS');
  });
  try {
    return await fn(client);
  } finally {
    await client.connection.close();
  }
}

async function describeRun(client: Client, runId: string) {
  const handle = client.workflow.getHandle(runId);
  const description = await handle.describe().catch(() => {
    throw new NotFoundError(`no run "${runId}"`, 'see `dpo list`');
  });
  return { handle, description };
}

async function status(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean', default: false } } });
  const runId = requirePositional(positionals, 'run id');
  return withClient(async (client) => {
    const { handle, description } = await describeRun(client, runId);
    if (description.status.name !== 'RUNNING') {
      // An ended run answers from its result and memo: no worker needs to poll its queue.
      const closed = await closedRunStatus(handle, description);
      if (values.json) {
        console.log(JSON.stringify(closed, null, 2));
        return 0;
      }
      console.log(`run ${runId}: ${closed.status}  (${webUiUrl(runId)})`);
      for (const { id } of closed.plan ?? []) console.log(stageLine(id, closed.stages![id]!));
      if (closed.error) console.log(`  ${closed.status.toLowerCase()}: ${closed.error}\n  hint: ${closed.hint}`);
      if (closed.lineage) console.log(lineageLine(closed.lineage));
      return 0;
    }
    const lineage = (description.memo?.lineage ?? null) as RunLineage | null;
    const state = await handle.query(statusQuery).catch(() => null);
    const trainIds = state ? state.running.filter((id) => state.stages[id]?.kind === 'train') : [];
    const progress = [...(await trainProgress(handle, trainIds)).values()];
    if (!state) {
      // Queries are answered by a worker of the run's task queue.
      const message = `no worker polls task queue "${description.taskQueue}" to answer the status query; start one with \`npm run worker\``;
      if (values.json) console.log(JSON.stringify({ runId, status: description.status.name, lineage, error: message }, null, 2));
      else console.log(`run ${runId}: ${description.status.name}\n  (${message})`);
      return 0;
    }
    if (values.json) {
      console.log(JSON.stringify({ ...state, status: description.status.name, training: progress, lineage }, null, 2));
      return 0;
    }
    console.log(`run ${runId}: ${description.status.name}  (${webUiUrl(runId)})`);
    for (const { id } of state.plan) console.log(stageLine(id, state.stages[id]!));
    for (const p of progress) console.log(describeTrainProgress(p));
    if (lineage) console.log(lineageLine(lineage));
    return 0;
  });
}

function stageLine(id: string, s: PipelineStatus['stages'][string]): string {
  const seconds = s.startedAt ? `${(((s.finishedAt ?? Date.now()) - s.startedAt) / 1000).toFixed(0)}s` : '';
  const retried = s.retries ? `retries: ${attemptCells(s).retries}` : '';
  const extra = [s.cached ? 'cached' : '', retried, s.error ?? '', ...(s.replans ?? []).map((r) => `replan: ${r}`)].filter(Boolean).join('; ');
  return `  ${id.padEnd(16)} ${s.kind.padEnd(9)} ${s.state.padEnd(8)} ${seconds.padStart(6)}  ${extra}`;
}

function lineageLine(lineage: RunLineage): string {
  const parent = lineage.parentRun ? `${lineage.parentRelation === 'resume' ? 'resumes' : 'init from'} ${lineage.parentRun}; ` : '';
  return `  lineage: ${parent}dataset revision ${lineage.datasetRevision ?? '(not yet)'}; config ${lineage.configHash}${lineage.schedule ? `; schedule ${lineage.schedule}` : ''}`;
}

async function list(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      json: { type: 'boolean', default: false },
      limit: { type: 'string', default: '20' },
      model: { type: 'string' },
      dataset: { type: 'string' },
      status: { type: 'string' },
      schedule: { type: 'string' },
    },
  });
  // The same filters work in the Web UI's search box (contracts/lineage.ts names the attributes).
  const quote = (v: string) => `"${v.replace(/(["\\])/g, '\\$1')}"`;
  const clauses = [`WorkflowType = '${PIPELINE_WORKFLOW}'`];
  if (values.model) clauses.push(`DpoModel = ${quote(values.model)}`);
  if (values.dataset) clauses.push(`DpoDataset = ${quote(values.dataset)}`);
  if (values.schedule) clauses.push(`DpoSchedule = ${quote(values.schedule)}`);
  if (values.status) clauses.push(`ExecutionStatus = ${quote(capitalize(values.status))}`);
  return withClient(async (client) => {
    const runs: Array<{ runId: string; status: string; started: string; model?: unknown; dataset?: unknown; parentRun?: unknown; schedule?: unknown }> = [];
    for await (const w of client.workflow.list({ query: clauses.join(' AND ') })) {
      const lineage = w.memo?.lineage as RunLineage | undefined;
      runs.push({
        runId: w.workflowId,
        status: w.status.name,
        started: w.startTime.toISOString(),
        ...(lineage && { model: lineage.model, dataset: lineage.dataset, parentRun: lineage.parentRun, schedule: lineage.schedule }),
      });
      if (runs.length >= Number(values.limit)) break;
    }
    if (values.json) console.log(JSON.stringify(runs, null, 2));
    else for (const r of runs) console.log(`${r.started}  ${r.status.padEnd(10)}  ${r.runId}${r.parentRun ? `  (from ${r.parentRun})` : ''}`);
    return 0;
  });
}

/** `failed`, `timed_out`, `cancelled` -> the ExecutionStatus values visibility queries use. */
function capitalize(status: string): string {
  const names: Record<string, string> = { running: 'Running', completed: 'Completed', failed: 'Failed', cancelled: 'Canceled', canceled: 'Canceled', terminated: 'Terminated', timedout: 'TimedOut', continuedasnew: 'ContinuedAsNew' };
  const name = names[status.toLowerCase().replace(/[_-]/g, '')];
  if (!name) throw new UsageError(`--status "${status}": not a run status`, `one of ${Object.keys(names).join(', ')}`);
  return name;
}

async function logs(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean', default: false } } });
  const runId = requirePositional(positionals, 'run id');
  return withClient(async (client) => {
    const { handle } = await describeRun(client, runId);
    const entries = await historyLog(handle);
    if (values.json) console.log(JSON.stringify(entries, null, 2));
    else for (const e of entries) console.log(renderLogLine(e));
    return 0;
  });
}

async function cancel(args: string[]): Promise<number> {
  const runId = requirePositional(args, 'run id');
  return withClient(async (client) => {
    const { handle, description } = await describeRun(client, runId);
    if (description.status.name !== 'RUNNING') throw new UsageError(`run "${runId}" is ${description.status.name.toLowerCase()}, not running`, `\`dpo resume ${runId}\` starts it again`);
    await handle.cancel();
    console.log(`cancellation requested for ${runId}; its trainer writes a checkpoint and stops`);
    return 0;
  });
}

const RESUMABLE = ['FAILED', 'CANCELLED', 'TERMINATED', 'TIMED_OUT'];

async function resume(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { set: { type: 'string', multiple: true, default: [] }, detach: { type: 'boolean', default: false }, 'run-id': { type: 'string' } },
  });
  const previous = requirePositional(positionals, 'run id');
  return withClient(async (client) => {
    const { handle, description } = await describeRun(client, previous);
    const state = description.status.name;
    if (!RESUMABLE.includes(state)) {
      const hint = state === 'RUNNING' ? `it is still running; \`dpo cancel ${previous}\` first` : 'only failed, cancelled, terminated or timed-out runs are resumed; start a new one with `dpo run`';
      throw new UsageError(`run "${previous}" is ${state.toLowerCase()}: nothing to resume`, hint);
    }
    const history = await handle.fetchHistory();
    const started = history.events?.[0]?.workflowExecutionStartedEventAttributes;
    const payload = started?.input?.payloads?.[0]?.data;
    if (!payload) throw new NotFoundError(`run "${previous}" has no pipeline config in its history`, 'was it started as dpoPipeline?');
    const raw = JSON.parse(Buffer.from(payload).toString('utf8')) as Record<string, unknown>;
    for (const assignment of values.set) applyOverride(raw, assignment);
    // Checkpoints live under the run's storage name (scheduled runs' ids lose their ":").
    raw.resume_from_run = storageRunId(previous);
    // The resumed run is not started by the schedule: pin `previous` to the adapter the old run used.
    if (raw.init_from === 'previous') {
      const initFromRun = (description.memo?.lineage as RunLineage | undefined)?.initFromRun;
      if (initFromRun) raw.init_from = initFromRun;
      else delete raw.init_from;
    }
    const config = checkConfig(raw, `resume ${previous}`);
    const next = await startPipeline(client, raw, config, values['run-id']);
    console.log(`resuming ${previous} as ${next.workflowId}: finished data stages are reused, training continues from the newest checkpoint`);
    if (values.detach) return 0;
    return follow(next);
  });
}

/** `--set train.per_device_train_batch_size=1`: the value is parsed as YAML (numbers, booleans, lists). */
function applyOverride(raw: Record<string, unknown>, assignment: string): void {
  const eq = assignment.indexOf('=');
  if (eq <= 0) throw new UsageError(`--set ${assignment}: expected path=value`, 'e.g. --set train.beta=0.2');
  const path = assignment.slice(0, eq).split('.');
  let node = raw;
  for (const key of path.slice(0, -1)) node = (node[key] ??= {}) as Record<string, unknown>;
  node[path.at(-1)!] = YAML.parse(assignment.slice(eq + 1));
}

const SCHEDULE_USAGE =
  'usage: dpo schedule create <config> (--cron "0 3 * * *" | --every 1d) [--id ID] [--overlap skip] [--paused] [--set k=v]\n' +
  '       dpo schedule list|describe <id> [--json] | pause|unpause <id> [--note TEXT] | trigger <id> | backfill <id> --from ISO --to ISO | delete <id>';

async function schedule(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      cron: { type: 'string' },
      every: { type: 'string' },
      id: { type: 'string' },
      overlap: { type: 'string' },
      paused: { type: 'boolean', default: false },
      note: { type: 'string' },
      set: { type: 'string', multiple: true, default: [] },
      from: { type: 'string' },
      to: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
  });
  if (sub === 'create') {
    const file = requirePositional(positionals, 'config file');
    const { raw } = await loadConfigFile(file);
    for (const assignment of values.set) applyOverride(raw as Record<string, unknown>, assignment);
    const config = checkConfig(raw, file);
    const scheduleId = values.id ?? config.name;
    return withClient(async (client) => {
      await createSchedule(client, { scheduleId, raw, config, cron: values.cron, every: values.every, overlap: values.overlap, paused: values.paused, note: values.note });
      console.log(`created schedule ${scheduleId} (${values.cron ? `cron "${values.cron}"` : `every ${values.every}`}, overlap ${values.overlap ?? 'skip'}${values.paused ? ', paused' : ''})`);
      return 0;
    });
  }
  if (sub === 'list') {
    return withClient(async (client) => {
      const schedules = await listSchedules(client);
      if (values.json) console.log(JSON.stringify(schedules, null, 2));
      else if (!schedules.length) console.log('no schedules (create one with `dpo schedule create <config> --every 1d`)');
      else for (const s of schedules) console.log(renderSchedule(s));
      return 0;
    });
  }
  const scheduleId = positionals[0];
  if (!sub || !scheduleId) throw new UsageError(sub ? `schedule ${sub}: missing schedule id` : 'schedule: missing subcommand', SCHEDULE_USAGE);
  return withClient(async (client) => {
    const handle = client.schedule.getHandle(scheduleId);
    switch (sub) {
      case 'describe': {
        const s = await describeSchedule(client, scheduleId);
        console.log(values.json ? JSON.stringify(s, null, 2) : renderSchedule(s));
        return 0;
      }
      case 'pause':
        await withSchedule(scheduleId, () => handle.pause(values.note));
        console.log(`paused schedule ${scheduleId}`);
        return 0;
      case 'unpause':
        await withSchedule(scheduleId, () => handle.unpause(values.note));
        console.log(`unpaused schedule ${scheduleId}`);
        return 0;
      case 'trigger':
        await withSchedule(scheduleId, () => handle.trigger(overlapPolicy(values.overlap)));
        console.log(`triggered schedule ${scheduleId} (a run already in progress means this one is skipped, unless --overlap allow_all)`);
        return 0;
      case 'backfill': {
        const start = new Date(values.from ?? '');
        const end = new Date(values.to ?? '');
        if (Number.isNaN(start.getTime()) || Number.isNaN(end.getTime()) || start >= end) {
          throw new UsageError('schedule backfill: give --from and --to as ISO times, --from before --to', 'e.g. --from 2026-11-01T00:00:00Z --to 2026-11-03T00:00:00Z');
        }
        await withSchedule(scheduleId, () => handle.backfill({ start, end, overlap: overlapPolicy(values.overlap ?? 'buffer_all') }));
        console.log(`backfilling schedule ${scheduleId} from ${start.toISOString()} to ${end.toISOString()}`);
        return 0;
      }
      case 'delete':
        await withSchedule(scheduleId, () => handle.delete());
        console.log(`deleted schedule ${scheduleId} (its runs and their outputs are kept)`);
        return 0;
      default:
        throw new UsageError(`unknown schedule subcommand "${sub}"`, SCHEDULE_USAGE);
    }
  });
}

function renderSchedule(s: ScheduleSummary): string {
  const lines = [`${s.scheduleId}  ${s.spec}  overlap ${s.overlap}${s.paused ? `  PAUSED${s.note ? ` (${s.note})` : ''}` : ''}`];
  if (s.nextRuns.length) lines.push(`  next: ${s.nextRuns.join(', ')}`);
  if (s.runningRuns.length) lines.push(`  running: ${s.runningRuns.join(', ')}`);
  for (const r of s.recentRuns.slice(-3)) lines.push(`  recent: ${r.runId}`);
  return lines.join('\n');
}

async function stack(args: string[]): Promise<number> {
  const { stackDown, stackUp, STATE_DIR, temporalUiUrl } = await import('../scripts/localStack.js');
  const log = (line: string) => console.log(`stack: ${line}`);
  if (args[0] === 'up') {
    await stackUp(log);
    log(`ready. Temporal at ${process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233'} (Web UI ${temporalUiUrl()}); state in ${STATE_DIR}`);
    return 0;
  }
  if (args[0] === 'down') {
    const stopped = await stackDown(log);
    if (!stopped.length) log('nothing to stop (services this stack did not start are left alone)');
    return 0;
  }
  throw new UsageError(`stack: expected up or down${args[0] ? `, got "${args[0]}"` : ''}`, 'dpo stack up');
}

async function data(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      out: { type: 'string' },
      train: { type: 'string', default: '2000' },
      test: { type: 'string', default: '300' },
      seed: { type: 'string', default: '7' },
    },
  });
  if (positionals[0] !== 'demo' || !values.out) throw new UsageError('data: missing demo or --out', 'dpo data demo --out DIR [--train N] [--test N] [--seed S]');
  const files = await generateDemoDataset({
    outDir: values.out,
    trainRows: Number(values.train),
    testRows: Number(values.test),
    seed: Number(values.seed),
  });
  for (const [split, path] of Object.entries(files)) console.log(`${split}: ${path}`);
  return 0;
}

function requirePositional(args: string[], what: string): string {
  const value = args.find((a) => !a.startsWith('--'));
  if (!value) throw new UsageError(`missing ${what}`, USAGE);
  return value;
}

function exitCodeOf(err: unknown): number {
  if (err instanceof ConfigFileError || err instanceof UsageError) return 2;
  if (err instanceof TypeError && (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) return 2;
  if (err instanceof UnreachableError) return 3;
  if (err instanceof NotFoundError || err instanceof ScheduleMissingError) return 4;
  return 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: Error) => {
    const code = exitCodeOf(err);
    // Expected errors: the message and a hint. Anything else is a bug: the stack helps.
    console.error(code === 1 ? `dpo: ${err.stack ?? err.message}` : `dpo: ${err.message}`);
    if (err instanceof CliError && err.hint) console.error(`  hint: ${err.hint}`);
    process.exit(code);
  },
);
