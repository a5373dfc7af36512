import { PartiError } from '../errors.ts';

/** Mean and covariance (unbiased, n - 1) of n feature rows of width d, in float64. */
export interface Gaussian {
  d: number;
  n: number;
  mean: Float64Array;
  /** d x d, row-major. */
  cov: Float64Array;
}

/** Fits a Gaussian to `n` rows of `d` features (row-major `features`). Needs n >= 2. */
export function fitGaussian(features: ArrayLike<number>, d: number): Gaussian {
  const n = features.length / d;
  if (!Number.isInteger(n) || n < 2) throw new PartiError('data', `FID: need at least 2 feature rows of width ${d}, got ${features.length / d}`);
  const mean = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) mean[j]! += features[i * d + j]!;
  for (let j = 0; j < d; j++) mean[j]! /= n;
  const cov = new Float64Array(d * d);
  const c = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) c[j] = features[i * d + j]! - mean[j]!;
    for (let a = 0; a < d; a++) {
      const ca = c[a]!;
      if (ca === 0) continue;
      for (let b = a; b < d; b++) cov[a * d + b]! += ca * c[b]!;
    }
  }
  for (let a = 0; a < d; a++)
    for (let b = a; b < d; b++) {
      const v = cov[a * d + b]! / (n - 1);
      cov[a * d + b] = v;
      cov[b * d + a] = v;
    }
  return { d, n, mean, cov };
}

/**
 * Eigenvalues and eigenvectors of a symmetric d x d matrix by cyclic Jacobi rotations (exact to
 * float64 rounding for the small d of probe features). Returns values and column eigenvectors V
 * (row-major, V[i*d+k] is component i of vector k).
 */
export function symmetricEigen(m: Float64Array, d: number): { values: Float64Array; vectors: Float64Array } {
  const a = Float64Array.from(m);
  const v = new Float64Array(d * d);
  for (let i = 0; i < d; i++) v[i * d + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    let diag = 0;
    for (let p = 0; p < d; p++) {
      diag += a[p * d + p]! ** 2;
      for (let q = p + 1; q < d; q++) off += a[p * d + q]! ** 2;
    }
    if (off <= 1e-30 * Math.max(diag, 1e-300)) break;
    for (let p = 0; p < d; p++)
      for (let q = p + 1; q < d; q++) {
        const apq = a[p * d + q]!;
        if (Math.abs(apq) < 1e-300) continue;
        const app = a[p * d + p]!;
        const aqq = a[q * d + q]!;
        const theta = (aqq - app) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < d; k++) {
          const akp = a[k * d + p]!;
          const akq = a[k * d + q]!;
          a[k * d + p] = c * akp - s * akq;
          a[k * d + q] = s * akp + c * akq;
        }
        for (let k = 0; k < d; k++) {
          const apk = a[p * d + k]!;
          const aqk = a[q * d + k]!;
          a[p * d + k] = c * apk - s * aqk;
          a[q * d + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < d; k++) {
          const vkp = v[k * d + p]!;
          const vkq = v[k * d + q]!;
          v[k * d + p] = c * vkp - s * vkq;
          v[k * d + q] = s * vkp + c * vkq;
        }
      }
  }
  const values = new Float64Array(d);
  for (let i = 0; i < d; i++) values[i] = a[i * d + i]!;
  return { values, vectors: v };
}

function matmul(a: Float64Array, b: Float64Array, d: number): Float64Array {
  const out = new Float64Array(d * d);
  for (let i = 0; i < d; i++)
    for (let k = 0; k < d; k++) {
      const aik = a[i * d + k]!;
      if (aik === 0) continue;
      for (let j = 0; j < d; j++) out[i * d + j]! += aik * b[k * d + j]!;
    }
  return out;
}

/** The PSD square root of a symmetric PSD matrix (negative rounding eigenvalues clamped to 0). */
function sqrtPsd(m: Float64Array, d: number): Float64Array {
  const { values, vectors } = symmetricEigen(m, d);
  const out = new Float64Array(d * d);
  for (let k = 0; k < d; k++) {
    const s = Math.sqrt(Math.max(values[k]!, 0));
    if (s === 0) continue;
    for (let i = 0; i < d; i++) {
      const vik = vectors[i * d + k]! * s;
      for (let j = 0; j < d; j++) out[i * d + j]! += vik * vectors[j * d + k]!;
    }
  }
  return out;
}

/**
 * Fréchet distance between two Gaussians: |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2).
 * tr((S1 S2)^1/2) is computed as the sum of square roots of the eigenvalues of the symmetric
 * S1^1/2 S2 S1^1/2 (same spectrum as S1 S2), so no non-symmetric square root is needed.
 */
export function frechetDistance(g1: Gaussian, g2: Gaussian): number {
  if (g1.d !== g2.d) throw new PartiError('internal', `FID: feature widths differ (${g1.d} vs ${g2.d})`);
  const d = g1.d;
  let meanTerm = 0;
  for (let j = 0; j < d; j++) meanTerm += (g1.mean[j]! - g2.mean[j]!) ** 2;
  let tr = 0;
  for (let j = 0; j < d; j++) tr += g1.cov[j * d + j]! + g2.cov[j * d + j]!;
  const r = sqrtPsd(g1.cov, d);
  const m = matmul(matmul(r, g2.cov, d), r, d);
  // Symmetrize away rounding before the eigen solve.
  for (let i = 0; i < d; i++)
    for (let j = i + 1; j < d; j++) {
      const s = (m[i * d + j]! + m[j * d + i]!) / 2;
      m[i * d + j] = s;
      m[j * d + i] = s;
    }
  const { values } = symmetricEigen(m, d);
  let trSqrt = 0;
  for (const x of values) trSqrt += Math.sqrt(Math.max(x, 0));
  // Rounding can leave a tiny negative value for identical sets; a distance is >= 0.
  return Math.max(0, meanTerm + tr - 2 * trSqrt);
}

/** FID between two feature sets of width d (rows row-major). */
export function fid(a: ArrayLike<number>, b: ArrayLike<number>, d: number): number {
  return frechetDistance(fitGaussian(a, d), fitGaussian(b, d));
}
