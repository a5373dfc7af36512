import { hashString, mixSeed, SeededRandom } from './seeded-random.ts';

/**
 * The generated "shapes" set: one or two colored shapes on a black background, with captions such
 * as "a red circle above a blue square" or "a green triangle at the top left". Small vocabulary,
 * learnable at 32x32, deterministic from (seed, index, split), pure (no tfjs, no I/O).
 *
 * Scenes sit on a 3x3 grid of cells. A single object may be in any cell; a pair shares a column
 * ("above"/"below") or a row ("left of"/"right of"), so the caption's relation is unambiguous.
 *
 * Held-out split: a scene's canonical description ("B below A" is the same scene as "A above B";
 * "right of" likewise) is hashed; one in HELD_OUT_MODULUS goes to `heldOut`, the rest to `train`.
 * So no caption used for evaluation (in either phrasing) ever appears in training, and the rule
 * does not depend on the seed: every seed agrees on which captions are held out.
 */

export const SHAPES_COLORS = ['red', 'green', 'blue', 'yellow', 'white', 'purple'] as const;
export const SHAPES_SHAPES = ['circle', 'square', 'triangle', 'cross'] as const;
/** Grid cells in row-major order: index = row * 3 + col. */
export const SHAPES_POSITIONS = [
  'top left',
  'top',
  'top right',
  'left',
  'center',
  'right',
  'bottom left',
  'bottom',
  'bottom right',
] as const;
export const SHAPES_RELATIONS = ['above', 'below', 'left of', 'right of'] as const;
export const SHAPES_SPLITS = ['train', 'heldOut'] as const;

export type ShapesColor = (typeof SHAPES_COLORS)[number];
export type ShapesShape = (typeof SHAPES_SHAPES)[number];
export type ShapesPosition = (typeof SHAPES_POSITIONS)[number];
export type ShapesRelation = (typeof SHAPES_RELATIONS)[number];
export type ShapesSplit = (typeof SHAPES_SPLITS)[number];

/** One in this many canonical scene descriptions is held out for evaluation. */
export const HELD_OUT_MODULUS = 10;

/** RGB of each color name. */
export const SHAPES_RGB: Readonly<Record<ShapesColor, readonly [number, number, number]>> = {
  red: [220, 40, 40],
  green: [40, 190, 60],
  blue: [50, 90, 235],
  yellow: [235, 215, 40],
  white: [240, 240, 240],
  purple: [160, 60, 210],
};

const POSITION_PHRASE: Readonly<Record<ShapesPosition, string>> = {
  'top left': 'at the top left',
  top: 'at the top',
  'top right': 'at the top right',
  left: 'on the left',
  center: 'in the center',
  right: 'on the right',
  'bottom left': 'at the bottom left',
  bottom: 'at the bottom',
  'bottom right': 'at the bottom right',
};

/** One drawn object, with what an evaluation probe predicts (color, shape, position). */
export interface ShapesObject {
  color: ShapesColor;
  shape: ShapesShape;
  /** Grid cell name. */
  position: ShapesPosition;
  /** Grid cell index, row * 3 + col (0..8), the same order as SHAPES_POSITIONS. */
  cell: number;
  row: number;
  col: number;
  /** Center and radius in pixels (the cell center plus a small jitter). */
  centerX: number;
  centerY: number;
  radius: number;
}

export interface ShapesAttributes {
  split: ShapesSplit;
  /** `single`: one object at a position; `pair`: two objects in a relation. */
  layout: 'single' | 'pair';
  /** For pairs: objects[0] is `relation` objects[1]. Null for single objects. */
  relation: ShapesRelation | null;
  objects: ShapesObject[];
}

export interface ShapesSample {
  /** WebDataset key, unique within the set: `train-000000042` or `heldout-000000042`. */
  key: string;
  caption: string;
  /** imageSize * imageSize * 3 bytes, RGB, row-major. */
  image: Uint8Array;
  attributes: ShapesAttributes;
}

