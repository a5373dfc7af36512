/**
 * Costs of the evaluation pieces on this machine: probe training and inference (images/s) at
 * 32x32 on the shapes set, and FID on probe-width features. Run with `npx tsx bench/eval.ts`
 * (under `flock /tmp/parti-bench.lock`); other jobs on the machine change the numbers.
 */
import { initBackend } from '../src/model/backend.ts';
import { shapesSample } from '../src/data/shapes.ts';
import { ShapesLabelScheme } from '../src/eval/label-scheme.ts';
import { trainProbe } from '../src/eval/probe.ts';
import { fid } from '../src/eval/frechet-distance.ts';

await initBackend('wasm');
const scheme = new ShapesLabelScheme();
const n = 1024;
const images: Uint8Array[] = [];
const labels: number[][] = [];
for (let i = 0; i < n; i++) {
  const s = shapesSample(i, { seed: 0, imageSize: 32, split: 'train' });
  images.push(s.image);
  labels.push(scheme.labelsOf(s.caption)!);
}
let t = performance.now();
const probe = trainProbe(scheme, { images, labels }, 32, { epochs: 2 });
const trainS = (performance.now() - t) / 1000;
console.log(`probe training: ${((2 * n) / trainS).toFixed(0)} images/s (${n} images x 2 epochs in ${trainS.toFixed(1)} s, batch 64)`);
probe.predict(images.slice(0, 64));
t = performance.now();
const { features } = probe.predict(images);
const predS = (performance.now() - t) / 1000;
console.log(`probe inference: ${(n / predS).toFixed(0)} images/s`);
t = performance.now();
const d = probe.shape.features;
const v = fid(features.subarray(0, (n / 2) * d), features.subarray((n / 2) * d), d);
console.log(`FID of ${n / 2} vs ${n / 2} rows of ${d} features: ${v.toFixed(3)} in ${((performance.now() - t) / 1000).toFixed(2)} s`);
probe.dispose();
