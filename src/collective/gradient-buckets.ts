import { PartiError } from '../errors.ts';

/** One tensor's place in a bucket: elements [offset, offset+length) of the bucket are tensor `index`. */
export interface BucketPart {
  index: number;
  offset: number;
  length: number;
}

/** A flat float32 bucket made of whole tensors (or, for a flat array, one range of it). */
export interface Bucket {
  /** Elements in the bucket. */
  length: number;
  parts: BucketPart[];
}

/**
 * Groups tensors of the given sizes (in elements) into buckets of about `bucketElements` each, in
 * order, so that gradients travel in few large all-reduces instead of many small ones (PyTorch DDP
 * does the same with 25 MiB buckets). A tensor larger than a bucket gets a bucket of its own; a
 * tensor is never split. The plan depends only on the sizes, so every rank makes the same one.
 */
export function planBuckets(sizes: readonly number[], bucketElements: number): Bucket[] {
  if (!Number.isInteger(bucketElements) || bucketElements < 1) {
    throw new PartiError('usage', `planBuckets: bucketElements must be an integer >= 1, got ${bucketElements}`);
  }
  const buckets: Bucket[] = [];
  let current: Bucket | null = null;
  sizes.forEach((size, index) => {
    if (!Number.isInteger(size) || size < 0) throw new PartiError('usage', `planBuckets: tensor ${index} has size ${size}`);
    if (current && current.length > 0 && current.length + size > bucketElements) {
      buckets.push(current);
      current = null;
    }
    current ??= { length: 0, parts: [] };
    current.parts.push({ index, offset: current.length, length: size });
    current.length += size;
  });
  if (current) buckets.push(current);
  return buckets;
}

/** Copies the bucket's tensors into one flat array (`into` if given, reused across steps). */
export function packBucket(bucket: Bucket, tensors: readonly Float32Array[], into?: Float32Array): Float32Array {
  const out = into ?? new Float32Array(bucket.length);
  if (out.length !== bucket.length) throw new PartiError('usage', `packBucket: target holds ${out.length} elements, the bucket ${bucket.length}`);
  for (const p of bucket.parts) {
    const t = tensors[p.index];
    if (!t || t.length !== p.length) throw new PartiError('usage', `packBucket: tensor ${p.index} has ${t?.length ?? 'no'} elements, the plan says ${p.length}`);
    out.set(t, p.offset);
  }
  return out;
}

/** Copies a (reduced) flat bucket back into its tensors. */
export function unpackBucket(bucket: Bucket, flat: Float32Array, tensors: Float32Array[]): void {
  if (flat.length !== bucket.length) throw new PartiError('usage', `unpackBucket: got ${flat.length} elements, the bucket has ${bucket.length}`);
  for (const p of bucket.parts) tensors[p.index]!.set(flat.subarray(p.offset, p.offset + p.length));
}

/**
 * Buckets of one flat gradient array: views [start, end) of about `bucketElements` each (no copy),
 * to all-reduce one after another (or several at once) with `inPlace: true`.
 */
export function flatBuckets(flat: Float32Array, bucketElements: number): Float32Array[] {
  if (!Number.isInteger(bucketElements) || bucketElements < 1) {
    throw new PartiError('usage', `flatBuckets: bucketElements must be an integer >= 1, got ${bucketElements}`);
  }
  const out: Float32Array[] = [];
  for (let a = 0; a < flat.length; a += bucketElements) out.push(flat.subarray(a, Math.min(flat.length, a + bucketElements)));
  return out;
}
