/**
 * Which files make up each split of a dataset folder or repository, resolved exactly as the
 * `datasets` library does it (datasets/data_files.py and the module factories of datasets/load.py),
 * so a dataset that `load_dataset` reads reads the same here, on the Hub, in S3 or in a folder:
 *
 * 1. the README's YAML `configs:` (or `.huggingface.yaml`): one config, chosen by name, by
 *    `default: true`, by the name `default`, or as the only one; its `data_files` per split
 *    (a string, a list, or a list of {split, path}) and `data_dir`;
 * 2. otherwise the sharded layout `data/<split>-00000-of-00001.*`, then split keywords in folder
 *    names, then in file names (train/training, validation/valid/dev/val, test/testing/eval/
 *    evaluation, with the separators `-._ ` and digits), and last: every data file is `train`.
 *
 * Patterns are fsspec globs (`*` within a path segment, `**` across segments); hidden files and
 * `__special__` folders are skipped unless a pattern names them; README.md and the other card
 * files never count. Pure code over a listing: no I/O here.
 */
import { parse as parseYaml } from 'yaml';

export const SPLIT_KEYWORDS: Record<string, string[]> = {
  train: ['train', 'training'],
  validation: ['validation', 'valid', 'dev', 'val'],
  test: ['test', 'testing', 'eval', 'evaluation'],
};
export const NON_WORDS_CHARS = '-._ 0-9';
export const SPLIT_PATTERN_SHARDED = 'data/{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]*.*';
// The fsspec >= 2023.12 variants (the version the trainer's datasets runs with).
export const KEYWORDS_IN_FILENAME_BASE_PATTERNS = ['**/{keyword}[{sep}]*', '**/*[{sep}]{keyword}[{sep}]*'];
export const KEYWORDS_IN_DIR_NAME_BASE_PATTERNS = ['**/{keyword}/**', '**/{keyword}[{sep}]*/**', '**/*[{sep}]{keyword}/**', '**/*[{sep}]{keyword}[{sep}]*/**'];
const DEFAULT_SPLITS = ['train', 'validation', 'test'];

function splitPatterns(bases: string[]): Record<string, string[]> {
  return Object.fromEntries(
    DEFAULT_SPLITS.map((split) => [
      split,
      SPLIT_KEYWORDS[split]!.flatMap((keyword) => bases.map((p) => p.replaceAll('{keyword}', keyword).replaceAll('{sep}', NON_WORDS_CHARS))),
    ]),
  );
}

export const DEFAULT_PATTERNS_SPLIT_IN_FILENAME = splitPatterns(KEYWORDS_IN_FILENAME_BASE_PATTERNS);
export const DEFAULT_PATTERNS_SPLIT_IN_DIR_NAME = splitPatterns(KEYWORDS_IN_DIR_NAME_BASE_PATTERNS);
export const DEFAULT_PATTERNS_ALL: Record<string, string[]> = { train: ['**'] };
const DEFAULT_PATTERNS_LOGS: Record<string, string[]> = { logs: ['**/*.eval'] };
const ALL_DEFAULT_PATTERNS = [DEFAULT_PATTERNS_LOGS, DEFAULT_PATTERNS_SPLIT_IN_DIR_NAME, DEFAULT_PATTERNS_SPLIT_IN_FILENAME, DEFAULT_PATTERNS_ALL];
export const FILES_TO_IGNORE = ['README.md', 'config.json', 'dataset_info.json', 'dataset_infos.json', 'dummy_data.zip', 'dataset_dict.json'];
/** datasets' rule for split names (naming._split_re). */
const SPLIT_NAME = /^\w+(\.\w+)*$/;

/** Bad README metadata or a config the dataset does not have: the caller names the field. */
export class DataFilesError extends Error {
  constructor(
    message: string,
    /** `config`: the `dataset.config` field is at fault; `dataset`: the dataset itself. */
    readonly culprit: 'config' | 'dataset',
  ) {
    super(message);
  }
}

const basename = (p: string) => p.slice(p.lastIndexOf('/') + 1);

