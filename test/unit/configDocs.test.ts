/** docs/configuration.md is generated from the config's JSON Schema and must match it. */
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { DOC_PATH, readSchema, renderConfigDocs, undescribedFields } from '../../scripts/configDocs.js';

describe('docs/configuration.md', () => {
  it('is what scripts/configDocs.ts renders from configs/pipeline.schema.json', async () => {
    const committed = await readFile(DOC_PATH, 'utf8');
    const rendered = renderConfigDocs(readSchema());
    // A plain boolean keeps the failure message short and actionable; the diff is one command away.
    expect(committed === rendered, 'docs/configuration.md is stale: run `npx tsx scripts/configDocs.ts`').toBe(true);
  });

  it('lists every schema field exactly once, under its dotted path', () => {
    const page = renderConfigDocs(readSchema());
    const fields = [...page.matchAll(/^\| `([^`]+)` \|/gm)].map((m) => m[1]);
    expect(new Set(fields).size).toBe(fields.length);
    for (const path of ['name', 'model.source', 'dataset.columns.image', 'train.lora.r', 'train.segment_steps', 'evaluate.amber_suite', 'stages[].retry.maximum_attempts']) {
      expect(fields).toContain(path);
    }
    // Every undescribed leaf still gets a row (with an empty description), so nothing is hidden.
    for (const path of undescribedFields(readSchema())) expect(fields).toContain(path);
  });

  it('renders types, bounds and defaults readably', () => {
    const page = renderConfigDocs(readSchema());
    const row = (field: string) => page.split('\n').find((line) => line.startsWith(`| \`${field}\` |`));
    expect(row('model.source')).toContain('| non-empty string | required |');
    expect(row('train.per_device_train_batch_size')).toContain('| integer > 0 or `"auto"` | `2` |');
    expect(row('tokenize.truncation_mode')).toContain('`"keep_end"` \\| `"keep_start"`');
    expect(row('format.jpeg_quality')).toContain('integer >= 1, <= 100');
    expect(row('stages[].timeouts.heartbeat')).toContain('| duration | unset |');
    expect(row('dataset.max_train_samples')).toContain('| integer > 0 | unset |');
  });
});
