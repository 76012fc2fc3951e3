/**
 * Pushes a folder (a pulled adapter with its model card) to a Hub model repository with
 * @huggingface/hub's commit API: the repository is created if missing (private unless asked
 * otherwise), then one commit adds every file (safetensors through LFS). The token is the
 * worker's HF_TOKEN and never leaves the worker's environment.
 *
 * Idempotent: when the repository's head already holds exactly these files (a retry whose first
 * attempt committed but lost the Hub's answer, or a rerun publishing the same adapter), that head
 * commit is the result and nothing new is committed.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { commit, createRepo, listCommits, listFiles } from '@huggingface/hub';
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
  let existed = false;
  try {
    await createRepo({ repo, private: request.private, accessToken, hubUrl });
  } catch (err) {
    // 409: it exists already; a new commit on it is what publishing a rerun means.
    if ((err as { statusCode?: number }).statusCode !== 409) throw publishFailure(where, err);
    existed = true;
  }
  const contents = await Promise.all(files.map(async (path) => ({ path, bytes: await readFile(join(dir, ...path.split('/'))) })));
  try {
    const head = existed ? await headHolding(repo, contents, { accessToken, hubUrl }) : null;
    if (head) return head;
  } catch (err) {
    throw publishFailure(where, err);
  }
  const operations = contents.map(({ path, bytes }) => ({ operation: 'addOrUpdate' as const, path, content: new Blob([bytes]) }));
  try {
    const out = await commit({ repo, operations, title: request.title, accessToken, hubUrl, useXet: false });
    if (!out) throw retryable(`${where}: the Hub returned no commit`);
    return { commit: out.commit.oid, url: out.commit.url };
  } catch (err) {
    throw publishFailure(where, err);
  }
}

/**
 * The head commit of `main` when it holds every file with the same content (by the Hub's ids:
 * the LFS sha256, or the git blob sha1 of a regular file), else null.
 */
async function headHolding(
  repo: { type: 'model'; name: string },
  contents: Array<{ path: string; bytes: Buffer }>,
  credentials: { accessToken: string; hubUrl: string | undefined },
): Promise<{ commit: string; url: string } | null> {
  const stored = new Map<string, { oid?: string; lfs?: { oid: string } }>();
  try {
    for await (const entry of listFiles({ repo, recursive: true, revision: 'main', ...credentials })) if (entry.type === 'file') stored.set(entry.path, entry);
  } catch (err) {
    // A repository without a commit has no main to list.
    if ((err as { statusCode?: number }).statusCode === 404) return null;
    throw err;
  }
  const same = contents.every(({ path, bytes }) => {
    const entry = stored.get(path);
    if (!entry) return false;
    if (entry.lfs) return entry.lfs.oid === createHash('sha256').update(bytes).digest('hex');
    return entry.oid === createHash('sha1').update(`blob ${bytes.length}\0`).update(bytes).digest('hex');
  });
  if (!same) return null;
  for await (const head of listCommits({ repo, revision: 'main', batchSize: 1, ...credentials })) {
    return { commit: head.oid, url: `${credentials.hubUrl ?? 'https://huggingface.co'}/${repo.name}/commit/${head.oid}` };
  }
  return null;
}

function publishFailure(where: string, err: unknown): Error {
  if ((err as { name?: string }).name === 'ApplicationFailure') return err as Error;
  const status = (err as { statusCode?: number }).statusCode;
  const detail = (err as Error).message.split('. URL:')[0];
  if (status === 401 || status === 403) return nonRetryable(`${where}: the Hub refused (${status}): the worker's HF_TOKEN cannot write there (${detail})`, FailureType.InvalidConfig);
  if (status === 400 || status === 404 || status === 422) return nonRetryable(`${where}: ${detail}`, FailureType.InvalidConfig);
  return retryable(`${where}: ${detail}`);
}
