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
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import { trainerPython } from '../../io/deps.js';
import { loadImageProcessorConfig, pixelValues } from '../../vlm/imageProcessor.js';
import { OnnxLoadError, OnnxModel } from '../../vlm/onnxModel.js';
import { exportOnnx, OnnxExportError } from '../../bridge/onnxExport.js';
import { generateRows } from '../../datagen/demoShapes.js';
import sharp from 'sharp';

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
    const prompts = rows.map((row) => chat.encodePrompt(chat.render([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: row.question }] }])));
    const sequences = rows.map((row, i) => {
      const answer = chat.encodeCompletion(chat.render([{ role: 'assistant', content: [{ type: 'text', text: i === 1 ? row.rejected : `${row.chosen} ${row.chosen}` }] }]));
      return [...prompts[i]!, ...answer];
    });
    // A fourth row: row 0's prompt and image with another answer, so that the pair (rows 0 and 3)
    // is scored packed (one sequence, shared prompt) by completionLogps.
    const otherAnswer = chat.encodeCompletion(chat.render([{ role: 'assistant', content: [{ type: 'text', text: rows[0]!.rejected }] }]));
    sequences.push([...prompts[0]!, ...otherAnswer]);
    prompts.push(prompts[0]!);
    const rowPixels = [...pixels, pixels[0]!];
    // A non-square, larger image as well: resize by the shortest edge, then center crop.
    const wide = await sharp({ create: { width: 130, height: 70, channels: 3, background: '#3a7' } })
      .composite([{ input: Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="130" height="70"><circle cx="40" cy="30" r="20" fill="#e6194b"/></svg>') }])
      .jpeg()
      .toBuffer();
    imagePaths.push(join(work, 'wide.jpg'));
    await writeFile(imagePaths.at(-1)!, wide);
    const widePixels = await pixelValues(wide, imageConfig);
    const width = Math.max(...sequences.map((s) => s.length));
    const pad = (s: number[], fill: number) => [...s, ...Array<number>(width - s.length).fill(fill)];
    const plane = pixels[0]!.length;
    const flatPixels = new Float32Array(rows.length * plane);
    pixels.forEach((p, i) => flatPixels.set(p, i * plane));
    const batchPixels = new Float32Array(rowPixels.length * plane);
    rowPixels.forEach((p, i) => batchPixels.set(p, i * plane));
    const inputsPath = join(work, 'inputs.json');
    await writeFile(
      inputsPath,
      JSON.stringify({
        input_ids: sequences.map((s) => pad(s, 3)),
        attention_mask: sequences.map((s) => pad(s.map(() => 1), 0)),
        pixel_values: Array.from(batchPixels),
        pixel_shape: [rowPixels.length, 3, imageConfig.crop.height, imageConfig.crop.width],
        images: imagePaths,
      }),
    );

    for (const [adapter, onnxDir] of [['-', baseDir], [adapterDir, mergedDir]] as const) {
      const out = join(work, `logits-${adapter === '-' ? 'base' : 'merged'}.bin`);
      await exec(trainerPython(), ['test/fixtures/onnx_reference.py', 'logits', modelDir, adapter, inputsPath, out], { env, maxBuffer: 16 << 20 });
      const reference = asFloat32(await readFile(out));
      const model = await OnnxModel.load(onnxDir, onnxDir);
      const batch = sequences.map((ids, i) => ({ ids, pixels: rowPixels[i]! }));
      const { out: ort } = await model.run(batch, ['logits']);
      expect(maxAbsDiff(ort.logits, reference)).toBeLessThanOrEqual(1e-4);

      // The scoring outputs, with logits only from the shortest prompt on: log-probs of every
      // scored token and each row's last logits, against PyTorch's logits.
      const vocab = model.signature.vocab_size;
      const first = Math.min(...prompts.map((p) => p.length));
      const { out: scored } = await model.run(batch, ['token_logps', 'last_logits'], first);
      const refLogps: number[] = [];
      const refLast: number[] = [];
      sequences.forEach((ids, b) => {
        for (let t = first; t < width; t++) {
          const row = reference.subarray((b * width + t - 1) * vocab, (b * width + t) * vocab);
          const max = Math.max(...row);
          const lse = max + Math.log(row.reduce((acc, x) => acc + Math.exp(x - max), 0));
          refLogps.push(row[t < ids.length ? ids[t]! : 3]! - lse);
        }
        refLast.push(...reference.subarray((b * width + ids.length - 1) * vocab, (b * width + ids.length) * vocab));
      });
      expect(maxAbsDiff(scored.token_logps, Float32Array.from(refLogps))).toBeLessThanOrEqual(1e-4);
      expect(maxAbsDiff(scored.last_logits, Float32Array.from(refLast))).toBeLessThanOrEqual(1e-4);

      // Completion log-probs, with the pair sharing prompt and image packed into one sequence.
      expect(model.packs).toBe(true);
      const pair = [0, 3].map((i) => ({ ids: sequences[i]!, completionStart: prompts[i]!.length, pixels: rowPixels[i]! }));
      const packed = await model.completionLogps(pair);
      const refSums = [0, 3].map((b) => {
        let sum = 0;
        for (let t = prompts[b]!.length; t < sequences[b]!.length; t++) sum += refLogps[b * (width - first) + t - first]!;
        return sum;
      });
      expect(maxAbsDiff(Float32Array.from(packed), Float32Array.from(refSums))).toBeLessThanOrEqual(1e-4);
      await model.release();
      if (adapter === '-') {
        // Node's pixel_values are the image processor's (PIL bicubic resize in fixed point).
        const refPixels = asFloat32(await readFile(`${out}.pixels`));
        expect(maxAbsDiff(flatPixels, refPixels.subarray(0, flatPixels.length))).toBeLessThanOrEqual(1e-6);
        expect(maxAbsDiff(widePixels, refPixels.subarray(flatPixels.length))).toBeLessThanOrEqual(1e-6);
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
