/**
 * The local stack: `temporal server start-dev` (SQLite file, Web UI on) and a MinIO server, both on
 * 127.0.0.1 with their data under .dpo/state/ so runs survive restarts. Services already listening
 * are reused; `down` stops only what `up` started (pid files record that).
 */
import { spawn } from 'node:child_process';
import { existsSync, openSync, readdirSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { basename, delimiter, join, resolve } from 'node:path';
import { REPO_ROOT } from '../io/deps.js';
import { pinnedVersions, userCacheDir } from '../io/toolsCache.js';
import { LOCAL_MINIO_CREDENTIALS, Storage, storageEnvFromProcess } from '../io/storage.js';

export const STATE_DIR = resolve(process.env.DPO_STATE_DIR ?? join(REPO_ROOT, '.dpo/state'));

interface ServiceSpec {
  name: 'temporal' | 'minio' | 'mlflow';
  host: string;
  port: number;
  command: () => { bin: string; args: string[]; env?: Record<string, string> };
  ready: () => Promise<boolean>;
}

/** The tool from the per-user cache that scripts/install-tools.sh fills, else from PATH. */
export function toolPath(name: 'temporal' | 'minio' | 'mlflow'): string {
  const v = pinnedVersions();
  const cacheDir = userCacheDir();
  const version = { temporal: v.TEMPORAL_CLI_VERSION, minio: v.MINIO_VERSION, mlflow: v.MLFLOW_VERSION }[name];
  const cached = join(cacheDir, 'tools', `${name}-${version}`, 'bin', name);
  if (existsSync(cached)) return cached;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  throw new Error(`${name} is not installed: run \`npm run setup\` (it installs ${name} into ${cacheDir}/tools, once)`);
}

function hostPort(value: string, fallbackPort: number): { host: string; port: number } {
  const url = new URL(value.includes('://') ? value : `tcp://${value}`);
  return { host: url.hostname, port: url.port ? Number(url.port) : fallbackPort };
}

export function portOpen(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((done) => {
    const socket = connect({ host, port });
    const finish = (ok: boolean) => {
      socket.destroy();
      done(ok);
    };
    socket.setTimeout(timeoutMs, () => finish(false));
    socket.once('connect', () => finish(true));
    socket.once('error', () => finish(false));
  });
}

function services(): ServiceSpec[] {
  const temporal = hostPort(process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233', 7233);
  const minio = hostPort(process.env.DPO_S3_ENDPOINT ?? 'http://127.0.0.1:9000', 9000);
  const uiPort = Number(process.env.DPO_TEMPORAL_UI_PORT ?? 8233);
  return [
    {
      name: 'temporal',
      ...temporal,
      command: () => ({
        bin: toolPath('temporal'),
        args: [
          'server', 'start-dev',
          '--ip', temporal.host,
          '--port', String(temporal.port),
          '--ui-port', String(uiPort),
          '--db-filename', temporalDbPath(STATE_DIR),
          '--log-level', 'warn',
        ],
      }),
      // The frontend port opens before the namespace is served; the UI port opens last.
      ready: async () => (await portOpen(temporal.host, temporal.port)) && (await portOpen(temporal.host, uiPort)),
    },
    {
      name: 'minio',
      ...minio,
      command: () => ({
        bin: toolPath('minio'),
        args: ['server', join(STATE_DIR, 'minio'), '--address', `${minio.host}:${minio.port}`, '--console-address', `${minio.host}:${minio.port + 1}`, '--quiet'],
        env: {
          MINIO_ROOT_USER: LOCAL_MINIO_CREDENTIALS.accessKey,
          MINIO_ROOT_PASSWORD: LOCAL_MINIO_CREDENTIALS.secretKey,
          MINIO_BROWSER: 'off',
        },
      }),
      ready: async () => httpOk(`http://${minio.host}:${minio.port}/minio/health/ready`),
    },
    ...(process.env.DPO_STACK_MLFLOW === '1' ? [mlflowService(minio)] : []),
  ];
}

async function httpOk(url: string): Promise<boolean> {
  try {
    return (await fetch(url)).ok;
  } catch {
    return false;
  }
}

/** The bucket the MLflow server keeps its artifacts in (under mlflow-artifacts/), in MinIO. */
export const MLFLOW_ARTIFACT_BUCKET = 'dpo';

/**
 * With DPO_STACK_MLFLOW=1: an MLflow tracking server (PyPI's, from the tools cache) on
 * 127.0.0.1:DPO_MLFLOW_PORT (5000), runs in SQLite under the state folder, artifacts in MinIO
 * through its S3 API, proxied by the server so that clients need no storage credentials.
 */
function mlflowService(minio: { host: string; port: number }): ServiceSpec {
  const port = Number(process.env.DPO_MLFLOW_PORT ?? 5000);
  return {
    name: 'mlflow',
    host: '127.0.0.1',
    port,
    command: () => ({
      bin: toolPath('mlflow'),
      args: [
        'server', '--host', '127.0.0.1', '--port', String(port), '--workers', '1',
        '--backend-store-uri', `sqlite:///${join(STATE_DIR, 'mlflow.db')}`,
        '--serve-artifacts', '--artifacts-destination', `s3://${MLFLOW_ARTIFACT_BUCKET}/mlflow-artifacts`,
      ],
      env: {
        MLFLOW_S3_ENDPOINT_URL: `http://${minio.host}:${minio.port}`,
        AWS_ACCESS_KEY_ID: LOCAL_MINIO_CREDENTIALS.accessKey,
        AWS_SECRET_ACCESS_KEY: LOCAL_MINIO_CREDENTIALS.secretKey,
        AWS_DEFAULT_REGION: 'us-east-1',
      },
    }),
    ready: async () => httpOk(`http://127.0.0.1:${port}/health`),
  };
}

const pidFile = (name: string) => join(STATE_DIR, `${name}.pid`);

/**
 * The dev server's SQLite file, one per Temporal CLI version: the dev server creates its schema
 * only in a new file and never migrates an old one, so a file written by an older CLI fails later
 * (schedules, for one, need tables that older servers did not create).
 */
export function temporalDbPath(stateDir: string, version = pinnedVersions().TEMPORAL_CLI_VERSION!): string {
  return join(stateDir, `temporal-${version}.db`);
}

/** History files of other Temporal CLI versions in the state folder (kept, no longer used). */
export function otherTemporalDbs(stateDir: string, version = pinnedVersions().TEMPORAL_CLI_VERSION!): string[] {
  const current = basename(temporalDbPath(stateDir, version));
  return existsSync(stateDir) ? readdirSync(stateDir).filter((f) => /^temporal(-.+)?\.db$/.test(f) && f !== current) : [];
}

async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${what} did not become ready within ${timeoutMs / 1000}s (see ${STATE_DIR}/*.log)`);
}

export interface StackStatus {
  started: string[];
  reused: string[];
}

/** Starts what is not already listening; waits until everything answers. */
export async function stackUp(log: (line: string) => void = () => {}): Promise<StackStatus> {
  await mkdir(STATE_DIR, { recursive: true });
  const status: StackStatus = { started: [], reused: [] };
  for (const svc of services()) {
    if (await portOpen(svc.host, svc.port)) {
      await waitFor(svc.ready, svc.name, 60_000);
      status.reused.push(svc.name);
      log(`${svc.name}: already running on ${svc.host}:${svc.port}, reusing it`);
      continue;
    }
    if (svc.name === 'temporal' && !existsSync(temporalDbPath(STATE_DIR))) {
      const old = otherTemporalDbs(STATE_DIR);
      if (old.length) log(`temporal: ${old.join(', ')} in ${STATE_DIR} came from another Temporal CLI version; starting a new history in ${basename(temporalDbPath(STATE_DIR))} (the old files are kept, runs recorded there are not visible)`);
    }
    const { bin, args, env } = svc.command();
    const out = openSync(join(STATE_DIR, `${svc.name}.log`), 'a');
    const child = spawn(bin, args, { detached: true, stdio: ['ignore', out, out], env: { ...process.env, ...env } });
    child.unref();
    await writeFile(pidFile(svc.name), String(child.pid));
    log(`${svc.name}: starting on ${svc.host}:${svc.port} (pid ${child.pid}, data in ${STATE_DIR})`);
    await waitFor(svc.ready, svc.name, svc.name === 'mlflow' ? 180_000 : 90_000);
    status.started.push(svc.name);
    if (svc.name === 'minio' && process.env.DPO_STACK_MLFLOW === '1') await new Storage(storageEnvFromProcess()).ensureBucket(MLFLOW_ARTIFACT_BUCKET);
  }
  await registerSearchAttributes(log);
  return status;
}

/**
 * Registers the custom search attributes dpoPipeline sets (contracts/lineage.ts), on a server started
 * here or reused. Idempotent. Production clusters do this once with
 * `temporal operator search-attribute create` (docs/schedules-and-lineage.md).
 */
export async function registerSearchAttributes(log: (line: string) => void = () => {}): Promise<void> {
  const { Connection } = await import('@temporalio/client');
  const { SEARCH_ATTRIBUTES } = await import('../contracts/lineage.js');
  const namespace = process.env.TEMPORAL_NAMESPACE ?? 'default';
  const connection = await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233' });
  try {
    const existing = await connection.operatorService.listSearchAttributes({ namespace });
    const missing = Object.values(SEARCH_ATTRIBUTES)
      .map((k) => k.name)
      .filter((name) => !(name in (existing.customAttributes ?? {})));
    if (!missing.length) return;
    const keyword = 2; // IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD (@temporalio/proto, not a direct dependency)
    await connection.operatorService.addSearchAttributes({ namespace, searchAttributes: Object.fromEntries(missing.map((n) => [n, keyword])) });
    log(`temporal: registered search attributes ${missing.join(', ')}`);
  } finally {
    await connection.close();
  }
}

/** Stops the services this stack started (those with a pid file), nothing else. */
export async function stackDown(log: (line: string) => void = () => {}): Promise<string[]> {
  const stopped: string[] = [];
  // Every service a pid file names, whether or not this environment would start it (MLflow).
  for (const name of ['temporal', 'minio', 'mlflow'] as const) {
    const pid = Number(await readFile(pidFile(name), 'utf8').catch(() => ''));
    if (!pid) continue;
    // MLflow's server runs its workers as children: signal its whole process group (it leads one).
    const target = name === 'mlflow' ? -pid : pid;
    try {
      process.kill(target, 'SIGTERM');
      const deadline = Date.now() + 15_000;
      while (Date.now() < deadline && alive(pid)) await new Promise((r) => setTimeout(r, 100));
      if (alive(pid)) process.kill(target, 'SIGKILL');
      stopped.push(name);
      log(`${name}: stopped (pid ${pid})`);
    } catch {
      log(`${name}: was not running`);
    }
    await rm(pidFile(name), { force: true });
  }
  return stopped;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export const temporalUiUrl = () => `http://127.0.0.1:${process.env.DPO_TEMPORAL_UI_PORT ?? 8233}`;
