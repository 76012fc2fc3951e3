/**
 * download: copies a dataset (Parquet files, or JSONL files with the image files they name) from
 * its source into content-addressed storage, one streamed file at a time. Which files make up
 * each split is resolved as `datasets` resolves it (io/dataFiles.ts: the README's `configs:`,
 * split keywords in names, else everything is `train`); only the splits that dataset.train_split
 * and dataset.eval_split read are copied. Files keep their source paths under `<stage prefix>files/`.
 * A retried download skips the files an earlier attempt already stored (same key, same size): the
 * key is content-addressed, so they are the same bytes.
 */
import { ApplicationFailure } from '@temporalio/activity';
import { FailureType } from '../../contracts/errors.js';
import { keys } from '../../contracts/keys.js';
import type { DownloadInput, StageResult } from '../../contracts/payloads.js';
import { splitsOf } from '../../contracts/splitSpec.js';
import { DataFilesError, resolveDataFiles } from '../../io/dataFiles.js';
import { IMAGE_FILE, openDatasetSource, type DatasetSource, type SourceFile } from '../../io/datasetSources.js';
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
  /** The dataset config the splits were resolved with (`default` without a README configs: list). */
  config?: string;
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
  const resolved = await resolveSplits(dataset, source, listing);
  const byPath = new Map(listing.map((f) => [f.path, f]));
  const selected = resolved.needed.flatMap((split) =>
    resolved.splits[split]!.filter((path) => fileFormatOf(path)).map((path) => ({ split, file: byPath.get(path)!, format: fileFormatOf(path)! })),
  );
  // JSONL rows name image files: those come along; Parquet datasets carry their images inside.
  const images = selected.some((s) => s.format === 'jsonl') ? listing.filter((f) => IMAGE_FILE.test(f.path)) : [];
  // The hash covers the source's content fingerprints: a grown dataset is a new download.
  const hash = stageHash('download', { source: dataset.source, revision: source.revision, config: resolved.config, files: selected, images });
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
    config: resolved.config,
    ...(source.revision && { revision: source.revision }),
    filesPrefix,
    files,
    imageFiles: images.length,
    summary: { files: files.length, image_files: images.length, bytes, ...(source.revision && { revision: source.revision }) },
  });
}

/**
 * The splits the two specs read, each with its data files (Parquet or JSONL). A split the dataset
 * lacks is the config's to fix: the error names the field, and for the eval split says how to
 * hold out part of train instead.
 */
async function resolveSplits(dataset: DownloadInput['dataset'], source: DatasetSource, listing: SourceFile[]) {
  const text = async (name: string) => {
    const file = listing.find((f) => f.path === name);
    return file ? source.readText(file) : undefined;
  };
  let resolved;
  try {
    resolved = resolveDataFiles({
      files: listing.map((f) => f.path),
      readme: await text('README.md'),
      standaloneYaml: await text('.huggingface.yaml'),
      ...(dataset.config !== undefined && { config: dataset.config }),
    });
  } catch (err) {
    if (!(err instanceof DataFilesError)) throw err;
    const field = err.culprit === 'config' ? 'dataset.config' : 'dataset.source';
    throw ApplicationFailure.nonRetryable(
      `${field}: ${err.message} (dataset.source "${dataset.source}")`,
      err.culprit === 'config' ? FailureType.InvalidConfig : FailureType.InvalidDataset,
    );
  }
  const available = Object.entries(resolved.splits)
    .filter(([, files]) => files.some((f) => fileFormatOf(f)))
    .map(([split]) => split);
  const needed: string[] = [];
  for (const [field, spec] of [['train_split', dataset.train_split], ['eval_split', dataset.eval_split]] as const) {
    for (const split of splitsOf(spec)) {
      if (!available.includes(split)) {
        const hint =
          field === 'eval_split' && available.includes('train')
            ? `; to hold out part of train, slice it: train_split: "train[:95%]", eval_split: "train[95%:]"`
            : '';
        throw ApplicationFailure.nonRetryable(
          `dataset.${field} "${spec}": dataset.source "${dataset.source}" (config "${resolved.config}") has no Parquet or JSONL files for split "${split}" ` +
            `(its splits: ${available.join(', ') || 'none'}; files: ${listing.map((f) => f.path).join(', ') || 'none'})${hint}`,
          FailureType.InvalidConfig,
        );
      }
      if (!needed.includes(split)) needed.push(split);
    }
  }
  return { config: resolved.config, splits: resolved.splits, needed };
}
