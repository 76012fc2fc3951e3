/**
 * report: the run's folder in storage gets
 *   charts/*.png   learning curves (loss, rewards/accuracies, rewards/margins per step)
 *   report.json    everything below as data
 *   report.html    the evaluation table (base vs DPO, deltas; preference and AMBER yes/no
 *                  metrics), greedy answers side by side with their images, curves, training,
 *                  the DAG and the stage timeline (cache hits, retries, OOM replans, preemptions)
 *   report.md      the same in Markdown
 *   manifest.json  written last: a report is final only when it exists (a crash before leaves
 *                  a report without a manifest, which readers treat as partial)
 */
import type { EvalMetrics, YesNoMetrics } from '../../contracts/evalMetrics.js';
import { keys } from '../../contracts/keys.js';
import { attemptCells } from '../../contracts/attempts.js';
import type { AmberExample, EvaluateResult, GeneratedExample, ReportInput, ReportResult } from '../../contracts/payloads.js';
import { lineChartSvg, svgToPng, type Series } from './charts.js';
import { renderSweepTable } from '../../contracts/sweep.js';
import { describeTracking } from '../../contracts/tracking.js';
import type { ActivityDeps } from '../../io/deps.js';
import type { StepRecord } from '../../contracts/progress.js';
import { logReportToTrackers } from './tracking.js';
import { Context } from '@temporalio/activity';

export const REPORT_MANIFEST_FORMAT = 'dpo-report/1';

interface Chart {
  name: string;
  title: string;
  key: string;
}

const CURVES: Array<{ name: string; title: string; metrics: Array<[string, string]> }> = [
  { name: 'loss', title: 'DPO loss', metrics: [['loss', '#1f77b4']] },
  // sft stages (TRL SFTTrainer's names; their loss curve is titled by objective below).
  { name: 'mean-token-accuracy', title: 'mean_token_accuracy', metrics: [['mean_token_accuracy', '#2ca02c']] },
  { name: 'rewards-accuracies', title: 'rewards/accuracies', metrics: [['rewards/accuracies', '#2ca02c']] },
  { name: 'rewards-margins', title: 'rewards/margins', metrics: [['rewards/margins', '#d62728']] },
  { name: 'rewards', title: 'rewards/chosen and rewards/rejected', metrics: [['rewards/chosen', '#2ca02c'], ['rewards/rejected', '#d62728']] },
];

/** The pipeline's Temporal ids; none where writeReport runs outside an activity (fault tests). */
function currentWorkflow(): { workflowId: string; runId: string } | undefined {
  try {
    return Context.current().info.workflowExecution;
  } catch {
    return undefined;
  }
}

