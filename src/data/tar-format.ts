/**
 * The tar (ustar) subset WebDataset shards use: regular files, 512-byte blocks.
 *
 * Our own reader rather than tar-stream: shards are read whole into memory (they are fetched as
 * one object anyway), and corrupt input must be handled byte-exactly: a header whose checksum
 * fails is skipped by resynchronising on the next valid header (tar-stream stops the whole stream
 * at the first bad header), a truncated entry is reported with its offset, and a buffer that is not
 * a tar at all is recognised as such. Parsing a Buffer is synchronous and bounded by its length,
 * so it can neither hang nor throw on any input (the fuzz test checks this). The writer is ours too
 * so that shards are byte-identical for the same content (mtime 0, uid 0, fixed modes).
 */

const BLOCK = 512;

/** One regular file in a tar. `data` is a view into the parsed buffer (no copy). */
export interface TarEntry {
  name: string;
  data: Buffer;
  /** Byte offset of the entry's header in the archive. */
  headerOffset: number;
}

/** Something wrong found while parsing; the parser went on where it could. */
export interface TarProblem {
  kind: 'corrupt-header' | 'truncated';
  /** Byte offset where it was found. */
  offset: number;
}

export interface ParsedTar {
  entries: TarEntry[];
  problems: TarProblem[];
  /** No valid tar header anywhere (includes an empty buffer). */
  notATar: boolean;
  /** The archive ended before its last entry or its end-of-archive blocks. */
  truncated: boolean;
}

function octal(value: number, width: number): string {
  // width - 1 digits and a NUL, as GNU tar writes them.
  return value.toString(8).padStart(width - 1, '0') + '\0';
}

/** One tar entry (header plus padded data). Names are at most 100 bytes (WebDataset keys are short). */
export function tarEntry(name: string, data: Uint8Array): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  if (nameBytes.length === 0 || nameBytes.length > 100) throw new RangeError(`tar entry name must be 1-100 bytes: ${JSON.stringify(name)}`);
  if (data.length > 0o77777777777) throw new RangeError(`tar entry ${name} is too large (${data.length} bytes)`);
  const header = Buffer.alloc(BLOCK);
  nameBytes.copy(header, 0);
  header.write(octal(0o644, 8), 100, 'latin1');
  header.write(octal(0, 8), 108, 'latin1');
  header.write(octal(0, 8), 116, 'latin1');
  header.write(octal(data.length, 12), 124, 'latin1');
  header.write(octal(0, 12), 136, 'latin1');
  header.write('        ', 148, 'latin1');
  header.write('0', 156, 'latin1');
  header.write('ustar\0', 257, 'latin1');
  header.write('00', 263, 'latin1');
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += header[i]!;
  header.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  const padded = Math.ceil(data.length / BLOCK) * BLOCK;
  const out = Buffer.alloc(BLOCK + padded);
  header.copy(out, 0);
  out.set(data, BLOCK);
  return out;
}

/** The two zero blocks that end an archive. */
export function tarEnd(): Buffer {
  return Buffer.alloc(2 * BLOCK);
}

/** A whole archive of the given files, in order. */
export function tarArchive(files: readonly { name: string; data: Uint8Array }[]): Buffer {
  return Buffer.concat([...files.map((f) => tarEntry(f.name, f.data)), tarEnd()]);
}

function parseOctal(buf: Buffer, start: number, width: number): number | null {
  let i = start;
  const end = start + width;
  while (i < end && buf[i] === 0x20) i++;
  let value = 0;
  let digits = 0;
  for (; i < end; i++) {
    const c = buf[i]!;
    if (c === 0 || c === 0x20) break;
    if (c < 0x30 || c > 0x37) return null;
    value = value * 8 + (c - 0x30);
    digits++;
  }
  // Everything after the digits must be NUL or space.
  for (; i < end; i++) if (buf[i] !== 0 && buf[i] !== 0x20) return null;
  return digits > 0 ? value : null;
}

function isZeroBlock(buf: Buffer, at: number): boolean {
  for (let i = at; i < at + BLOCK; i++) if (buf[i] !== 0) return false;
  return true;
}

interface Header {
  name: string;
  size: number;
  type: number;
}

