/** The Temporal client a command runs with, and the run it names. */
import type { Client } from '@temporalio/client';
import { connectClient } from './runPipeline.js';
import { NotFoundError, UnreachableError } from './errors.js';

export async function withClient<T>(fn: (client: Client) => Promise<T>): Promise<T> {
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

export async function describeRun(client: Client, runId: string) {
  const handle = client.workflow.getHandle(runId);
  const description = await handle.describe().catch(() => {
    throw new NotFoundError(`no run "${runId}"`, 'see `dpo list`');
  });
  return { handle, description };
}
