import sharp from 'sharp';
import type { TarEntry } from './tar-format.ts';

/**
 * A WebDataset sample: the tar entries that share a key. `KEY.png|jpg|jpeg|webp` (the image),
 * `KEY.txt` (UTF-8 caption), optional `KEY.json` (metadata) and optional `KEY.tokens` (the image's
 * tokens from the frozen tokenizer: little-endian uint16, one per image token, row-major).
 * The key is the entry name up to the first `.` of its last path segment, as in WebDataset.
 */

/** Why a sample (or every sample of a shard) was skipped. A closed set, counted by name. */
export const BAD_REASONS = [
  // Shard-level: every sample the plan takes from such a shard is skipped with this reason.
  'shard-not-found',
  'shard-denied',
  'shard-timeout',
  'shard-unreadable',
  'not-a-tar',
  /** The shard ended early; samples after the cut (and a half-written one) are lost. */
  'truncated-tar',
  /** The index promises more samples than the shard holds (corrupt headers ate some). */
  'missing-sample',
  // Sample-level.
  'missing-caption',
  'missing-image',
  'empty-image',
  'undecodable-image',
  'wrong-image-size',
  'caption-not-utf8',
  'caption-too-long',
  'duplicate-key',
  'bad-metadata',
  'bad-tokens',
] as const;
export type BadReason = (typeof BAD_REASONS)[number];

/** Counts by reason, every reason present (0 when none). */
export type BadCounts = Record<BadReason, number>;

export function emptyBadCounts(): BadCounts {
  return Object.fromEntries(BAD_REASONS.map((r) => [r, 0])) as BadCounts;
}

/** Only the non-zero counts, for compact JSON. */
export function nonZeroBadCounts(counts: BadCounts): Partial<BadCounts> {
  return Object.fromEntries(Object.entries(counts).filter(([, n]) => n > 0)) as Partial<BadCounts>;
}

export const IMAGE_EXTENSIONS = ['png', 'jpg', 'jpeg', 'webp'] as const;

/** The entries of one key, before any checks. `problem` is set when grouping already found one. */
export interface RawSample {
  key: string;
  /** Extension (lowercase, without the dot) → bytes. */
  files: Map<string, Buffer>;
  problem?: BadReason;
}

/** Splits `dir/abc.def.png` into key `dir/abc` and extension `def.png` (lowercased). */
export function splitEntryName(name: string): { key: string; ext: string } {
  const slash = name.lastIndexOf('/');
  const dot = name.indexOf('.', slash + 1);
  if (dot < 0) return { key: name, ext: '' };
  return { key: name.slice(0, dot), ext: name.slice(dot + 1).toLowerCase() };
}

/**
 * Groups consecutive entries by key. A key seen again after another key, or one extension twice
 * within a key, marks the later group as `duplicate-key`.
 */
export function groupSamples(entries: readonly TarEntry[]): RawSample[] {
  const samples: RawSample[] = [];
  const seen = new Set<string>();
  let current: RawSample | null = null;
  for (const entry of entries) {
    const { key, ext } = splitEntryName(entry.name);
    if (!current || current.key !== key) {
      current = { key, files: new Map() };
      if (seen.has(key)) current.problem = 'duplicate-key';
      seen.add(key);
      samples.push(current);
    }
    if (current.files.has(ext)) current.problem = 'duplicate-key';
    current.files.set(ext, entry.data);
  }
  return samples;
}

/** A sample ready for training. */
export interface DecodedSample {
  key: string;
  caption: string;
  /** width * height * 3 bytes, RGB, row-major. */
  image: Uint8Array;
  width: number;
  height: number;
  /** The precomputed image tokens, when the shard has them. */
  tokens: Uint16Array | null;
  /** Parsed KEY.json, when present. */
  metadata: unknown;
}

/** What makes a sample acceptable. Resolved once by the reader. */
export interface SampleChecks {
  /** Decoded images must be exactly this square size (0: any size). */
  imageSize: number;
  /** Captions longer than this many UTF-8 bytes are bad. */
  maxCaptionBytes: number;
  /** `.tokens` must hold exactly this many tokens (0: any number). */
  tokenCount: number;
}

export type SampleOutcome = { ok: true; sample: DecodedSample } | { ok: false; reason: BadReason; detail: string };

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Most pixels an image may claim before decoding (guards against decompression bombs). */
const MAX_INPUT_PIXELS = 8192 * 8192;

sharp.cache(false);

/**
 * Checks and decodes one sample. Never throws for bad data: returns the reason instead. Image
 * decoding runs in libvips' thread pool (sharp), off the JavaScript thread, so a training loop on
 * the same thread is not blocked by it.
 */
