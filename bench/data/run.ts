/**
 * bench/data: samples/s of format + tokenize + shard, the Node data stages (fanned out as
 * activities on a real Temporal worker, reading from and writing to MinIO) against the seed's
 * Python pipeline (bench/data/seed_pipeline.py: datasets.map with the processor's chat template
 * and PIL thumbnail, num_proc=2, then Parquet), on the same generated inputs, same machine, one
 * run each, one after the other. Peak memory: the sampled sum of RSS over each side's process
 * trees (Node: the CPU worker processes; Python: the script and its map workers).
 *
 *     npx tsx bench/data/run.ts [--rows 5000] [--workers 2] [--processor test/fixtures/processors/idefics2]
 *
 * Needs the local stack (`npm run stack`) and trainer/.venv. Prints the ratio, and the CPU time
 * per sample of each side (Node: the worker processes from the start of format to the end of
 * shard, per stage, and apart the shared MinIO server's; Python: its process tree during the timed
 * phases, and with imports and load_dataset). Last, the
 * thumbnail alone on both sides (the product's, sharp's alone, and the seed's PIL), and the ratio
 * that bounds. Extra
 * node flags for the workers (e.g. `--cpu-prof --cpu-prof-dir=...`): BENCH_WORKER_NODE_ARGS.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import { REPO_ROOT, trainerPython } from '../../io/deps.js';
import { defaultImageEdge } from '../../vlm/imageSize.js';
import { sharpThumbnail, thumbnail } from '../../vlm/formatRows.js';
import { readRowRange } from '../../io/sourceRows.js';
import { ColumnMappingSchema, FormatSchema, type PipelineConfigInput } from '../../contracts/config.js';
import type { PipelineResult } from '../../contracts/payloads.js';
import { temporalEnv } from '../../contracts/connection.js';
import { ensureBenchDataset } from './generate.js';
import { PIPELINE_WORKFLOW } from '../../contracts/messages.js';

const exec = promisify(execFile);

const { values } = parseArgs({
  options: {
    rows: { type: 'string', default: '5000' },
    'test-rows': { type: 'string', default: '100' },
    images: { type: 'string', default: '500' },
    processor: { type: 'string', default: 'test/fixtures/processors/idefics2' },
    workers: { type: 'string', default: '2' },
    'skip-python': { type: 'boolean', default: false },
  },
});
const rows = Number(values.rows);
const testRows = Number(values['test-rows']);
const processorDir = resolve(REPO_ROOT, values.processor!);
const benchDir = resolve(REPO_ROOT, '.dpo/bench/data');

/**
 * Samples the summed RSS of a process and its descendants every 100 ms; returns the peak, and the
 * CPU seconds (user + sys) the tree used, from the last sample of each process (processes that
 * live under 100 ms are missed, as is the last 100 ms of each: a slight undercount on both sides).
 */
function sampleTreeRss(
  rootPid: number,
  { cpuSinceStart = false } = {},
): { stop: () => Promise<number>; cpuSeconds: () => number; cpuBetween: (from: number, to: number) => number } {
  let peak = 0;
  // (time, CPU seconds so far) after each sample, to attribute CPU to the stages' time windows.
  const series: Array<[number, number]> = [];
  const total = () => [...cpuTicks].reduce((a, [pid, t]) => a + t - startTicks.get(pid)!, 0) / 100;
  const cpuTicks = new Map<number, number>();
  const startTicks = new Map<number, number>();
  const rssOf = async (pid: number): Promise<number> => {
    const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    // Fields after the command name: state is field 3, utime and stime are fields 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields.length > 13) {
      const ticks = Number(fields[11]) + Number(fields[12]);
      cpuTicks.set(pid, ticks);
      if (!startTicks.has(pid)) startTicks.set(pid, cpuSinceStart ? ticks : 0);
    }
    const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
    const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
    let children: number[] = [];
    for (const t of tasks) {
      const list = await readFile(`/proc/${pid}/task/${t}/children`, 'utf8').catch(() => '');
      children = children.concat(list.split(' ').filter(Boolean).map(Number));
    }
    let total = kb * 1024;
    for (const c of children) total += await rssOf(c);
    return total;
  };
  let running = true;
  const loop = (async () => {
    while (running) {
      peak = Math.max(peak, await rssOf(rootPid));
      series.push([Date.now(), total()]);
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return peak;
    },
    // Clock ticks are 1/100 s on Linux.
    // With cpuSinceStart, only what processes already running at the start used after it.
    cpuSeconds: total,
    cpuBetween: (from, to) => {
      const at = (t: number) => series.find(([time]) => time >= t)?.[1] ?? series[series.length - 1]?.[1] ?? 0;
      return at(to) - at(from);
    },
  };
}