export function hasMagic(pattern: string): boolean {
  return /[*?[]/.test(pattern);
}

const escapeRegExp = (s: string) => s.replace(/[\\^$.*+?()[\]{}|/-]/g, '\\$&');

/** One glob path segment (no `**`) as a regular expression, like CPython's glob._translate. */
function translateSegment(pat: string): string {
  const star = '[^/]*';
  const out: string[] = [];
  let i = 0;
  while (i < pat.length) {
    const c = pat[i++]!;
    if (c === '*') {
      if (out[out.length - 1] !== star) out.push(star);
    } else if (c === '?') {
      out.push('[^/]');
    } else if (c === '[') {
      let j = i;
      if (j < pat.length && pat[j] === '!') j++;
      if (j < pat.length && pat[j] === ']') j++;
      while (j < pat.length && pat[j] !== ']') j++;
      if (j >= pat.length) {
        out.push('\\[');
        continue;
      }
      let stuff = pat.slice(i, j);
      i = j + 1;
      if (!stuff) {
        out.push('(?!)');
        continue;
      }
      if (stuff === '!') {
        out.push('.');
        continue;
      }
      const negate = stuff[0] === '!';
      if (negate) stuff = stuff.slice(1);
      // Characters stand for themselves; "a-z" stays a range.
      const body = stuff.replace(/\\/g, '\\\\').replace(/[\]^[]/g, '\\$&');
      out.push(`[${negate ? '^' : ''}${body}]`);
    } else {
      out.push(escapeRegExp(c));
    }
  }
  return out.join('');
}

/** fsspec's glob_translate (recursive, hidden files included: filtered separately). */
export function globToRegExp(pattern: string): RegExp {
  const parts = pattern.split('/');
  const last = parts.length - 1;
  let res = '';
  parts.forEach((part, idx) => {
    if (part === '*') {
      res += idx < last ? '[^/]+/' : '[^/]+';
      return;
    }
    if (part === '**') {
      res += idx < last ? '(?:.+/)?' : '.*';
      return;
    }
    if (part.includes('**')) throw new DataFilesError(`invalid pattern "${pattern}": "**" can only be an entire path component`, 'dataset');
    if (part) res += translateSegment(part);
    if (idx < last) res += '/';
  });
  return new RegExp(`^(?:${res})$`, 's');
}

const parentParts = (p: string) => p.split('/').slice(0, -1);

/** datasets' _is_inside_unrequested_special_dir. */
function insideUnrequestedSpecialDir(path: string, pattern: string): boolean {
  const count = (parts: string[]) => parts.filter((s) => s.startsWith('__')).length;
  return count(parentParts(path)) !== count(parentParts(pattern));
}

/** datasets' _is_unrequested_hidden_file_or_is_inside_unrequested_hidden_dir. */
function unrequestedHidden(path: string, pattern: string): boolean {
  const count = (parts: string[]) => parts.filter((s) => s.startsWith('.') && !/^\.+$/.test(s)).length;
  return count(path.split('/')) !== count(pattern.split('/'));
}

/** Joins a base folder and a relative path, like datasets' xjoin on POSIX paths. */
function join(base: string, path: string): string {
  return base ? `${base.replace(/\/+$/, '')}/${path}` : path;
}

/**
 * datasets' resolve_pattern over a listing of file paths (relative to the dataset root, sorted):
 * the files the pattern matches, in path order. A pattern that matches nothing gives [] here;
 * resolvePatterns decides whether that is an error.
 */
export function resolvePattern(pattern: string, files: readonly string[], basePath = '', allowedExtensions?: readonly string[]): string[] {
  const full = join(basePath, pattern);
  const ignore = new Set(FILES_TO_IGNORE.filter((f) => f !== basename(full)));
  const re = hasMagic(full) ? globToRegExp(full) : null;
  const matches = files.filter((f) => (re ? re.test(f) : f === full));
  return matches.filter(
    (f) =>
      !ignore.has(basename(f)) &&
      !insideUnrequestedSpecialDir(f, full) &&
      !unrequestedHidden(f, full) &&
      (!allowedExtensions || basename(f).split('.').slice(1).some((suffix) => allowedExtensions.includes(`.${suffix}`))),
  );
}

/** datasets' _get_data_files_patterns: the first rule that finds any file wins. */
export function getDataPatterns(files: readonly string[], basePath = ''): Record<string, string[]> {
  const found = (pattern: string) => resolvePattern(pattern, files, basePath).length > 0;
  const sharded = resolvePattern(SPLIT_PATTERN_SHARDED.replace('{split}', '*'), files, basePath);
  if (sharded.length) {
    // string_to_dict: the pattern's basename read as a regular expression, {split} a group.
    const re = new RegExp(basename(SPLIT_PATTERN_SHARDED).replace('{split}', '(.+)'));
    const splits = new Set(sharded.map((p) => re.exec(basename(p))![1]!));
    const bad = [...splits].filter((s) => !SPLIT_NAME.test(s));
    if (bad.length) throw new DataFilesError(`split names must match ${SPLIT_NAME.source}, but the file names give: ${bad.join(', ')}`, 'dataset');
    const ordered = [...DEFAULT_SPLITS.filter((s) => splits.has(s)), ...[...splits].filter((s) => !DEFAULT_SPLITS.includes(s)).sort()];
    return Object.fromEntries(ordered.map((split) => [split, [SPLIT_PATTERN_SHARDED.replace('{split}', split)]]));
  }
  for (const patternsPerSplit of ALL_DEFAULT_PATTERNS) {
    const nonEmpty = Object.entries(patternsPerSplit).filter(([, patterns]) => patterns.some(found));
    if (nonEmpty.length) return Object.fromEntries(nonEmpty);
  }
  throw new DataFilesError(`no data files${basePath ? ` under "${basePath}"` : ''}`, 'dataset');
}

type YamlDataFiles = string | string[] | Array<{ split: string; path: string | string[] }>;

/** datasets' sanitize_patterns: data_files as written in YAML -> patterns per split. */
export function sanitizePatterns(patterns: unknown): Record<string, string[]> {
  const list = (v: unknown) => (Array.isArray(v) ? v.map(String) : [String(v)]);
  if (typeof patterns === 'string') return { train: [patterns] };
  if (Array.isArray(patterns)) {
    if (!patterns.some((p) => p && typeof p === 'object')) return { train: patterns.map(String) };
    for (const p of patterns) {
      const ok = p && typeof p === 'object' && !Array.isArray(p) && Object.keys(p).length === 2 && 'split' in p && (typeof p.path === 'string' || Array.isArray(p.path));
      if (!ok) throw new DataFilesError(`invalid data_files entry ${JSON.stringify(p)}: each item must be {split: <name>, path: <path or list of paths>}`, 'dataset');
    }
    const entries = patterns as Array<{ split: unknown; path: unknown }>;
    const splits = entries.map((p) => String(p.split));
    if (new Set(splits).size !== splits.length) throw new DataFilesError(`some splits are duplicated in data_files: ${splits.join(', ')}`, 'dataset');
    return Object.fromEntries(entries.map((p) => [String(p.split), list(p.path)]));
  }
  if (patterns && typeof patterns === 'object') return Object.fromEntries(Object.entries(patterns).map(([k, v]) => [k, list(v)]));
  throw new DataFilesError(`invalid data_files ${JSON.stringify(patterns)}: expected a string, a list, or a list of {split, path}`, 'dataset');
}

export interface MetadataConfig {
  config_name: string;
  data_files?: YamlDataFiles;
  data_dir?: string;
  default?: boolean;
}

/** huggingface_hub's REGEX_YAML_BLOCK: the YAML front matter of a dataset card. */
const YAML_BLOCK = /^(\s*---(?:\r\n|\r|\n))([\s\S]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))/;

