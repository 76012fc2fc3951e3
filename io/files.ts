/** Local files: listing a folder and hashing bytes, the one implementation every module uses. */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';

/**
 * Every regular file below `dir`, as sorted '/'-separated paths relative to it; [] when `dir` does
 * not exist. `skip` drops files by name (the staging caches' own `.dpo-*` markers, for example).
 */
export async function listFilesRecursive(dir: string, skip: (name: string) => boolean = () => false): Promise<string[]> {
  const out: string[] = [];
  async function walk(d: string) {
    for (const entry of await readdir(d, { withFileTypes: true })) {
      const p = join(d, entry.name);
      if (entry.isDirectory()) await walk(p);
      else if (entry.isFile() && !skip(entry.name)) out.push(relative(dir, p).split(sep).join('/'));
    }
  }
  if ((await stat(dir).catch(() => null))?.isDirectory()) await walk(dir);
  return out.sort();
}

export const sha256Hex = (bytes: Uint8Array | string): string => createHash('sha256').update(bytes).digest('hex');

/** sha256 of a file, streamed (model shards are gigabytes). */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}