export async function writeReport(deps: ActivityDeps, input: ReportInput): Promise<ReportResult> {
  const { storage } = deps;
  const prefix = keys.reportPrefix(input.runId, input.stageId);
  const written: Array<{ key: string; bytes: number }> = [];
  const put = async (key: string, body: Buffer | string, type: string) => {
    await storage.putBuffer(input.bucket, key, body, type);
    written.push({ key, bytes: Buffer.byteLength(body) });
  };

  // Learning curves of each train stage, from the step metrics it stored.
  const charts: Record<string, Chart[]> = {};
  const curves: Record<string, StepRecord[]> = {};
  for (const [id, t] of Object.entries(input.trainings)) {
    if (!t.stepMetricsKey || !(await storage.exists(input.bucket, t.stepMetricsKey))) continue;
    const history = await storage.getJson<StepRecord[]>(input.bucket, t.stepMetricsKey);
    curves[id] = history;
    charts[id] = [];
    for (const curve of CURVES) {
      const series: Series[] = curve.metrics.map(([metric, colour]) => ({
        label: metric,
        colour,
        points: history.filter((h) => typeof h.metrics[metric] === 'number').map((h) => [h.step, h.metrics[metric]!] as [number, number]),
      }));
      if (!series.some((s) => s.points.length)) continue;
      const key = `${prefix}charts/${id}-${curve.name}.png`;
      const title = curve.name === 'loss' && t.objective === 'sft' ? 'SFT loss (NLL per assistant token)' : curve.title;
      await put(key, await svgToPng(lineChartSvg(`${id}: ${title}`, 'optimizer step', series)), 'image/png');
      charts[id]!.push({ name: curve.name, title, key });
    }
  }

  // Images of the greedy examples, embedded in the HTML (small thumbnails).
  const images: Record<string, string> = {};
  for (const e of Object.values(input.evaluations)) {
    for (const g of [...(e.generations ?? []), ...(e.amberExamples ?? [])]) {
      if (g.imageKey && (await storage.exists(input.bucket, g.imageKey))) {
        images[g.imageKey] = `data:image/jpeg;base64,${(await storage.getBuffer(input.bucket, g.imageKey)).toString('base64')}`;
      }
    }
  }

  const markdownKey = `${prefix}report.md`;
  const htmlKey = `${prefix}report.html`;
  const jsonKey = `${prefix}report.json`;
  const manifestKey = `${prefix}manifest.json`;
  const view: ReportView = { input, charts, prefix, images };
  await put(
    jsonKey,
    JSON.stringify(
      {
        runId: input.runId,
        name: input.config.name,
        model: input.config.model.source,
        ...(input.modelRevision && { modelRevision: input.modelRevision }),
        dataset: input.config.dataset.source,
        timeline: input.timeline,
        dataStages: input.dataStages,
        trainings: input.trainings,
        learningCurves: curves,
        evaluations: input.evaluations,
        config: input.config,
      },
      null,
      2,
    ),
    'application/json',
  );
  const html = renderHtml(view);
  const markdown = renderMarkdown(view);
  await put(htmlKey, html, 'text/html; charset=utf-8');
  await put(markdownKey, markdown, 'text/markdown; charset=utf-8');
  const modelCards: Record<string, string> = {};
  for (const [id, card] of Object.entries(await evaluatedModelCards(deps, input))) {
    modelCards[id] = `${prefix}model-cards/${id}.md`;
    await put(modelCards[id], card, 'text/markdown; charset=utf-8');
  }
  // Last: the report is final only once its manifest lists every file.
  await storage.putJson(input.bucket, manifestKey, { format: REPORT_MANIFEST_FORMAT, runId: input.runId, createdAt: new Date().toISOString(), files: written });
  // The evaluations and the report for the run's trackers (train.report_to): never a failure.
  const tracking = await logReportToTrackers(deps, { report: input, files: { 'report.md': markdown, 'report.html': html }, workflow: currentWorkflow() });
  return { markdownKey, htmlKey, jsonKey, manifestKey, ...(Object.keys(modelCards).length && { modelCards }), ...(tracking && { tracking }) };
}

/**
 * The card the train stage wrote beside its adapter (base model, data, recipe), with the
 * evaluations of that adapter added: what `dpo pull` and publishing give as the adapter's README.md.
 */
async function evaluatedModelCards(deps: ActivityDeps, input: ReportInput): Promise<Record<string, string>> {
  const cards: Record<string, string> = {};
  for (const [id, t] of Object.entries(input.trainings)) {
    const key = `${t.adapterPrefix}README.md`;
    if (!(await deps.storage.exists(t.adapterBucket, key))) continue;
    const adapterUri = `s3://${t.adapterBucket}/${t.adapterPrefix}`;
    const evaluations = Object.fromEntries(Object.entries(input.evaluations).filter(([, e]) => e.adapter === adapterUri));
    const card = (await deps.storage.getBuffer(t.adapterBucket, key)).toString('utf8').trimEnd();
    cards[id] = Object.keys(evaluations).length
      ? `${card}\n\n## Evaluation: base vs DPO\n\n${evaluationTable(evaluations).join('\n')}\n`
      : `${card}\n`;
  }
  return cards;
}

