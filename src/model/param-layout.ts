import * as tf from '@tensorflow/tfjs';
import { hashInts, hashName, SequentialRandom } from './rng.ts';
import { PartiError } from '../errors.ts';

/** How a parameter starts. */
export type ParamInit =
  | { kind: 'zeros' }
  | { kind: 'ones' }
  /** Normal(0, std). */
  | { kind: 'normal'; std: number };

/** One named tensor inside the flat parameter vector. */
export interface ParamEntry {
  /** Dotted name, unique, e.g. `decoder.3.xattn.wq`. The first segment is the component. */
  readonly name: string;
  readonly shape: readonly number[];
  /** First element of this tensor in the flat vector. */
  readonly offset: number;
  /** Number of elements (product of shape). */
  readonly size: number;
  readonly init: ParamInit;
  /** Whether decoupled weight decay applies (matrices: yes; biases, norms, embeddings: no). */
  readonly decay: boolean;
  /** Counted as embedding (token/position tables) in `model info`'s nonEmbedding. */
  readonly embedding: boolean;
}

/**
 * The fixed order and shapes of a model's parameters: the contract between the model, the
 * optimizer, gradient all-reduce and checkpoints. Building one allocates no tensors, so it also
 * counts the parameters of models too large for this machine.
 */
export class ParamLayout {
  readonly entries: readonly ParamEntry[];
  /** Total number of float32 elements. */
  readonly size: number;
  private readonly byName: Map<string, ParamEntry>;

  constructor(entries: ParamEntry[]) {
    this.entries = entries;
    this.size = entries.reduce((n, e) => n + e.size, 0);
    this.byName = new Map(entries.map((e) => [e.name, e]));
  }

  get(name: string): ParamEntry {
    const e = this.byName.get(name);
    if (!e) throw new PartiError('internal', `no parameter named ${name}`);
    return e;
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** Plain JSON for checkpoints and for handing state to another process. */
  toJSON(): { name: string; shape: number[]; offset: number }[] {
    return this.entries.map((e) => ({ name: e.name, shape: [...e.shape], offset: e.offset }));
  }

  /** Whether another layout (e.g. read from a checkpoint) has the same names, shapes and offsets. */
  sameAs(other: { name: string; shape: readonly number[]; offset: number }[]): boolean {
    return (
      other.length === this.entries.length &&
      other.every((o, i) => {
        const e = this.entries[i]!;
        return e.name === o.name && e.offset === o.offset && e.shape.join('x') === o.shape.join('x');
      })
    );
  }

  /**
   * Splits [0, size) into `parts` contiguous ranges of about equal size whose boundaries fall on
   * entry boundaries (needed by Adafactor's factored statistics; fine for AdamW too).
   * For optimizer-state sharding (ZeRO-1): rank r updates ranges[r].
   */
  shardRanges(parts: number): [number, number][] {
    const out: [number, number][] = [];
    let start = 0;
    let i = 0;
    for (let p = 0; p < parts; p++) {
      const target = Math.round((this.size * (p + 1)) / parts);
      let end = start;
      while (i < this.entries.length && (p === parts - 1 || end + this.entries[i]!.size / 2 <= target)) {
        end += this.entries[i]!.size;
        i++;
      }
      out.push([start, end]);
      start = end;
    }
    return out;
  }

  /** Fresh parameters: each tensor drawn from its own stream seeded by (seed, name). */
  initialize(seed: number): Float32Array {
    const flat = new Float32Array(this.size);
    for (const e of this.entries) {
      const view = flat.subarray(e.offset, e.offset + e.size);
      if (e.init.kind === 'ones') view.fill(1);
      else if (e.init.kind === 'normal') {
        const rng = new SequentialRandom(hashInts(seed, hashName(e.name)));
        for (let i = 0; i < view.length; i++) view[i] = rng.normal() * e.init.std;
      }
    }
    return flat;
  }

  /** Uploads the flat vector as one tensor per entry (the caller disposes them). */
  toTensors(flat: Float32Array): Map<string, tf.Tensor> {
    if (flat.length !== this.size) throw new PartiError('internal', `parameter vector has ${flat.length} floats, layout needs ${this.size}`);
    const out = new Map<string, tf.Tensor>();
    for (const e of this.entries) out.set(e.name, tf.tensor(flat.subarray(e.offset, e.offset + e.size), [...e.shape], 'float32'));
    return out;
  }
}

/** Collects entries in order; `add` returns the name so layer builders can chain. */
export class LayoutBuilder {
  private readonly entries: ParamEntry[] = [];
  private offset = 0;

  add(name: string, shape: number[], init: ParamInit, opts: { decay?: boolean; embedding?: boolean } = {}): string {
    const size = shape.reduce((a, b) => a * b, 1);
    this.entries.push({
      name,
      shape,
      offset: this.offset,
      size,
      init,
      decay: opts.decay ?? shape.length >= 2,
      embedding: opts.embedding ?? false,
    });
    this.offset += size;
    return name;
  }

  build(): ParamLayout {
    return new ParamLayout(this.entries);
  }
}

/** Named parameter tensors for one forward pass. */
export type ParamTensors = ReadonlyMap<string, tf.Tensor>;

/** Looks a parameter up; a missing name is a bug. */
export function param(p: ParamTensors, name: string): tf.Tensor {
  const t = p.get(name);
  if (!t) throw new PartiError('internal', `missing parameter ${name}`);
  return t;
}
