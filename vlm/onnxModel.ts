/**
 * An exported model (trainer/dpo_trainer/export.py) loaded into onnxruntime-node, with the three
 * ways the evaluator uses it: completion log-probs of preference pairs, next-token scores (yes/no
 * questions) and greedy decoding. Inputs are right-padded batches; see export.py for the signature.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';

export interface OnnxSignature {
  format: string;
  inputs: Record<string, { dtype: string; shape: Array<string | number> }>;
  vocab_size: number;
  pad_token_id: number;
  image_token_id: number | null;
}

/** The export in `dir` is missing or onnxruntime cannot load it: no retry can fix that. */
export class OnnxLoadError extends Error {
  constructor(
    readonly model: string,
    reason: string,
  ) {
    super(`cannot load the ONNX export of ${model}: ${reason}`);
    this.name = 'OnnxLoadError';
  }
}

export interface ScoredRow {
  /** Token ids of the whole sequence (prompt + completion). */
  ids: number[];
  /** Index of the first completion token; tokens before it are the prompt. */
  completionStart: number;
  /** pixel_values of the row's image, [3, H, W], or null for text-only rows. */
  pixels: Float32Array | null;
}

export class OnnxModel {
  private constructor(
    private readonly session: ort.InferenceSession,
    readonly signature: OnnxSignature,
    readonly label: string,
  ) {}

  /** `label` names the model in errors (e.g. "base model s3://..." or "adapter s3://..."). */
  static async load(dir: string, label: string, threads = 1): Promise<OnnxModel> {
    let signature: OnnxSignature;
    try {
      signature = JSON.parse(await readFile(join(dir, 'signature.json'), 'utf8')) as OnnxSignature;
    } catch (err) {
      throw new OnnxLoadError(label, `no readable signature.json in ${dir} (${(err as Error).message})`);
    }
    if (signature.format !== 'dpo-onnx-export/1') throw new OnnxLoadError(label, `unknown export format "${signature.format}" in ${dir}/signature.json`);
    try {
      const session = await ort.InferenceSession.create(join(dir, 'model.onnx'), {
        intraOpNumThreads: threads,
        interOpNumThreads: 1,
        executionMode: 'sequential',
        graphOptimizationLevel: 'all',
      });
      return new OnnxModel(session, signature, label);
    } catch (err) {
      throw new OnnxLoadError(label, `onnxruntime rejected ${join(dir, 'model.onnx')}: ${(err as Error).message.slice(0, 600)}`);
    }
  }

  get hasVision(): boolean {
    return 'pixel_values' in this.signature.inputs;
  }

