import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import type { ObjectStore } from '../storage/object-store.ts';
import { PartiError } from '../errors.ts';
import { ShardSetWriter } from './shard-writer.ts';
import { IMAGE_EXTENSIONS } from './sample-format.ts';

/**
 * `parti data import`: turns a folder of images with same-named `.txt` captions, or a JSONL / CSV
 * list of {image, caption}, into a shard set. Images are resized (cover) and center-cropped to a
 * square, stored as PNG (small sizes) or JPEG. Inputs that cannot be used are skipped and counted.
 */

/** One input pair: an image file and its caption. */
export interface ImportItem {
  image: string;
  caption: string | null;
}

/** Options of importImages. */
export interface ImportOptions {
  imageSize: number;
  shardSize: number;
  /** `png` (lossless; default up to 64 px) or `jpg` (quality 90; default above). */
  format?: 'png' | 'jpg';
  /** Shard name prefix (default `train`). */
  prefix?: string;
  maxCaptionBytes?: number;
  onItem?: (done: number, total: number) => void;
}

export interface ImportReport {
  url: string;
  written: number;
  skipped: Record<string, number>;
}

/** Parses CSV text (RFC 4180: quoted fields, doubled quotes, CRLF) into rows. */
export function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"' && field === '') quoted = true;
    else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      row.push(field);
      field = '';
      if (row.some((f) => f !== '')) rows.push(row);
      row = [];
    } else field += c;
  }
  row.push(field);
  if (row.some((f) => f !== '')) rows.push(row);
  return rows;
}

const IMAGE_FIELDS = ['image', 'image_path', 'path', 'file', 'filename', 'url'];
const CAPTION_FIELDS = ['caption', 'text', 'prompt'];

/** The items a `--from` path names: a folder, a .jsonl or a .csv file. Image paths resolve against the list's folder. */
export async function listImportItems(from: string): Promise<ImportItem[]> {
  const abs = path.resolve(from);
  const base = path.dirname(abs);
  if (/\.jsonl$/i.test(from)) {
    const text = await readInput(abs);
    return text
      .split('\n')
      .map((line, i) => [line.trim(), i + 1] as const)
      .filter(([line]) => line)
      .map(([line, n]) => {
        let obj: Record<string, unknown>;
        try {
          obj = JSON.parse(line);
        } catch {
          throw new PartiError('usage', `--from ${from}: line ${n} is not JSON`);
        }
        const image = IMAGE_FIELDS.map((k) => obj[k]).find((v) => typeof v === 'string') as string | undefined;
        const caption = CAPTION_FIELDS.map((k) => obj[k]).find((v) => typeof v === 'string') as string | undefined;
        if (!image) throw new PartiError('usage', `--from ${from}: line ${n} has no image field (${IMAGE_FIELDS.join(', ')})`);
        return { image: path.resolve(base, image), caption: caption ?? null };
      });
  }
  if (/\.csv$/i.test(from)) {
    const rows = parseCsv(await readInput(abs));
    const header = (rows.shift() ?? []).map((h) => h.trim().toLowerCase());
    const ii = header.findIndex((h) => IMAGE_FIELDS.includes(h));
    const ci = header.findIndex((h) => CAPTION_FIELDS.includes(h));
    if (ii < 0 || ci < 0) throw new PartiError('usage', `--from ${from}: the header needs an image column (${IMAGE_FIELDS.join(', ')}) and a caption column (${CAPTION_FIELDS.join(', ')})`);
    return rows.map((r) => ({ image: path.resolve(base, r[ii] ?? ''), caption: r[ci] ?? null }));
  }
  let names: string[];
  try {
    names = (await readdir(abs)).sort();
  } catch (err) {
    throw new PartiError('usage', `--from ${from}: not a folder, .jsonl or .csv (${(err as NodeJS.ErrnoException).code})`);
  }
  const images = names.filter((n) => (IMAGE_EXTENSIONS as readonly string[]).includes(path.extname(n).slice(1).toLowerCase()));
  const items: ImportItem[] = [];
  for (const name of images) {
    const txt = path.join(abs, `${path.basename(name, path.extname(name))}.txt`);
    let caption: string | null = null;
    try {
      caption = (await readFile(txt, 'utf8')).trim();
    } catch {
      caption = null;
    }
    items.push({ image: path.join(abs, name), caption });
  }
  return items;
}

async function readInput(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    throw new PartiError('usage', `--from ${file}: cannot read (${(err as NodeJS.ErrnoException).code})`);
  }
}

/** Resizes (cover) and center-crops to size x size, encoded as png or jpg. */
export async function squareImage(input: Buffer, size: number, format: 'png' | 'jpg'): Promise<Buffer> {
  const img = sharp(input, { failOn: 'warning', limitInputPixels: 8192 * 8192 })
    .rotate()
    .removeAlpha()
    .toColourspace('srgb')
    .resize(size, size, { fit: 'cover', position: 'centre' });
  return format === 'png' ? img.png().toBuffer() : img.jpeg({ quality: 90 }).toBuffer();
}

/** Imports items into a shard set in `store`. */
export async function importImages(items: readonly ImportItem[], store: ObjectStore, options: ImportOptions): Promise<ImportReport> {
  const format = options.format ?? (options.imageSize <= 64 ? 'png' : 'jpg');
  const maxCaptionBytes = options.maxCaptionBytes ?? 4096;
  const writer = new ShardSetWriter(store, {
    prefix: options.prefix ?? 'train',
    shardSize: options.shardSize,
    meta: { generator: 'parti-import', imageSize: options.imageSize, format },
  });
  const skipped: Record<string, number> = {};
  const skip = (reason: string) => (skipped[reason] = (skipped[reason] ?? 0) + 1);
  let written = 0;
  for (let i = 0; i < items.length; i++) {
    const item = items[i]!;
    options.onItem?.(i, items.length);
    if (item.caption === null || item.caption === '') {
      skip('missing-caption');
      continue;
    }
    if (Buffer.byteLength(item.caption) > maxCaptionBytes) {
      skip('caption-too-long');
      continue;
    }
    let bytes: Buffer;
    try {
      bytes = await readFile(item.image);
    } catch {
      skip('missing-image');
      continue;
    }
    if (bytes.length === 0) {
      skip('empty-image');
      continue;
    }
    let image: Buffer;
    try {
      image = await squareImage(bytes, options.imageSize, format);
    } catch {
      skip('undecodable-image');
      continue;
    }
    const key = String(written).padStart(9, '0');
    await writer.add({
      key,
      files: [
        { ext: format, data: image },
        { ext: 'txt', data: Buffer.from(item.caption, 'utf8') },
        { ext: 'json', data: Buffer.from(JSON.stringify({ source: item.image })) },
      ],
    });
    written++;
  }
  options.onItem?.(items.length, items.length);
  if (written === 0) throw new PartiError('data', `import: no usable image-caption pairs among ${items.length} inputs (${JSON.stringify(skipped)})`);
  const { url } = await writer.finish();
  return { url, written, skipped };
}
