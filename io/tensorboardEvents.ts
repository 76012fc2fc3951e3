/**
 * TensorBoard event files between a trainer's local run directory and a train stage's storage
 * folder (runs/<runId>/<stageId>/tensorboard/). Every trainer process writes its own event file
 * (SummaryWriter names it by time, host and pid) and opens it with a purge step, so the files of
 * all attempts sit side by side and TensorBoard itself hides what a resumed attempt redid.
 * Nothing is ever overwritten but a file by its own longer self.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { keys } from '../contracts/keys.js';
import { listFilesRecursive } from './files.js';
import type { Storage } from './storage.js';

const isEventFile = (rel: string) => rel.split('/').at(-1)!.startsWith('events.out.tfevents.');

/**
 * Uploads the files of one local tracker folder that grew since the previous call: TensorBoard's
 * event files by default, or every file `keep` accepts (a W&B offline run folder).
 */
export class EventFileUploader {
  private readonly uploaded = new Map<string, number>();

  constructor(
    private readonly storage: Storage,
    private readonly bucket: string,
    private readonly dir: string,
    private readonly prefix: string,
    private readonly keep: (relativePath: string) => boolean = isEventFile,
  ) {}

  /** The number of files uploaded; none when the trainer has written nothing (yet). */
  async upload(): Promise<number> {
    let files: string[];
    try {
      files = (await listFilesRecursive(this.dir)).filter(this.keep);
    } catch {
      return 0; // no run directory: report_to has no tensorboard, or nothing written yet
    }
    let count = 0;
    for (const rel of files) {
      const path = join(this.dir, ...rel.split('/'));
      const size = (await stat(path)).size;
      if (this.uploaded.get(rel) === size) continue;
      await this.storage.putFile(this.bucket, this.prefix + rel, path);
      this.uploaded.set(rel, size);
      count++;
    }
    return count;
  }
}

/**
 * Downloads the TensorBoard run directories of a run's train stages into `<dir>/<runId>/<stageId>/`
 * (TensorBoard names each run by that path). Returns the stage ids found.
 */
export async function pullRunEvents(storage: Storage, bucket: string, runId: string, dir: string): Promise<string[]> {
  const prefix = keys.runPrefix(runId);
  const objects = await storage.list(bucket, prefix);
  const stages = new Set<string>();
  for (const { key } of objects) {
    const [stageId, folder, ...rest] = key.slice(prefix.length).split('/');
    if (folder !== 'tensorboard' || !stageId || !rest.length || rest.some((p) => p === '..' || p === '')) continue;
    stages.add(stageId);
    await storage.downloadFile(bucket, key, join(dir, runId, stageId, ...rest));
  }
  return [...stages].sort();
}
