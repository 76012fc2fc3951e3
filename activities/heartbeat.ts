/**
 * Heartbeats from code that also runs outside an activity (benchmarks, direct calls in tests):
 * inside an activity it heartbeats, elsewhere it does nothing.
 */
import { asyncLocalStorage, heartbeat } from '@temporalio/activity';

export function progress(details: unknown): void {
  if (asyncLocalStorage.getStore() !== undefined) heartbeat(details);
}
