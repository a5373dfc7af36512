/**
 * A trained stage's state directory (checkpoint.json + state.bin, as saveTrainingState writes it)
 * published to an object store, so that pods, which have nothing on their disks, can read it: the
 * trained image tokenizer that Parti workers need (training.tokenizerFrom: s3://bucket/prefix).
 *
 * Layout under the URL's prefix: `state.bin`, `checkpoint.json` and `SHA256SUMS` (the coreutils
 * format, `HEX  NAME` per line), written in that order so that SHA256SUMS marks a complete upload.
 * The same files under `tokenizer/` (a whole run directory uploaded) are found too. A state
 * uploaded by other means without SHA256SUMS is accepted with its sizes checked only.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PartiError } from '../errors.ts';
import { log } from '../observability/log.ts';
import { openStore } from './open-store.ts';
import type { ObjectStore } from './object-store.ts';

/** The files of a state directory, in upload order (the manifest after the data). */
export const STATE_FILES = ['state.bin', 'checkpoint.json'] as const;
/** Written last; lists the sha256 of every file. */
export const SUMS_FILE = 'SHA256SUMS';
/** The manifest of a state directory is small; a bigger one is not ours. */
const MAX_MANIFEST_BYTES = 16 << 20;

/** True when `from` names an object store (s3:// or file://) rather than a local path. */
export function isStoreUrl(from: string): boolean {
  return /^(s3|file):\/\//i.test(from);
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Parses SHA256SUMS (`HEX  NAME` or `HEX *NAME` per line). */
function parseSums(text: string, where: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const m = /^([0-9a-f]{64}) [ *](\S+)$/i.exec(line.trim());
    if (!m) throw new PartiError('checkpoint', `${where}: not a SHA256SUMS line: ${JSON.stringify(line.slice(0, 120))}`);
    sums.set(m[2]!.replace(/^.*\//, ''), m[1]!.toLowerCase());
  }
  return sums;
}

/** Bytes state.bin must have for this manifest (checkpoint.json of saveTrainingState). */
function expectedStateBytes(manifestText: string, where: string): number {
  let arrays: { offset: number; length: number }[];
  try {
    const m = JSON.parse(manifestText) as { format?: string; arrays?: { offset: number; length: number }[] };
    if (m.format !== 'parti-local-v1' || !Array.isArray(m.arrays)) throw new Error(`format ${JSON.stringify(m.format)}`);
    arrays = m.arrays;
  } catch (err) {
    throw new PartiError('checkpoint', `${where}: not a parti state manifest (${(err as Error).message})`);
  }
  let end = 0;
  for (const a of arrays) {
    if (typeof a !== 'object' || a === null) throw new PartiError('checkpoint', `${where}: an array entry that is ${JSON.stringify(a)}, not an object`);
    if (!Number.isSafeInteger(a.offset) || !Number.isSafeInteger(a.length) || a.offset < 0 || a.length < 0) {
      throw new PartiError('checkpoint', `${where}: an array with offset ${a.offset} and length ${a.length}`);
    }
    end = Math.max(end, a.offset + a.length * 4);
  }
  return end;
}

/**
 * Uploads the state directory `dir` to `url` (state.bin, checkpoint.json, then SHA256SUMS).
 * Returns the bytes uploaded. The directory is read and checked (state.bin against its
 * checkpoint.json) before anything is uploaded, so a broken one never replaces a good publication.
 */
export async function publishStateDir(dir: string, url: string): Promise<number> {
  const files = new Map<string, Buffer>();
  for (const name of STATE_FILES) {
    try {
      files.set(name, await readFile(join(dir, name)));
    } catch (err) {
      throw new PartiError('checkpoint', `${join(dir, name)}: cannot read it to publish (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
  }
  if (expectedStateBytes(files.get('checkpoint.json')!.toString('utf8'), join(dir, 'checkpoint.json')) !== files.get('state.bin')!.length) {
    throw new PartiError('checkpoint', `${dir}: state.bin does not match checkpoint.json (an unfinished save?); nothing published`);
  }
  const store = openStore(url);
  try {
    let bytes = 0;
    const sums: string[] = [];
    for (const name of STATE_FILES) {
      const body = files.get(name)!;
      await store.put(name, body);
      sums.push(`${sha256(body)}  ${name}\n`);
      bytes += body.length;
    }
    await store.put(SUMS_FILE, Buffer.from(sums.join('')));
    return bytes;
  } finally {
    await store.close();
  }
}

/** Finds where under the store the state is: the root or `tokenizer/`. */
async function findPrefix(store: ObjectStore, url: string): Promise<string> {
  for (const prefix of ['', 'tokenizer/']) {
    if (await store.head(`${prefix}checkpoint.json`)) return prefix;
  }
  throw new PartiError('checkpoint', `${url}: no trained state there (neither ${url.replace(/\/$/, '')}/checkpoint.json nor .../tokenizer/checkpoint.json exists)`);
}

async function localSums(dir: string): Promise<Map<string, string> | null> {
  try {
    const sums = new Map<string, string>();
    for (const name of STATE_FILES) sums.set(name, sha256(await readFile(join(dir, name))));
    return sums;
  } catch {
    return null;
  }
}

/**
 * Downloads the state published at `url` into the local directory `into` (a cache: files whose
 * sha256 already match SHA256SUMS are not fetched again), verifying every file: its size against
 * the store and the manifest, its sha256 against SHA256SUMS when there is one. Returns `into`.
 * Throws PartiError('checkpoint') naming the URL and object when something is missing or wrong.
 * Safe when several processes fetch into the same directory at once (each file is renamed into
 * place whole).
 */
export async function fetchPublishedState(url: string, into: string): Promise<string> {
  const store = openStore(url);
  try {
    const prefix = await findPrefix(store, url);
    const at = (name: string) => `${url.replace(/\/$/, '')}/${prefix}${name}`;
    const sumsInfo = await store.head(`${prefix}${SUMS_FILE}`);
    const sums = sumsInfo ? parseSums((await store.get(`${prefix}${SUMS_FILE}`)).toString('utf8'), at(SUMS_FILE)) : null;
    if (sums) {
      for (const name of STATE_FILES) if (!sums.has(name)) throw new PartiError('checkpoint', `${at(SUMS_FILE)}: lists no sha256 for ${name}`);
      const local = await localSums(into);
      if (local && STATE_FILES.every((n) => local.get(n) === sums.get(n))) return into;
    } else {
      log.warn({ url }, `${at(SUMS_FILE)} is missing: checking sizes only (publish with \`parti train --stage tokenizer --publish-tokenizer URL\` to get sha256s)`);
    }
    const files = new Map<string, Buffer>();
    for (const name of [...STATE_FILES].reverse()) {
      const info = await store.head(`${prefix}${name}`);
      if (!info) throw new PartiError('checkpoint', `${at(name)}: missing (the published state is incomplete)`);
      if (name === 'checkpoint.json' && info.size > MAX_MANIFEST_BYTES) throw new PartiError('checkpoint', `${at(name)}: ${info.size} bytes, too big for a manifest`);
      const body = await store.get(`${prefix}${name}`);
      if (body.length !== info.size) throw new PartiError('checkpoint', `${at(name)}: read ${body.length} bytes, the store lists ${info.size}`);
      if (sums && sha256(body) !== sums.get(name)) throw new PartiError('checkpoint', `${at(name)}: sha256 differs from ${SUMS_FILE} (corrupt or replaced object)`);
      files.set(name, body);
    }
    const want = expectedStateBytes(files.get('checkpoint.json')!.toString('utf8'), at('checkpoint.json'));
    if (files.get('state.bin')!.length !== want) {
      throw new PartiError('checkpoint', `${at('state.bin')}: ${files.get('state.bin')!.length} bytes, checkpoint.json describes ${want} (truncated or from another save)`);
    }
    await mkdir(into, { recursive: true });
    const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
    for (const name of STATE_FILES) {
      const tmp = join(into, `${name}.tmp-${tag}`);
      try {
        await writeFile(tmp, files.get(name)!);
        await rename(tmp, join(into, name));
      } finally {
        await rm(tmp, { force: true });
      }
    }
    log.info({ url, into, bytes: files.get('state.bin')!.length, verified: sums ? 'sha256' : 'size' }, 'fetched the published state');
    return into;
  } finally {
    await store.close();
  }
}