/** The card metadata: the README's front matter, overridden key by key by `.huggingface.yaml`. */
export function cardMetadata(readme: string | undefined, standaloneYaml?: string): Record<string, unknown> {
  const read = (text: string, where: string) => {
    try {
      const value: unknown = parseYaml(text);
      return value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
    } catch (err) {
      throw new DataFilesError(`${where}: its YAML does not parse (${(err as Error).message.split('\n')[0]})`, 'dataset');
    }
  };
  const block = readme !== undefined ? YAML_BLOCK.exec(readme) : null;
  return { ...(block ? read(block[2]!, 'README.md') : {}), ...(standaloneYaml !== undefined ? read(standaloneYaml, '.huggingface.yaml') : {}) };
}

/** MetadataConfigs.from_dataset_card_data: the `configs:` list, checked. */
export function metadataConfigs(card: Record<string, unknown>): MetadataConfig[] {
  const configs = card.configs;
  if (!configs) return [];
  if (!Array.isArray(configs)) throw new DataFilesError(`README.md: expected configs to be a list, got ${JSON.stringify(configs)}`, 'dataset');
  return configs.map((c: unknown) => {
    if (!c || typeof c !== 'object' || !('config_name' in c)) {
      throw new DataFilesError(`README.md: each config must have a config_name, got ${JSON.stringify(c)}`, 'dataset');
    }
    return { ...(c as MetadataConfig), config_name: String((c as MetadataConfig).config_name) };
  });
}

