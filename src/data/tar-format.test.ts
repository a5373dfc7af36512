import { test } from 'node:test';
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseTar, tarArchive, tarEnd, tarEntry } from './tar-format.ts';

test('tar: what we write, we and GNU tar read back', () => {
  const files = [
    { name: 'a.txt', data: Buffer.from('hello') },
    { name: 'a.png', data: Buffer.alloc(1000, 7) },
    { name: 'b.txt', data: Buffer.alloc(0) },
    { name: 'b.png', data: Buffer.alloc(512, 1) },
  ];
  const tar = tarArchive(files);
  const parsed = parseTar(tar);
  assert.deepEqual(parsed.problems, []);
  assert.equal(parsed.truncated, false);
  assert.deepEqual(parsed.entries.map((e) => [e.name, Buffer.from(e.data).toString('hex')]), files.map((f) => [f.name, f.data.toString('hex')]));
  const dir = mkdtempSync(path.join(tmpdir(), 'parti-tar-'));
  try {
    writeFileSync(path.join(dir, 'x.tar'), tar);
    assert.equal(execFileSync('tar', ['-tf', 'x.tar'], { cwd: dir, encoding: 'utf8' }), 'a.txt\na.png\nb.txt\nb.png\n');
    execFileSync('tar', ['-xf', 'x.tar'], { cwd: dir });
    assert.ok(readFileSync(path.join(dir, 'a.png')).equals(files[1]!.data));
    // And a GNU tar archive reads back too.
    execFileSync('tar', ['-cf', 'y.tar', 'a.txt', 'a.png'], { cwd: dir });
    const gnu = parseTar(readFileSync(path.join(dir, 'y.tar')));
    assert.deepEqual(gnu.entries.map((e) => e.name), ['a.txt', 'a.png']);
    assert.deepEqual(gnu.problems, []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('tar: a corrupt header is skipped and parsing resumes at the next entry; truncation and non-tars are reported', () => {
  const files = ['k1.txt', 'k1.png', 'k2.txt', 'k2.png'].map((name, i) => ({ name, data: Buffer.alloc(700, i + 1) }));
  const tar = tarArchive(files);
  const bad = Buffer.from(tar);
  bad[1024 + 100] ^= 0xff; // the mode field of the 2nd header (entries are 512 + 1024 bytes)
  bad[1536 + 5] ^= 0x01; // the name of the 2nd header
  const parsed = parseTar(bad);
  assert.deepEqual(parsed.entries.map((e) => e.name), ['k1.txt', 'k2.txt', 'k2.png']);
  assert.deepEqual(parsed.problems, [{ kind: 'corrupt-header', offset: 1536 }]);
  const cut = parseTar(tar.subarray(0, 1536 + 600));
  assert.equal(cut.truncated, true);
  assert.deepEqual(cut.entries.map((e) => e.name), ['k1.txt']);
  assert.equal(parseTar(Buffer.from('not a tar at all')).notATar, true);
  assert.equal(parseTar(Buffer.alloc(0)).notATar, true);
  assert.equal(parseTar(Buffer.alloc(4096, 0x41)).notATar, true);
});

test('tar: pax extended headers (as Python tarfile writes them) name the next entry', () => {
  const withType = (entry: Buffer, type: string) => {
    entry.write(type, 156, 'latin1');
    entry.write('        ', 148, 'latin1');
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += entry[i]!;
    entry.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
    return entry;
  };
  const long = `dir/${'x'.repeat(120)}.txt`;
  const record = (k: string, v: string) => {
    const body = ` ${k}=${v}\n`;
    let len = body.length + 2;
    if (String(len).length + body.length !== len) len = String(len + 1).length + body.length;
    return `${len}${body}`;
  };
  const pax = Buffer.from(record('mtime', '1795753143.42') + record('path', long));
  const tar = Buffer.concat([
    withType(tarEntry('PaxHeader/x', pax), 'x'),
    tarEntry('truncated-name.txt', Buffer.from('long')),
    tarEntry('k2.txt', Buffer.from('short')),
    tarEnd(),
  ]);
  const parsed = parseTar(tar);
  assert.deepEqual(parsed.problems, []);
  assert.deepEqual(parsed.entries.map((e) => [e.name, e.data.toString()]), [[long, 'long'], ['k2.txt', 'short']]);
});

test('tar: any bytes parse without throwing; entries stay inside the buffer', () => {
  const base = tarArchive([{ name: 'a.txt', data: Buffer.from('x') }, { name: 'a.png', data: Buffer.alloc(2000, 3) }]);
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 6000 }), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 20 }), (random, edits) => {
      for (const input of [Buffer.from(random), Buffer.from(base)]) {
        for (const [at, v] of edits) if (input.length) input[at % input.length] = v;
        const parsed = parseTar(input);
        for (const e of parsed.entries) {
          assert.ok(e.headerOffset >= 0 && e.headerOffset + 512 + e.data.length <= input.length);
          assert.equal(e.data.buffer, input.buffer);
        }
      }
    }),
    { numRuns: 300, seed: 7 },
  );
});
