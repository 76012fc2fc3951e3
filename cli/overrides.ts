/** `--set path=value` on `dpo resume` and `dpo schedule create`. */
import YAML from 'yaml';
import { UsageError } from './errors.js';

/** `--set train.per_device_train_batch_size=1`: the value is parsed as YAML (numbers, booleans, lists). */
export function applyOverride(raw: Record<string, unknown>, assignment: string): void {
  const eq = assignment.indexOf('=');
  if (eq <= 0) throw new UsageError(`--set ${assignment}: expected path=value`, 'e.g. --set train.beta=0.2');
  const path = assignment.slice(0, eq).split('.');
  let node = raw;
  for (const key of path.slice(0, -1)) node = (node[key] ??= {}) as Record<string, unknown>;
  node[path.at(-1)!] = YAML.parse(assignment.slice(eq + 1));
}
