// The dashboard page: loads api/overview and api/history, then follows api/stream (SSE).
// Plain ES modules, no build step; all URLs are relative so the page also works under a prefix.
import { LiveChart } from './charts.js';
import { ago, bytes, clock, dateTime, duration, num } from './format.js';

const $ = (id) => document.getElementById(id);
// Chart id -> the history series it draws. Throughput is tokens/s, or samples/s for a model that
// counts no tokens (the orchestration's linear test model).
const chartSeries = { loss: 'loss', throughput: 'tokensPerSec', lr: 'lr', busbw: 'busBwBytesPerSec' };
const historySeries = ['loss', 'tokensPerSec', 'samplesPerSec', 'lr', 'busBwBytesPerSec'];

const state = {
  job: null,
  workers: new Map(),
  checkpoints: new Map(),
  events: [],
  skipped: { samples: {}, steps: 0 },
  gallery: [],
  clockOffset: 0,
  historyPoints: 600,
  galleryKeep: 48,
};
const charts = {};
let refetchTimer = null;

async function getJson(path) {
  const res = await fetch(path, { headers: { accept: 'application/json' } });
  if (res.status === 401) {
    location.reload(); // the session ended: show the sign-in page
    throw new Error('unauthorized');
  }
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

const serverNow = () => Date.now() + state.clockOffset;
/** A model that counts no tokens (the orchestration's linear test model): show samples/s instead. */
const bySamples = () => !(state.job?.tokensPerSec > 0) && state.job?.samplesPerSec > 0;

// ---- job summary ----
function renderJob() {
  const j = state.job;
  if (!j) return;
  document.title = `${j.name} · step ${j.step} · parti`;
  $('job-name').textContent = j.name;
  const pill = $('job-state');
  pill.textContent = j.state;
  pill.dataset.state = j.state;
  $('job-meta').textContent = `${j.jobId} · ${j.stage} · config ${j.configHash || '–'} · batch ${j.batchSize}`;
  $('s-step').textContent = String(j.step);
  $('s-total').textContent = String(j.totalSteps);
  const frac = j.totalSteps > 0 ? Math.min(1, j.step / j.totalSteps) : 0;
  $('s-progress').style.width = `${(frac * 100).toFixed(1)}%`;
  const elapsed = j.updatedAt - j.startedAt;
  const eta = j.step > 0 && j.totalSteps > j.step ? (elapsed / j.step) * (j.totalSteps - j.step) : undefined;
  $('s-eta').textContent = `${duration(serverNow() - j.startedAt)} elapsed${eta !== undefined ? ` · ~${duration(eta)} left` : ''}`;
  $('s-loss').textContent = num(j.loss, 4);
  $('s-tps-label').textContent = bySamples() ? 'Samples/s' : 'Tokens/s';
  $('s-tps').textContent = num(bySamples() ? j.samplesPerSec : j.tokensPerSec);
  $('s-lr').textContent = num(j.lr);
  $('s-workers').textContent = `${j.worldSize} / ${j.targetWorkers}`;
  // Epochs that start at the clock (a restarted coordinator's are newer) are not worth showing.
  $('s-epoch').textContent = `min ${j.minWorkers}${j.epoch < 1e6 ? ` · epoch ${j.epoch}` : ''}`;
  $('s-epoch').title = `membership epoch ${j.epoch}`;
  $('s-skipped').textContent = num(j.skippedSamples);
  $('s-skipped-sub').textContent = `samples · ${j.skippedSteps} steps`;
  $('s-ckpt').textContent = j.lastCheckpointStep !== undefined ? `step ${j.lastCheckpointStep}` : '–';
  const banner = $('job-error');
  banner.hidden = !j.error;
  banner.textContent = j.error ? `Job failed: ${j.error}` : '';
}

// ---- workers ----
const liveStates = new Set(['joining', 'syncing', 'training', 'idle', 'leaving']);
function renderWorkers() {
  const rows = [...state.workers.values()].sort((a, b) => {
    const la = liveStates.has(a.state) ? 0 : 1;
    const lb = liveStates.has(b.state) ? 0 : 1;
    return la - lb || (a.rank ?? 1e9) - (b.rank ?? 1e9) || a.id.localeCompare(b.id);
  });
  $('workers-rate').textContent = bySamples() ? 'Samples/s' : 'Tokens/s';
  const body = $('workers').tBodies[0];
  body.replaceChildren(
    ...rows.map((w) => {
      const since = serverNow() - w.lastHeartbeat;
      const stale = liveStates.has(w.state) && since > 5000;
      return el(
        'tr',
        { 'data-worker': w.id, 'data-state': w.state, class: liveStates.has(w.state) ? '' : 'gone' },
        el('td', { class: 'num rank', text: w.rank ?? '–' }),
        el('td', { class: 'mono', title: w.id, text: w.name ?? w.id }),
        el('td', { class: 'mono', text: w.host }),
        el('td', {}, el('span', { class: 'pill', 'data-state': w.state, text: w.state })),
        el('td', { class: `num${stale ? ' warn' : ''}`, title: dateTime(w.lastHeartbeat), text: ago(since) }),
        el('td', { class: 'num', text: w.step ?? '–' }),
        el('td', { class: 'num', text: duration(w.stepMs) }),
        el('td', { class: 'num', text: num(bySamples() ? w.samplesPerSec : w.tokensPerSec) }),
      );
    }),
  );
  $('workers-empty').hidden = rows.length > 0;
}

// ---- checkpoints ----
// A long run commits thousands of checkpoints; a table of all of them costs more to redraw than it
// tells. The newest are shown, and how many older ones are not.
const maxCheckpointsShown = 100;
function renderCheckpoints() {
  const all = [...state.checkpoints.values()].sort((a, b) => b.step - a.step);
  const rows = all.slice(0, maxCheckpointsShown);
  $('checkpoints').tBodies[0].replaceChildren(
    ...rows.map((c) =>
      el(
        'tr',
        { class: c.deleted ? 'gone' : '' },
        el('td', { class: 'num', text: c.step }),
        el('td', { text: dateTime(c.time) }),
        el('td', { class: 'num', text: bytes(c.bytes) }),
        el('td', {
          class: 'num',
          text: c.saveSeconds !== undefined ? duration(c.saveSeconds * 1000) : '–',
          // Uploads run while training goes on; the snapshot is what training waited for.
          title: c.snapshotSeconds !== undefined ? `training paused ${duration(c.snapshotSeconds * 1000)} for the snapshot` : '',
        }),
        el('td', { class: 'mono ellipsis', title: c.uri, text: c.deleted ? `${c.uri} (deleted)` : c.uri }),
      ),
    ),
  );
  $('checkpoints-empty').hidden = all.length > 0;
  $('checkpoints-note').textContent = all.length > rows.length ? `newest ${rows.length} of ${all.length}` : '';
  const last = all.find((c) => !c.deleted);
  $('s-ckpt-sub').textContent = last ? dateTime(last.time) : '';
}

// ---- events ----
const maxEventsShown = 300;
function eventItem(e) {
  return el(
    'li',
    { 'data-kind': e.kind },
    el('time', { datetime: new Date(e.time).toISOString(), text: clock(e.time) }),
    el('span', { class: 'kind', text: e.kind }),
    el('span', { class: 'msg', text: e.step !== undefined && !/step \d/.test(e.message) ? `${e.message} (step ${e.step})` : e.message }),
  );
}
function renderEvents() {
  const list = $('events');
  list.replaceChildren(...state.events.slice(-maxEventsShown).reverse().map(eventItem));
}
function addEvent(e) {
  state.events.push(e);
  if (state.events.length > maxEventsShown * 2) state.events = state.events.slice(-maxEventsShown);
  const list = $('events');
  list.prepend(eventItem(e));
  while (list.children.length > maxEventsShown) list.lastElementChild.remove();
}
function renderSkipped() {
  const entries = Object.entries(state.skipped.samples).sort((a, b) => b[1] - a[1]);
  $('skipped-reasons').replaceChildren(
    ...entries.map(([reason, n]) => el('span', { class: 'chip', title: 'skipped samples by reason' }, el('b', { text: num(n) }), ` ${reason}`)),
  );
}

// ---- gallery ----
// Samples are keyed by id: a new one is added and a dropped one removed without touching the
// others, so their images are not fetched and decoded again on every update.
function galleryFigure(g) {
  return el(
    'figure',
    { class: 'sample', 'data-id': g.id },
    el('img', { src: g.image, alt: g.prompt, loading: 'lazy', width: 160, height: 160 }),
    el('figcaption', {}, el('span', { class: 'prompt', text: g.prompt }), el('span', { class: 'muted small', text: `step ${g.step}` })),
    g.attention.length
      ? el(
          'div',
          { class: 'attn' },
          ...g.attention.map((a) => el('figure', {}, el('img', { src: a.image, alt: `attention: ${a.token}`, loading: 'lazy' }), el('figcaption', { text: a.token }))),
        )
      : '',
  );
}
function renderGallery() {
  const items = [...state.gallery].sort((a, b) => b.step - a.step || b.time - a.time);
  const box = $('gallery');
  const shown = new Map([...box.children].map((f) => [f.dataset.id, f]));
  const figures = items.map((g) => shown.get(g.id) ?? galleryFigure(g));
  const keep = new Set(figures);
  for (const f of shown.values()) if (!keep.has(f)) f.remove();
  // Put each figure in place; one already there is not moved (moving would not reload it either).
  figures.forEach((f, i) => {
    if (box.children[i] !== f) box.insertBefore(f, box.children[i] ?? null);
  });
  $('gallery-empty').hidden = items.length > 0;
  $('gallery-note').textContent = items.length ? `${items.length} shown` : '';
}

// ---- charts ----
async function loadHistory() {
  const h = await getJson(`api/history?series=${historySeries.join(',')}&points=${state.historyPoints}`);
  const counts = (name) => (h.series[name]?.value ?? []).some((v) => v > 0);
  const throughput = !counts('tokensPerSec') && counts('samplesPerSec') ? 'samplesPerSec' : 'tokensPerSec';
  if (throughput !== chartSeries.throughput) {
    chartSeries.throughput = throughput;
    charts.throughput.retarget(throughput);
    $('throughput-unit').textContent = throughput === 'samplesPerSec' ? 'samples/s' : 'tokens/s';
  }
  for (const [chart, series] of Object.entries(chartSeries)) {
    const d = h.series[series] ?? { step: [], value: [] };
    charts[chart].setHistory(h.points, d.step, d.value);
  }
  // Bus bandwidth needs bytes crossing links: two workers or more that report what they reduced.
  $('busbw-note').textContent = h.total > 0 && !(h.series.busBwBytesPerSec?.value.length > 0) ? '(none: one worker, or not reported)' : '';
}
function historyStale() {
  if (refetchTimer) return;
  refetchTimer = setTimeout(() => {
    refetchTimer = null;
    loadHistory().catch((err) => console.warn(err));
  }, 500);
}

// ---- loading and live updates ----
async function loadAll() {
  const o = await getJson('api/overview');
  state.clockOffset = o.now - Date.now();
  state.historyPoints = o.historyPoints;
  state.galleryKeep = o.galleryKeep;
  state.job = o.job;
  state.workers = new Map(o.workers.map((w) => [w.id, w]));
  state.checkpoints = new Map(o.checkpoints.map((c) => [c.step, c]));
  state.events = o.events;
  state.skipped = o.skipped;
  state.gallery = o.gallery;
  renderJob();
  renderWorkers();
  renderCheckpoints();
  renderEvents();
  renderSkipped();
  renderGallery();
  await loadHistory();
}

function setLive(s, text) {
  $('live').dataset.state = s;
  $('live-text').textContent = text;
}

// Live updates can come faster than the page can draw them (a small test run commits twenty
// checkpoints a second): each part of the page is redrawn at most every 200 ms, after the updates
// that came in between have all been applied to the state.
const redrawMs = 200;
const due = new Set();
let redrawTimer = null;
function redraw(render) {
  due.add(render);
  redrawTimer ??= setTimeout(() => {
    redrawTimer = null;
    const renders = [...due];
    due.clear();
    for (const r of renders) r();
  }, redrawMs);
}

// What each live update does to the page. Updates that arrive while the overview and history
// load are queued and applied after, so nothing between the load and the stream is lost; replays
// skip what the load already had (steps up to the chart's last, events up to the last seq).
const apply = {
  job(u) {
    state.job = u.job;
    redraw(renderJob);
  },
  step(u, replay) {
    for (const [chart, series] of Object.entries(chartSeries)) {
      if (replay && u.step.step <= charts[chart].lastStep()) continue;
      charts[chart].push(u.step.step, u.step[series]);
    }
    // A run that reports no tokens: switch the throughput chart to samples/s.
    if (chartSeries.throughput === 'tokensPerSec' && !(u.step.tokensPerSec > 0) && u.step.samplesPerSec > 0) historyStale();
    if (u.step.busBwBytesPerSec > 0) $('busbw-note').textContent = '';
  },
  worker(u) {
    state.workers.set(u.worker.id, u.worker);
    redraw(renderWorkers);
  },
  event(u) {
    if (u.event.seq <= (state.events.at(-1)?.seq ?? 0)) return;
    addEvent(u.event);
    if (u.event.kind === 'skipped-sample' && u.event.detail?.reason) {
      const r = u.event.detail.reason;
      state.skipped.samples[r] = (state.skipped.samples[r] ?? 0) + 1;
      redraw(renderSkipped);
    }
  },
  checkpoint(u) {
    state.checkpoints.set(u.checkpoint.step, u.checkpoint);
    redraw(renderCheckpoints);
  },
  gallery(u) {
    if (state.gallery.some((g) => g.id === u.item.id)) return;
    state.gallery.push(u.item);
    // The server drops the oldest past its keep (and their images): so does the page.
    while (state.gallery.length > state.galleryKeep) state.gallery.shift();
    redraw(renderGallery);
  },
};

let loading = true;
let queue = [];

async function resync() {
  loading = true;
  queue = [];
  try {
    await loadAll();
  } finally {
    const pending = queue;
    queue = [];
    loading = false;
    for (const [type, u] of pending) apply[type](u, true);
  }
}

function connect(afterLoss = false) {
  const source = new EventSource('api/stream');
  let lost = afterLoss;
  source.addEventListener('open', () => {
    setLive('live', 'live');
    // After a reconnect the stream does not replay what was missed: load everything again.
    if (lost) resync().catch((err) => console.warn(err));
    lost = false;
  });
  source.addEventListener('error', () => {
    lost = true;
    if (source.readyState === EventSource.CLOSED) {
      // Refused (503: the server's stream limit) or failed for good: the browser does not retry
      // on its own, so the page does, after a while, and reloads what it missed.
      setLive('lost', 'busy: retrying');
      setTimeout(() => connect(true), 10_000);
      return;
    }
    setLive('lost', 'reconnecting');
  });
  for (const type of Object.keys(apply)) {
    source.addEventListener(type, (m) => {
      const u = JSON.parse(m.data);
      if (loading) queue.push([type, u]);
      else apply[type](u, false);
    });
  }
}

for (const [chart, series] of Object.entries(chartSeries)) charts[chart] = new LiveChart($(`chart-${chart}`), series, historyStale);
// Heartbeat ages and elapsed time move even when nothing arrives.
setInterval(() => {
  renderWorkers();
  renderJob();
}, 1000);
// Subscribe first, then load: updates in between wait in the queue.
connect();
resync().catch((err) => {
  setLive('lost', 'failed to load');
  console.error(err);
});
