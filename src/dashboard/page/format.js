// Number, size and time formatting for the page.

/** 3 significant digits, with k/M/G for large values and exponent notation for tiny ones. */
export function num(v, digits = 3) {
  if (v === undefined || v === null || !Number.isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a !== 0 && a < 1e-3) return v.toExponential(digits - 1).replace(/\.?0+e/, 'e');
  if (a >= 1e9) return `${(v / 1e9).toPrecision(digits)}G`;
  if (a >= 1e6) return `${(v / 1e6).toPrecision(digits)}M`;
  if (a >= 1e4) return `${(v / 1e3).toPrecision(digits)}k`;
  if (Number.isInteger(v)) return String(v);
  return Number(v.toPrecision(digits)).toString();
}

export function bytes(v) {
  if (v === undefined || v === null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

/** A duration in milliseconds, e.g. 850 ms, 12.3 s, 4 min 05 s, 2 h 10 min. */
export function duration(ms) {
  if (ms === undefined || ms === null || !Number.isFinite(ms)) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.floor(s % 60)).padStart(2, '0')} s`;
  const h = Math.floor(m / 60);
  return `${h} h ${String(m % 60).padStart(2, '0')} min`;
}

export function ago(ms) {
  if (!Number.isFinite(ms)) return '–';
  if (ms < 1500) return 'just now';
  return `${duration(ms).replace(/\.\d+ s$/, ' s')} ago`;
}

export function clock(t) {
  const d = new Date(t);
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
}

export function dateTime(t) {
  const d = new Date(t);
  return `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${clock(t)}`;
}
