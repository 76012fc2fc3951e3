/**
 * The benchmark's dataset: RLAIF-V-like rows (the demo generator's questions and answers, the
 * RLAIF-V column layout) with realistic photos' weight: ~1000x800 JPEGs of about 170 KB (a
 * gradient scene with sensor-like noise). As in RLAIF-V, each image carries several preference
 * pairs: `distinctImages` images are shared round-robin by the rows. Written as Hub-style Parquet
 * shards with 100-row groups (as `datasets` writes image data). Deterministic; cached by spec.
 */
import { existsSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { askQuestion, randomScene, rng, rowsToParquet, type DemoRow } from '../../datagen/demoShapes.js';

export interface BenchDataSpec {
  trainRows: number;
  testRows: number;
  distinctImages: number;
  rowsPerFile: number;
  seed: number;
}

const W = 1000;
const H = 800;

export async function photo(i: number, noise: Buffer): Promise<Uint8Array> {
  const r = rng(i + 1);
  const hue = Math.floor(r() * 360);
  const shapes = Array.from({ length: 6 }, () => {
    const [x, y, s] = [r() * W, r() * H, 60 + r() * 200];
    const fill = `hsl(${Math.floor(r() * 360)},${40 + Math.floor(r() * 50)}%,${30 + Math.floor(r() * 40)}%)`;
    return r() < 0.5 ? `<circle cx="${x}" cy="${y}" r="${s / 2}" fill="${fill}"/>` : `<rect x="${x}" y="${y}" width="${s}" height="${s * 0.7}" fill="${fill}"/>`;
  }).join('');
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}"><defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="hsl(${hue},55%,65%)"/><stop offset="1" stop-color="hsl(${(hue + 120) % 360},45%,25%)"/></linearGradient></defs><rect width="${W}" height="${H}" fill="url(#g)"/>${shapes}</svg>`;
  const grain = await sharp(noise, { raw: { width: W + 200, height: H + 200, channels: 3 } })
    .extract({ left: Math.floor(r() * 200), top: Math.floor(r() * 200), width: W, height: H })
    .raw()
    .toBuffer();
  return sharp(Buffer.from(svg)).composite([{ input: grain, raw: { width: W, height: H, channels: 3 }, blend: 'add' }]).jpeg({ quality: 90 }).toBuffer();
}

export async function ensureBenchDataset(root: string, spec: BenchDataSpec, log = console.log): Promise<string> {
  const dir = join(root, `rlaifv-like-${spec.trainRows}-${spec.testRows}-${spec.distinctImages}-${spec.seed}`);
  if (existsSync(join(dir, 'data'))) return dir;
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(join(tmp, 'data'), { recursive: true });
  log(`generating ${spec.distinctImages} ${W}x${H} JPEGs...`);
  const noise = await sharp({ create: { width: W + 200, height: H + 200, channels: 3, background: '#000000', noise: { type: 'gaussian', mean: 0, sigma: 12 } } }).raw().toBuffer();
  const images: Uint8Array[] = [];
  for (let i = 0; i < spec.distinctImages; i += 2) {
    images.push(...(await Promise.all([photo(i, noise), photo(i + 1, noise)].slice(0, spec.distinctImages - i))));
  }
  const r = rng(spec.seed);
  for (const [split, count] of [
    ['train', spec.trainRows],
    ['test', spec.testRows],
  ] as const) {
    const files = Math.max(1, Math.ceil(count / spec.rowsPerFile));
    for (let f = 0; f < files; f++) {
      const rows: DemoRow[] = [];
      for (let i = f * spec.rowsPerFile; i < Math.min(count, (f + 1) * spec.rowsPerFile); i++) {
        const n = split === 'train' ? i : spec.trainRows + i;
        const qa = askQuestion(r, randomScene(r));
        const path = `photos/${String(n % spec.distinctImages).padStart(6, '0')}.jpg`;
        rows.push({
          ds_name: 'bench',
          image: { bytes: images[n % spec.distinctImages]!, path },
          // Distinct texts per row: image reuse is never a duplicate pair.
          question: `${qa.question} (pair ${n})`,
          chosen: qa.chosen,
          rejected: qa.rejected,
          origin_dataset: 'dpo-vlm bench generator',
          origin_split: split,
          idx: String(n),
          image_path: path,
        });
      }
      const name = `${split}-${String(f).padStart(5, '0')}-of-${String(files).padStart(5, '0')}.parquet`;
      await writeFile(join(tmp, 'data', name), rowsToParquet(rows));
    }
  }
  await rename(tmp, dir);
  return dir;
}
