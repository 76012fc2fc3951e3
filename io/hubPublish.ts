/**
 * Pushes a folder (a pulled adapter with its model card) to a Hub model repository with
 * @huggingface/hub's commit API: the repository is created if missing (private unless asked
 * otherwise), then one commit adds every file (safetensors through LFS). The token is the
 * worker's HF_TOKEN and never leaves the worker's environment.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { commit, createRepo } from '@huggingface/hub';
import { FailureType, nonRetryable, retryable } from '../contracts/errors.js';

export interface PublishRequest {
  /** `Org/name` of the target model repository. */
  repo: string;
  private: boolean;
  /** Names the config field in errors, e.g. `stage "publish" params.repo`. */
  field: string;
  title: string;
}

export async function publishFolder(dir: string, files: string[], request: PublishRequest, env: NodeJS.ProcessEnv = process.env): Promise<{ commit: string; url: string }> {
  const accessToken = env.HF_TOKEN || undefined;
  const hubUrl = env.HF_ENDPOINT?.replace(/\/$/, '') || undefined;
  const where = `${request.field} "${request.repo}"`;
  if (!accessToken) throw nonRetryable(`${where}: HF_TOKEN is not set in the worker environment (publishing needs a token with write access)`, FailureType.InvalidConfig);
  const repo = { type: 'model' as const, name: request.repo };
  try {
    await createRepo({ repo, private: request.private, accessToken, hubUrl });
  } catch (err) {
    // 409: it exists already; a new commit on it is what publishing a rerun means.
    if ((err as { statusCode?: number }).statusCode !== 409) throw publishFailure(where, err);
  }
  const operations = await Promise.all(
    files.map(async (path) => ({ operation: 'addOrUpdate' as const, path, content: new Blob([await readFile(join(dir, ...path.split('/')))]) })),
  );
  try {
    const out = await commit({ repo, operations, title: request.title, accessToken, hubUrl, useXet: false });
    if (!out) throw retryable(`${where}: the Hub returned no commit`);
    return { commit: out.commit.oid, url: out.commit.url };
  } catch (err) {
    throw publishFailure(where, err);
  }
}

function publishFailure(where: string, err: unknown): Error {
  if ((err as { name?: string }).name === 'ApplicationFailure') return err as Error;
  const status = (err as { statusCode?: number }).statusCode;
  const detail = (err as Error).message.split('. URL:')[0];
  if (status === 401 || status === 403) return nonRetryable(`${where}: the Hub refused (${status}): the worker's HF_TOKEN cannot write there (${detail})`, FailureType.InvalidConfig);
  if (status === 400 || status === 404 || status === 422) return nonRetryable(`${where}: ${detail}`, FailureType.InvalidConfig);
  return retryable(`${where}: ${detail}`);
}
