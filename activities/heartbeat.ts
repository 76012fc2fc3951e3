/**
 * Heartbeats. `progress` also works from code that runs outside an activity (benchmarks, direct
 * calls in tests): inside an activity it heartbeats, elsewhere it does nothing. `withHeartbeat`
 * keeps heartbeating on a timer while a long step runs (staging a model, an ONNX export, loading
 * weights) that would otherwise outlast the heartbeat timeout on its own.
 */
import { activityInfo, asyncLocalStorage, heartbeat } from '@temporalio/activity';

const HEARTBEAT_EVERY_MS = 5_000;

export function progress(details: unknown): void {
  if (asyncLocalStorage.getStore() !== undefined) heartbeat(details);
}

/**
 * Heartbeats `details` (read again at every tick, so callers may update it in place) every 5 s,
 * or four times per heartbeat timeout when that is shorter, until the returned function is called.
 */
export function startHeartbeatTicker(details: object): () => void {
  const timeoutMs = asyncLocalStorage.getStore() !== undefined ? activityInfo().heartbeatTimeoutMs : undefined;
  const every = Math.min(HEARTBEAT_EVERY_MS, (timeoutMs ?? 4 * HEARTBEAT_EVERY_MS) / 4);
  const ticker = setInterval(() => progress(details), every);
  return () => clearInterval(ticker);
}

/** `body` with a heartbeat ticker around it (see startHeartbeatTicker). */
export async function withHeartbeat<T>(details: object, body: () => Promise<T>): Promise<T> {
  const stop = startHeartbeatTicker(details);
  try {
    return await body();
  } finally {
    stop();
  }
}
