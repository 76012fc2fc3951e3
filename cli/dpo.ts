#!/usr/bin/env -S npx tsx
/**
 * The `dpo` command (run with `npm run dpo -- <command>`):
 *   dpo run <config.yaml|json> [--run-id ID] [--detach]   start dpoPipeline and follow it (Ctrl-C detaches)
 *   dpo status <runId> [--json]                           stages, training progress, replans, lineage
 *   dpo list [--model M --dataset D --status S --schedule ID --limit N] [--json]   recent runs
 *   dpo logs <runId> [--json]                             stage events and trainer progress from the history
 *   dpo cancel <runId>                                    cancel a run (the trainer checkpoints first)
 *   dpo resume <runId> [--set key=value ...] [--detach]   a new run reusing finished stages and checkpoints
 *   dpo pull <runId> [--stage ID] [--what adapter|report] --to DIR   a finished run's adapter (with its model card) or report
 *   dpo schedule create|list|describe|pause|unpause|trigger|backfill|delete ...   recurring fine-tunes
 *   dpo stack up|down                                     the local Temporal dev server and MinIO
 *   dpo validate <config>                                 check a config, listing every problem
 *   dpo config-json <config>                              print the workflow input (for `temporal workflow start --input @file`)
 *   dpo schema                                            print the config's JSON Schema
 *   dpo estimate <config> [--gpu-memory 80GB] [--json]    GPU memory estimate and a starting micro-batch
 *   dpo data demo --out DIR [--train N --test N --seed S] generate the demo dataset
 *   dpo tensorboard <runId...> [--port N] [--pull-only]   pull runs' TensorBoard event files and start TensorBoard
 * Exit codes: 0 ok, 1 the run failed, 2 bad usage or invalid config, 3 cannot reach Temporal,
 * 4 no such run or schedule.
 */
import { cancelCommand } from './commands/cancel.js';
import { configJsonCommand, schemaCommand, validateCommand } from './commands/config.js';
import { dataCommand } from './commands/data.js';
import { estimateCommand } from './commands/estimate.js';
import { listCommand } from './commands/list.js';
import { logsCommand } from './commands/logs.js';
import { pullCommand } from './commands/pull.js';
import { resumeCommand } from './commands/resume.js';
import { runCommand } from './commands/run.js';
import { scheduleCommand } from './commands/schedule.js';
import { stackCommand } from './commands/stack.js';
import { statusCommand } from './commands/status.js';
import { tensorboardCommand } from './commands/tensorboard.js';
import { CliError, exitCodeOf, USAGE, UsageError } from './errors.js';

/** One entry per subcommand, each in cli/commands/. */
const COMMANDS: Record<string, (args: string[]) => Promise<number>> = {
  run: runCommand,
  status: statusCommand,
  list: listCommand,
  logs: logsCommand,
  cancel: cancelCommand,
  resume: resumeCommand,
  pull: pullCommand,
  schedule: scheduleCommand,
  stack: stackCommand,
  validate: validateCommand,
  'config-json': configJsonCommand,
  schema: schemaCommand,
  estimate: estimateCommand,
  data: dataCommand,
  tensorboard: tensorboardCommand,
};

async function main([command, ...rest]: string[]): Promise<number> {
  const handler = command ? COMMANDS[command] : undefined;
  if (!handler) throw new UsageError(command ? `unknown command "${command}"` : 'no command', USAGE);
  return handler(rest);
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