/** The local MinIO server's pid (`minio server`), if one runs on this machine. */
async function minioProcess(): Promise<number | null> {
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmd = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    const [exe, sub] = cmd.split('\0');
    if (exe?.endsWith('minio') && sub === 'server') return Number(entry);
  }
  return null;
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;

/**
 * The Node side as deployed: `workers` CPU worker processes (`worker/main.ts --queues cpu`, the
 * product's way to scale out; 2 mirrors the anchor's num_proc=2) polling one queue; this process
 * only starts the workflow. Peak memory is the sum over the worker processes.
 */
async function runNode(datasetDir: string, workers: number): Promise<{ seconds: number; rows: number; stages: Record<string, number>; peakRss: number; download: number; cpu: number; minioCpu: number | null; stageCpu: Record<string, number> }> {
  const suffix = randomBytes(4).toString('hex');
  const queues = { cpu: `bench-cpu-${suffix}`, gpu: `bench-gpu-${suffix}` };
  const children = Array.from({ length: workers }, (_, i) =>
    spawn(process.execPath, [...(process.env.BENCH_WORKER_NODE_ARGS?.split(' ').filter(Boolean) ?? []), '--import', 'tsx', join(REPO_ROOT, 'worker/main.ts'), '--queues', 'cpu'], {
      cwd: REPO_ROOT,
      env: {
        ...process.env,
        DPO_CPU_QUEUE: queues.cpu,
        DPO_GPU_QUEUE: queues.gpu,
        DPO_WORK_DIR: join(REPO_ROOT, '.dpo/bench/work', `${suffix}-${i}`),
        DPO_CPU_SLOTS: process.env.DPO_CPU_SLOTS ?? '4',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    }),
  );
  await Promise.all(
    children.map(
      (c) =>
        new Promise<void>((ready, fail) => {
          c.stdout!.on('data', (d: Buffer) => d.toString().includes('worker: connected') && ready());
          c.on('exit', (code) => fail(new Error(`worker exited with ${code}`)));
        }),
    ),
  );
  const client = new Client({ connection: await Connection.connect({ address: temporalEnv().address }) });
  // A fresh path each run: the download (and so every stage after it) is recomputed, not cached.
  const source = join(benchDir, `run-${suffix}`);
  await symlink(datasetDir, source);
  const config: PipelineConfigInput = {
    name: 'bench-data',
    model: { source: processorDir },
    dataset: { source },
    queues,
    storage: { bucket: 'dpo-bench' },
    stages: [
      { id: 'download', kind: 'download' },
      { id: 'format', kind: 'format', needs: ['download'] },
      { id: 'tokenize', kind: 'tokenize', needs: ['format'] },
      { id: 'shard', kind: 'shard', needs: ['tokenize'] },
    ],
  };
  // Worker start-up (module loading) is not counted: CPU from here on.
  const samplers = children.map((c) => sampleTreeRss(c.pid!, { cpuSinceStart: true }));
  // MinIO is the stack's shared server (other users' requests count too): reported apart.
  const minioPid = await minioProcess();
  const minio = minioPid ? sampleTreeRss(minioPid, { cpuSinceStart: true }) : null;
  const result: PipelineResult = await client.workflow.execute(PIPELINE_WORKFLOW, { taskQueue: queues.cpu, workflowId: `bench-data-${suffix}`, args: [config] });
  // Peaks of the processes need not coincide: their sum is an upper bound of the true peak.
  const peakRss = (await Promise.all(samplers.map((s) => s.stop()))).reduce((a, b) => a + b, 0);
  const at = Object.fromEntries(result.timeline.map((t) => [t.id, t]));
  // CPU of the workers from the start of format to the end of shard (the download is not counted).
  const cpuIn = (id: string) => samplers.reduce((a, s) => a + s.cpuBetween(at[id]!.startedAt!, at[id]!.finishedAt!), 0);
  const stageCpu = Object.fromEntries(['format', 'tokenize', 'shard'].map((id) => [id, cpuIn(id)]));
  const cpu = samplers.reduce((a, s) => a + s.cpuBetween(at.format!.startedAt!, at.shard!.finishedAt!), 0);
  await minio?.stop();
  const minioCpu = minio ? minio.cpuBetween(at.format!.startedAt!, at.shard!.finishedAt!) : null;
  for (const c of children) c.kill('SIGTERM');
  await Promise.all(children.map((c) => new Promise((r) => c.on('close', r))));
  await rm(source, { force: true });
  await rm(join(REPO_ROOT, '.dpo/bench/work'), { recursive: true, force: true });
  const stages = Object.fromEntries(['download', 'format', 'tokenize', 'shard'].map((id) => [id, (at[id]!.finishedAt! - at[id]!.startedAt!) / 1000]));
  const seconds = (at.shard!.finishedAt! - at.format!.startedAt!) / 1000;
  const out = Number(result.dataStages.format!.summary.train_rows) + Number(result.dataStages.format!.summary.test_rows);
  return { seconds, rows: out, stages, peakRss, download: stages.download!, cpu, minioCpu, stageCpu };
}

async function runPython(datasetDir: string): Promise<{ seconds: number; rows: number; phases: Record<string, number>; peakRss: number; cpu: number; pipelineCpu: number }> {
  const out = join(benchDir, 'python-out');
  await rm(out, { recursive: true, force: true });
  await mkdir(out, { recursive: true });
  const child = spawn(trainerPython(), [join(REPO_ROOT, 'bench/data/seed_pipeline.py'), '--data', datasetDir, '--model', processorDir, '--out', out], {
    env: { ...process.env, OMP_NUM_THREADS: '1', HF_DATASETS_OFFLINE: '1', TOKENIZERS_PARALLELISM: 'false' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const sampler = sampleTreeRss(child.pid!);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const code = await new Promise<number>((r) => child.on('close', (c) => r(c ?? 1)));
  const peakRss = await sampler.stop();
  const cpu = sampler.cpuSeconds();
  if (code !== 0) throw new Error(`seed_pipeline.py exited with ${code}: ${stderr.slice(-2000)}`);
  const report = JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, number>;
  await rm(out, { recursive: true, force: true });
  // CPU inside the timed phases, as counted on the Node side (imports and load_dataset excluded).
  const pipelineCpu = sampler.cpuBetween(report.window_start_ms!, report.window_end_ms!);
  return { seconds: report.pipeline_seconds!, rows: report.rows!, phases: report, peakRss, cpu, pipelineCpu };
}

/**
 * The thumbnail alone, one image at a time, on both sides: the product's `thumbnail` (and sharp's
 * path alone, for comparison) and
 * the seed's PIL `thumbnail` plus the JPEG encode `datasets` does when it stores the image. The
 * Node side cannot use less CPU per sample than its thumbnail, which bounds its throughput
 * ratio (with both sides keeping both cores busy) at Python's CPU per sample over that.
 */
async function thumbnailAlone(datasetDir: string, count = 40): Promise<{ images: number; productMs: number; sharpMs: number; pilMs: number; edge: number }> {
  const file = (await readdir(join(datasetDir, 'data'))).filter((f) => f.startsWith('train-')).sort()[0]!;
  // The generator shares images round-robin, so the first rows carry distinct ones.
  const { rows } = await readRowRange(
    { path: join(datasetDir, 'data', file), format: 'parquet', sourcePath: file, idPrefix: 'train-0', offset: 0, limit: Math.min(count, Number(values.images)) },
    ColumnMappingSchema.parse({}),
  );
  const images = rows.map((row) => (row.images as { bytes: Uint8Array }).bytes);
  const edge = await defaultImageEdge(processorDir);
  const defaults = FormatSchema.parse({});
  const options = { edge, maxPixels: defaults.max_image_pixels, jpegQuality: defaults.jpeg_quality };
  const cpuMs = async (make: typeof thumbnail) => {
    let best = Number.POSITIVE_INFINITY;
    for (let pass = 0; pass < 3; pass++) {
      const start = process.cpuUsage();
      for (const image of images) await make(image, options);
      const used = process.cpuUsage(start);
      best = Math.min(best, (used.user + used.system) / 1000 / images.length);
    }
    return best;
  };
  // The product's thumbnail (the libjpeg-turbo fast path for these JPEGs), and sharp's alone.
  const productMs = await cpuMs(thumbnail);
  const sharpMs = await cpuMs(sharpThumbnail);
  const dir = join(benchDir, 'thumbnail-images');
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const paths = await Promise.all(images.map(async (image, i) => {
    const path = join(dir, `${i}.jpg`);
    await writeFile(path, image);
    return path;
  }));
  const { stdout: pil } = await exec(trainerPython(), [join(REPO_ROOT, 'bench/data/thumbnail_pil.py'), '--edge', String(edge), ...paths]);
  await rm(dir, { recursive: true, force: true });
  return { images: images.length, productMs, sharpMs, pilMs: (JSON.parse(pil.trim()) as { cpu_ms_per_image: number }).cpu_ms_per_image, edge };
}

await mkdir(benchDir, { recursive: true });
const datasetDir = await ensureBenchDataset(benchDir, { trainRows: rows, testRows, distinctImages: Number(values.images), rowsPerFile: 1000, seed: 5 });
console.log(`dataset: ${datasetDir} (${rows} + ${testRows} rows, ${values.images} distinct ~1000x800 JPEGs); processor: ${values.processor}`);

const node = await runNode(datasetDir, Number(values.workers));
console.log(
  `node   (${values.workers} CPU worker processes) format+tokenize+shard: ${node.seconds.toFixed(1)} s for ${node.rows} rows = ${(node.rows / node.seconds).toFixed(1)} samples/s ` +
    `(format ${node.stages.format!.toFixed(1)} s, tokenize ${node.stages.tokenize!.toFixed(1)} s, shard ${node.stages.shard!.toFixed(1)} s; ` +
    `download into MinIO ${node.download.toFixed(1)} s not counted); peak RSS ${mib(node.peakRss)}; ` +
    `CPU ${node.cpu.toFixed(1)} s = ${((node.cpu / node.rows) * 1000).toFixed(1)} ms/sample in the workers ` +
    `(format ${node.stageCpu.format!.toFixed(1)} s, tokenize ${node.stageCpu.tokenize!.toFixed(1)} s, shard ${node.stageCpu.shard!.toFixed(1)} s)` +
    (node.minioCpu != null ? ` + ${node.minioCpu.toFixed(1)} s in MinIO (shared with other users)` : ''),
);
if (!values['skip-python']) {
  const py = await runPython(datasetDir);
  const p = py.phases;
  console.log(
    `python format+tokenize+parquet: ${py.seconds.toFixed(1)} s for ${py.rows} rows = ${(py.rows / py.seconds).toFixed(1)} samples/s ` +
      `(format ${p.format_seconds!.toFixed(1)} s, tokenize ${p.tokenize_seconds!.toFixed(1)} s, parquet ${p.parquet_seconds!.toFixed(1)} s; ` +
      `load_dataset ${p.load_seconds!.toFixed(1)} s not counted); peak RSS ${mib(py.peakRss)}; ` +
      `CPU ${py.pipelineCpu.toFixed(1)} s = ${((py.pipelineCpu / py.rows) * 1000).toFixed(1)} ms/sample in format+tokenize+parquet ` +
      `(${py.cpu.toFixed(1)} s with imports and load_dataset)`,
  );
  const ratio = node.rows / node.seconds / (py.rows / py.seconds);
  console.log(`ratio node/python samples/s: ${ratio.toFixed(2)}x (goal >= 2x); peak RSS node ${mib(node.peakRss)} vs python ${mib(py.peakRss)}`);
  const alone = await thumbnailAlone(datasetDir);
  const pyMsPerSample = (py.pipelineCpu / py.rows) * 1000;
  console.log(
    `thumbnail alone (${alone.images} distinct images to ${alone.edge} px, one at a time, best of 3 passes): ` +
      `product (libjpeg-turbo DCT-scaled decode + sharp) ${alone.productMs.toFixed(1)} ms CPU/image, sharp alone ${alone.sharpMs.toFixed(1)} ms, ` +
      `PIL + datasets' JPEG encode ${alone.pilMs.toFixed(1)} ms (the product takes ${(alone.productMs / alone.pilMs).toFixed(2)}x PIL's CPU); ` +
      `ceiling of the ratio if all but the thumbnail were free: ${pyMsPerSample.toFixed(1)} / ${alone.productMs.toFixed(1)} = ${(pyMsPerSample / alone.productMs).toFixed(2)}x`,
  );
}
process.exit(0);
