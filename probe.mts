import { readdirSync } from 'node:fs';
import { ChatTokenizer } from './activities/chatTokenizer.js';
import { formatRow } from './activities/formatRows.js';
import { readRowRange } from './activities/sourceRows.js';
import { thumbnail } from './activities/formatRows.js';
import sharp from 'sharp';
const dir = '.dpo/bench/data/rlaifv-like-300-20-30-5/data/';
const f = dir + readdirSync(dir).find((n) => n.startsWith('train'))!;
const chat = await ChatTokenizer.load('test/fixtures/processors/idefics2');
let t = Date.now();
const rows = await readRowRange({ path: f, format: 'parquet', sourcePath: 'x', idPrefix: 'x', offset: 0, limit: 256 }, { image: 'image', question: 'question', chosen: 'chosen', rejected: 'rejected' });
console.log('read 256', Date.now() - t);
const opts = { edge: 490, maxPixels: 5e7, jpegQuality: 95 };
for (const conc of [1, 2, 4, 8]) {
  t = Date.now();
  for (let i = 0; i < 64; i += conc) await Promise.all(rows.slice(i, i + conc).map((r) => formatRow(r, chat, opts)));
  console.log('formatRow conc', conc, ((Date.now() - t) / 64).toFixed(1), 'ms/row');
}
const b = (rows[0]!.image as any).bytes;
for (const [label, fn] of [
  ['thumbnail', () => thumbnail(b, opts)],
  ['no rotate/flatten/colour', () => sharp(b).resize(490, 490, { fit: 'inside' }).jpeg({ quality: 95 }).toBuffer()],
  ['resize to 500 (exact /2)', () => sharp(b).resize(500, 500, { fit: 'inside' }).jpeg({ quality: 95 }).toBuffer()],
  ['resize 490 kernel cubic', () => sharp(b).resize(490, 490, { fit: 'inside', kernel: 'cubic' }).jpeg({ quality: 95 }).toBuffer()],
  ['shrink to 250', () => sharp(b).resize(250, 250, { fit: 'inside' }).jpeg({ quality: 95 }).toBuffer()],
  ['decode only', () => sharp(b).raw().toBuffer()],
  ['render only', async () => { chat.render([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'What color is it?' }] }]); }],
] as const) {
  t = Date.now();
  for (let i = 0; i < 30; i++) await fn();
  console.log(label, ((Date.now() - t) / 30).toFixed(1), 'ms');
}
