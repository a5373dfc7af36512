import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { smallGenerationConfig, writeRandomRun } from '../src/generate/random-run.ts';
import { runParti, userLines, type CliResult } from './helpers/parti-cli.ts';

/**
 * `parti generate` through the CLI, on a randomly initialized run (the properties here need no
 * trained model): reproducible images, the files written, and one-line errors for bad input.
 */
let root = '';
let run = '';
let runNoUp = '';

const parti = (args: string[]) => runParti(args, { timeoutMs: 600_000 });
const messages = userLines;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'parti-generate-cli-'));
  run = join(root, 'run');
  runNoUp = join(root, 'run-no-up');
  await writeRandomRun(run, smallGenerationConfig(), { upsampler: true });
  await writeRandomRun(runNoUp, smallGenerationConfig());
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

test('same checkpoint, prompt, settings and seed give the same image; another seed another', async () => {
  const common = ['generate', '--checkpoint', run, 'a red circle above a blue square', '--samples', '2', '--cfg', '2', '--top-k', '40', '--top-p', '0.95', '--temperature', '0.9'];
  const [a, b, c] = await Promise.all([
    parti([...common, '--seed', '5', '--out', join(root, 'a', 'x.png')]),
    parti([...common, '--seed', '5', '--out', join(root, 'b', 'x.png'), '--no-cache']),
    parti([...common, '--seed', '6', '--out', join(root, 'c', 'x.png')]),
  ]);
  for (const r of [a, b, c]) assert.equal(r.code, 0, r.stderr);
  const files = await readdir(join(root, 'a'));
  assert.deepEqual(files.sort(), ['x-0.png', 'x-1.png', 'x.json', 'x.png']);
  for (const f of ['x.png', 'x-0.png', 'x-1.png']) {
    assert.deepEqual(await readFile(join(root, 'b', f)), await readFile(join(root, 'a', f)), `${f} differs between cached and uncached runs`);
  }
  assert.notDeepEqual(await readFile(join(root, 'c', 'x-0.png')), await readFile(join(root, 'a', 'x-0.png')));
  const meta = JSON.parse(await readFile(join(root, 'a', 'x.json'), 'utf8'));
  assert.equal(meta.images.length, 2);
  assert.equal(meta.images[0].tokens.length, 16);
  const png = PNG.sync.read(await readFile(join(root, 'a', 'x-0.png')));
  assert.equal(png.width, 16);
});

test('reranking, attention maps and upsampling write their files', async () => {
  const out = join(root, 'r', 'y.png');
  const res = await parti(['generate', '--checkpoint', run, 'a green cross', '--samples', '2', '--rerank', '4', '--attention-maps', '--attention-layers', '--upsample', '--out', out]);
  assert.equal(res.code, 0, res.stderr);
  const meta = JSON.parse(await readFile(join(root, 'r', 'y.json'), 'utf8'));
  assert.equal(meta.images.length, 2);
  assert.ok(meta.images[0].score >= meta.images[1].score);
  assert.ok(meta.images.every((i: { candidate: number }) => i.candidate >= 0 && i.candidate < 4));
  const up = PNG.sync.read(await readFile(join(root, 'r', 'y-0.up.png')));
  assert.equal(up.width, 64);
  const maps = await readdir(join(root, 'r', 'y-0.attention'));
  // BOS, 13 bytes, EOS: one averaged map each, and one per layer (2 layers).
  const index = JSON.parse(await readFile(join(root, 'r', 'y-0.attention', 'tokens.json'), 'utf8'));
  assert.equal(index.tokens.length, 15);
  assert.equal(maps.filter((f) => f.endsWith('.png')).length, 15 * 3);
  assert.ok(maps.includes('03-g.png') && maps.includes('03-g.layer1.png'));
});

// Prepend the subcommand.
const gen = (args: string[]) => parti(['generate', ...args]);

test('a prompt file (TSV with a Prompt column) gives one folder per prompt', async () => {
  const file = join(root, 'prompts.tsv');
  await writeFile(file, 'Prompt\tCategory\na red circle\tShapes\n\tEmpty\na white cross on the right\tShapes\n');
  const out = join(root, 'many');
  const r = await gen(['--checkpoint', run, '--prompts', file, '--samples', '1', '--out', out, '--batch', '2']);
  assert.equal(r.code, 0, r.stderr);
  const dirs = (await readdir(out)).sort();
  assert.deepEqual(dirs, ['0000-a-red-circle', '0001', '0002-a-white-cross-on-the-right']);
  assert.deepEqual((await readdir(join(out, dirs[2]!))).sort(), ['grid-0.png', 'grid.json', 'grid.png']);
});

test('an empty prompt is allowed; a very long odd-Unicode prompt is truncated with a warning', async () => {
  const [empty, long] = await Promise.all([
    gen(['--checkpoint', run, '', '--samples', '1', '--out', join(root, 'e', 'e.png')]),
    gen(['--checkpoint', run, '🦄 ünïcödé \u0007 \u202e ' + 'ж'.repeat(200), '--samples', '1', '--out', join(root, 'l', 'l.png')]),
  ]);
  assert.equal(empty.code, 0, empty.stderr);
  assert.equal(long.code, 0, long.stderr);
  assert.match(messages(long.stderr).join('\n'), /warning: prompt 0 .*truncated/);
  const meta = JSON.parse(await readFile(join(root, 'l', 'l.json'), 'utf8'));
  assert.equal(meta.truncated, true);
});

test('bad input: one-line errors, non-zero exit, no stack trace', async () => {
  const foreign = join(root, 'foreign');
  await mkdir(foreign, { recursive: true });
  await writeFile(join(foreign, 'config.json'), JSON.stringify({ hello: 'world' }));
  const out = ['--out', join(root, 'bad', 'z.png')];
  const cases: [string[], RegExp][] = [
    [['--checkpoint', run, 'x', '--top-k', '-1', ...out], /--top-k: must be an integer >= 0/],
    [['--checkpoint', run, 'x', '--top-p', '1.5', ...out], /--top-p: must be in \(0, 1\]/],
    [['--checkpoint', run, 'x', '--temperature', '0', ...out], /--temperature: must be a number > 0/],
    [['--checkpoint', run, 'x', '--samples', '0', ...out], /--samples: must be an integer >= 1/],
    [['--checkpoint', run, 'x', '--samples', 'two', ...out], /--samples: must be an integer/],
    [['--checkpoint', run, 'x', '--rerank', '1', '--samples', '2', ...out], /--rerank: must be >= --samples/],
    [['--checkpoint', join(root, 'nope'), 'x', ...out], /no such run directory/],
    [['--checkpoint', foreign, 'x', ...out], /not a parti run directory/],
    [['--checkpoint', runNoUp, 'x', '--upsample', ...out], /no trained upsampler/],
    [['--checkpoint', run, 'x', '--prompts', join(root, 'missing.txt'), '--out', root], /--prompts/],
  ];
  // Four at a time: the machine has two cores and other suites run too.
  const results: CliResult[] = [];
  for (let i = 0; i < cases.length; i += 4) results.push(...(await Promise.all(cases.slice(i, i + 4).map(([args]) => gen(args)))));
  results.forEach((r, i) => {
    const lines = messages(r.stderr);
    assert.notEqual(r.code, 0, `case ${i}: exit 0`);
    assert.equal(lines.length, 1, `case ${i}: ${r.stderr}`);
    assert.match(lines[0]!, /^parti: /);
    assert.match(lines[0]!, cases[i]![1]);
    assert.doesNotMatch(r.stderr, /\n\s+at /, `case ${i}: stack trace`);
  });
});
