/** download: copies a Parquet dataset from its source into content-addressed storage. */
import { heartbeat } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/activity';
import { FailureType } from '../lib/errors.js';
import type { DownloadInput, StageResult } from '../lib/stages.js';
import { fileBelongsToSplit, openDatasetSource } from './datasetSources.js';
import type { ActivityDeps } from './deps.js';
import { runCachedStage, stageHash, type StageManifestBase } from './stageCache.js';

export interface DownloadedFile {
  split: string;
  key: string;
  sourcePath: string;
  size: number;
}

export interface DownloadManifest extends StageManifestBase {
  source: string;
  files: DownloadedFile[];
}

export async function downloadDataset(deps: ActivityDeps, input: DownloadInput): Promise<StageResult> {
  const { dataset, bucket } = input;
  const source = openDatasetSource(dataset.source, deps.storage);
  const listing = await source.listParquet();
  const splits = [dataset.train_split, dataset.eval_split];
  const selected = splits.flatMap((split) =>
    listing.filter((f) => fileBelongsToSplit(f.path, split)).map((f) => ({ split, file: f })),
  );
  for (const split of splits) {
    if (!selected.some((s) => s.split === split)) {
      throw ApplicationFailure.nonRetryable(
        `dataset.source "${dataset.source}" has no Parquet files for split "${split}" ` +
          `(found: ${listing.map((f) => f.path).join(', ') || 'no Parquet files'})`,
        FailureType.InvalidDataset,
      );
    }
  }
  // The hash covers the source's content fingerprints: a grown dataset is a new download.
  const hash = stageHash('download', { source: dataset.source, files: selected });
  return runCachedStage<DownloadManifest>(deps.storage, bucket, 'download', hash, async (prefix) => {
    const files: DownloadedFile[] = [];
    for (const [i, { split, file }] of selected.entries()) {
      const key = `${prefix}${split}/${String(i).padStart(5, '0')}.parquet`;
      await source.copyTo(file, bucket, key);
      files.push({ split, key, sourcePath: file.path, size: file.size });
      heartbeat({ files: i + 1, of: selected.length });
    }
    const bytes = files.reduce((n, f) => n + f.size, 0);
    return { source: dataset.source, files, summary: { files: files.length, bytes } };
  });
}