interface ReportView {
  input: ReportInput;
  charts: Record<string, Chart[]>;
  prefix: string;
  images: Record<string, string>;
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const num = (x: number) => x.toFixed(4);
const signedPct = (x: number) => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)} pts`;
const signedNum = (x: number) => `${x >= 0 ? '+' : ''}${x.toFixed(4)}`;

type Row = [label: string, base: string, ...rest: string[]];

const PREFERENCE_ROWS: Array<[string, (m: EvalMetrics) => number, (x: number) => string, (x: number) => string]> = [
  ['preference accuracy (held-out)', (m) => m.preference_accuracy, pct, signedPct],
  ['reward accuracy vs reference', (m) => m.reward_accuracy, pct, signedPct],
  ['mean reward margin', (m) => m.reward_margin_mean, num, signedNum],
  ['mean log-prob margin', (m) => m.logp_margin_mean, num, signedNum],
];

const AMBER_ROWS: Array<[string, (m: YesNoMetrics) => number]> = [
  ['accuracy', (m) => m.accuracy],
  ['precision', (m) => m.precision],
  ['recall', (m) => m.recall],
  ['F1', (m) => m.f1],
  ['yes ratio', (m) => m.yes_ratio],
];

/** Base vs DPO rows: one DPO column (and delta) per evaluation stage. */
function evaluationRows(evaluations: ReportInput['evaluations']): { header: string[]; rows: Row[] } {
  const entries = Object.entries(evaluations);
  const header = ['metric', 'base', ...entries.flatMap(([id]) => [`DPO (${id})`, 'delta'])];
  const base = entries[0]?.[1];
  if (!base) return { header, rows: [] };
  const rows: Row[] = PREFERENCE_ROWS.map(([name, get, fmt, delta]) => [
    name,
    fmt(get(base.base)),
    ...entries.flatMap(([, e]) => [fmt(get(e.trained)), delta(get(e.trained) - get(e.base))]),
  ]);
  // The overall AMBER numbers here; per question kind in amberTable.
  for (const kind of base.amber ? ['overall'] : []) {
    for (const [name, get] of AMBER_ROWS) {
      const b = base.amber!.base[kind]!;
      rows.push([
        `AMBER ${kind} ${name}${kind === 'overall' && name === 'accuracy' ? ` (${b.questions} questions)` : ''}`,
        pct(get(b)),
        ...entries.flatMap(([, e]) => {
          const t = e.amber?.trained[kind];
          const eb = e.amber?.base[kind];
          return t && eb ? [pct(get(t)), signedPct(get(t) - get(eb))] : ['', ''];
        }),
      ]);
    }
  }
  // AMBER's generative half and the greedy short answers, where the suite had them.
  const extra: Array<[string, (e: EvaluateResult, side: 'base' | 'trained') => number | undefined]> = [
    ['greedy short answers correct', (e, side) => e.shortAnswers?.[side].short_answer_accuracy],
    ['CHAIR of greedy descriptions (lower is better)', (e, side) => e.generative?.[side].chair],
    ['Cover of greedy descriptions', (e, side) => e.generative?.[side].cover],
    ['Hal: descriptions naming an absent object', (e, side) => e.generative?.[side].hal],
  ];
  for (const [name, get] of extra) {
    const b = get(base, 'base');
    if (b === undefined) continue;
    rows.push([
      name,
      pct(b),
      ...entries.flatMap(([, e]) => {
        const t = get(e, 'trained');
        const eb = get(e, 'base');
        return t !== undefined && eb !== undefined ? [pct(t), signedPct(t - eb)] : ['', ''];
      }),
    ]);
  }
  return { header, rows };
}

/** The seed's visual examples: suite items that base and DPO answered differently. */
function exampleRows(input: ReportInput): Array<{ stage: string; x: AmberExample }> {
  return Object.entries(input.evaluations).flatMap(([stage, e]) => (e.amberExamples ?? []).map((x) => ({ stage, x })));
}

const EXAMPLES_HEADER = ['image', 'question', 'truth', 'base answer', 'DPO answer'];

/** AMBER per question kind, one table per evaluation: accuracy, precision, recall, F1, base vs DPO. */
function amberRows(e: ReportInput['evaluations'][string]): { header: string[]; rows: string[][] } {
  const header = ['question kind', 'questions', ...AMBER_ROWS.filter(([n]) => n !== 'yes ratio').flatMap(([n]) => [`${n} base`, `${n} DPO`, 'delta'])];
  if (!e.amber) return { header, rows: [] };
  const rows = Object.keys(e.amber.base).map((kind) => {
    const b = e.amber!.base[kind]!;
    const t = e.amber!.trained[kind]!;
    return [kind, String(b.questions), ...AMBER_ROWS.filter(([n]) => n !== 'yes ratio').flatMap(([, get]) => [pct(get(b)), pct(get(t)), signedPct(get(t) - get(b))])];
  });
  return { header, rows };
}

function amberMarkdown(evaluations: ReportInput['evaluations']): string[] {
  return Object.entries(evaluations).flatMap(([id, e]) => {
    const { header, rows } = amberRows(e);
    if (!rows.length) return [];
    return [
      `### AMBER-style yes/no suite (${id})`,
      '',
      `| ${header.join(' | ')} |`,
      `| --- | ${header.slice(1).map(() => '---:').join(' | ')} |`,
      ...rows.map((r) => `| ${r.join(' | ')} |`),
      '',
    ];
  });
}