/** A header if the block at `at` is a valid ustar/GNU header (checksum and magic), else null. */
function readHeader(buf: Buffer, at: number): Header | null {
  if (buf[at + 257] !== 0x75 || buf.toString('latin1', at + 257, at + 262) !== 'ustar') return null;
  const stored = parseOctal(buf, at + 148, 8);
  if (stored === null) return null;
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : buf[at + i]!;
  if (sum !== stored) return null;
  const size = parseOctal(buf, at + 124, 12);
  if (size === null) return null;
  const nameEnd = buf.indexOf(0, at);
  const name = buf.toString('utf8', at, nameEnd < 0 || nameEnd > at + 100 ? at + 100 : nameEnd);
  const prefixEnd = buf.indexOf(0, at + 345);
  const prefix = buf.toString('utf8', at + 345, prefixEnd < 0 || prefixEnd > at + 500 ? at + 500 : prefixEnd);
  return { name: prefix ? `${prefix}/${name}` : name, size, type: buf[at + 156]! };
}

/** The `path` record of a pax extended header (`LEN key=value\n` records), or null. */
function paxPath(data: Buffer): string | null {
  let pos = 0;
  let path: string | null = null;
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos);
    if (space < 0) break;
    const len = Number(data.toString('latin1', pos, space));
    if (!Number.isInteger(len) || len <= space - pos || pos + len > data.length) break;
    const record = data.toString('utf8', space + 1, pos + len - 1);
    const eq = record.indexOf('=');
    if (eq > 0 && record.slice(0, eq) === 'path') path = record.slice(eq + 1);
    pos += len;
  }
  return path;
}

/**
 * Parses a whole archive. Never throws: what it cannot read is reported in `problems`. Regular
 * files become entries; directories, links, pax and GNU metadata entries are skipped (a GNU long
 * name, type 'L', or a pax `path`, type 'x', is applied to the next entry).
 */
export function parseTar(buf: Buffer): ParsedTar {
  const entries: TarEntry[] = [];
  const problems: TarProblem[] = [];
  let validHeaders = 0;
  let truncated = false;
  let longName: string | null = null;
  let pos = 0;
  let resyncing = false;
  let ended = false;
  // Bytes past the last non-zero byte are the end-of-archive (and record) padding.
  let lastNonZero = buf.length - 1;
  while (lastNonZero >= 0 && buf[lastNonZero] === 0) lastNonZero--;
  while (pos + BLOCK <= buf.length) {
    // A zero block ends the archive; while resynchronising (zeros may be inside a skipped
    // entry's data) only when nothing but zeros follows.
    if (resyncing ? pos > lastNonZero : isZeroBlock(buf, pos)) {
      ended = true;
      break;
    }
    const header = readHeader(buf, pos);
    if (!header) {
      if (!resyncing) problems.push({ kind: 'corrupt-header', offset: pos });
      resyncing = true;
      pos += BLOCK;
      continue;
    }
    resyncing = false;
    validHeaders++;
    const dataStart = pos + BLOCK;
    const dataEnd = dataStart + header.size;
    if (dataEnd > buf.length) {
      problems.push({ kind: 'truncated', offset: pos });
      truncated = true;
      pos = buf.length;
      break;
    }
    const data = buf.subarray(dataStart, dataEnd);
    const type = String.fromCharCode(header.type);
    if (type === 'L') {
      longName = data.toString('utf8').replace(/\0+$/, '');
    } else if (type === 'x') {
      // A pax extended header (Python's tarfile writes one per file for float mtimes): only its
      // `path` matters here.
      longName = paxPath(data);
    } else if (type === '0' || header.type === 0 || type === '7') {
      entries.push({ name: longName ?? header.name, data, headerOffset: pos });
      longName = null;
    } else {
      longName = null;
    }
    pos = dataStart + Math.ceil(header.size / BLOCK) * BLOCK;
  }
  if (!ended && !truncated && validHeaders > 0) {
    // Ran off the end without the end-of-archive blocks: the writer was cut off.
    problems.push({ kind: 'truncated', offset: pos });
    truncated = true;
  }
  return { entries, problems, notATar: validHeaders === 0, truncated };
}
