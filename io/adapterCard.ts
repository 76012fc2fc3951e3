/**
 * Makes a trained adapter folder stand on its own before it is published: its
 * `adapter_config.json` names the base model by its source id (PEFT writes the folder it loaded
 * the base from, a worker's scratch path, so `PeftModel.from_pretrained(adapter)` could not find
 * it) with the pinned revision, and its README.md is the run's model card instead of PEFT's
 * placeholder. The folder's manifest is brought up to date, so readers still verify every file.
 */
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MANIFEST_FILE } from '../contracts/keys.js';
import { sha256Hex } from './files.js';

interface FolderManifest {
  files: Array<{ path: string; sha256: string; bytes?: number }>;
}

/** `finalDir` holds `adapter/` and the trainer's manifest.json. */
export async function nameAdapterBase(finalDir: string, base: { id: string; revision: string | null }, card: string): Promise<void> {
  const configPath = join(finalDir, 'adapter', 'adapter_config.json');
  const config = JSON.parse(await readFile(configPath, 'utf8')) as Record<string, unknown>;
  config.base_model_name_or_path = base.id;
  config.revision = base.revision;
  await writeFile(configPath, `${JSON.stringify(config, null, 2)}\n`);
  await writeFile(join(finalDir, 'adapter', 'README.md'), card);

  const manifestPath = join(finalDir, MANIFEST_FILE);
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as FolderManifest;
  for (const rel of ['adapter/adapter_config.json', 'adapter/README.md']) {
    const bytes = await readFile(join(finalDir, rel));
    const entry = { path: rel, sha256: sha256Hex(bytes), bytes: (await stat(join(finalDir, rel))).size };
    const i = manifest.files.findIndex((f) => f.path === rel);
    if (i >= 0) manifest.files[i] = { ...manifest.files[i], ...entry };
    else manifest.files.push(entry);
  }
  manifest.files.sort((a, b) => a.path.localeCompare(b.path));
  await writeFile(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
}
