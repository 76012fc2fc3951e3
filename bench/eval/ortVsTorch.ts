/**
 * Benchmark: scoring held-out preference pairs with onnxruntime-node on the ONNX export vs
 * PyTorch on the same model (the trainer's evaluator path), same inputs, same batches, CPU,
 * in one run. Prints pairs/s and CPU ms per pair of both, and the ratios (goal: ORT >= 1.5x):
 *   - one model, one forward per batch, as the product scores: the ORT evaluator packs each
 *     pair's two completions after their shared prompt and image (onnxModel.ts completionLogps),
 *     PyTorch runs the trainer's evaluator rows (one sequence per completion, as TRL does);
 *   - the same without packing: ORT on the very rows PyTorch runs (the runtimes alone);
 *   - a base-vs-DPO evaluation: the trainer's evaluator runs base, policy (LoRA unmerged) and
 *     reference (adapter disabled) forwards; the ORT evaluator runs the base export (also the
 *     reference) and the merged-adapter export.
 *
 *   OMP_NUM_THREADS=1 npx tsx bench/eval/ortVsTorch.ts [pairs=96] [batch=16] [threads=1] [repeats=3]
 *
 * The two sides run one after the other, never at once (on a shared 2-core machine they would
 * slow each other). Their log-probs are cross-checked before any timing is reported.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ChatTokenizer } from '../../vlm/chatTokenizer.js';
import { REPO_ROOT, trainerPython } from '../../io/deps.js';
import { loadImageProcessorConfig, pixelValues } from '../../vlm/imageProcessor.js';
import { exportOnnx } from '../../bridge/onnxExport.js';
import { OnnxModel, type ScoredRow } from '../../vlm/onnxModel.js';
import { generateRows } from '../../datagen/demoShapes.js';
import { ensureTinyModel } from '../../scripts/assets.js';

const exec = promisify(execFile);
const arg = (i: number, fallback: number) => Number(process.argv[2 + i] ?? fallback);
const [pairs, batchSize, threads, repeats] = [arg(0, 96), arg(1, 16), arg(2, 1), arg(3, 3)];

const work = await mkdtemp(join(tmpdir(), 'bench-eval-'));
try {
  const modelDir = await ensureTinyModel();
  console.log(`model ${modelDir}; ${pairs} pairs, batch ${batchSize} pairs, ${threads} thread(s), ${repeats} timed passes; ${cpus().length} cores`);
  const t0 = Date.now();
  const onnxDir = await exportOnnx({ pythonBin: trainerPython(), modelDir, adapterDir: null, outDir: join(work, 'onnx'), stageId: 'bench', modelLabel: 'tiny LLaVA' });
  // A LoRA adapter with non-zero weights, as training would leave it, and its merged export.
  const adapterDir = join(work, 'adapter');
  await exec(trainerPython(), ['test/fixtures/onnx_reference.py', 'adapter', modelDir, adapterDir], { cwd: REPO_ROOT });
  const mergedDir = await exportOnnx({ pythonBin: trainerPython(), modelDir, adapterDir, outDir: join(work, 'onnx-merged'), stageId: 'bench', modelLabel: 'tiny LLaVA + adapter' });
  console.log(`exports: ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  // The pairs: demo questions with chosen/rejected answers, thumbnailed like the format stage.
  const chat = await ChatTokenizer.load(modelDir);
  const imageConfig = await loadImageProcessorConfig(modelDir);
  const { thumbnail } = await import('../../vlm/formatRows.js');
  const thumb = { edge: 48, maxPixels: 50_000_000, jpegQuality: 95 };
  const rows = await generateRows('bench', pairs, 3);
  const pixels = await Promise.all(rows.map(async (r) => pixelValues(await thumbnail(r.image.bytes, thumb), imageConfig)));
  const encoded = rows.map((r) => {
    const prompt = chat.encodePrompt(chat.render([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: r.question }] }]));
    const answer = (text: string) => chat.encodeCompletion(chat.render([{ role: 'assistant', content: [{ type: 'text', text }] }]));
    return { prompt, chosen: answer(r.chosen), rejected: answer(r.rejected) };
  });
  const batches: ScoredRow[][] = [];
  const pyBatches: unknown[] = [];
  for (let start = 0; start < pairs; start += batchSize) {
    const idx = [...Array(Math.min(batchSize, pairs - start)).keys()].map((i) => start + i);
    const scored: ScoredRow[] = [
      ...idx.map((i) => ({ ids: [...encoded[i]!.prompt, ...encoded[i]!.chosen], completionStart: encoded[i]!.prompt.length, pixels: pixels[i]! })),
      ...idx.map((i) => ({ ids: [...encoded[i]!.prompt, ...encoded[i]!.rejected], completionStart: encoded[i]!.prompt.length, pixels: pixels[i]! })),
    ];
    batches.push(scored);
    const width = Math.max(...scored.map((s) => s.ids.length));
    pyBatches.push({
      input_ids: scored.map((s) => [...s.ids, ...Array<number>(width - s.ids.length).fill(3)]),
      attention_mask: scored.map((s) => [...s.ids.map(() => 1), ...Array<number>(width - s.ids.length).fill(0)]),
      completion_mask: scored.map((s) => [...s.ids.map((_, t) => (t >= s.completionStart ? 1 : 0)), ...Array<number>(width - s.ids.length).fill(0)]),
      pixel_rows: [...idx, ...idx],
    });
  }
  const plane = pixels[0]!.length;
  const flat = new Float32Array(pairs * plane);
  pixels.forEach((p, i) => flat.set(p, i * plane));
  await writeFile(join(work, 'pixels.bin'), Buffer.from(flat.buffer));
  await writeFile(join(work, 'inputs.json'), JSON.stringify({ batches: pyBatches, pixels_path: join(work, 'pixels.bin'), pixel_shape: [3, imageConfig.crop.height, imageConfig.crop.width] }));

  // onnxruntime-node
  const model = await OnnxModel.load(onnxDir, 'tiny LLaVA', threads);
  const ortLogps: number[] = [];
  for (const b of batches) {
    ortLogps.push(...(await model.completionLogps(b))); // warm-up, and the values for the cross-check
  }
  // CPU time of this process (user + system) per pair as well: on a shared machine it moves
  // much less with the load than wall-clock rates do.
  const cpuMs: Record<'one' | 'unpacked' | 'evaluation', number[]> = { one: [], unpacked: [], evaluation: [] };
  const timed = async (what: 'one' | 'unpacked' | 'evaluation', body: () => Promise<void>) => {
    const [start, cpu] = [performance.now(), process.cpuUsage()];
    await body();
    const used = process.cpuUsage(cpu);
    cpuMs[what].push((used.user + used.system) / 1000 / (pairs * repeats));
    return (pairs * repeats) / ((performance.now() - start) / 1000);
  };
  const timeOrt = () =>
    timed('one', async () => {
      for (let r = 0; r < repeats; r++) for (const b of batches) await model.completionLogps(b);
    });
  // The same rows as PyTorch, one sequence per row (no packing): the runtimes' speed on identical work.
  const timeOrtUnpacked = () =>
    timed('unpacked', async () => {
      for (let r = 0; r < repeats; r++) for (const b of batches) await model.completionLogps(b, { pack: false });
    });
  // ORT is timed before and after PyTorch, so a change in the machine's load shows as a spread.
  const ortBefore = await timeOrt();
  const ortUnpackedBefore = await timeOrtUnpacked();
  const merged = await OnnxModel.load(mergedDir, 'tiny LLaVA + adapter', threads);
  const timeOrtEvaluation = async () => {
    for (const b of batches) await merged.completionLogps(b); // warm-up
    return timed('evaluation', async () => {
      for (let r = 0; r < repeats; r++) {
        for (const b of batches) {
          await model.completionLogps(b); // base metrics, and the reference of the DPO model
          await merged.completionLogps(b);
        }
      }
    });
  };
  const ortEvalBefore = await timeOrtEvaluation();

  // PyTorch, same inputs and batches
  const { stdout } = await exec(trainerPython(), ['bench/eval/torch_score.py', modelDir, join(work, 'inputs.json'), String(threads), String(repeats), adapterDir], {
    cwd: REPO_ROOT,
    env: { ...process.env, OMP_NUM_THREADS: String(threads) },
    maxBuffer: 64 << 20,
  });
  const torch = JSON.parse(stdout.trim().split('\n').at(-1)!) as { pairs_per_second: number; cpu_ms_per_pair: number; evaluation_pairs_per_second: number; evaluation_cpu_ms_per_pair: number; logps: number[] };
  const ortAfter = await timeOrt();
  const ortUnpackedAfter = await timeOrtUnpacked();
  const ortEvalAfter = await timeOrtEvaluation();
  await model.release();
  await merged.release();
  const ortRate = (ortBefore + ortAfter) / 2;
  const ortEvalRate = (ortEvalBefore + ortEvalAfter) / 2;
  const maxDiff = Math.max(...torch.logps.map((v, i) => Math.abs(v - ortLogps[i]!)));
  if (!(maxDiff < 1e-3)) throw new Error(`ORT and PyTorch log-probs differ by ${maxDiff}: the comparison would be meaningless`);

  console.log(`log-prob agreement: max |ORT - PyTorch| = ${maxDiff.toExponential(2)} over ${torch.logps.length} sequences`);
  console.log(`PyTorch ${torch.pairs_per_second.toFixed(1)} pairs/s`);
  console.log(`ORT     ${ortRate.toFixed(1)} pairs/s (before PyTorch ${ortBefore.toFixed(1)}, after ${ortAfter.toFixed(1)})`);
  console.log(`ratio ORT / PyTorch, one model: ${(ortRate / torch.pairs_per_second).toFixed(2)}x (goal >= 1.5x)`);
  const ortUnpackedRate = (ortUnpackedBefore + ortUnpackedAfter) / 2;
  console.log(`ORT unpacked (the very rows PyTorch runs) ${ortUnpackedRate.toFixed(1)} pairs/s: ratio ${(ortUnpackedRate / torch.pairs_per_second).toFixed(2)}x`);
  console.log(`base-vs-DPO evaluation: PyTorch ${torch.evaluation_pairs_per_second.toFixed(1)} pairs/s, ORT ${ortEvalRate.toFixed(1)} pairs/s (before ${ortEvalBefore.toFixed(1)}, after ${ortEvalAfter.toFixed(1)})`);
  console.log(`ratio ORT / PyTorch, evaluation: ${(ortEvalRate / torch.evaluation_pairs_per_second).toFixed(2)}x (goal >= 1.5x)`);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const [ortCpu, ortEvalCpu, ortUnpackedCpu] = [mean(cpuMs.one), mean(cpuMs.evaluation), mean(cpuMs.unpacked)];
  console.log(`CPU ms per pair, one model unpacked: ORT ${ortUnpackedCpu.toFixed(3)}: ratio ${(torch.cpu_ms_per_pair / ortUnpackedCpu).toFixed(2)}x`);
  console.log(`CPU ms per pair, one model: PyTorch ${torch.cpu_ms_per_pair.toFixed(3)}, ORT ${ortCpu.toFixed(3)} (${cpuMs.one.map((x) => x.toFixed(3)).join(', ')}): ratio ${(torch.cpu_ms_per_pair / ortCpu).toFixed(2)}x`);
  console.log(`CPU ms per pair, evaluation: PyTorch ${torch.evaluation_cpu_ms_per_pair.toFixed(3)}, ORT ${ortEvalCpu.toFixed(3)}: ratio ${(torch.evaluation_cpu_ms_per_pair / ortEvalCpu).toFixed(2)}x`);
} finally {
  await rm(work, { recursive: true, force: true });
}
