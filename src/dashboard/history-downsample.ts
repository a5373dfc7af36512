/**
 * Largest-Triangle-Three-Buckets (Steinarsson, 2013): picks `points` of a series so that a line
 * drawn through them looks like the line through all of them: it keeps the first and last point
 * and, from each bucket in between, the point that spans the largest triangle with its neighbours,
 * so spikes (a loss blow-up, a stalled step) survive where averaging would flatten them.
 * O(n) time; the input is not copied when it already fits.
 */
export function downsampleLttb(
  xs: readonly number[],
  ys: readonly number[],
  points: number,
): { x: number[]; y: number[] } {
  const n = Math.min(xs.length, ys.length);
  if (points >= n || n <= 2) return { x: xs.slice(0, n), y: ys.slice(0, n) };
  if (points < 3) points = 3;
  const x: number[] = [xs[0]!];
  const y: number[] = [ys[0]!];
  // Buckets cover points 1..n-2; the first and last points are kept as they are.
  const every = (n - 2) / (points - 2);
  let a = 0;
  for (let i = 0; i < points - 2; i++) {
    // The average of the next bucket is the third corner of the triangle.
    const nextStart = Math.floor((i + 1) * every) + 1;
    const nextEnd = Math.min(Math.floor((i + 2) * every) + 1, n);
    let avgX = 0;
    let avgY = 0;
    const nextLen = nextEnd - nextStart;
    if (nextLen > 0) {
      for (let j = nextStart; j < nextEnd; j++) {
        avgX += xs[j]!;
        avgY += ys[j]!;
      }
      avgX /= nextLen;
      avgY /= nextLen;
    } else {
      avgX = xs[n - 1]!;
      avgY = ys[n - 1]!;
    }
    const start = Math.floor(i * every) + 1;
    const end = Math.floor((i + 1) * every) + 1;
    const ax = xs[a]!;
    const ay = ys[a]!;
    let best = -1;
    let bestArea = -1;
    for (let j = start; j < end; j++) {
      const area = Math.abs((ax - avgX) * (ys[j]! - ay) - (ax - xs[j]!) * (avgY - ay));
      if (area > bestArea) {
        bestArea = area;
        best = j;
      }
    }
    x.push(xs[best]!);
    y.push(ys[best]!);
    a = best;
  }
  x.push(xs[n - 1]!);
  y.push(ys[n - 1]!);
  return { x, y };
}
