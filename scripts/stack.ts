/** `npm run stack` / `npm run stack:stop`: the local Temporal dev server and MinIO. */
import { stackDown, stackUp, STATE_DIR, temporalUiUrl } from './localStack.js';

const command = process.argv[2] ?? 'up';
const log = (line: string) => console.log(`stack: ${line}`);
if (command === 'up') {
  await stackUp(log);
  log(`ready. Temporal at ${process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233'} (Web UI ${temporalUiUrl()}), MinIO at ${process.env.DPO_S3_ENDPOINT ?? 'http://127.0.0.1:9000'}; state in ${STATE_DIR}`);
} else if (command === 'down') {
  const stopped = await stackDown(log);
  if (!stopped.length) log('nothing to stop (services not started by this stack are left alone)');
} else {
  console.error(`stack: unknown command "${command}" (expected up or down)`);
  process.exit(2);
}
