import { PartiError } from '../errors.ts';

/**
 * An ONNX graph under construction, as plain data: nodes in topological order (each op is added
 * after its inputs exist), initializers (weights and small constants) and typed inputs/outputs.
 * `writeOnnxModel` (onnx-file.ts) serializes it with protobufjs. Names are generated unique per
 * graph; inputs and outputs keep the names the caller gives (the serving contract).
 */

/** Element types parti's graphs use (ONNX TensorProto.DataType values). */
export const ELEM_TYPE = { float32: 1, int64: 7, bool: 9 } as const;
export type ElemType = keyof typeof ELEM_TYPE;

/** A dimension: a fixed size or a symbolic name (`batch`, `past`). */
export type Dim = number | string;

/** A typed graph input or output. */
export interface ValueSpec {
  name: string;
  type: ElemType;
  shape: Dim[];
}

/** A node attribute, tagged with its ONNX type. */
export type Attr = { i: number } | { f: number } | { ints: number[] } | { s: string };

export interface NodeSpec {
  op: string;
  name: string;
  inputs: string[];
  outputs: string[];
  attrs: Record<string, Attr>;
}

/** A named constant tensor: float32 weights or int64 shape constants. */
export interface Initializer {
  name: string;
  dims: number[];
  data: Float32Array | BigInt64Array;
}

export class OnnxGraph {
  readonly nodes: NodeSpec[] = [];
  readonly initializers: Initializer[] = [];
  readonly inputs: ValueSpec[] = [];
  readonly outputs: ValueSpec[] = [];
  private counter = 0;
  private readonly names = new Set<string>();
  private readonly constants = new Map<string, string>();

  constructor(readonly name: string) {}

  private fresh(hint: string): string {
    let n: string;
    do n = `${hint}_${this.counter++}`;
    while (this.names.has(n));
    this.names.add(n);
    return n;
  }

  private claim(name: string): void {
    if (this.names.has(name)) throw new PartiError('internal', `ONNX graph ${this.name}: duplicate value name ${name}`);
    this.names.add(name);
  }

  /** Declares a graph input and returns its name. */
  input(name: string, type: ElemType, shape: Dim[]): string {
    this.claim(name);
    this.inputs.push({ name, type, shape });
    return name;
  }

  /** Declares `value` as the graph output `name` (through an Identity node when named otherwise). */
  output(name: string, value: string, type: ElemType, shape: Dim[]): void {
    if (value !== name) {
      this.claim(name);
      this.nodes.push({ op: 'Identity', name: `${name}_identity`, inputs: [value], outputs: [name], attrs: {} });
    }
    this.outputs.push({ name, type, shape });
  }

  /** Adds a float32 initializer under a given name (a weight). */
  weight(name: string, data: Float32Array, dims: readonly number[]): string {
    const size = dims.reduce((a, b) => a * b, 1);
    if (size !== data.length) throw new PartiError('internal', `ONNX weight ${name}: ${data.length} values for shape [${dims.join(', ')}]`);
    this.claim(name);
    this.initializers.push({ name, dims: [...dims], data });
    return name;
  }

  /** A float32 scalar constant (shared by value within the graph). */
  scalar(value: number): string {
    const key = `f:${Math.fround(value)}`;
    const known = this.constants.get(key);
    if (known) return known;
    const name = this.fresh('const_f');
    this.initializers.push({ name, dims: [], data: Float32Array.of(value) });
    this.constants.set(key, name);
    return name;
  }

  /** A 1-D int64 constant (shapes, axes, indices), or a scalar with `scalar: true`. */
  ints(values: readonly number[], opts: { scalar?: boolean } = {}): string {
    const key = `i:${opts.scalar ? 's' : 'v'}:${values.join(',')}`;
    const known = this.constants.get(key);
    if (known) return known;
    const name = this.fresh('const_i');
    this.initializers.push({ name, dims: opts.scalar ? [] : [values.length], data: BigInt64Array.from(values.map((v) => BigInt(v))) });
    this.constants.set(key, name);
    return name;
  }

  /** Adds a node with one output and returns the output's name. */
  op(op: string, inputs: readonly string[], attrs: Record<string, Attr> = {}, hint = op): string {
    return this.opN(op, inputs, 1, attrs, hint)[0]!;
  }

  /** Adds a node with `outputs` outputs. */
  opN(op: string, inputs: readonly string[], outputs: number, attrs: Record<string, Attr> = {}, hint = op): string[] {
    const outs = Array.from({ length: outputs }, () => this.fresh(hint));
    this.nodes.push({ op, name: this.fresh(`${hint}_node`), inputs: [...inputs], outputs: outs, attrs });
    return outs;
  }

  /** Bytes of all float32 weights (not the small constants). */
  get weightBytes(): number {
    return this.initializers.reduce((n, t) => n + t.data.byteLength, 0);
  }
}
