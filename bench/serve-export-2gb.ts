/**
 * Past protobuf's 2 GB limit: writes a graph with 2.46 GB of weights through writeOnnxModel (the
 * export's writer: external data, a tensor placed past the 2^31 offset) and reads rows back in
 * onnxruntime-node. Needs ~2.5 GB of disk in the temp folder and ~2.5 GB of memory, so it is not
 * part of npm test. Prints the write time, the sizes and whether every value read back is right
 * (exit code 1 if not).
 *
 *   flock /tmp/parti-bench.lock npx tsx bench/serve-export-2gb.ts
 */
import * as ort from 'onnxruntime-node';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OnnxGraph } from '../src/export/onnx-graph.ts';
import { decodeOnnxModel, writeOnnxModel, ExternalDataFile } from '../src/export/onnx-file.ts';
import { readFile } from 'node:fs/promises';
const dir = await mkdtemp(join(tmpdir(), 'parti-onnx-2gb-'));
try {
  const R = 600_000, C = 1024;
  const table = new Float32Array(R * C);
  for (let r = 0; r < R; r++) table.fill(r, r * C, (r + 1) * C);
  const g = new OnnxGraph('big');
  const ids = g.input('ids', 'int64', [3]);
  g.weight('head', Float32Array.from({ length: 300_000 }, (_, i) => i), [300_000]);
  g.weight('table', table, [R, C]);
  const tail = g.weight('tail', Float32Array.from({ length: 1000 }, (_, i) => -i), [1000]);
  g.output('rows', g.op('Gather', [g.initializers[1]!.name, ids], { axis: { i: 0 } }), 'float32', [3, C]);
  g.output('tail_out', g.op('Identity', [tail]), 'float32', [1000]);
  g.output('head_sum', g.op('ReduceSum', [g.initializers[0]!.name], { keepdims: { i: 0 } }), 'float32', []);
  const ext = new ExternalDataFile(`${dir}/big.onnx.data`);
  const t0 = performance.now();
  // A low threshold sends the small tail tensor to the data file too, after the 2.46 GB table.
  const w = await writeOnnxModel(g, `${dir}/big.onnx`, { external: ext, externalThreshold: 1024 });
  await ext.close();
  console.log(w, 'data bytes', (await stat(`${dir}/big.onnx.data`)).size, 'write s', ((performance.now() - t0) / 1000).toFixed(1));
  const tailInit = decodeOnnxModel(await readFile(`${dir}/big.onnx`)).graph.initializer.find((t) => t.name === 'tail')!;
  const tailOffset = Number(tailInit.externalData!.find((e) => e.key === 'offset')!.value);
  console.log('tail tensor at external offset', tailOffset, tailOffset > 2 ** 31 ? '(past 2^31)' : '(NOT past 2^31)');
  const s = await ort.InferenceSession.create(`${dir}/big.onnx`);
  const out = await s.run({ ids: new ort.Tensor('int64', BigInt64Array.of(0n, 123_456n, BigInt(R - 1)), [3]) });
  const rows = out.rows!.data as Float32Array;
  const tailOut = out.tail_out!.data as Float32Array;
  const ok = tailOffset > 2 ** 31 && rows[0] === 0 && rows[C] === 123456 && rows[3 * C - 1] === R - 1 && tailOut[999] === -999 && (out.head_sum!.data as Float32Array)[0]! > 0;
  console.log('rows read back', rows[0], rows[C], rows[3 * C - 1], 'tail', tailOut[999], ok ? 'OK' : 'WRONG');
  await s.release();
  process.exitCode = ok ? 0 : 1;
} finally {
  await rm(dir, { recursive: true, force: true });
}
