/**
 * Temporal connection settings from the environment, shared by workers and the CLI:
 * TEMPORAL_ADDRESS (default 127.0.0.1:7233), TEMPORAL_NAMESPACE (default "default"),
 * TEMPORAL_API_KEY, TEMPORAL_TLS_CERT / TEMPORAL_TLS_KEY (mTLS file paths, e.g. Temporal Cloud).
 */
import { readFileSync } from 'node:fs';

export interface TemporalEnv {
  address: string;
  namespace: string;
  apiKey?: string;
  tls?: { clientCertPair: { crt: Buffer; key: Buffer } } | true;
}

export function temporalEnv(env: NodeJS.ProcessEnv = process.env): TemporalEnv {
  const cert = env.TEMPORAL_TLS_CERT;
  const key = env.TEMPORAL_TLS_KEY;
  return {
    address: env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233',
    namespace: env.TEMPORAL_NAMESPACE ?? 'default',
    apiKey: env.TEMPORAL_API_KEY || undefined,
    tls: cert && key ? { clientCertPair: { crt: readFileSync(cert), key: readFileSync(key) } } : env.TEMPORAL_API_KEY ? true : undefined,
  };
}

export const DEFAULT_QUEUES = { cpu: process.env.DPO_CPU_QUEUE ?? 'dpo', gpu: process.env.DPO_GPU_QUEUE ?? 'dpo-gpu' };
