/**
 * Counter-based deterministic randomness for the model: every random number is a pure function of
 * integers (seed, step, sample identity, site, ...), never of call order or of which process runs
 * the sample. That is what lets dropout and condition dropout agree across world sizes.
 *
 * The string hash and the sequential generator are the data's (src/data/seeded-random.ts).
 * `hashInts` stays apart from the data's `mixSeed` on purpose: the two differ in their start value
 * and high-word mixing, and every parameter init and dropout mask of a run depends on hashInts's
 * exact values (checkpoints and bitwise tests would change with it).
 */
import { hashString, SeededRandom } from '../data/seeded-random.ts';

/** Mixes 32-bit integers into one 32-bit unsigned hash (murmur3-style finalizer per word). */
export function hashInts(...parts: number[]): number {
  let h = 0x811c9dc5 >>> 0;
  for (const p of parts) {
    let k = Math.floor(p) >>> 0;
    // Mix the high part too so that large indices (> 2^32) still differ.
    const hi = Math.floor(p / 4294967296) >>> 0;
    k ^= Math.imul(hi, 0x27d4eb2f);
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) >>> 0;
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Hashes a string (FNV-1a) to 32 bits, for naming random streams ("param:enc.0.attn.wqkv"). */
export const hashName: (name: string) => number = hashString;

/** A uniform number in [0, 1) from the given integers. */
export function uniformAt(...parts: number[]): number {
  return hashInts(...parts) / 4294967296;
}

/**
 * A small sequential generator (mulberry32, the data's {@link SeededRandom}) seeded from a hash;
 * used for parameter init. Adds normal draws.
 */
export class SequentialRandom extends SeededRandom {
  private spare: number | null = null;
  /** Standard normal (Box-Muller). */
  normal(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    let u = this.next();
    while (u <= 1e-12) u = this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
}