  /**
   * Runs one right-padded batch and returns the requested outputs. Logits are computed from
   * position `firstScored - 1` on (export.py): callers pass the first position they need.
   */
  async run(rows: Array<{ ids: number[]; pixels: Float32Array | null; segments?: number[] }>, fetch: Array<'token_logps' | 'last_logits' | 'logits'>, firstScored = 1) {
    const width = Math.max(...rows.map((r) => r.ids.length));
    const shortest = Math.min(...rows.map((r) => r.ids.length));
    if (!(firstScored >= 1 && firstScored <= shortest)) throw new Error(`firstScored ${firstScored} must be in 1..${shortest} (the shortest row)`);
    const ids = new BigInt64Array(rows.length * width).fill(BigInt(this.signature.pad_token_id));
    const mask = new BigInt64Array(rows.length * width);
    const segments = new BigInt64Array(rows.length * width);
    rows.forEach((r, i) => {
      for (let t = 0; t < r.ids.length; t++) {
        ids[i * width + t] = BigInt(r.ids[t]!);
        mask[i * width + t] = 1n;
        if (r.segments) segments[i * width + t] = BigInt(r.segments[t]!);
      }
    });
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', ids, [rows.length, width]),
      attention_mask: new ort.Tensor('int64', mask, [rows.length, width]),
      first_scored: new ort.Tensor('int64', BigInt64Array.from([BigInt(firstScored)]), []),
    };
    if (this.packs) feeds.segment_ids = new ort.Tensor('int64', segments, [rows.length, width]);
    else if (rows.some((r) => r.segments)) throw new Error(`${this.label}: this export predates packed rows (no segment_ids input)`);
    if (this.hasVision) {
      const shape = this.signature.inputs.pixel_values!.shape.slice(1).map(Number);
      const plane = shape.reduce((a, b) => a * b, 1);
      const pixels = new Float32Array(rows.length * plane);
      rows.forEach((r, i) => {
        if (!r.pixels || r.pixels.length !== plane) throw new Error(`row ${i}: pixel_values of ${r.pixels?.length ?? 0} values, the model takes ${plane}`);
        pixels.set(r.pixels, i * plane);
      });
      feeds.pixel_values = new ort.Tensor('float32', pixels, [rows.length, ...shape]);
    }
    const out = await this.session.run(feeds, fetch);
    return { width, out: Object.fromEntries(fetch.map((name) => [name, out[name]!.data as Float32Array])) as Record<(typeof fetch)[number], Float32Array> };
  }

  /** Whether the export takes `segment_ids` (packed rows); exports made before it do not. */
  get packs(): boolean {
    return 'segment_ids' in this.signature.inputs;
  }

  /**
   * Sum of log p(token) over each row's completion tokens (trainer's completion_logps).
   * Rows with the same prompt and the same image (the same `pixels` array: a pair's chosen and
   * rejected rows) run as one packed sequence, prompt + completion 1 + completion 2 + ..., each
   * completion attending to the prompt and to itself only (export.py, packed_attention): the
   * prompt and its image are encoded once instead of once per row, same values.
   * `pack: false` scores every row on its own (bench/eval: the same rows PyTorch scores).
   */
  async completionLogps(rows: ScoredRow[], options: { pack?: boolean } = {}): Promise<number[]> {
    const packed = this.packs && options.pack !== false ? packRows(rows) : rows.map((r, i) => ({ ids: r.ids, pixels: r.pixels, segments: undefined, spans: [{ row: i, start: r.completionStart, end: r.ids.length }] }));
    const first = Math.max(1, Math.min(...packed.map((p) => p.spans[0]!.start)));
    const { width, out } = await this.run(packed, ['token_logps'], first);
    const logps = out.token_logps;
    const sums = new Array<number>(rows.length).fill(0);
    packed.forEach((p, i) => {
      for (const span of p.spans) {
        let sum = 0;
        // token_logps[:, t - first] is log p(ids[t] | what token t sees).
        for (let t = Math.max(span.start, 1); t < span.end; t++) sum += logps[i * (width - first) + t - first]!;
        sums[span.row] = sum;
      }
    });
    return sums;
  }

  /** Log-softmax of the next-token logits after each row, restricted to `tokenIds`. */
  async nextTokenLogprobs(rows: Array<{ ids: number[]; pixels: Float32Array | null }>, tokenIds: number[]): Promise<number[][]> {
    const { out } = await this.run(rows, ['last_logits'], Math.min(...rows.map((r) => r.ids.length)));
    const vocab = out.last_logits.length / rows.length;
    return rows.map((_, i) => {
      const logits = out.last_logits.subarray(i * vocab, (i + 1) * vocab);
      const lse = logSumExp(logits);
      return tokenIds.map((id) => logits[id]! - lse);
    });
  }

  /**
   * Greedy decoding without a KV cache (the export has none): each step reruns the sequence, so
   * this is for a handful of short answers in the report, not for bulk generation.
   */
  async greedy(prompt: number[], pixels: Float32Array | null, maxNewTokens: number, eosTokenId: number): Promise<number[]> {
    const ids = [...prompt];
    const generated: number[] = [];
    for (let i = 0; i < maxNewTokens; i++) {
      const { out } = await this.run([{ ids, pixels }], ['last_logits'], ids.length);
      let best = 0;
      for (let v = 1; v < out.last_logits.length; v++) if (out.last_logits[v]! > out.last_logits[best]!) best = v;
      if (best === eosTokenId) break;
      ids.push(best);
      generated.push(best);
    }
    return generated;
  }

  /**
   * Greedy decoding of several prompts at once (right-padded, no KV cache): each step runs the
   * rows still generating as one batch. Same tokens as `greedy` row by row.
   */
  async greedyBatch(rows: Array<{ ids: number[]; pixels: Float32Array | null }>, maxNewTokens: number, eosTokenId: number): Promise<number[][]> {
    const ids = rows.map((r) => [...r.ids]);
    const generated: number[][] = rows.map(() => []);
    let active = rows.map((_, i) => i);
    for (let step = 0; step < maxNewTokens && active.length; step++) {
      const batch = active.map((i) => ({ ids: ids[i]!, pixels: rows[i]!.pixels }));
      const { out } = await this.run(batch, ['last_logits'], Math.min(...batch.map((b) => b.ids.length)));
      const vocab = out.last_logits.length / batch.length;
      const still: number[] = [];
      active.forEach((row, j) => {
        const logits = out.last_logits.subarray(j * vocab, (j + 1) * vocab);
        let best = 0;
        for (let v = 1; v < vocab; v++) if (logits[v]! > logits[best]!) best = v;
        if (best === eosTokenId) return;
        ids[row]!.push(best);
        generated[row]!.push(best);
        still.push(row);
      });
      active = still;
    }
    return generated;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

interface PackedRow {
  ids: number[];
  pixels: Float32Array | null;
  segments: number[] | undefined;
  /** Where each original row's completion lies in `ids`. */
  spans: Array<{ row: number; start: number; end: number }>;
}

/** Groups rows by (prompt tokens, pixels array) into one sequence per group (see completionLogps). */
function packRows(rows: ScoredRow[]): PackedRow[] {
  const imageIds = new Map<Float32Array, number>();
  const groups = new Map<string, PackedRow>();
  const out: PackedRow[] = [];
  rows.forEach((r, row) => {
    const prompt = r.ids.slice(0, r.completionStart);
    const image = r.pixels ? (imageIds.get(r.pixels) ?? imageIds.set(r.pixels, imageIds.size).get(r.pixels)!) : -1;
    const key = `${image}:${prompt.join(',')}`;
    const group = r.completionStart >= 1 ? groups.get(key) : undefined;
    if (!group) {
      const fresh: PackedRow = { ids: [...r.ids], pixels: r.pixels, segments: r.ids.map((_, t) => (t < r.completionStart ? 0 : 1)), spans: [{ row, start: r.completionStart, end: r.ids.length }] };
      if (r.completionStart >= 1) groups.set(key, fresh);
      out.push(fresh);
      return;
    }
    const start = group.ids.length;
    const branch = group.spans.length + 1;
    for (const id of r.ids.slice(r.completionStart)) {
      group.ids.push(id);
      group.segments!.push(branch);
    }
    group.spans.push({ row, start, end: group.ids.length });
  });
  return out;
}

function logSumExp(xs: Float32Array): number {
  let max = -Infinity;
  for (const x of xs) if (x > max) max = x;
  let sum = 0;
  for (const x of xs) sum += Math.exp(x - max);
  return max + Math.log(sum);
}
