import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gridPng } from '../generate/image-grid.ts';
import type { EvalReport, GeneratedRecord } from './evaluation.ts';
import type { Agreement } from './prompt-agreement.ts';

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

function agreementTable(title: string, rows: [string, Agreement][]): string {
  const attrs = Object.keys(rows[0]![1].attributes);
  const heads = Object.keys(rows[0]![1].heads);
  const th = [...attrs, 'whole prompt', ...heads].map((h) => `<th>${esc(h)}</th>`).join('');
  const body = rows
    .map(([name, a]) => {
      const cells = [...attrs.map((k) => a.attributes[k]!), a.whole, ...heads.map((k) => a.heads[k]!)].map((v) => `<td>${pct(v)}</td>`).join('');
      return `<tr><th>${esc(name)}</th>${cells}<td>${a.images}</td></tr>`;
    })
    .join('\n');
  return `<h2>${esc(title)}</h2><table><tr><th></th>${th}<th>images</th></tr>\n${body}</table>`;
}

function png(images: Uint8Array[], size: number, columns: number): string {
  return `data:image/png;base64,${gridPng({ images, size, channels: 3 }, { columns, scale: 3 }).toString('base64')}`;
}

/** The HTML page of a report: scores, per-attribute tables, and a sample grid per prompt. */
export function reportHtml(report: EvalReport, generated: readonly GeneratedRecord[], real: readonly { caption: string; image: Uint8Array }[], imageSize: number): string {
  const byPrompt = new Map<string, GeneratedRecord[]>();
  for (const g of generated) byPrompt.set(g.prompt, [...(byPrompt.get(g.prompt) ?? []), g]);
  const sections = [...byPrompt.entries()]
    .map(([prompt, recs]) => {
      const marks = recs
        .map((r) => {
          const ok = Object.entries(r.agrees)
            .map(([k, v]) => `<span class="${v ? 'ok' : 'bad'}">${esc(k)}</span>`)
            .join(' ');
          return `<li>${ok} <small>${esc(Object.values(r.predicted).join(' · '))}</small></li>`;
        })
        .join('');
      return `<div class="prompt"><h3>${esc(prompt)}</h3><img src="${png(recs.map((r) => r.image), imageSize, recs.length)}" alt="${esc(prompt)}"><ol>${marks}</ol></div>`;
    })
    .join('\n');
  const r = report;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>parti eval: ${esc(r.configName)} step ${r.partiStep}</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}
.prompt{display:inline-block;vertical-align:top;margin:0 1em 1em 0;width:360px}.prompt h3{font-size:13px;margin:.3em 0}
.ok{color:#080}.bad{color:#c00;text-decoration:line-through}img{image-rendering:pixelated}ol{padding-left:1.4em;margin:.3em 0}
</style></head><body>
<h1>parti eval</h1>
<p>Checkpoint <code>${esc(r.checkpoint)}</code> (${esc(r.configName)}, Parti step ${r.partiStep}); held-out data <code>${esc(r.data.heldOut)}</code>.
${r.heldOutCaptions.prompts} held-out prompts, none a training caption (${esc(r.heldOutCaptions.rule)}).</p>
<h2>Summary</h2><table>
<tr><th>held-out token loss</th><td>${r.heldOut.tokenLoss.toFixed(4)} nats (perplexity ${r.heldOut.perplexity.toFixed(2)}, ${r.heldOut.samples} images)</td></tr>
<tr><th>tokenizer PSNR</th><td>${r.tokenizer.psnr.toFixed(2)} dB</td></tr>
<tr><th>codebook usage / perplexity</th><td>${pct(r.tokenizer.codebookUsage)} / ${r.tokenizer.codebookPerplexity.toFixed(1)}</td></tr>
<tr><th>FID (probe features, generated vs held-out real)</th><td>${r.fid.generatedVsReal.toFixed(3)} (real vs real: ${r.fid.realVsReal.toFixed(3)}; ${r.fid.generated} vs ${r.fid.real} images)</td></tr>
<tr><th>sampling</th><td>cfg ${r.generation.cfg}, top-k ${r.generation.topK}, top-p ${r.generation.topP}, T ${r.generation.temperature}, seed ${r.generation.seed}, rerank ${r.generation.rerank}${r.generation.rerank > 0 ? ` by ${r.generation.rerankBy}` : ''}; ${r.generation.samplesPerPrompt} per prompt in ${r.generation.seconds.toFixed(1)} s</td></tr>
</table>
${agreementTable('Per-attribute scores', [
  ['prompt agreement (generated)', r.promptAgreement],
  ['probe on real held-out (ceiling)', r.probe.realHeldOutAccuracy],
  ['probe on tokenizer reconstructions of them', r.probe.reconstructedHeldOutAccuracy],
  ['CAS (probe trained on generated, tested on real)', r.cas],
])}
<h2>Real held-out images</h2><img src="${png(real.map((x) => x.image), imageSize, 8)}" alt="real held-out images">
<h2>Generated images per held-out prompt</h2>
<p>Under each grid, per image: the attributes that agree with the prompt (green) or not (red), then what the probe read.</p>
${sections}
</body></html>
`;
}

/** Writes report.json and index.html into `dir`; returns their paths. */
export async function writeReport(dir: string, report: EvalReport, generated: readonly GeneratedRecord[], real: readonly { caption: string; image: Uint8Array }[], imageSize: number): Promise<{ json: string; html: string }> {
  await mkdir(dir, { recursive: true });
  const json = join(dir, 'report.json');
  const html = join(dir, 'index.html');
  await writeFile(json, `${JSON.stringify(report, null, 2)}\n`);
  await writeFile(html, reportHtml(report, generated, real, imageSize));
  return { json, html };
}
