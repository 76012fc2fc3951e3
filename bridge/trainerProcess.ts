/**
 * Runs a `dpo_trainer` command as a child process and relays its JSON-line events, each
 * validated against schemas/trainer-events.schema.json (the schema the Python side also uses).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { REPO_ROOT } from '../io/deps.js';
import { FailureType, nonRetryable } from '../contracts/errors.js';

/** Exit statuses of the trainer, from its generated contract (contracts/trainerExit.ts). */
export { TrainerExit } from '../contracts/trainerExit.js';

export interface TrainerEvent {
  event: string;
  time: number;
  [key: string]: unknown;
}

export interface TrainerOutcome {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** The last `error` event, if any: it says what went wrong in the trainer's words. */
  error?: TrainerEvent;
  stderrTail: string;
}

type Validator = ((e: unknown) => boolean) & { errors?: unknown };
let validators: { all: Validator; byEvent: (name: string) => Validator | undefined } | undefined;

/** One validator for the whole schema, plus one per event type for precise error messages. */
function eventValidators() {
  if (!validators) {
    const schema = JSON.parse(readFileSync(resolve(REPO_ROOT, 'schemas/trainer-events.schema.json'), 'utf8'));
    const ajv = new Ajv2020({ allErrors: true, strict: false });
    const all = ajv.compile(schema) as Validator;
    const id = schema.$id as string;
    validators = {
      all,
      byEvent: (name) => (schema.$defs?.[name] ? (ajv.getSchema(`${id}#/$defs/${name}`) as Validator | undefined) : undefined),
    };
  }
  return validators;
}

export function parseTrainerEvent(line: string): TrainerEvent | null {
  if (!line.startsWith('{')) return null;
  const event = JSON.parse(line) as TrainerEvent;
  const { all, byEvent } = eventValidators();
  if (!all(event)) {
    const specific = byEvent(String(event.event));
    const errors = specific && !specific(event) ? specific.errors : all.errors;
    // Version skew between the worker and the trainer: no retry can fix it.
    throw nonRetryable(
      `trainer emitted an event that breaks schemas/trainer-events.schema.json: ${line.slice(0, 300)} ` +
        `(${JSON.stringify(errors).slice(0, 600)})`,
      FailureType.TrainerProtocolError,
    );
  }
  return event;
}

export interface RunTrainerOptions {
  pythonBin: string;
  module: 'dpo_trainer.train' | 'dpo_trainer.evaluate' | 'dpo_trainer.reference' | 'dpo_trainer.score_prompts' | 'dpo_trainer.export';
  configPath: string;
  onEvent: (event: TrainerEvent) => void;
  /**
   * Aborting sends SIGTERM (the trainer checkpoints and exits), then SIGKILL after `killAfterMs`;
   * aborting with the reason `'kill'` sends SIGKILL at once (nothing it writes could be used).
   */
  signal?: AbortSignal;
  killAfterMs?: number;
  extraEnv?: Record<string, string>;
  onSpawn?: (pid: number) => void;
}

/** Environment for the trainer: the worker's, minus storage secrets it never needs. */
export function trainerEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, PYTHONUNBUFFERED: '1', ...extra };
  for (const name of Object.keys(env)) if (/^(DPO_S3_|AWS_|MINIO_)/.test(name)) delete env[name];
  return env;
}

const running = new Set<ChildProcess>();

/**
 * Preemption of the whole host (the GPU worker got SIGTERM): every trainer checkpoints now,
 * instead of after the worker's drain. The activities then report `Preempted` and Temporal
 * retries them elsewhere, resuming from those checkpoints.
 */
export function preemptRunningTrainers(): number {
  for (const child of running) child.kill('SIGTERM');
  return running.size;
}

export function runTrainer(opts: RunTrainerOptions): Promise<TrainerOutcome> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(opts.pythonBin, ['-m', opts.module, '--config', opts.configPath], {
      cwd: REPO_ROOT,
      env: trainerEnv(opts.extraEnv),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    if (child.pid) opts.onSpawn?.(child.pid);
    let error: TrainerEvent | undefined;
    let stderrTail = '';
    let protocolError: Error | undefined;
    let killTimer: NodeJS.Timeout | undefined;

    running.add(child);
    // Diagnostics (fault tests, bench/): every event of every trainer, one JSON line each.
    const eventsFile = process.env.DPO_TRAINER_EVENTS_FILE;
    const onAbort = () => {
      if (opts.signal?.reason === 'kill') {
        child.kill('SIGKILL');
        return;
      }
      child.kill('SIGTERM');
      killTimer = setTimeout(() => child.kill('SIGKILL'), opts.killAfterMs ?? 60_000);
    };
    if (opts.signal?.aborted) onAbort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });

    createInterface({ input: child.stdout }).on('line', (line) => {
      try {
        const event = parseTrainerEvent(line.trim());
        if (!event) return;
        if (event.event === 'error') error = event;
        if (eventsFile) appendFileSync(eventsFile, `${JSON.stringify({ pid: child.pid, ...event })}\n`);
        opts.onEvent(event);
      } catch (err) {
        protocolError ??= err as Error;
        child.kill('SIGKILL');
      }
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderrTail = (stderrTail + chunk.toString()).slice(-4000);
      if (process.env.DPO_TRAINER_LOG === '1') process.stderr.write(chunk);
    });
    child.on('error', reject);
    child.on('exit', () => running.delete(child));
    child.on('close', (exitCode, signal) => {
      running.delete(child);
      clearTimeout(killTimer);
      opts.signal?.removeEventListener('abort', onAbort);
      if (protocolError) reject(protocolError);
      else resolvePromise({ exitCode, signal, error, stderrTail });
    });
  });
}
