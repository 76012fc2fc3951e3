/**
 * Bad and awkward inputs for the data-stage tests, made with sharp and by hand: CMYK, 16-bit,
 * alpha, grayscale and EXIF-rotated images, a truncated JPEG, a PNG decompression bomb, text that
 * is not UTF-8. Plus a runner for data-only pipelines on the real stack.
 */
import { deflateSync } from 'node:zlib';
import * as arrow from 'apache-arrow';
import sharp from 'sharp';
import { tableFromColumns, writeParquetTable } from '../io/parquet.js';
import type { PipelineConfigInput } from '../contracts/config.js';
import type { PipelineResult } from '../contracts/payloads.js';
import { uniqueId, type TestStack } from './harness.js';
import { PIPELINE_WORKFLOW } from '../contracts/messages.js';

const svg = (w: number, h: number, fill: string) =>
  Buffer.from(`<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}"><rect width="${w}" height="${h}" fill="#eee"/><rect x="2" y="2" width="${w / 2}" height="${h / 2}" fill="${fill}"/></svg>`);

export const images = {
  jpeg: (fill = '#c33') => sharp(svg(80, 60, fill)).jpeg().toBuffer(),
  cmyk: () => sharp(svg(80, 60, '#3c3')).toColourspace('cmyk').jpeg().toBuffer(),
  rgb16: () => sharp(svg(80, 60, '#33c')).toColourspace('rgb16').png().toBuffer(),
  alpha: () => sharp(svg(80, 60, '#cc3')).ensureAlpha(0.5).png().toBuffer(),
  grey: () => sharp(svg(80, 60, '#999')).greyscale().jpeg().toBuffer(),
  /** Stored 80x40 landscape with EXIF orientation 6: displays as 40x80 portrait. */
  exifRotated: () => sharp(svg(80, 40, '#c3c')).jpeg().withMetadata({ orientation: 6 }).toBuffer(),
  truncatedJpeg: async () => (await sharp(svg(80, 60, '#3cc')).jpeg().toBuffer()).subarray(0, 300),
  notAnImage: async () => Buffer.from('%PDF-1.4 this is not an image at all'),
  pngBomb: async () => pngBomb(60_000, 60_000),
};

/**
 * A PNG whose header declares width x height 8-bit grayscale pixels (3.6 GB for 60k x 60k) over a
 * few bytes of zlib data: decoding it would exhaust memory; the pixel limit must refuse it first.
 */
export function pngBomb(width: number, height: number): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const out = Buffer.alloc(8 + data.length + 4);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc32(body), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 0, 0, 0, 0], 8);
  const firstRows = deflateSync(Buffer.alloc((width + 1) * 4));
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', firstRows), chunk('IEND', Buffer.alloc(0))]);
}

function crc32(buf: Buffer): number {
  let c = ~0;
  for (const byte of buf) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

export interface LooseRow {
  image: { bytes: Uint8Array | null; path: string | null } | null;
  /** Raw bytes: the question column is binary, so text that is not UTF-8 can be stored. */
  question: Uint8Array | null;
  chosen: string | null;
  rejected: string | null;
}

/** RLAIF-V-like Parquet whose question column is binary (UTF-8 expected, not guaranteed). */
export function looseRowsToParquet(rows: LooseRow[]): Uint8Array {
  const imageType = new arrow.Struct([new arrow.Field('bytes', new arrow.Binary(), true), new arrow.Field('path', new arrow.Utf8(), true)]);
  return writeParquetTable(
    tableFromColumns({
      image: { type: imageType, values: rows.map((r) => r.image) },
      question: { type: new arrow.Binary(), values: rows.map((r) => r.question) },
      chosen: { type: new arrow.Utf8(), values: rows.map((r) => r.chosen) },
      rejected: { type: new arrow.Utf8(), values: rows.map((r) => r.rejected) },
    }),
  );
}

/** The data stages only, as a DAG, on the test stack. */
export function dataConfig(stack: TestStack, modelSource: string, source: string, overrides: Partial<PipelineConfigInput> = {}): PipelineConfigInput {
  return {
    name: 'data',
    model: { source: modelSource },
    dataset: { source },
    format: { image_longest_edge: 48 },
    tokenize: { max_length: 128, max_prompt_length: 96 },
    shard: { samples_per_shard: 40 },
    queues: stack.queues,
    storage: { bucket: 'dpo-test' },
    stages: [
      { id: 'download', kind: 'download' },
      { id: 'format', kind: 'format', needs: ['download'] },
      { id: 'tokenize', kind: 'tokenize', needs: ['format'] },
      { id: 'shard', kind: 'shard', needs: ['tokenize'] },
    ],
    ...overrides,
  };
}

export async function runPipeline(stack: TestStack, config: PipelineConfigInput): Promise<PipelineResult> {
  return stack.client.workflow.execute(PIPELINE_WORKFLOW, { taskQueue: stack.queues.cpu, workflowId: uniqueId('data'), args: [config] });
}
