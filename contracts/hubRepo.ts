/**
 * Names of Hugging Face Hub repositories as configs write them: `hf://Org/name[@revision]`, and
 * for models also the bare `Org/name[@revision]` of TRL's `model_name_or_path`. Pure code: the
 * workflow uses it to decide whether a model revision must be pinned at run start.
 */

export interface HubRepoRef {
  /** `Org/name`, as `from_pretrained` takes it. */
  name: string;
  /** A branch, tag or commit sha; `main` when the config names none. */
  revision: string;
}

export class HubRefError extends Error {}

const HUB_NAME = /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/;

/**
 * Parses a Hub source; `field` names the config field in the error. A revision or name with "."
 * or ".." segments (or empty ones) is refused: it would reach other repositories' URLs or leave
 * the cache folder the files are written to.
 */
export function parseHubRef(uri: string, field: string, { bare = false, kind = 'dataset' }: { bare?: boolean; kind?: 'dataset' | 'model' } = {}): HubRepoRef {
  const prefixed = uri.startsWith('hf://');
  if (!prefixed && !bare) throw new HubRefError(`${field} "${uri}": expected hf://owner/name or hf://owner/name@revision`);
  let rest = prefixed ? uri.slice('hf://'.length) : uri;
  if (prefixed && kind === 'dataset') rest = rest.replace(/^datasets\//, '');
  if (prefixed && kind === 'model') rest = rest.replace(/^models\//, '');
  const at = rest.indexOf('@');
  const name = (at < 0 ? rest : rest.slice(0, at)).replace(/\/+$/, '');
  const revision = at < 0 ? 'main' : rest.slice(at + 1).replace(/\/+$/, '');
  const segments = [...name.split('/'), ...(at < 0 ? [] : revision.split('/'))];
  if (segments.some((s) => s === '' || /^\.+$/.test(s))) {
    throw new HubRefError(`${field} "${uri}": the path leaves the repository ("." or ".." segments are not allowed)`);
  }
  if (!HUB_NAME.test(name) || !/^[\w./-]+$/.test(revision)) {
    const shape = bare ? 'Org/name, Org/name@revision, hf://Org/name or hf://Org/name@revision' : 'hf://owner/name or hf://owner/name@revision';
    throw new HubRefError(`${field} "${uri}": expected ${shape}`);
  }
  return { name, revision };
}

/** A model source names a Hub repository (rather than s3:// or a local folder). */
export function isHubModelSource(source: string): boolean {
  return source.startsWith('hf://') || isBareHubName(source);
}

/** `Org/name[@rev]` without a scheme: what TRL's model_name_or_path takes (local folders start with /, ./ or ../). */
export function isBareHubName(source: string): boolean {
  return /^[A-Za-z0-9][\w.-]*\/[^/]/.test(source) && !source.includes('://');
}

/** The source with its revision replaced by the commit sha it resolved to: what every stage reads. */
export function pinnedHubSource(ref: HubRepoRef, sha: string): string {
  return `hf://${ref.name}@${sha}`;
}

export const COMMIT_SHA = /^[0-9a-f]{40}$/;