export interface ShapesOptions {
  /** Any integer >= 0; the whole set is a function of it. */
  seed: number;
  /** Square image side in pixels (>= 8; 32 for the tiny config). */
  imageSize: number;
  /** Which split to draw from (default `train`). Index i of each split is a different scene. */
  split?: ShapesSplit;
}

interface SceneObject {
  color: ShapesColor;
  shape: ShapesShape;
  row: number;
  col: number;
}

interface Scene {
  layout: 'single' | 'pair';
  relation: ShapesRelation | null;
  objects: SceneObject[];
}

function describe(o: SceneObject): string {
  return `a ${o.color} ${o.shape}`;
}

function captionOf(scene: Scene): string {
  const [a, b] = scene.objects;
  if (scene.layout === 'single') return `${describe(a!)} ${POSITION_PHRASE[SHAPES_POSITIONS[a!.row * 3 + a!.col]!]}`;
  return `${describe(a!)} ${scene.relation} ${describe(b!)}`;
}

/** The description both phrasings of a pair share ("below"/"right of" are flipped to "above"/"left of"). */
function canonicalDescription(scene: Scene): string {
  if (scene.layout === 'single') return captionOf(scene);
  const [a, b] = scene.objects as [SceneObject, SceneObject];
  if (scene.relation === 'below') return `${describe(b)} above ${describe(a)}`;
  if (scene.relation === 'right of') return `${describe(b)} left of ${describe(a)}`;
  return captionOf(scene);
}

/** Which split a caption belongs to. Works on any caption the generator can produce. */
export function shapesSplitOfCaption(caption: string): ShapesSplit {
  const pair = /^(a \w+ \w+) (above|below|left of|right of) (a \w+ \w+)$/.exec(caption);
  let canonical = caption;
  if (pair) {
    const [, a, rel, b] = pair;
    if (rel === 'below') canonical = `${b} above ${a}`;
    else if (rel === 'right of') canonical = `${b} left of ${a}`;
  }
  return splitOfCanonical(canonical);
}

function splitOfCanonical(canonical: string): ShapesSplit {
  return hashString(`parti-shapes/${canonical}`) % HELD_OUT_MODULUS === 0 ? 'heldOut' : 'train';
}

function drawScene(rng: SeededRandom): Scene {
  const object = (row: number, col: number): SceneObject => ({
    color: rng.pick(SHAPES_COLORS),
    shape: rng.pick(SHAPES_SHAPES),
    row,
    col,
  });
  // One in three scenes is a single object at a position, two in three a related pair.
  if (rng.int(3) === 0) {
    const cell = rng.int(9);
    return { layout: 'single', relation: null, objects: [object(Math.floor(cell / 3), cell % 3)] };
  }
  const relation = rng.pick(SHAPES_RELATIONS);
  const lines: [number, number][] = [
    [0, 1],
    [0, 2],
    [1, 2],
  ];
  const [first, second] = rng.pick(lines); // first < second
  const line = rng.int(3); // the shared column (vertical relations) or row (horizontal ones)
  const aFirst = relation === 'above' || relation === 'left of';
  const ia = aFirst ? first : second;
  const ib = aFirst ? second : first;
  const vertical = relation === 'above' || relation === 'below';
  const a = vertical ? object(ia, line) : object(line, ia);
  let b = vertical ? object(ib, line) : object(line, ib);
  // Two identical objects make the relation meaningless to a probe; redraw the second.
  while (b.color === a.color && b.shape === a.shape) b = vertical ? object(ib, line) : object(line, ib);
  return { layout: 'pair', relation, objects: [a, b] };
}

