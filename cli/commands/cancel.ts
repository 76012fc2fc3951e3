/** `dpo cancel <runId>`: cancels a run; its trainer checkpoints first. */
import { describeRun, withClient } from '../client.js';
import { requirePositional, UsageError } from '../errors.js';

export async function cancelCommand(args: string[]): Promise<number> {
  const runId = requirePositional(args, 'run id');
  return withClient(async (client) => {
    const { handle, description } = await describeRun(client, runId);
    if (description.status.name !== 'RUNNING') throw new UsageError(`run "${runId}" is ${description.status.name.toLowerCase()}, not running`, `\`dpo resume ${runId}\` starts it again`);
    await handle.cancel();
    console.log(`cancellation requested for ${runId}; its trainer writes a checkpoint and stops`);
    return 0;
  });
}
