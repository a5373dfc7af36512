/**
 * Times training steps of configs/tiny.yaml (tokenizer and Parti) and of the bench-small Parti
 * shape (d_model 256, 4 heads, 2 encoder + 4 decoder layers, 16 text + 64 image tokens, batch 8,
 * 1024 image codes), and prints image tokens/s, the achieved matmul GFLOP/s and its fraction of
 * this backend's measured matmul peak. Median wall time and best-of CPU time are both printed: on
 * a shared machine the CPU figure is the steadier one (the peak is also best-of, by CPU time).
 *
 *   npx tsx bench/train-step.ts [steps] [--profile]
 *
 * --profile also runs one profiled bench-small step and prints its kernel count and the kernels
 * that took the most CPU time (per kernel name and input shapes). CPU time of a kernel includes
 * whatever the process did meanwhile (GC, other threads), so single entries are noisy.
 *
 * Peer: ../shared/peers/torch_parti_step.py (PyTorch, one core) on the same shape, when
 * /usr/bin/python3 has torch.
 */
import * as tf from '@tensorflow/tfjs';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { initBackend } from '../src/model/backend.ts';
import { loadConfig } from '../src/config/load.ts';
import type { ModelConfig } from '../src/config/model-schema.ts';
import { matmulFlops } from '../src/model/ops.ts';
import { PartiTrainable } from '../src/model/parti-training.ts';
import { VitVqgan } from '../src/model/vit-vqgan.ts';
import type { Trainable } from '../src/model/trainable.ts';
import { shapesSample } from '../src/data/shapes.ts';

const args = process.argv.slice(2);
const profile = args.includes('--profile');
const steps = Number(args.find((a) => !a.startsWith('--')) ?? 6);
const backend = await initBackend((process.env.PARTI_BACKEND as 'wasm' | undefined) ?? 'wasm');

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Best of a few NN matmuls: this backend's practical peak, GFLOP/s by CPU time. */
function matmulPeak(): number {
  let best = 0;
  for (const [m, k, n] of [
    [512, 256, 1024],
    [1024, 1024, 1024],
    [512, 1024, 256],
  ] as const) {
    const a = tf.randomNormal([m, k]);
    const b = tf.randomNormal([k, n]);
    // Braces: a tidy that returned the data would walk its 0.5M elements looking for tensors.
    for (let i = 0; i < 2; i++) tf.tidy(() => {
      tf.matMul(a, b).dataSync();
    });
    const times: number[] = [];
    for (let i = 0; i < 12; i++) {
      const c0 = process.cpuUsage();
      tf.tidy(() => {
        tf.matMul(a, b).dataSync();
      });
      const c = process.cpuUsage(c0);
      times.push((c.user + c.system) / 1e6);
    }
    best = Math.max(best, (2 * m * k * n) / Math.min(...times) / 1e9);
    tf.dispose([a, b]);
  }
  return best;
}

interface Result {
  name: string;
  tokens: number;
  wallMs: number;
  cpuMs: number;
  flops: number;
}

function timeSteps<B extends { ids: readonly number[] }>(name: string, t: Trainable<B>, batch: B, tokens: number): Result {
  const params = t.layout.initialize(0);
  const wall: number[] = [];
  const cpu: number[] = [];
  let flops = 0;
  for (let i = 0; i < steps + 2; i++) {
    matmulFlops.forward = 0;
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    t.computeGradients(params, batch, { step: i, seed: 0 });
    const c = process.cpuUsage(c0);
    if (i >= 2) {
      wall.push(performance.now() - t0);
      cpu.push((c.user + c.system) / 1000);
    }
    flops = 3 * matmulFlops.forward;
  }
  return { name, tokens, wallMs: median(wall), cpuMs: Math.min(...cpu), flops };
}

function partiBatch(model: ModelConfig, B: number) {
  const pt = new PartiTrainable(model);
  const T = pt.model.imageTokens;
  const ids = [...Array(B).keys()];
  const captions = ids.map((i) => shapesSample(i, { seed: 0, imageSize: 32 }).caption);
  const tokens = Int32Array.from({ length: B * T }, (_, i) => (i * 7919) % model.tokenizer.codebookSize);
  return { pt, batch: pt.makeBatch(ids, captions, tokens), tokens: B * T };
}

let peak = matmulPeak();
const results: Result[] = [];

