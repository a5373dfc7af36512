import type { WireCompression } from './wire-compression.ts';

// Inputs and checks shared by the collective tests, the rank process and the benchmark: every
// process can rebuild every rank's input from (seed, rank), so results can be checked anywhere.

/** A deterministic input for (seed, rank): values in [-1, 1). */
export function seededInput(length: number, seed: number, rank: number): Float32Array {
  let s = (seed * 0x9e3779b1 + rank * 0x85ebca6b + 1) >>> 0;
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = (((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * 2 - 1;
  }
  return out;
}

/** The float64 reduction of the ranks' inputs. */
export function float64Reference(inputs: Float32Array[], op: 'sum' | 'mean'): Float64Array {
  const ref = new Float64Array(inputs[0]?.length ?? 0);
  for (const x of inputs) for (let i = 0; i < ref.length; i++) ref[i]! += x[i]!;
  if (op === 'mean') for (let i = 0; i < ref.length; i++) ref[i]! /= inputs.length;
  return ref;
}

/** Largest |a - b|. */
export function maxAbsError(a: Float32Array, b: Float64Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Tolerance of a sum over `n` ranks of values in [-1, 1) per wire format (partial sums rounded n-1 times). */
export function tolerance(n: number, compress: WireCompression, op: 'sum' | 'mean'): number {
  const unit = compress === 'none' ? 2 ** -23 : compress === 'bf16' ? 2 ** -8 : 2 ** -10;
  const sum = n * n * unit + 1e-6;
  return op === 'mean' ? sum / n : sum;
}

