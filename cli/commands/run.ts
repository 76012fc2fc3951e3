/** `dpo run <config> [--run-id ID] [--detach]`: starts dpoPipeline and follows it. */
import { parseArgs } from 'node:util';
import { withClient } from '../client.js';
import { requirePositional } from '../errors.js';
import { describeFailure, failureHint, followPipeline, loadConfigFile, startPipeline } from '../runPipeline.js';
import { renderSummary, webUiUrl } from '../summary.js';

export async function runCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { 'run-id': { type: 'string' }, detach: { type: 'boolean', default: false } },
  });
  const { raw, config } = await loadConfigFile(requirePositional(positionals, 'config file'));
  return withClient(async (client) => {
    const handle = await startPipeline(client, raw, config, values['run-id']);
    console.log(`started run ${handle.workflowId}  (${webUiUrl(handle.workflowId)})`);
    if (values.detach) return 0;
    return follow(handle);
  });
}

/** Follows a run until it ends; Ctrl-C detaches and leaves the run going. */
export async function follow(handle: Awaited<ReturnType<typeof startPipeline>>): Promise<number> {
  console.log('following progress; Ctrl-C detaches, the run goes on');
  process.once('SIGINT', () => {
    console.log(`\ndetached; the run goes on. \`dpo status ${handle.workflowId}\`, Temporal UI: ${webUiUrl(handle.workflowId)}`);
    process.exit(0);
  });
  try {
    const result = await followPipeline(handle, (line) => console.log(line));
    console.log(renderSummary(result));
    return 0;
  } catch (err) {
    console.error(`run ${handle.workflowId} failed: ${describeFailure(err)}`);
    console.error(`  hint: ${failureHint(handle.workflowId, err)}`);
    return 1;
  }
}