const tiny = loadConfig('configs/tiny.yaml');
{
  const B = tiny.training.tokenizer.batchSize;
  const vq = new VitVqgan(tiny.model.tokenizer);
  const S = tiny.model.tokenizer.imageSize;
  const images = new Uint8Array(B * S * S * 3);
  for (let i = 0; i < B; i++) images.set(shapesSample(i, { seed: 0, imageSize: S }).image, i * S * S * 3);
  results.push(timeSteps(`tiny tokenizer (batch ${B})`, vq, { ids: [...Array(B).keys()], images }, B * vq.tokens));
}
{
  const B = tiny.training.parti.batchSize;
  const { pt, batch, tokens } = partiBatch(tiny.model, B);
  results.push(timeSteps(`tiny parti (batch ${B})`, pt, batch, tokens));
}
{
  const small = structuredClone(tiny.model);
  small.text = { ...small.text, vocabSize: 259, maxLength: 16, layers: 2, dModel: 256, heads: 4, mlpRatio: 4, dropout: 0 };
  small.image = { layers: 4, dModel: 256, heads: 4, mlpRatio: 4, dropout: 0 };
  small.tokenizer = { ...small.tokenizer, imageSize: 32, patchSize: 4, codebookSize: 1024 };
  small.conditionDropout = 0;
  const { pt, batch, tokens } = partiBatch(small, 8);
  results.push(timeSteps('bench-small parti (batch 8)', pt, batch, tokens));
  if (profile) await profileStep(pt, batch);
}

/** One profiled step: kernel count and the top kernels by CPU time. */
async function profileStep<B extends { ids: readonly number[] }>(t: Trainable<B>, batch: B): Promise<void> {
  const params = t.layout.initialize(0);
  const be = tf.backend() as unknown as { time: (f: () => void) => Promise<{ kernelMs: number }> };
  const wallTime = be.time;
  // The backend's timer measures wall time; on a shared machine CPU time is the steadier figure.
  be.time = async (f) => {
    const c0 = process.cpuUsage();
    f();
    const c = process.cpuUsage(c0);
    return { kernelMs: (c.user + c.system) / 1000 };
  };
  try {
    const info = await tf.profile(() => {
      t.computeGradients(params, batch, { step: 0, seed: 0 });
    });
    // Kernels nested in a custom gradient's forward ('forward', '*__op') are counted in their parts.
    const own = info.kernels.filter((k) => k.name !== 'forward' && !k.name.endsWith('__op'));
    const byKey = new Map<string, { n: number; ms: number }>();
    let total = 0;
    for (const k of own) {
      const key = `${k.name} ${JSON.stringify(k.inputShapes)}`;
      const e = byKey.get(key) ?? { n: 0, ms: 0 };
      e.n++;
      e.ms += k.kernelTimeMs as number;
      byKey.set(key, e);
      total += k.kernelTimeMs as number;
    }
    console.log(`profile: bench-small step, ${own.length} kernels, ${total.toFixed(0)} ms kernel CPU; top 25:`);
    for (const [key, e] of [...byKey].sort((a, b) => b[1].ms - a[1].ms).slice(0, 25)) {
      console.log(`  ${e.ms.toFixed(1).padStart(7)} ms ${String(e.n).padStart(4)}x ${key}`);
    }
  } finally {
    be.time = wallTime;
  }
}

// Measured again after the steps: on a shared machine either reading may be depressed.
peak = Math.max(peak, matmulPeak());
console.log(`backend ${backend.name}; matmul peak ${peak.toFixed(1)} GFLOP/s (best NN product, CPU time); ${steps} steps: median wall, best CPU`);
for (const r of results) {
  const gflops = r.flops / (r.cpuMs / 1000) / 1e9;
  console.log(
    `${r.name.padEnd(30)} ${((r.tokens / r.wallMs) * 1000).toFixed(0).padStart(6)} tokens/s wall (${r.wallMs.toFixed(0)} ms)  ` +
      `${((r.tokens / r.cpuMs) * 1000).toFixed(0).padStart(6)} tokens/s CPU (${r.cpuMs.toFixed(0)} ms)  ` +
      `${(r.flops / 1e9).toFixed(2)} GFLOP/step  ${gflops.toFixed(1)} GFLOP/s = ${((gflops / peak) * 100).toFixed(0)}% of peak`,
  );
}

const peer = '/work/shared/peers/torch_parti_step.py';
const torch = existsSync('/usr/bin/python3') ? spawnSync('/usr/bin/python3', ['-c', 'import torch'], { encoding: 'utf8' }) : null;
if (torch && torch.status === 0 && existsSync(peer)) {
  const out = spawnSync('/usr/bin/python3', [peer, '256', '4', '2', '4', '16', '64', '260', '1024', '8', '10', '1'], { encoding: 'utf8' });
  console.log(`peer (PyTorch, one core): ${out.stdout.trim() || out.stderr.trim()}`);
} else {
  console.log('peer (PyTorch, one core): not run, torch is not installed (reference on this machine: about 2,000 image tokens/s)');
}