/** The evaluation table in Markdown (also used by tests and the CLI's report link). */
export function evaluationTable(evaluations: ReportInput['evaluations']): string[] {
  const { header, rows } = evaluationRows(evaluations);
  if (!rows.length) return ['(no evaluation)'];
  return [`| ${header.join(' | ')} |`, `| --- | ${header.slice(1).map(() => '---:').join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)];
}

interface TimelineRow {
  stage: string;
  kind: string;
  state: string;
  cached: string;
  seconds: string;
  /** Failed attempts Temporal retried, with why where known (contracts/attempts.ts). */
  retries: string;
  preemptions: string;
  /** Out-of-memory replans of a train stage: how many (the changes are in the notes). */
  replans: string;
  notes: string;
}

const TIMELINE_HEADER = ['stage', 'kind', 'state', 'cached', 'seconds', 'retries', 'preemptions', 'OOM replans', 'notes'];

/** The timeline's rows (exported for tests: what the Markdown and HTML tables show). */
export function timelineRows(input: Pick<ReportInput, 'timeline' | 'dataStages' | 'trainings'>): TimelineRow[] {
  return input.timeline.map((t) => {
    const data = input.dataStages[t.id];
    const notes: string[] = [];
    if (data) notes.push(Object.entries(data.summary).map(([k, v]) => `${k}=${v}`).join(', '));
    const train = input.trainings[t.id];
    if (train?.resumedFromStep != null) notes.push(`resumed from step ${train.resumedFromStep}`);
    // A train stage's attempts come with its result (the run's timeline has them from there too).
    const attempts = attemptCells(t.activities ? t : (train?.attempts ?? {}));
    const replans = t.replans ?? train?.replans ?? [];
    if (replans.length) notes.push(`out-of-memory replans: ${replans.join('; ')}`);
    if (t.error) notes.push(`error: ${t.error}`);
    return {
      stage: t.id,
      kind: t.kind,
      state: t.state,
      cached: t.cached ? 'cache hit' : '',
      seconds: t.startedAt && t.finishedAt ? ((t.finishedAt - t.startedAt) / 1000).toFixed(1) : '',
      ...attempts,
      replans: (t.kind === 'train' || t.kind === 'sft') && (t.state === 'done' || t.state === 'failed') ? String(replans.length) : '',
      notes: notes.join('; '),
    };
  });
}

const mdCell = (s: string) => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');

/** Path of `key` relative to the report's folder (links work when the folder is browsed or copied). */
function relativeKey(prefix: string, key: string): string {
  const from = prefix.split('/').filter(Boolean);
  const to = key.split('/');
  let i = 0;
  while (i < from.length && i < to.length - 1 && from[i] === to[i]) i++;
  return [...Array<string>(from.length - i).fill('..'), ...to.slice(i)].join('/');
}

function generationRows(input: ReportInput): Array<{ stage: string; g: GeneratedExample }> {
  return Object.entries(input.evaluations).flatMap(([stage, e]) => (e.generations ?? []).map((g) => ({ stage, g })));
}

/** Which engine scored an evaluate stage, and what it did not compute: never a silent fallback. */
function engineLines(id: string, e: EvaluateResult, s3: (key: string) => string, named: boolean): string[] {
  if (!e.engine) return [];
  const who = named ? `${id}: ` : '';
  const how = e.engine === 'pytorch' ? 'PyTorch (the trainer evaluator, on CPU workers)' : `${e.engine} on ONNX exports (base: \`${s3(e.onnx?.base ?? '')}\`)`;
  return [
    `- ${who}evaluated with ${how}${e.engineReason ? `: ${e.engineReason}` : ''}`,
    ...(e.notComputed ?? []).map((what) => `- ${who}not computed by ${e.engine}: ${what}`),
  ];
}

function renderMarkdown({ input, charts, prefix }: ReportView): string {
  const s3 = (key: string) => `s3://${input.bucket}/${key}`;
  const evaluations = Object.entries(input.evaluations);
  const anyEval = evaluations[0]?.[1];
  const generations = generationRows(input);
  const examples = exampleRows(input);
  const lines = [
    `# DPO run ${input.runId}`,
    '',
    `- model: \`${input.config.model.source}\`${input.modelRevision ? ` at commit \`${input.modelRevision}\`` : ''}`,
    `- dataset: \`${input.config.dataset.source}\`${anyEval ? ` (${anyEval.base.samples} held-out pairs)` : ''}`,
    ...evaluations.flatMap(([id, e]) => engineLines(id, e, s3, evaluations.length > 1)),
    '',
    '## Evaluation: base vs DPO',
    '',
    ...evaluationTable(input.evaluations),
    '',
    'AMBER-style yes/no questions: the answer is the more probable of the "Yes" and "No" tokens; precision, recall and F1 take "No" as the positive class (a hallucinating model answers "Yes" to things that are not there). Greedy short answers: the generated answer opens with the right "Yes" or "No". CHAIR: the share of the objects a greedy description names that are not in the image (Cover: the share of the image\'s objects it names; Hal: descriptions naming any absent object).',
    '',
    ...(examples.length
      ? [
          '## Examples: base vs DPO',
          '',
          `| ${EXAMPLES_HEADER.join(' | ')} |`,
          '| --- | --- | --- | --- | --- |',
          ...examples.map(({ x }) => `| ${x.imageKey ? `![${x.id}](${relativeKey(prefix, x.imageKey)})` : ''} | ${mdCell(x.question)} | ${mdCell(x.truth)} | ${mdCell(x.base)} | ${mdCell(x.trained)} |`),
          '',
        ]
      : []),
    ...amberMarkdown(input.evaluations),
    ...evaluations.map(([id, e]) => `- ${id}: adapter \`${e.adapter}\`, metrics \`${s3(e.metricsKey)}\``),
    '',
    ...(generations.length
      ? [
          '## Greedy answers, base vs DPO',
          '',
          '| image | question | reference (chosen) | base | DPO |',
          '| --- | --- | --- | --- | --- |',
          ...generations.map(({ g }) => `| ${g.imageKey ? `![${g.sampleId}](${relativeKey(prefix, g.imageKey)})` : ''} | ${mdCell(g.question)} | ${mdCell(g.chosen)} | ${mdCell(g.base)} | ${mdCell(g.trained)} |`),
          '',
        ]
      : []),
    // A sweep ends in one comparison table, one row per branch.
    ...(input.sweep?.length ? ['## Sweep', '', ...renderSweepTable(input.sweep, 'markdown'), ''] : []),
    '## Training',
    '',
    ...Object.entries(input.trainings).flatMap(([id, t]) => [
      `### ${id}`,
      '',
      ...(t.objective === 'sft' ? ['- objective: sft (supervised fine-tuning on the chosen answers)'] : []),
      ...(t.baseModelSource ? [`- started from (and referenced to): \`${t.baseModelSource}\``] : []),
      `- adapter: \`s3://${t.adapterBucket}/${t.adapterPrefix}\``,
      ...(t.modelPrefix ? [`- merged model: \`s3://${t.adapterBucket}/${t.modelPrefix}\``] : []),
      `- steps: ${t.finalStep}, wall time ${t.trainSeconds.toFixed(1)} s` + (t.resumedFromStep !== null ? `, resumed from step ${t.resumedFromStep}` : ''),
      `- final metrics: ${Object.entries(t.metrics).map(([k, v]) => `${k}=${typeof v === 'number' ? num(v) : String(v)}`).join(', ')}`,
      ...(t.replans?.length ? [`- out-of-memory replans: ${t.replans.join('; ')}`] : []),
      ...(t.tracking ? [`- experiment tracking: ${describeTracking(t.tracking, input.runId).join('; ')}`] : []),
      `- checkpoints: ${t.checkpointKeys.map((k) => `\`${s3(k)}\``).join(', ') || '(none)'}`,
      '',
      ...(charts[id] ?? []).flatMap((c) => [`![${c.title}](${relativeKey(prefix, c.key)})`, '']),
    ]),
    '## Pipeline',
    '',
    '```mermaid',
    input.dagMermaid,
    '```',
    '',
    '| stage | kind | state | cached | seconds | retries | preemptions | OOM replans | notes |',
    '| --- | --- | --- | --- | ---: | --- | ---: | ---: | --- |',
    ...timelineRows(input).map((r) => `| ${[r.stage, r.kind, r.state, r.cached, r.seconds, r.retries, r.preemptions, r.replans, r.notes].map(mdCell).join(' | ')} |`),
    '',
  ];
  return lines.join('\n');
}

const h = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

function htmlTable(header: string[], rows: string[][], raw = false): string {
  const cell = (s: string) => (raw ? s : h(s));
  return `<table><thead><tr>${header.map((c) => `<th>${h(c)}</th>`).join('')}</tr></thead><tbody>${rows
    .map((r) => `<tr>${r.map((c) => `<td>${cell(c)}</td>`).join('')}</tr>`)
    .join('')}</tbody></table>`;
}

function renderHtml({ input, charts, prefix, images }: ReportView): string {
  const s3 = (key: string) => `s3://${input.bucket}/${key}`;
  const { header, rows } = evaluationRows(input.evaluations);
  const generations = generationRows(input);
  const body = [
    `<h1>DPO run ${h(input.runId)}</h1>`,
    `<p>model <code>${h(input.config.model.source)}</code>${input.modelRevision ? ` at commit <code>${h(input.modelRevision)}</code>` : ''}, dataset <code>${h(input.config.dataset.source)}</code></p>`,
    '<h2>Evaluation: base vs DPO</h2>',
    rows.length ? htmlTable(header, rows) : '<p>(no evaluation)</p>',
    '<p>AMBER-style yes/no questions: the answer is the more probable of the "Yes" and "No" tokens; precision, recall and F1 take "No" as the positive class. Greedy short answers: the generated answer opens with the right "Yes" or "No". CHAIR: the share of the objects a greedy description names that are not in the image.</p>',
    ...(exampleRows(input).length
      ? [
          '<h2>Examples: base vs DPO</h2>',
          htmlTable(
            EXAMPLES_HEADER,
            exampleRows(input).map(({ x }) => [
              x.imageKey && images[x.imageKey] ? `<img src="${images[x.imageKey]}" alt="${h(x.id)}" width="96">` : '',
              h(x.question),
              h(x.truth),
              h(x.base),
              h(x.trained),
            ]),
            true,
          ),
        ]
      : []),
    ...Object.entries(input.evaluations).flatMap(([id, e]) => {
      const amber = amberRows(e);
      return amber.rows.length ? [`<h3>AMBER-style yes/no suite (${h(id)})</h3>`, htmlTable(amber.header, amber.rows)] : [];
    }),
    ...(generations.length
      ? [
          '<h2>Greedy answers, base vs DPO</h2>',
          htmlTable(
            ['image', 'question', 'reference (chosen)', 'base', 'DPO'],
            generations.map(({ g }) => [
              g.imageKey && images[g.imageKey] ? `<img src="${images[g.imageKey]}" alt="${h(g.sampleId)}" width="96">` : '',
              h(g.question),
              h(g.chosen),
              h(g.base),
              h(g.trained),
            ]),
            true,
          ),
        ]
      : []),
    '<h2>Training</h2>',
    ...Object.entries(input.trainings).flatMap(([id, t]) => [
      `<h3>${h(id)}</h3>`,
      `<p>${t.objective === 'sft' ? 'sft: ' : ''}${t.finalStep} steps in ${t.trainSeconds.toFixed(1)} s${t.resumedFromStep !== null ? `, resumed from step ${t.resumedFromStep}` : ''}; adapter <code>s3://${h(t.adapterBucket)}/${h(t.adapterPrefix)}</code>${t.modelPrefix ? `; merged model <code>s3://${h(t.adapterBucket)}/${h(t.modelPrefix)}</code>` : ''}${t.baseModelSource ? `; started from <code>${h(t.baseModelSource)}</code>` : ''}</p>`,
      ...(t.replans?.length ? [`<p>out-of-memory replans: ${h(t.replans.join('; '))}</p>`] : []),
      ...(t.tracking ? [`<p>experiment tracking: ${h(describeTracking(t.tracking, input.runId).join('; '))}</p>`] : []),
      ...(charts[id] ?? []).map((c) => `<img src="${h(relativeKey(prefix, c.key))}" alt="${h(c.title)}">`),
    ]),
    '<h2>Pipeline timeline</h2>',
    htmlTable(
      TIMELINE_HEADER,
      timelineRows(input).map((r) => [r.stage, r.kind, r.state, r.cached, r.seconds, r.retries, r.preemptions, r.replans, r.notes]),
    ),
    `<pre class="mermaid">${h(input.dagMermaid)}</pre>`,
    `<p>metrics: ${Object.values(input.evaluations).map((e) => `<code>${h(s3(e.metricsKey))}</code>`).join(', ')}</p>`,
  ];
  return `<!doctype html><html><head><meta charset="utf-8"><title>DPO run ${h(input.runId)}</title><style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
td:not(:first-child){font-variant-numeric:tabular-nums}img{margin:4px;vertical-align:middle}code{background:#f4f4f4}
</style></head><body>${body.join('\n')}</body></html>\n`;
}
