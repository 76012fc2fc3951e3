/** How the `dpo` command fails: each class picks an exit code, and errors print a hint. */
import { ConfigFileError } from './runPipeline.js';
import { ScheduleMissingError } from './schedules.js';

export const USAGE = `usage: dpo <run|status|list|logs|cancel|resume|pull|schedule|stack|validate|config-json|schema|estimate|data|tensorboard> ...  (see docs/cli.md)`;

/** Errors print as one line plus a hint; the class picks the exit code. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}
/** Exit 2: bad usage. */
export class UsageError extends CliError {}
/** Exit 3: Temporal cannot be reached. */
export class UnreachableError extends CliError {}
/** Exit 4: no such run or schedule. */
export class NotFoundError extends CliError {}

export function requirePositional(args: string[], what: string): string {
  const value = args.find((a) => !a.startsWith('--'));
  if (!value) throw new UsageError(`missing ${what}`, USAGE);
  return value;
}

export function exitCodeOf(err: unknown): number {
  if (err instanceof ConfigFileError || err instanceof UsageError) return 2;
  if (err instanceof TypeError && (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) return 2;
  if (err instanceof UnreachableError) return 3;
  if (err instanceof NotFoundError || err instanceof ScheduleMissingError) return 4;
  return 1;
}
