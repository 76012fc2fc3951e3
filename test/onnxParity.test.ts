/**
 * ONNX export parity: the trainer's export (base, and base + merged LoRA adapter) run by
 * onnxruntime-node gives the logits PyTorch gives on the same inputs (max abs difference <= 1e-4,
 * fp32), at batch and sequence shapes other than the ones the exporter traced with; and Node's
 * image preprocessing gives the trainer's pixel_values. The reference is PyTorch itself.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { ChatTokenizer } from '../activities/chatTokenizer.js';
import { trainerPython } from '../activities/deps.js';
import { loadImageProcessorConfig, pixelValues } from '../activities/imageProcessor.js';
import { OnnxLoadError, OnnxModel } from '../activities/onnxModel.js';
import { exportOnnx, OnnxExportError } from '../activities/onnxExport.js';
import { generateRows } from '../datagen/demoShapes.js';

const exec = promisify(execFile);
const env = { ...process.env, OMP_NUM_THREADS: '1' };

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'onnx-parity-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}

const asFloat32 = (buf: Buffer) => new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));

describe('ONNX export parity with PyTorch', () => {
  it('matches PyTorch logits (base and merged adapter) and the image processor', async () => {
    const modelDir = inject('modelDir');
    const adapterDir = join(work, 'adapter');
    await exec(trainerPython(), ['test/fixtures/onnx_reference.py', 'adapter', modelDir, adapterDir], { env });
    const [baseDir, mergedDir] = [join(work, 'onnx-base'), join(work, 'onnx-merged')];
    await Promise.all([
      exportOnnx({ pythonBin: trainerPython(), modelDir, adapterDir: null, outDir: baseDir, stageId: 'test', modelLabel: 'tiny base' }),
      exportOnnx({ pythonBin: trainerPython(), modelDir, adapterDir, outDir: mergedDir, stageId: 'test', modelLabel: 'tiny + adapter' }),
    ]);

    // Three rows of different lengths (the export traced two), two demo images plus one more.
    const rows = await generateRows('parity', 3, 11);
    const chat = await ChatTokenizer.load(modelDir);
    const imageConfig = await loadImageProcessorConfig(modelDir);
    const imagePaths: string[] = [];
    const pixels: Float32Array[] = [];
    for (const [i, row] of rows.entries()) {
      imagePaths.push(join(work, `image-${i}.jpg`));
      await writeFile(imagePaths[i]!, row.image.bytes);
      pixels.push(await pixelValues(row.image.bytes, imageConfig));
    }
    const sequences = rows.map((row, i) => {
      const prompt = chat.encodePrompt(chat.render([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: row.question }] }]));
      const answer = chat.encodeCompletion(chat.render([{ role: 'assistant', content: [{ type: 'text', text: i === 1 ? row.rejected : `${row.chosen} ${row.chosen}` }] }]));
      return [...prompt, ...answer];
    });
    const width = Math.max(...sequences.map((s) => s.length));
    const pad = (s: number[], fill: number) => [...s, ...Array<number>(width - s.length).fill(fill)];
    const plane = pixels[0]!.length;
    const flatPixels = new Float32Array(rows.length * plane);
    pixels.forEach((p, i) => flatPixels.set(p, i * plane));
    const inputsPath = join(work, 'inputs.json');
    await writeFile(
      inputsPath,
      JSON.stringify({
        input_ids: sequences.map((s) => pad(s, 3)),
        attention_mask: sequences.map((s) => pad(s.map(() => 1), 0)),
        pixel_values: Array.from(flatPixels),
        pixel_shape: [rows.length, 3, imageConfig.crop.height, imageConfig.crop.width],
        images: imagePaths,
      }),
    );

    for (const [adapter, onnxDir] of [['-', baseDir], [adapterDir, mergedDir]] as const) {
      const out = join(work, `logits-${adapter === '-' ? 'base' : 'merged'}.bin`);
      await exec(trainerPython(), ['test/fixtures/onnx_reference.py', 'logits', modelDir, adapter, inputsPath, out], { env, maxBuffer: 16 << 20 });
      const reference = asFloat32(await readFile(out));
      const model = await OnnxModel.load(onnxDir, onnxDir);
      const { out: ort } = await model.run(sequences.map((ids, i) => ({ ids, pixels: pixels[i]! })), ['logits']);
      await model.release();
      expect(maxAbsDiff(ort.logits, reference)).toBeLessThanOrEqual(1e-4);
      if (adapter === '-') {
        // Node's pixel_values are the image processor's (PIL bicubic resize in fixed point).
        expect(maxAbsDiff(flatPixels, asFloat32(await readFile(`${out}.pixels`)))).toBeLessThanOrEqual(1e-6);
      }
    }
  }, 300_000);

  it('names the stage and the model when export or loading fails', async () => {
    const broken = join(work, 'not-a-model');
    await exec('mkdir', ['-p', broken]);
    const failure = await exportOnnx({ pythonBin: trainerPython(), modelDir: broken, adapterDir: null, outDir: join(work, 'x'), stageId: 'evaluate-x', modelLabel: 'model s3://b/broken' }).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(OnnxExportError);
    expect(String((failure as Error).message)).toMatch(/stage "evaluate-x".*model s3:\/\/b\/broken.*config\.json/s);

    const corrupt = join(work, 'corrupt-onnx');
    await exec('mkdir', ['-p', corrupt]);
    await writeFile(join(corrupt, 'signature.json'), JSON.stringify({ format: 'dpo-onnx-export/1', inputs: {} }));
    await writeFile(join(corrupt, 'model.onnx'), 'this is not a protobuf');
    const loadFailure = await OnnxModel.load(corrupt, 'adapter s3://b/run/final').catch((e: unknown) => e);
    expect(loadFailure).toBeInstanceOf(OnnxLoadError);
    expect(String((loadFailure as Error).message)).toMatch(/adapter s3:\/\/b\/run\/final.*onnxruntime rejected/s);
  }, 120_000);
});
