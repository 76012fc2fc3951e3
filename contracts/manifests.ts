/**
 * Stage manifests other modules read: the header every cached stage output carries, and the
 * outputs that later stages stage onto a GPU worker (token shards, reference log-probs). Each is
 * written last, so a reader that finds one finds a complete output.
 */
import type { StageKind } from './keys.js';

export interface StageManifestBase {
  kind: StageKind;
  hash: string;
  createdAt: string;
  summary: Record<string, number | string>;
}

export interface ShardEntry {
  key: string;
  rows: number;
  tokens: number;
  bytes: number;
  sha256: string;
  firstSampleId: string;
  lastSampleId: string;
}

export interface ShardManifest extends StageManifestBase {
  splits: Record<string, {
    rows: number;
    tokens: number;
    shards: ShardEntry[];
    /** The most images one row holds (absent in manifests written before it: one). */
    maxImagesPerRow?: number;
  }>;
}

export interface ReferenceManifest extends StageManifestBase {
  /** Key prefix of the trainer's output folder (ref_logps.parquet + its manifest.json). */
  logpsPrefix: string;
  files: string[];
  samples: number;
}
