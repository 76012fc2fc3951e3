/**
 * The publish stage: the final adapter and its model card (the report's, with the evaluation,
 * when the stage needs a report) pushed to a Hub model repository.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { ActivityDeps } from '../../io/deps.js';
import { publishFolder } from '../../io/hubPublish.js';
import { pullAdapter } from '../../io/pull.js';

export interface PublishInput {
  runId: string;
  stageId: string;
  adapter: { bucket: string; prefix: string };
  /** The model card to publish as README.md (the report's copy); else the adapter's own. */
  card?: { bucket: string; key: string };
  repo: string;
  private: boolean;
}

export interface PublishResult {
  repo: string;
  commit: string;
  url: string;
  files: string[];
}

export async function publishAdapter(deps: ActivityDeps, input: PublishInput): Promise<PublishResult> {
  const scratch = await mkdtemp(join(deps.workDir, 'publish-'));
  try {
    const dir = join(scratch, 'adapter');
    const files = await pullAdapter(deps.storage, input.adapter.bucket, input.adapter.prefix, dir, input.card);
    const out = await publishFolder(dir, files, {
      repo: input.repo,
      private: input.private,
      field: `stage "${input.stageId}" params.repo`,
      title: `DPO adapter from run ${input.runId}`,
    });
    return { repo: input.repo, ...out, files };
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}