export async function decodeSample(raw: RawSample, checks: SampleChecks): Promise<SampleOutcome> {
  const bad = (reason: BadReason, detail: string): SampleOutcome => ({ ok: false, reason, detail });
  if (raw.problem) return bad(raw.problem, 'key appears twice in the shard');
  const imageExts = IMAGE_EXTENSIONS.filter((e) => raw.files.has(e));
  const text = raw.files.get('txt');
  if (imageExts.length === 0) return bad('missing-image', text ? 'caption without image' : 'no image and no caption');
  if (imageExts.length > 1) return bad('duplicate-key', `several images (${imageExts.join(', ')})`);
  if (!text) return bad('missing-caption', 'image without caption');
  if (text.length > checks.maxCaptionBytes) return bad('caption-too-long', `${text.length} bytes > ${checks.maxCaptionBytes}`);
  let caption: string;
  try {
    caption = utf8.decode(text);
  } catch {
    return bad('caption-not-utf8', 'caption is not valid UTF-8');
  }
  let metadata: unknown = null;
  const json = raw.files.get('json');
  if (json) {
    try {
      metadata = JSON.parse(utf8.decode(json));
    } catch {
      return bad('bad-metadata', '.json is not valid UTF-8 JSON');
    }
  }
  let tokens: Uint16Array | null = null;
  const tokenBytes = raw.files.get('tokens');
  if (tokenBytes) {
    if (tokenBytes.length % 2 !== 0) return bad('bad-tokens', `.tokens has an odd byte count (${tokenBytes.length})`);
    tokens = decodeTokens(tokenBytes);
    if (checks.tokenCount && tokens.length !== checks.tokenCount) return bad('bad-tokens', `${tokens.length} tokens, expected ${checks.tokenCount}`);
  }
  const imageBytes = raw.files.get(imageExts[0]!)!;
  if (imageBytes.length === 0) return bad('empty-image', `zero-byte .${imageExts[0]}`);
  const pipeline = sharp(imageBytes, { limitInputPixels: MAX_INPUT_PIXELS, failOn: 'warning' });
  if (checks.imageSize) {
    // The header alone tells the size: refuse a wrong-size image before paying for its decode
    // (a 4096x4096 PNG in a 256x256 data set would otherwise be decoded in full, then dropped).
    let width: number | undefined;
    let height: number | undefined;
    try {
      ({ width, height } = await pipeline.metadata());
    } catch (err) {
      return bad('undecodable-image', `.${imageExts[0]}: ${(err as Error).message.split('\n')[0]}`);
    }
    if (width !== checks.imageSize || height !== checks.imageSize) {
      return bad('wrong-image-size', `${width}x${height}, expected ${checks.imageSize}x${checks.imageSize}`);
    }
  }
  let decoded: { data: Buffer; info: sharp.OutputInfo };
  try {
    decoded = await pipeline
      .removeAlpha()
      .toColourspace('srgb')
      .raw()
      .toBuffer({ resolveWithObject: true });
  } catch (err) {
    return bad('undecodable-image', `.${imageExts[0]}: ${(err as Error).message.split('\n')[0]}`);
  }
  const { width, height, channels } = decoded.info;
  if (checks.imageSize && (width !== checks.imageSize || height !== checks.imageSize)) {
    return bad('wrong-image-size', `${width}x${height}, expected ${checks.imageSize}x${checks.imageSize}`);
  }
  let image: Uint8Array = decoded.data;
  if (channels !== 3) image = toRgb(decoded.data, width * height, channels);
  return { ok: true, sample: { key: raw.key, caption, image, width, height, tokens, metadata } };
}

function toRgb(data: Buffer, pixels: number, channels: number): Uint8Array {
  const out = new Uint8Array(pixels * 3);
  for (let i = 0; i < pixels; i++) {
    for (let c = 0; c < 3; c++) out[i * 3 + c] = data[i * channels + Math.min(c, channels - 1)]!;
  }
  return out;
}

/** Image tokens as `.tokens` bytes (little-endian uint16). Throws RangeError for ids outside 0..65535. */
export function encodeTokens(tokens: ArrayLike<number>): Buffer {
  const out = Buffer.alloc(tokens.length * 2);
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (!Number.isInteger(t) || t < 0 || t > 0xffff) throw new RangeError(`token ${i} is ${t}, not in 0..65535`);
    out.writeUInt16LE(t, i * 2);
  }
  return out;
}

export function decodeTokens(bytes: Uint8Array): Uint16Array {
  const out = new Uint16Array(bytes.length >> 1);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < out.length; i++) out[i] = view.getUint16(i * 2, true);
  return out;
}
