/**
 * Every relative link in README.md, docs/*.md and the trainer's two pages points at a file that
 * exists, and every #anchor into a Markdown file names one of its headings (GitHub's slugs).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../io/deps.js';

const ROOT = REPO_ROOT;
const DOCS = [
  'README.md',
  'trainer/README.md',
  'trainer/CONTRACT.md',
  ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`),
];

/** Markdown without fenced code blocks and inline code, where link syntax is just text. */
function prose(markdown: string): string {
  return markdown.replace(/^(```|~~~)[\s\S]*?^\1/gm, '').replace(/`[^`\n]*`/g, '');
}

/** Link targets `[text](target)` in prose. */
function linkTargets(markdown: string): string[] {
  return [...prose(markdown).matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)].map((m) => m[1]!);
}

/** The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces as '-'. */
function headingAnchors(markdown: string): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  for (const m of markdown.replace(/^(```|~~~)[\s\S]*?^\1/gm, '').matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const slug = m[1]!.toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-');
    const n = seen.get(slug) ?? 0;
    anchors.add(n ? `${slug}-${n}` : slug);
    seen.set(slug, n + 1);
  }
  return anchors;
}

const isExternal = (target: string) => /^[a-z][a-z0-9+.-]*:/i.test(target);

/** Problems with one document's links: missing files and unknown anchors. */
function brokenLinks(doc: string): string[] {
  const text = readFileSync(join(ROOT, doc), 'utf8');
  const problems: string[] = [];
  for (const target of linkTargets(text).filter((t) => !isExternal(t))) {
    const [pathPart, anchor] = target.split('#') as [string, string | undefined];
    const file = pathPart ? resolve(ROOT, dirname(doc), decodeURIComponent(pathPart)) : join(ROOT, doc);
    if (!existsSync(file)) {
      problems.push(`${target}: no such file ${relative(ROOT, file)}`);
    } else if (anchor && file.endsWith('.md') && !headingAnchors(readFileSync(file, 'utf8')).has(anchor)) {
      problems.push(`${target}: no heading #${anchor} in ${relative(ROOT, file)}`);
    }
  }
  return problems;
}

describe('documentation links', () => {
  it('reads links from prose only and slugs headings as GitHub does', () => {
    expect(linkTargets('see [a](docs/a.md#x) and `[b](nope.md)`\n```\n[c](nope2.md)\n```\n[d](https://x.org)')).toEqual(['docs/a.md#x', 'https://x.org']);
    expect([...headingAnchors('# A b\n## `train`: the stage (x/y)\n## A b\n```\n# not a heading\n```\n')]).toEqual(['a-b', 'train-the-stage-xy', 'a-b-1']);
  });

  for (const doc of DOCS) {
    it(`${doc}: every relative link and anchor resolves`, () => {
      expect(brokenLinks(doc)).toEqual([]);
    });
  }

  it('cites no design notes or issue numbers (they are not in the repository)', () => {
    for (const doc of DOCS) {
      const text = readFileSync(join(ROOT, doc), 'utf8');
      expect(text, doc).not.toMatch(/DESIGN\.md|\bDESIGN\b|\bissues? #?\d+|\(#\d+\)/i);
    }
  });
});
