import { PartiError } from '../errors.ts';
import { SHAPES_COLORS, SHAPES_POSITIONS, SHAPES_SHAPES } from '../data/shapes.ts';

/** One categorical output of the probe. */
export interface ProbeHead {
  name: string;
  classes: string[];
}

/**
 * What the probe predicts and how a caption says it: a fixed list of heads, a caption -> one class
 * per head, and attribute groups (an attribute agrees when all its heads do).
 */
export interface LabelScheme {
  /** `shapes` or `phrase`. */
  readonly kind: 'shapes' | 'phrase';
  readonly heads: readonly ProbeHead[];
  /** Attribute name -> the heads it is made of (e.g. color -> color1, color2). */
  readonly attributes: Readonly<Record<string, readonly string[]>>;
  /** One class index per head, or null when the caption is not one this scheme can label. */
  labelsOf(caption: string): number[] | null;
  /** The scheme as plain JSON (saved with the probe). */
  toJSON(): LabelSchemeJson;
}

/** A saved scheme: shapes has no parameters; phrase lists its classes. */
export type LabelSchemeJson = { kind: 'shapes' } | { kind: 'phrase'; phrases: string[] };

const NONE = 'none';
const PAIR = /^a (\w+) (\w+) (above|below|left of|right of) a (\w+) (\w+)$/;
const SINGLE = /^a (\w+) (\w+) (at the top left|at the top right|at the bottom left|at the bottom right|at the top|at the bottom|on the left|on the right|in the center)$/;
const PHRASE_POSITION: Record<string, string> = {
  'at the top left': 'top left',
  'at the top': 'top',
  'at the top right': 'top right',
  'on the left': 'left',
  'in the center': 'center',
  'on the right': 'right',
  'at the bottom left': 'bottom left',
  'at the bottom': 'bottom',
  'at the bottom right': 'bottom right',
};

/**
 * The shapes set's captions as five heads. A pair is first put in its canonical form ("B below A"
 * is "A above B", "B right of A" is "A left of B"): the image of both phrasings is the same, so
 * object 1 is always the upper or left one and the labels are a function of the image alone.
 *
 * - color1, shape1: the (upper/left, or only) object;
 * - color2, shape2: the other object, or `none` for a single object (so the count is checked too);
 * - where: the cell of a single object, or `above` / `left of` for a pair.
 *
 * Attributes: color = color1 + color2, shape = shape1 + shape2, position = where.
 */
export class ShapesLabelScheme implements LabelScheme {
  readonly kind = 'shapes' as const;
  readonly heads: readonly ProbeHead[] = [
    { name: 'color1', classes: [...SHAPES_COLORS] },
    { name: 'shape1', classes: [...SHAPES_SHAPES] },
    { name: 'color2', classes: [NONE, ...SHAPES_COLORS] },
    { name: 'shape2', classes: [NONE, ...SHAPES_SHAPES] },
    { name: 'where', classes: [...SHAPES_POSITIONS, 'above', 'left of'] },
  ];
  readonly attributes = { color: ['color1', 'color2'], shape: ['shape1', 'shape2'], position: ['where'] };

  labelsOf(caption: string): number[] | null {
    const [c1, s1, c2, s2, where] = this.heads.map((h) => h.classes);
    const idx = (classes: string[] | undefined, v: string) => classes!.indexOf(v);
    const single = SINGLE.exec(caption);
    if (single) {
      const out = [idx(c1, single[1]!), idx(s1, single[2]!), 0, 0, idx(where, PHRASE_POSITION[single[3]!]!)];
      return out.every((i) => i >= 0) ? out : null;
    }
    const pair = PAIR.exec(caption);
    if (!pair) return null;
    let [, ca, sa, rel, cb, sb] = pair as unknown as string[];
    if (rel === 'below' || rel === 'right of') {
      [ca, sa, cb, sb] = [cb, sb, ca, sa];
      rel = rel === 'below' ? 'above' : 'left of';
    }
    const out = [idx(c1, ca!), idx(s1, sa!), idx(c2, cb!), idx(s2, sb!), idx(where, rel!)];
    // color2/shape2 index 0 is `none`: a pair naming no second object is not a shapes caption.
    return out.every((i) => i >= 0) && out[2]! > 0 && out[3]! > 0 ? out : null;
  }

  toJSON(): LabelSchemeJson {
    return { kind: 'shapes' };
  }
}

/** A data set whose captions come from a fixed set of phrases: one head, the caption is the class. */
export class PhraseLabelScheme implements LabelScheme {
  readonly kind = 'phrase' as const;
  readonly heads: readonly ProbeHead[];
  readonly attributes = { caption: ['caption'] };
  private readonly index: Map<string, number>;

  constructor(phrases: readonly string[]) {
    const classes = [...new Set(phrases)].sort();
    this.heads = [{ name: 'caption', classes }];
    this.index = new Map(classes.map((c, i) => [c, i]));
  }

  labelsOf(caption: string): number[] | null {
    const i = this.index.get(caption);
    return i === undefined ? null : [i];
  }

  toJSON(): LabelSchemeJson {
    return { kind: 'phrase', phrases: this.heads[0]!.classes };
  }
}

/** Most distinct captions a phrase data set may have (one probe class each). */
export const MAX_PHRASES = 1000;

/**
 * The scheme for a data set's training captions: shapes when every caption parses as a shapes
 * caption, else one class per distinct caption when there are at most MAX_PHRASES of them, else a
 * data error (the probe has nothing fixed to predict).
 */
export function chooseLabelScheme(captions: readonly string[], source: string): LabelScheme {
  if (captions.length === 0) throw new PartiError('data', `${source}: no samples to train a probe on`);
  const shapes = new ShapesLabelScheme();
  if (captions.every((c) => shapes.labelsOf(c) !== null)) return shapes;
  const distinct = new Set(captions).size;
  if (distinct > MAX_PHRASES) {
    throw new PartiError(
      'data',
      `${source}: captions are neither shapes-set captions nor a fixed phrase set (${distinct} distinct captions, at most ${MAX_PHRASES} allowed)`,
    );
  }
  return new PhraseLabelScheme(captions);
}

/** Rebuilds a saved scheme. */
export function labelSchemeFromJSON(json: LabelSchemeJson): LabelScheme {
  return json.kind === 'shapes' ? new ShapesLabelScheme() : new PhraseLabelScheme(json.phrases);
}
