/**
 * CLIP-style image preprocessing in Node (CLIPImageProcessor, as the trainer runs it with PIL):
 * decode -> RGB -> resize shortest edge (PIL bicubic) -> center crop -> rescale -> normalize ->
 * CHW float32. The resize is PIL's own fixed-point convolution (libImaging/Resample.c), not
 * sharp's, so pixel_values match the trainer's to float32 rounding and ONNX scores match PyTorch's
 * (test/integration/onnxParity.test.ts checks both).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';

export interface ImageProcessorConfig {
  shortestEdge: number;
  crop: { height: number; width: number };
  mean: [number, number, number];
  std: [number, number, number];
  rescaleFactor: number;
  doResize: boolean;
  doCenterCrop: boolean;
  doRescale: boolean;
  doNormalize: boolean;
}

/** Reads preprocessor_config.json (or the image processor nested in processor_config.json). */
export async function loadImageProcessorConfig(modelDir: string): Promise<ImageProcessorConfig> {
  const read = async (name: string) => JSON.parse(await readFile(join(modelDir, name), 'utf8')) as Record<string, unknown>;
  const raw = await read('preprocessor_config.json').catch(async () => (await read('processor_config.json')).image_processor as Record<string, unknown>);
  if (!raw) throw new Error(`${modelDir}: no preprocessor_config.json (image processor settings)`);
  const type = String(raw.image_processor_type ?? '');
  if (!/^CLIPImageProcessor(Fast)?$/.test(type)) {
    throw new Error(`${modelDir}: image processor "${type}" is not supported by the ONNX evaluator (supported: CLIPImageProcessor)`);
  }
  if (raw.resample !== undefined && raw.resample !== 3) throw new Error(`${modelDir}: only bicubic resampling (resample=3) is supported, got ${String(raw.resample)}`);
  const size = raw.size as Record<string, number>;
  const crop = (raw.crop_size ?? { height: size.shortest_edge, width: size.shortest_edge }) as { height: number; width: number };
  return {
    shortestEdge: size.shortest_edge ?? Math.min(size.height ?? 0, size.width ?? 0),
    crop,
    mean: raw.image_mean as [number, number, number],
    std: raw.image_std as [number, number, number],
    rescaleFactor: Number(raw.rescale_factor ?? 1 / 255),
    doResize: raw.do_resize !== false,
    doCenterCrop: raw.do_center_crop !== false,
    doRescale: raw.do_rescale !== false,
    doNormalize: raw.do_normalize !== false,
  };
}

interface RgbImage {
  width: number;
  height: number;
  /** Interleaved RGB, row-major. */
  data: Uint8Array;
}

/** Image bytes -> pixel_values for one image, [3, crop.height, crop.width] row-major float32. */
export async function pixelValues(bytes: Uint8Array, config: ImageProcessorConfig): Promise<Float32Array> {
  const { data, info } = await sharp(bytes).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  if (info.channels !== 3) throw new Error(`expected 3 colour channels after conversion, got ${info.channels}`);
  let image: RgbImage = { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
  if (config.doResize) {
    const [w, h] = shortestEdgeSize(image.width, image.height, config.shortestEdge);
    image = resizeBicubic(image, w, h);
  }
  if (config.doCenterCrop) image = centerCrop(image, config.crop.width, config.crop.height);
  const plane = image.width * image.height;
  const out = new Float32Array(3 * plane);
  const f = Math.fround;
  for (let c = 0; c < 3; c++) {
    const mean = f(config.mean[c]!);
    const std = f(config.std[c]!);
    for (let i = 0; i < plane; i++) {
      let v = image.data[i * 3 + c]!;
      // transformers: uint8 -> float64 * factor -> float32, then (x - mean) / std in float32.
      if (config.doRescale) v = f(v * config.rescaleFactor);
      if (config.doNormalize) v = f(f(v - mean) / std);
      out[c * plane + i] = v;
    }
  }
  return out;
}

/** transformers' get_resize_output_image_size(default_to_square=False): (width, height). */
function shortestEdgeSize(width: number, height: number, edge: number): [number, number] {
  const short = Math.min(width, height);
  const long = Math.max(width, height);
  const newLong = Math.trunc((edge * long) / short);
  return width <= height ? [edge, newLong] : [newLong, edge];
}

/** transformers' center_crop for images at least as large as the crop (the only case after resize). */
function centerCrop(image: RgbImage, width: number, height: number): RgbImage {
  if (image.width === width && image.height === height) return image;
  if (image.width < width || image.height < height) throw new Error(`image ${image.width}x${image.height} is smaller than the ${width}x${height} crop`);
  const top = Math.floor((image.height - height) / 2);
  const left = Math.floor((image.width - width) / 2);
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    data.set(image.data.subarray(((top + y) * image.width + left) * 3, ((top + y) * image.width + left + width) * 3), y * width * 3);
  }
  return { width, height, data };
}

// PIL's 8-bit resampling: coefficients in 22-bit fixed point (PRECISION_BITS = 32 - 8 - 2).
const PRECISION_BITS = 22;
const ONE = 2 ** PRECISION_BITS;

function bicubic(x: number): number {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

/** precompute_coeffs + normalize_coeffs_8bpc: per output pixel, [first input index, int weights]. */
function coefficients(inSize: number, outSize: number): Array<{ min: number; weights: number[] }> {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 2 * filterScale;
  const out: Array<{ min: number; weights: number[] }> = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterScale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const k: number[] = [];
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = bicubic((x + xmin - center + 0.5) * ss);
      k.push(w);
      ww += w;
    }
    const weights = k.map((w) => (ww !== 0 ? w / ww : w)).map((w) => (w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE)));
    out.push({ min: xmin, weights });
  }
  return out;
}

const clip8 = (ss: number) => (ss >= ONE * 256 ? 255 : ss <= 0 ? 0 : Math.floor(ss / ONE));

/** PIL Image.resize(BICUBIC): horizontal pass, then vertical, each rounding to 8 bits. */
export function resizeBicubic(image: RgbImage, width: number, height: number): RgbImage {
  let current = image;
  if (width !== current.width) {
    const coeffs = coefficients(current.width, width);
    const data = new Uint8Array(width * current.height * 3);
    for (let y = 0; y < current.height; y++) {
      for (let x = 0; x < width; x++) {
        const { min, weights } = coeffs[x]!;
        for (let c = 0; c < 3; c++) {
          let ss = ONE / 2;
          for (let i = 0; i < weights.length; i++) ss += current.data[(y * current.width + min + i) * 3 + c]! * weights[i]!;
          data[(y * width + x) * 3 + c] = clip8(ss);
        }
      }
    }
    current = { width, height: current.height, data };
  }
  if (height !== current.height) {
    const coeffs = coefficients(current.height, height);
    const data = new Uint8Array(current.width * height * 3);
    for (let y = 0; y < height; y++) {
      const { min, weights } = coeffs[y]!;
      for (let x = 0; x < current.width; x++) {
        for (let c = 0; c < 3; c++) {
          let ss = ONE / 2;
          for (let i = 0; i < weights.length; i++) ss += current.data[((min + i) * current.width + x) * 3 + c]! * weights[i]!;
          data[(y * current.width + x) * 3 + c] = clip8(ss);
        }
      }
    }
    current = { width: current.width, height, data };
  }
  return current;
}
