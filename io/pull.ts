/**
 * Copies a run's final adapter or report out of storage into a local folder, verifying every
 * file its manifest lists. A pulled adapter gets the run's model card (with its evaluation, when
 * the report wrote one) as README.md, so the folder is what publishing pushes.
 */
import { mkdir, readdir, readFile, rename, rm, rmdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { MANIFEST_FILE } from '../contracts/keys.js';
import { sha256Hex } from './files.js';
import type { Storage } from './storage.js';

interface Manifest {
  files: Array<{ path?: string; key?: string; sha256?: string }>;
}

/** `adapterPrefix` is `.../final/adapter/`; its manifest (the trainer's) is one level up. */
export async function pullAdapter(storage: Storage, bucket: string, adapterPrefix: string, to: string, card?: { bucket: string; key: string }): Promise<string[]> {
  const finalPrefix = adapterPrefix.replace(/adapter\/$/, '');
  const manifest = await storage.getJson<Manifest>(bucket, `${finalPrefix}${MANIFEST_FILE}`);
  const tmp = `${to}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  const files: string[] = [];
  for (const entry of manifest.files) {
    if (!entry.path?.startsWith('adapter/') || entry.path.split('/').includes('..')) continue;
    const rel = entry.path.slice('adapter/'.length);
    const path = join(tmp, ...rel.split('/'));
    await storage.downloadFile(bucket, finalPrefix + entry.path, path);
    if (entry.sha256 && sha256Hex(await readFile(path)) !== entry.sha256) {
      await rm(tmp, { recursive: true, force: true });
      throw new Error(`s3://${bucket}/${finalPrefix}${entry.path} does not match its manifest's sha256`);
    }
    files.push(rel);
  }
  if (!files.includes('adapter_config.json')) throw new Error(`s3://${bucket}/${adapterPrefix} holds no PEFT adapter (adapter_config.json)`);
  if (card && (await storage.exists(card.bucket, card.key))) {
    await writeFile(join(tmp, 'README.md'), await storage.getBuffer(card.bucket, card.key));
    if (!files.includes('README.md')) files.push('README.md');
  }
  await moveInto(tmp, to);
  return files.sort();
}

/** The files a report's manifest lists (Markdown, HTML, JSON, charts, model cards), under their names in the report folder. */
export async function pullReport(storage: Storage, bucket: string, manifestKey: string, to: string): Promise<string[]> {
  const prefix = manifestKey.slice(0, -MANIFEST_FILE.length);
  const manifest = await storage.getJson<Manifest>(bucket, manifestKey);
  const tmp = `${to}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  const files: string[] = [];
  for (const { key } of manifest.files) {
    if (!key?.startsWith(prefix)) continue;
    const rel = key.slice(prefix.length);
    if (rel.split('/').includes('..')) continue;
    await storage.downloadFile(bucket, key, join(tmp, ...rel.split('/')));
    files.push(rel);
  }
  await moveInto(tmp, to);
  return files.sort();
}

/** Into `to` whole: an interrupted pull leaves no half folder there. An existing folder must be empty (nothing of the user's is replaced). */
async function moveInto(tmp: string, to: string): Promise<void> {
  await mkdir(dirname(to), { recursive: true });
  const existing = await readdir(to).catch(() => null);
  if (existing?.length) {
    await rm(tmp, { recursive: true, force: true });
    throw new PullTargetError(`${to} is not empty; pull into a new or empty folder`);
  }
  if (existing) await rmdir(to);
  await mkdir(tmp, { recursive: true });
  await rename(tmp, to);
}

export class PullTargetError extends Error {}
