/** `dpo schedule create|list|describe|pause|unpause|trigger|backfill|delete`: recurring fine-tunes as Temporal Schedules. */
import { parseArgs } from 'node:util';
import { withClient } from '../client.js';
import { requirePositional, UsageError } from '../errors.js';
import { applyOverride } from '../overrides.js';
import { checkConfig, loadConfigFile } from '../runPipeline.js';
import { createSchedule, describeSchedule, listSchedules, overlapPolicy, withSchedule, type ScheduleSummary } from '../schedules.js';

const SCHEDULE_USAGE =
  'usage: dpo schedule create <config> (--cron "0 3 * * *" | --every 1d) [--id ID] [--overlap skip] [--paused] [--set k=v]\n' +
  '       dpo schedule list|describe <id> [--json] | pause|unpause <id> [--note TEXT] | trigger <id> | backfill <id> --from ISO --to ISO | delete <id>';

export async function scheduleCommand(args: string[]): Promise<number> {
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