/** MetadataConfigs.get_default_config_name. */
export function defaultConfigName(configs: MetadataConfig[]): string | undefined {
  let found: string | undefined;
  for (const c of configs) {
    if (configs.length === 1 || c.config_name === 'default' || c.default) {
      if (found !== undefined) throw new DataFilesError(`the dataset has several default configs: "${found}" and "${c.config_name}"`, 'dataset');
      found = c.config_name;
    }
  }
  return found;
}

/**
 * A path a README may name must stay inside the dataset: relative, no `..`, no URL (datasets
 * would follow `hf://` or `https://` patterns to other repositories and hosts; this pipeline
 * downloads one source and nothing else).
 */
function assertInside(path: string, what: string): void {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(path) || path.startsWith('/') || path.split('/').includes('..')) {
    throw new DataFilesError(`${what} "${path}" leaves the dataset: only relative paths inside it are allowed (no "..", no absolute paths or URLs)`, 'dataset');
  }
}

/** DataFilesPatternsList.resolve: every pattern in order; a literal path that is absent is an error. */
function resolvePatterns(patterns: string[], files: readonly string[], basePath: string): string[] {
  return patterns.flatMap((pattern) => {
    assertInside(pattern, 'data_files pattern');
    // datasets also drops extensions it has no module for; Parquet and JSONL, all this pipeline
    // reads, are among its extensions, so the caller's format filter covers that step.
    const out = resolvePattern(pattern, files, basePath);
    if (!out.length && !hasMagic(pattern)) throw new DataFilesError(`data_files names "${join(basePath, pattern)}", which the dataset does not have`, 'dataset');
    return out;
  });
}

export interface ResolvedDataFiles {
  /** The config used: its name in the README, or `default` when there is no `configs:`. */
  config: string;
  /** Split -> file paths (relative to the dataset root), in datasets' order. */
  splits: Record<string, string[]>;
}

/**
 * The data files of each split, given every file path in the dataset (relative, "/"-separated),
 * the README's and `.huggingface.yaml`'s text if present, and the requested config name.
 * Files of every extension take part in choosing the patterns, as in datasets; the caller keeps
 * the formats it reads.
 */
export function resolveDataFiles(input: { files: readonly string[]; readme?: string; standaloneYaml?: string; config?: string }): ResolvedDataFiles {
  const files = [...input.files].sort();
  const configs = metadataConfigs(cardMetadata(input.readme, input.standaloneYaml));
  const names = configs.map((c) => c.config_name);
  if (!configs.length) {
    if (input.config !== undefined && input.config !== 'default') {
      throw new DataFilesError(`config "${input.config}" not found: the dataset has no configs: section, so its only config is "default"`, 'config');
    }
    const patterns = getDataPatterns(files);
    return { config: 'default', splits: mapValues(patterns, (p) => resolvePatterns(p, files, '')) };
  }
  const name = input.config ?? defaultConfigName(configs);
  if (name === undefined) throw new DataFilesError(`config name is missing: the dataset's configs are ${names.join(', ')}`, 'config');
  const chosen = configs.find((c) => c.config_name === name);
  if (!chosen) throw new DataFilesError(`config "${name}" not found; the dataset's configs are: ${names.join(', ')}`, 'config');
  const dataDir = chosen.data_dir ? String(chosen.data_dir).replace(/^\.\/|\/+$/g, '') : '';
  if (dataDir) assertInside(dataDir, 'data_dir');
  const patterns = chosen.data_files !== undefined ? sanitizePatterns(chosen.data_files) : getDataPatterns(files, dataDir);
  return { config: name, splits: mapValues(patterns, (p) => resolvePatterns(p, files, dataDir)) };
}

function mapValues<T, U>(o: Record<string, T>, f: (v: T) => U): Record<string, U> {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, f(v)]));
}
