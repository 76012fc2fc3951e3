/**
 * download: copies a dataset (Parquet files, or JSONL files with the image files they name) from
 * its source into content-addressed storage, one streamed file at a time. Files keep their source
 * paths under `<stage prefix>files/`. A retried download skips the files an earlier attempt
 * already stored (same key, same size): the key is content-addressed, so they are the same bytes.
 */
import { ApplicationFailure } from '@temporalio/activity';
import { FailureType } from '../../contracts/errors.js';
import { keys } from '../../contracts/keys.js';
import type { DownloadInput, StageResult } from '../../contracts/payloads.js';
import { fileBelongsToSplit, IMAGE_FILE, openDatasetSource, type SourceFile } from '../../io/datasetSources.js';
import type { ActivityDeps } from '../../io/deps.js';
import { progress } from '../heartbeat.js';
import { fileFormatOf, type FileFormat } from '../../io/sourceRows.js';
import { findCachedStage, stageHash, writeStageManifest, type StageManifestBase } from '../../io/stageCache.js';

export interface DownloadedFile {
  split: string;
  key: string;
  sourcePath: string;
  size: number;
  format: FileFormat;
}

export interface DownloadManifest extends StageManifestBase {
  source: string;
  /** The Hub commit sha the files came from (hf:// sources). */
  revision?: string;
  /** Every downloaded file is at filesPrefix + its source path. */
  filesPrefix: string;
  files: DownloadedFile[];
  /** Image files copied for JSONL rows. */
  imageFiles: number;
}

export async function downloadDataset(deps: ActivityDeps, input: DownloadInput): Promise<StageResult> {
  const { dataset, bucket } = input;
  const source = await openDatasetSource(dataset.source, deps.storage);
  const listing = (await source.listFiles()).filter((f) => f.path.split('/').every((s) => s && s !== '..' && s !== '.'));
  const dataFiles = listing.filter((f) => fileFormatOf(f.path));
  const splits = [dataset.train_split, dataset.eval_split];
  const selected = splits.flatMap((split) =>
    dataFiles.filter((f) => fileBelongsToSplit(f.path, split)).map((f) => ({ split, file: f, format: fileFormatOf(f.path)! })),
  );
  for (const split of splits) {
    if (!selected.some((s) => s.split === split)) {
      throw ApplicationFailure.nonRetryable(
        `dataset.source "${dataset.source}" has no Parquet or JSONL files for split "${split}" ` +
          `(found: ${dataFiles.map((f) => f.path).join(', ') || 'no Parquet or JSONL files'})`,
        FailureType.InvalidDataset,
      );
    }
  }
  // JSONL rows name image files: those come along; Parquet datasets carry their images inside.
  const images = selected.some((s) => s.format === 'jsonl') ? listing.filter((f) => IMAGE_FILE.test(f.path)) : [];
  // The hash covers the source's content fingerprints: a grown dataset is a new download.
  const hash = stageHash('download', { source: dataset.source, revision: source.revision, files: selected, images });
  const cached = await findCachedStage(deps.storage, bucket, 'download', hash);
  if (cached) return cached;

  const filesPrefix = `${keys.stagePrefix('download', hash)}files/`;
  const copy = async (file: SourceFile) => {
    const key = filesPrefix + file.path;
    const stored = await deps.storage.stat(bucket, key);
    if (stored?.size !== file.size) await source.copyTo(file, bucket, key);
    return key;
  };
  const files: DownloadedFile[] = [];
  const copied = new Map<string, string>();
  for (const [i, { split, file, format }] of selected.entries()) {
    const key = copied.get(file.path) ?? (await copy(file));
    copied.set(file.path, key);
    files.push({ split, key, sourcePath: file.path, size: file.size, format });
    progress({ files: i + 1, of: selected.length });
  }
  for (const [i, file] of images.entries()) {
    await copy(file);
    if (i % 64 === 0) progress({ images: i + 1, of: images.length });
  }
  const bytes = files.reduce((n, f) => n + f.size, 0) + images.reduce((n, f) => n + f.size, 0);
  return writeStageManifest<DownloadManifest>(deps.storage, bucket, 'download', hash, {
    source: dataset.source,
    ...(source.revision && { revision: source.revision }),
    filesPrefix,
    files,
    imageFiles: images.length,
    summary: { files: files.length, image_files: images.length, bytes, ...(source.revision && { revision: source.revision }) },
  });
}