function inside(shape: ShapesShape, dx: number, dy: number, r: number): boolean {
  switch (shape) {
    case 'circle':
      return dx * dx + dy * dy <= r * r;
    case 'square':
      return Math.abs(dx) <= r * 0.85 && Math.abs(dy) <= r * 0.85;
    case 'triangle': {
      // Apex up at -r, base at +0.8r with half-width r.
      if (dy < -r || dy > 0.8 * r) return false;
      return Math.abs(dx) <= ((dy + r) / (1.8 * r)) * r;
    }
    case 'cross': {
      const arm = r * 0.32;
      return (Math.abs(dx) <= arm && Math.abs(dy) <= r) || (Math.abs(dy) <= arm && Math.abs(dx) <= r);
    }
  }
}

function render(objects: ShapesObject[], size: number): Uint8Array {
  const image = new Uint8Array(size * size * 3);
  for (const o of objects) {
    const [cr, cg, cb] = SHAPES_RGB[o.color];
    const x0 = Math.max(0, Math.floor(o.centerX - o.radius - 1));
    const x1 = Math.min(size - 1, Math.ceil(o.centerX + o.radius + 1));
    const y0 = Math.max(0, Math.floor(o.centerY - o.radius - 1));
    const y1 = Math.min(size - 1, Math.ceil(o.centerY + o.radius + 1));
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        // Sample at the pixel center: hard edges, no antialiasing, exactly reproducible.
        if (!inside(o.shape, x + 0.5 - o.centerX, y + 0.5 - o.centerY, o.radius)) continue;
        const p = (y * size + x) * 3;
        image[p] = cr;
        image[p + 1] = cg;
        image[p + 2] = cb;
      }
    }
  }
  return image;
}

/**
 * Sample `index` (an integer >= 0) of the shapes set for `seed` and `split`. The same arguments
 * always give the same bytes. Cost is one small scene layout (about 1.1 draws for `train`, about
 * 10 for `heldOut`, rejection by the split rule) plus rendering.
 */
export function shapesSample(index: number, opts: ShapesOptions): ShapesSample {
  const { seed, imageSize } = opts;
  const split = opts.split ?? 'train';
  if (!Number.isSafeInteger(index) || index < 0) throw new RangeError(`shapesSample: index must be an integer >= 0, got ${index}`);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`shapesSample: seed must be an integer >= 0, got ${seed}`);
  if (!Number.isInteger(imageSize) || imageSize < 8 || imageSize > 4096) {
    throw new RangeError(`shapesSample: imageSize must be an integer in [8, 4096], got ${imageSize}`);
  }
  const splitTag = split === 'train' ? 1 : 2;
  let scene: Scene | undefined;
  for (let attempt = 0; ; attempt++) {
    const candidate = drawScene(new SeededRandom(mixSeed(seed, index, splitTag, attempt)));
    if (splitOfCanonical(canonicalDescription(candidate)) === split) {
      scene = candidate;
      break;
    }
  }
  // Jitter and size come from their own stream so that the layout rule above stays simple.
  const jitterRng = new SeededRandom(mixSeed(seed, index, splitTag, 0x5ca1e));
  const cellSize = imageSize / 3;
  const objects: ShapesObject[] = scene.objects.map((o) => {
    const cell = o.row * 3 + o.col;
    const jitter = cellSize * 0.08;
    return {
      color: o.color,
      shape: o.shape,
      position: SHAPES_POSITIONS[cell]!,
      cell,
      row: o.row,
      col: o.col,
      centerX: (o.col + 0.5) * cellSize + (jitterRng.next() * 2 - 1) * jitter,
      centerY: (o.row + 0.5) * cellSize + (jitterRng.next() * 2 - 1) * jitter,
      radius: cellSize * (0.36 + jitterRng.next() * 0.06),
    };
  });
  return {
    key: `${split === 'train' ? 'train' : 'heldout'}-${String(index).padStart(9, '0')}`,
    caption: captionOf(scene),
    image: render(objects, imageSize),
    attributes: { split, layout: scene.layout, relation: scene.relation, objects },
  };
}
