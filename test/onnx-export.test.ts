import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadGenerationCheckpoint, type GenerationCheckpoint } from '../src/generate/generation-checkpoint.ts';
import { decodeOnnxModel } from '../src/export/onnx-file.ts';
import { exportOnnx } from '../src/export/onnx-export.ts';
import { readOnnxManifest } from '../src/export/onnx-manifest.ts';
import { verifyOnnxExport, VERIFY_TOLERANCE } from '../src/export/onnx-verify.ts';
import { initBackend } from '../src/model/backend.ts';
import { partiLayout } from '../src/model/parti.ts';
import { writeOnnxTestRun } from './onnx-fixture.ts';

/**
 * `parti export onnx`: the graphs' parity with tfjs (each graph, each output), the file format
 * (IR 8, opset 17, inputs/outputs as parti-onnx.json says) and the external-data path.
 */
let root = '';
let ckpt: GenerationCheckpoint;
let ckptLaplace: GenerationCheckpoint;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'parti-onnx-export-'));
  await writeOnnxTestRun(join(root, 'run'));
  await writeOnnxTestRun(join(root, 'run-laplace'), { logitLaplace: true, seed: 8 });
  ckpt = await loadGenerationCheckpoint(join(root, 'run'));
  ckptLaplace = await loadGenerationCheckpoint(join(root, 'run-laplace'));
  await initBackend('wasm');
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

test('every graph matches tfjs on random inputs within 1e-4 (weights inline and external)', async () => {
  for (const [name, src, threshold] of [
    ['inline', ckpt, undefined],
    ['external', ckpt, 256],
    ['laplace', ckptLaplace, 1024],
  ] as const) {
    const dir = join(root, `parity-${name}`);
    const r = await exportOnnx(src, dir, { externalThreshold: threshold });
    const diffs = await verifyOnnxExport(src, dir, r.manifest, { seed: 99 });
    const graphs = new Set(diffs.map((d) => d.graph));
    assert.deepEqual([...graphs].sort(), ['decoderPrefill', 'decoderStep', 'textEncoder', 'vqganDecoder']);
    // Every output the graphs declare was compared.
    for (const [key, g] of Object.entries(r.manifest.graphs)) {
      for (const o of g.outputs) assert.ok(diffs.some((d) => d.graph === key && d.output === o.name), `${name}: ${key}.${o.name} not compared`);
    }
    for (const d of diffs) {
      assert.ok(d.size > 0);
      assert.ok(d.maxAbsDiff <= VERIFY_TOLERANCE, `${name}: ${d.graph}.${d.output} differs by ${d.maxAbsDiff}`);
    }
  }
});

test('a graph that computes something else fails the comparison', async () => {
  // Export one run's graphs and compare them with another run's weights: verify must see it.
  const dir = join(root, 'foreign');
  const r = await exportOnnx(ckpt, dir);
  const other = { ...ckpt, parti: ckptLaplace.parti.slice(0, ckpt.parti.length) };
  assert.equal(other.parti.length, partiLayout(ckpt.config.model).size);
  const diffs = await verifyOnnxExport(other, dir, r.manifest);
  assert.ok(diffs.filter((d) => d.graph !== 'vqganDecoder').every((d) => d.maxAbsDiff > VERIFY_TOLERANCE));
});

test('files: IR 8, opset 17, declared inputs/outputs, weights external at or above the threshold', async () => {
  const dir = join(root, 'files');
  const threshold = 512;
  const r = await exportOnnx(ckpt, dir, { externalThreshold: threshold });
  const manifest = await readOnnxManifest(dir);
  assert.deepEqual(manifest, JSON.parse(JSON.stringify(r.manifest)));
  const files = (await readdir(dir)).sort();
  assert.deepEqual(files, ['decoder-prefill.onnx', 'decoder-step.onnx', 'decoder.onnx.data', 'parti-onnx.json', 'text-encoder.onnx', 'text-encoder.onnx.data', 'vqgan-decoder.onnx', 'vqgan-decoder.onnx.data']);
  const decoderTensors = new Map<string, { offset: number; length: number }>();
  for (const [key, g] of Object.entries(manifest.graphs)) {
    const model = decodeOnnxModel(await readFile(join(dir, g.file)));
    assert.equal(model.irVersion, 8);
    assert.deepEqual(model.opsetImport.map((o) => [o.domain ?? '', o.version]), [['', 17]]);
    assert.deepEqual(model.graph.input.map((i) => i.name), g.inputs.map((i) => i.name), key);
    assert.deepEqual(model.graph.output.map((o) => o.name), g.outputs.map((o) => o.name), key);
    let external = 0;
    for (const t of model.graph.initializer) {
      if (t.dataLocation === 1) {
        external++;
        const kv = Object.fromEntries(t.externalData!.map((e) => [e.key, e.value]));
        const length = Number(kv.length);
        assert.ok(length >= threshold, `${t.name}: ${length} bytes went external below the threshold`);
        assert.equal(length, t.dims.reduce((a, b) => a * b, 1) * 4);
        assert.equal(Number(kv.offset) % 64, 0);
        const size = (await stat(join(dir, kv.location!))).size;
        assert.ok(Number(kv.offset) + length <= size);
        if (kv.location === 'decoder.onnx.data') {
          const seen = decoderTensors.get(t.name);
          if (seen) assert.deepEqual(seen, { offset: Number(kv.offset), length }, `${t.name} stored twice`);
          decoderTensors.set(t.name, { offset: Number(kv.offset), length });
        }
      } else {
        assert.ok(t.rawData, `${t.name}: neither inline nor external`);
        assert.ok(t.rawData.length < threshold, `${t.name}: ${t.rawData.length} bytes stayed inline`);
      }
    }
    assert.ok(external > 0, `${key}: no weight went external`);
  }
  // Prefill and step share their weights in one data file, each tensor written once.
  const decData = r.externalData.find((x) => x.file === 'decoder.onnx.data')!;
  const payload = [...decoderTensors.values()].reduce((n, t) => n + t.length, 0);
  assert.ok(decData.bytes < payload + 64 * decoderTensors.size, `decoder.onnx.data holds ${decData.bytes} bytes for ${payload} of tensors`);
  // Default threshold (1 MiB): a tiny model stays inline and writes no data files.
  const inline = await exportOnnx(ckpt, join(root, 'inline'));
  assert.deepEqual(inline.externalData, []);
  assert.ok(inline.models.every((m) => m.externalTensors === 0));
});

test('a missing or invalid parti-onnx.json is a one-line checkpoint error', async () => {
  await assert.rejects(readOnnxManifest(join(root, 'nowhere')), (e: Error) => /parti-onnx\.json: missing/.test(e.message) && !e.message.includes('\n'));
});
