/**
 * The format stage on bad and awkward input, through real workers (fanned-out chunks), MinIO and
 * Temporal: every bad row is dropped and counted by reason, awkward images come out upright sRGB
 * JPEG thumbnails, duplicates go (also across chunks), too many drops fail the stage clearly,
 * a missing column is an InvalidDataset error naming it, and the worker survives all of it.
 */
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { FormatManifest } from '../../activities/data/format.js';
import { readParquetTable } from '../../io/parquet.js';
import type { ShardManifest } from '../../activities/data/shard.js';
import { generateRows } from '../../datagen/demoShapes.js';
import { dataConfig, images, looseRowsToParquet, runPipeline, type LooseRow } from '../dataFixtures.js';
import { startTestStack, TEST_BUCKET, type TestStack } from '../harness.js';

let stack: TestStack;
let parquetDir: string;
let jsonlDir: string;
const enc = (s: string) => new TextEncoder().encode(s);

beforeAll(async () => {
  stack = await startTestStack();
  parquetDir = await mkdtemp(join(tmpdir(), 'dpo-guards-'));
  const good = (await generateRows('train', 16, 7)).map<LooseRow>((r) => ({ image: r.image, question: enc(r.question), chosen: r.chosen, rejected: r.rejected }));
  const row = (bytes: Uint8Array | null, q = 'What is shown?', chosen = 'A red square.', rejected = 'A blue circle.'): LooseRow => ({
    image: { bytes, path: null },
    question: enc(q),
    chosen,
    rejected,
  });
  const train: LooseRow[] = [
    ...good, // rows 0..15 (chunk_rows 8: chunks 0 and 1)
    row(await images.cmyk(), 'cmyk?'), // 16
    row(await images.rgb16(), '16-bit?'), // 17
    row(await images.alpha(), 'alpha?'), // 18
    row(await images.grey(), 'grey?'), // 19
    row(await images.exifRotated(), 'exif?'), // 20
    row(await images.truncatedJpeg()), // 21 image_decode_failed
    row(await images.pngBomb()), // 22 image_too_large
    row(await images.notAnImage()), // 23 image_decode_failed
    row(await images.jpeg(), 'q', ''), // 24 empty_chosen
    { ...row(await images.jpeg(), 'q'), rejected: '  \n\t ' }, // 25 empty_rejected
    row(await images.jpeg(), 'q', 'Same.', 'Same.'), // 26 chosen_equals_rejected
    { ...row(await images.jpeg()), question: Uint8Array.from([0x57, 0x68, 0xff, 0xfe, 0x3f]) }, // 27 invalid_utf8
    { ...row(null), image: null }, // 28 missing_image
    { ...good[3]! }, // 29 duplicate of row 3 (another chunk)
    { ...good[3]!, image: { bytes: good[3]!.image!.bytes, path: 'elsewhere.jpg' } }, // 30 duplicate: same bytes and texts
    { ...good[4]!, chosen: `${good[4]!.chosen} Indeed.` }, // 31 not a duplicate: chosen differs
  ];
  const test = (await generateRows('test', 4, 8)).map<LooseRow>((r) => ({ image: r.image, question: enc(r.question), chosen: r.chosen, rejected: r.rejected }));
  await mkdir(join(parquetDir, 'data'), { recursive: true });
  await writeFile(join(parquetDir, 'data/train-00000-of-00001.parquet'), looseRowsToParquet(train));
  await writeFile(join(parquetDir, 'data/test-00000-of-00001.parquet'), looseRowsToParquet(test));

  // JSONL with image files beside it, as many exported datasets come.
  jsonlDir = await mkdtemp(join(tmpdir(), 'dpo-jsonl-'));
  await mkdir(join(jsonlDir, 'images'), { recursive: true });
  const lines: Buffer[] = [];
  for (const [i, r] of (await generateRows('j', 10, 9)).entries()) {
    await writeFile(join(jsonlDir, 'images', `${i}.jpg`), r.image.bytes);
    lines.push(Buffer.from(JSON.stringify({ image: `images/${i}.jpg`, question: r.question, chosen: r.chosen, rejected: r.rejected })));
  }
  lines.push(Buffer.from(JSON.stringify({ image: 'images/0.jpg', question: 42, chosen: 'Yes.', rejected: 'No.' }))); // wrong_type
  lines.push(Buffer.concat([Buffer.from('{"image": "images/1.jpg", "question": "caf'), Buffer.from([0xe9]), Buffer.from('?", "chosen": "a", "rejected": "b"}')])); // invalid_utf8
  lines.push(Buffer.from(JSON.stringify({ image: 'images/missing.jpg', question: 'q', chosen: 'a', rejected: 'b' }))); // image_not_found
  lines.push(Buffer.from(JSON.stringify({ image: '../../../../etc/passwd', question: 'q', chosen: 'a', rejected: 'b' }))); // image_not_found
  lines.push(Buffer.from('{not json')); // invalid_json
  await writeFile(join(jsonlDir, 'train.jsonl'), Buffer.concat(lines.flatMap((l) => [l, Buffer.from('\n')])));
  await writeFile(join(jsonlDir, 'test.jsonl'), lines.slice(0, 3).map((l) => `${l}\n`).join(''));
});

afterAll(async () => {
  await stack?.stop();
});

