// Scraping a Prometheus /metrics page as an operator's Prometheus would (worker and launcher tests).
import assert from 'node:assert/strict';

/** The sample values of a Prometheus text page, by series (`name` or `name{labels}`). */
export function samples(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}

export async function get(url: string): Promise<{ status: number; type: string | null; body: string }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  return { status: res.status, type: res.headers.get('content-type'), body: await res.text() };
}

/** Scrapes `url` until `ready` holds for its samples; fails after `ms`. */
export async function scrapeUntil(url: string, ready: (s: Map<string, number>) => boolean, ms: number, what: string): Promise<Map<string, number>> {
  const until = Date.now() + ms;
  let last = new Map<string, number>();
  while (Date.now() < until) {
    const page = await get(url);
    assert.equal(page.status, 200);
    last = samples(page.body);
    if (ready(last)) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url}: ${what} not seen within ${ms} ms (step ${last.get('parti_worker_step')})`);
}
