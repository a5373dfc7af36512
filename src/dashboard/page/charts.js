// Line charts (uPlot) that start from the server's downsampled history and grow with live steps.
// A chart holds at most about twice the server's point budget: past that (or when the job went
// back to a checkpoint) it asks the server for a fresh downsampled history.
import uPlot from './vendor/uPlot.esm.js';
import { num } from './format.js';

const colors = { loss: '#3b5bdb', tokensPerSec: '#0ca678', samplesPerSec: '#0ca678', lr: '#e8590c', busBwBytesPerSec: '#ae3ec9' };
const stepIncrements = [1, 2, 5].flatMap((m) => [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7].map((p) => m * p)).sort((a, b) => a - b);
const labels = { loss: 'loss', tokensPerSec: 'tokens/s', samplesPerSec: 'samples/s', lr: 'learning rate', busBwBytesPerSec: 'busbw B/s' };

export class LiveChart {
  /** @param {HTMLElement} el  @param {string} series  @param {() => void} onStale */
  constructor(el, series, onStale) {
    this.el = el;
    this.series = series;
    this.onStale = onStale;
    this.budget = 600;
    this.xs = [];
    this.ys = [];
    this.pending = false;
    this.plot = new uPlot(this.options(), [[], []], el);
    new ResizeObserver(() => this.resize()).observe(el);
  }

  options() {
    const stroke = colors[this.series] ?? '#495057';
    return {
      width: Math.max(200, this.el.clientWidth),
      height: 200,
      // The legend shows the step and value under the cursor.
      legend: { show: true, live: true },
      cursor: { drag: { x: true, y: false }, points: { size: 6 } },
      scales: { x: { time: false } },
      axes: [
        // Steps are whole numbers: no 1.5 on the x axis.
        { stroke: '#6b7785', grid: { stroke: '#eef1f4' }, ticks: { stroke: '#e1e5eb' }, size: 32, incrs: stepIncrements, values: (u, v) => v.map((x) => num(x)) },
        { stroke: '#6b7785', grid: { stroke: '#eef1f4' }, ticks: { stroke: '#e1e5eb' }, size: 64, values: (u, v) => v.map((x) => num(x)) },
      ],
      series: [
        { label: 'step', value: (u, v) => (v === null || v === undefined ? '–' : String(v)) },
        { label: labels[this.series] ?? this.series, stroke, width: 1.6, fill: `${stroke}14`, points: { show: false }, value: (u, v) => num(v) },
      ],
    };
  }

  /** Draws another series from now on (throughput: tokens/s or samples/s). */
  retarget(series) {
    if (series === this.series) return;
    this.series = series;
    this.plot.destroy();
    this.plot = new uPlot(this.options(), [this.xs, this.ys], this.el);
  }

  resize() {
    const w = Math.max(200, this.el.clientWidth);
    if (w !== this.plot.width) this.plot.setSize({ width: w, height: 200 });
  }

  /** Replaces the data with a downsampled history from /api/history. */
  setHistory(points, steps, values) {
    this.budget = points;
    this.xs = steps.slice();
    this.ys = values.slice();
    this.draw();
  }

  /** The last step drawn (0 when none). */
  lastStep() {
    return this.xs.at(-1) ?? 0;
  }

  /** Appends one live step. */
  push(step, value) {
    if (value === undefined || value === null || !Number.isFinite(value)) return;
    const last = this.xs.at(-1);
    if (last !== undefined && step <= last) {
      this.onStale();
      return;
    }
    this.xs.push(step);
    this.ys.push(value);
    if (this.xs.length > 2 * this.budget) this.onStale();
    this.draw();
  }

  /** Redraws at most once per animation frame, however many steps arrive. */
  draw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.plot.setData([this.xs, this.ys]);
      this.el.dataset.points = String(this.xs.length);
      this.el.dataset.lastStep = String(this.xs.at(-1) ?? 0);
    });
  }
}
