#!/usr/bin/env -S npx tsx
/**
 * The `dpo` command (run with `npm run dpo -- <command>`):
 *   dpo run <config.yaml|json> [--run-id ID] [--detach]   start dpoPipeline and follow it
 *   dpo status <runId> [--json]                           stages, training progress, replans
 *   dpo list [--json]                                     recent runs
 *   dpo cancel <runId>                                    cancel a run (the trainer checkpoints first)
 *   dpo resume <runId> [--set key=value ...] [--detach]   a new run reusing finished stages and checkpoints
 *   dpo validate <config>                                 check a config, listing every problem
 *   dpo config-json <config>                              print the workflow input (for `temporal workflow start --input @file`)
 *   dpo schema                                            print the config's JSON Schema
 *   dpo estimate <config> [--gpu-memory 80GB] [--json]    GPU memory estimate and a starting micro-batch
 *   dpo data demo --out DIR [--train N --test N --seed S] generate the demo dataset
 * Exit codes: 0 ok, 1 the run failed, 2 bad usage or invalid config, 3 cannot reach Temporal,
 * 4 no such run.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { generateDemoDataset } from '../datagen/demoShapes.js';
import type { Client } from '@temporalio/client';
import YAML from 'yaml';
import { depsFromEnv, trainerPython } from '../activities/deps.js';
import { parseS3Uri } from '../activities/storage.js';
import { formatConfigProblems, parsePipelineConfig, pipelineConfigJsonSchema } from '../lib/config.js';
import type { PipelineStatus } from '../workflows/pipeline.js';
import { ConfigFileError, connectClient, describeFailure, followPipeline, loadConfigFile, startPipeline } from './runPipeline.js';
import { renderSummary, webUiUrl } from './summary.js';

const USAGE = `usage: dpo <run|status|list|cancel|resume|validate|config-json|schema|estimate|data> ...  (see the README)`;

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
    case 'cancel':
      return cancel(rest);
    case 'resume':
      return resume(rest);
    default:
      console.error(USAGE);
      return 2;
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
  const client = await connectClient().catch((err: Error) => {
    throw new UnreachableError(`cannot reach Temporal at ${process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233'}: ${err.message}\n  hint: start the local stack with \`npm run stack\``);
  });
  const handle = await startPipeline(client, raw, config, values['run-id']);
  console.log(`started run ${handle.workflowId}  (${webUiUrl(handle.workflowId)})`);
  if (values.detach) return 0;
  console.log('following progress; Ctrl-C detaches, the run goes on');
  process.once('SIGINT', () => {
    console.log(`\ndetached; the run goes on. Temporal UI: ${webUiUrl(handle.workflowId)}`);
    process.exit(0);
  });
  try {
    const result = await followPipeline(handle, (line) => console.log(line));
    console.log(renderSummary(result));
    return 0;
  } catch (err) {
    console.error(`run ${handle.workflowId} failed:\n  ${describeFailure(err)}`);
    return 1;
  } finally {
    await client.connection.close();
  }
}

async function withClient<T>(fn: (client: Client) => Promise<T>): Promise<T> {
  const client = await connectClient().catch((err: Error) => {
    throw new UnreachableError(`cannot reach Temporal at ${process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233'}: ${err.message}\n  hint: start the local stack with \`npm run stack\``);
  });
  try {
    return await fn(client);
  } finally {
    await client.connection.close();
  }
}

async function status(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean', default: false } } });
  const runId = requirePositional(positionals, 'run id');
  return withClient(async (client) => {
    const handle = client.workflow.getHandle(runId);
    const description = await handle.describe().catch(() => {
      throw new NotFoundError(`no run "${runId}" (see \`dpo list\`)`);
    });
    const state = await handle.query<PipelineStatus>('status').catch(() => null);
    if (!state) {
      // Queries are answered by a worker of the run's task queue.
      const message = `no worker polls task queue "${description.taskQueue}" to answer the status query; start one with \`npm run worker\``;
      if (values.json) console.log(JSON.stringify({ runId, status: description.status.name, error: message }, null, 2));
      else console.log(`run ${runId}: ${description.status.name}\n  (${message})`);
      return 0;
    }
    if (values.json) {
      console.log(JSON.stringify({ ...state, status: description.status.name }, null, 2));
      return 0;
    }
    console.log(`run ${runId}: ${description.status.name}  (${webUiUrl(runId)})`);
    for (const { id } of state.plan) {
      const s = state.stages[id]!;
      const seconds = s.startedAt ? `${(((s.finishedAt ?? Date.now()) - s.startedAt) / 1000).toFixed(0)}s` : '';
      const extra = [s.cached ? 'cached' : '', s.error ?? '', ...(s.replans ?? []).map((r) => `replan: ${r}`)].filter(Boolean).join('; ');
      console.log(`  ${id.padEnd(16)} ${s.kind.padEnd(9)} ${s.state.padEnd(8)} ${seconds.padStart(6)}  ${extra}`);
    }
    return 0;
  });
}

async function list(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { json: { type: 'boolean', default: false }, limit: { type: 'string', default: '20' } } });
  return withClient(async (client) => {
    const runs: Array<{ runId: string; status: string; started: string }> = [];
    for await (const w of client.workflow.list({ query: "WorkflowType = 'dpoPipeline'" })) {
      runs.push({ runId: w.workflowId, status: w.status.name, started: w.startTime.toISOString() });
      if (runs.length >= Number(values.limit)) break;
    }
    if (values.json) console.log(JSON.stringify(runs, null, 2));
    else for (const r of runs) console.log(`${r.started}  ${r.status.padEnd(10)}  ${r.runId}`);
    return 0;
  });
}

async function cancel(args: string[]): Promise<number> {
  const runId = requirePositional(args, 'run id');
  return withClient(async (client) => {
    await client.workflow
      .getHandle(runId)
      .cancel()
      .catch((err: Error) => {
        throw new NotFoundError(`cannot cancel "${runId}": ${err.message}`);
      });
    console.log(`cancellation requested for ${runId}; its trainer writes a checkpoint and stops`);
    return 0;
  });
}

async function resume(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { set: { type: 'string', multiple: true, default: [] }, detach: { type: 'boolean', default: false } },
  });
  const previous = requirePositional(positionals, 'run id');
  return withClient(async (client) => {
    const history = await client.workflow
      .getHandle(previous)
      .fetchHistory()
      .catch(() => {
        throw new NotFoundError(`no run "${previous}" to resume (see \`dpo list\`)`);
      });
    const started = history.events?.[0]?.workflowExecutionStartedEventAttributes;
    const payload = started?.input?.payloads?.[0]?.data;
    if (!payload) throw new NotFoundError(`run "${previous}" has no pipeline config in its history`);
    const raw = JSON.parse(Buffer.from(payload).toString('utf8')) as Record<string, unknown>;
    for (const assignment of values.set) applyOverride(raw, assignment);
    raw.resume_from_run = previous;
    const parsed = parsePipelineConfig(raw);
    if (!parsed.ok) throw new ConfigFileError(formatConfigProblems(parsed.problems));
    const handle = await startPipeline(client, raw, parsed.config);
    console.log(`resuming ${previous} as ${handle.workflowId}: finished data stages are reused, training continues from the newest checkpoint`);
    if (values.detach) return 0;
    try {
      console.log(renderSummary(await followPipeline(handle, (line) => console.log(line))));
      return 0;
    } catch (err) {
      console.error(`run ${handle.workflowId} failed:\n  ${describeFailure(err)}`);
      return 1;
    }
  });
}

/** `--set train.per_device_train_batch_size=1`: the value is parsed as YAML (numbers, booleans, lists). */
function applyOverride(raw: Record<string, unknown>, assignment: string): void {
  const eq = assignment.indexOf('=');
  if (eq <= 0) throw new ConfigFileError(`--set ${assignment}: expected path=value, e.g. train.beta=0.2`);
  const path = assignment.slice(0, eq).split('.');
  let node = raw;
  for (const key of path.slice(0, -1)) node = (node[key] ??= {}) as Record<string, unknown>;
  node[path.at(-1)!] = YAML.parse(assignment.slice(eq + 1));
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
  if (positionals[0] !== 'demo' || !values.out) {
    console.error('usage: dpo data demo --out DIR [--train N] [--test N] [--seed S]');
    return 2;
  }
  const files = await generateDemoDataset({
    outDir: values.out,
    trainRows: Number(values.train),
    testRows: Number(values.test),
    seed: Number(values.seed),
  });
  for (const [split, path] of Object.entries(files)) console.log(`${split}: ${path}`);
  return 0;
}

class UnreachableError extends Error {}
class NotFoundError extends Error {}

function requirePositional(args: string[], what: string): string {
  const value = args.find((a) => !a.startsWith('--'));
  if (!value) throw new ConfigFileError(`missing ${what}\n${USAGE}`);
  return value;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: Error) => {
    if (err instanceof ConfigFileError) {
      console.error(err.message);
      process.exit(2);
    }
    if (err instanceof UnreachableError) {
      console.error(err.message);
      process.exit(3);
    }
    if (err instanceof NotFoundError) {
      console.error(err.message);
      process.exit(4);
    }
    console.error(`dpo: ${err.stack ?? err.message}`);
    process.exit(1);
  },
);