async function applicationFailure(promise: Promise<unknown>): Promise<ApplicationFailure> {
  const err = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WorkflowFailedError);
  let cause: unknown = (err as WorkflowFailedError).cause;
  while (cause && !(cause instanceof ApplicationFailure)) cause = (cause as { cause?: unknown }).cause;
  expect(cause).toBeInstanceOf(ApplicationFailure);
  return cause as ApplicationFailure;
}

describe('format guards', () => {
  it('drops every bad row by reason, keeps awkward images, removes duplicates across chunks', async () => {
    const config = dataConfig(stack, inject('modelSource'), parquetDir, {
      format: { image_longest_edge: 48, max_drop_ratio: 0.5, chunk_rows: 8 },
    });
    const result = await runPipeline(stack, config);
    const manifest = await stack.deps.storage.getJson<FormatManifest>(TEST_BUCKET, result.dataStages.format!.manifestKey);
    const train = manifest.splits.train!;
    expect(train.inputRows).toBe(32);
    expect(train.dropped).toEqual({
      invalid_utf8: 1,
      empty_chosen: 1,
      empty_rejected: 1,
      chosen_equals_rejected: 1,
      missing_image: 1,
      image_too_large: 1,
      image_decode_failed: 2,
      duplicate: 2,
    });
    expect(train.rows).toBe(22);
    expect(train.parts.length).toBe(4);
    expect(train.droppedExamples.find((e) => e.reason === 'image_too_large')?.sampleId).toBe('train-0-22');

    // Every kept image is an sRGB 3-channel JPEG within the edge; the EXIF-rotated one is upright.
    const kept = new Map<string, Uint8Array>();
    for (const part of train.parts) {
      const table = readParquetTable(await stack.deps.storage.getBuffer(TEST_BUCKET, part.key));
      for (let i = 0; i < table.numRows; i++) kept.set(table.getChild('sample_id')!.get(i) as string, table.getChild('image')!.get(i) as Uint8Array);
    }
    expect(kept.size).toBe(22);
    expect([...kept.keys()].filter((id) => /-(29|30)$/.test(id))).toEqual([]);
    for (const [id, bytes] of kept) {
      const meta = await sharp(bytes).metadata();
      expect({ id, format: meta.format, space: meta.space, channels: meta.channels, depth: meta.depth }).toEqual({
        id,
        format: 'jpeg',
        space: 'srgb',
        channels: 3,
        depth: 'uchar',
      });
      expect(Math.max(meta.width!, meta.height!)).toBeLessThanOrEqual(48);
      expect(meta.orientation ?? 1).toBe(1);
    }
    const exif = await sharp(kept.get('train-0-20')!).metadata();
    expect([exif.width, exif.height]).toEqual([24, 48]);
    // Alpha is flattened onto white, not black.
    const { data } = await sharp(kept.get('train-0-18')!).extract({ left: 40, top: 30, width: 1, height: 1 }).raw().toBuffer({ resolveWithObject: true });
    expect(Math.min(...data)).toBeGreaterThan(200);

    // The rest of the chain ran on what was kept.
    const shards = await stack.deps.storage.getJson<ShardManifest>(TEST_BUCKET, result.dataStages.shard!.manifestKey);
    expect(shards.splits.train!.rows).toBe(22);
    expect(shards.splits.test!.rows).toBe(4);
  });

  it('fails the stage with the counts when more than format.max_drop_ratio is dropped', async () => {
    const config = dataConfig(stack, inject('modelSource'), parquetDir, { format: { image_longest_edge: 48, max_drop_ratio: 0.25 } });
    const failure = await applicationFailure(runPipeline(stack, config));
    expect(failure.type).toBe('InvalidDataset');
    expect(failure.message).toContain('split "train" dropped 10 of 32 rows (31.3% > format.max_drop_ratio 25%)');
    expect(failure.message).toContain('"image_too_large":1');
  });

  it('reads JSONL with image files, dropping wrong types, non-UTF-8 lines and missing or escaping image paths', async () => {
    const config = dataConfig(stack, inject('modelSource'), jsonlDir, { format: { image_longest_edge: 48, max_drop_ratio: 0.5 } });
    const result = await runPipeline(stack, config);
    const manifest = await stack.deps.storage.getJson<FormatManifest>(TEST_BUCKET, result.dataStages.format!.manifestKey);
    expect(manifest.splits.train!.inputRows).toBe(15);
    expect(manifest.splits.train!.rows).toBe(10);
    expect(manifest.splits.train!.dropped).toEqual({ invalid_utf8: 1, invalid_json: 1, wrong_type: 1, image_not_found: 2 });
    expect(result.dataStages.download!.summary.image_files).toBe(10);
    const shards = await stack.deps.storage.getJson<ShardManifest>(TEST_BUCKET, result.dataStages.shard!.manifestKey);
    expect(shards.splits.train!.rows).toBe(10);
  });

  it('names a missing JSONL column in an InvalidDataset error', async () => {
    const config = dataConfig(stack, inject('modelSource'), jsonlDir, {
      dataset: { source: jsonlDir, columns: { rejected: 'worse' } },
    });
    const failure = await applicationFailure(runPipeline(stack, config));
    expect(failure.type).toBe('InvalidDataset');
    // Chunks of both splits run in parallel: whichever reads first names its file.
    expect(failure.message).toMatch(/dataset file "(train|test)\.jsonl" has no column "worse" \(dataset\.columns\.rejected\); its columns are: image, question, chosen, rejected/);
  });
});
