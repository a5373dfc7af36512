/**
 * Checkpoint I/O: save and load MB/s to file:// and to s3rver for a 50M-parameter state with its
 * optimizer (parameters + two Adam moments, float32: 600 MB), and the step-time stall of an
 * asynchronous save (CheckpointWriter, upload thread) against a synchronous one in a simulated
 * step loop. Goal: the asynchronous save stalls a step by under 5% of its time.
 *
 *   npx tsx bench/checkpoint-io.ts [--params 50e6] [--steps 10] [--step-ms 4000] [--skip-s3]
 *
 * The default step (4 s of float work on the training thread) is in the range a 50M-parameter
 * model's step takes on the wasm backend here (the tiny 6.6M one takes ~2 s); the stall is the
 * extra time of steps while the upload runs, plus the one-time snapshot copy at the save.
 *
 * Run under `flock /tmp/parti-bench.lock` so two benchmarks never overlap.
 */
import { createHash, randomFillSync } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir, cpus, loadavg } from 'node:os';
import path from 'node:path';
import { setImmediate as yieldLoop } from 'node:timers/promises';
import { openStore, type OpenStoreOptions } from '../src/storage/open-store.ts';
import type { ObjectStore } from '../src/storage/object-store.ts';
import { commitManifest } from '../src/storage/checkpoint-commit.ts';
import { loadCheckpoint } from '../src/storage/checkpoint-load.ts';
import { CheckpointWriter, writeCheckpointObjects, type SnapshotObject } from '../src/storage/checkpoint-writer.ts';
import { encodeTensorBundle } from '../src/storage/tensor-bundle.ts';
import { startS3rver } from '../test/helpers/s3rver.ts';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}
const PARAMS = arg('params', 50e6);
const STEPS = arg('steps', 10);
const STEP_MS = arg('step-ms', 4000);
const SKIP_S3 = process.argv.includes('--skip-s3');
const HASH = 'bench0000000hash';
const MB = 1e6;

/** The training state: parameters and Adam's two moments, as a trainer holds them on the host. */
function makeState(n: number): { params: Float32Array; m: Float32Array; v: Float32Array } {
  const fill = (a: Float32Array) => {
    // Random bytes in 16 MB slices (randomFillSync refuses more than 2 GB at once; this keeps it cheap).
    const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    for (let i = 0; i < bytes.length; i += 16 << 20) randomFillSync(bytes, i, Math.min(16 << 20, bytes.length - i));
    return a;
  };
  return { params: fill(new Float32Array(n)), m: fill(new Float32Array(n)), v: fill(new Float32Array(n)) };
}

function snapshotObjects(state: { params: Float32Array; m: Float32Array; v: Float32Array }, copy: boolean): SnapshotObject[] {
  const c = (a: Float32Array) => (copy ? a.slice() : a);
  return [
    { name: 'params.bin', bytes: encodeTensorBundle([{ name: 'all', shape: [state.params.length], data: c(state.params) }]) },
    {
      name: 'optimizer-rank-0.bin',
      bytes: encodeTensorBundle([
        { name: 'm', shape: [state.m.length], data: c(state.m) },
        { name: 'v', shape: [state.v.length], data: c(state.v) },
      ]),
    },
  ];
}

function manifest(step: number, refs: Awaited<ReturnType<typeof writeCheckpointObjects>>) {
  return { step, worldSize: 1, configHash: HASH, config: {}, cursor: { step }, rng: { step }, objects: refs };
}

async function saveLoad(label: string, url: string, storeOptions: OpenStoreOptions, state: ReturnType<typeof makeState>) {
  const store: ObjectStore = openStore(url, storeOptions);
  const objects = snapshotObjects(state, false);
  const bytes = objects.reduce((s, o) => s + (o.bytes as Uint8Array[]).reduce((t, c) => t + c.byteLength, 0), 0);
  const results: string[] = [];
  for (let rep = 1; rep <= 2; rep++) {
    const t0 = performance.now();
    const refs = await writeCheckpointObjects(store, rep, objects, 4);
    await commitManifest(store, manifest(rep, refs), { keep: 2 });
    const save = (performance.now() - t0) / 1000;
    const t1 = performance.now();
    const loaded = await loadCheckpoint(store, 'latest', { configHash: HASH });
    const load = (performance.now() - t1) / 1000;
    if (loaded?.manifest.step !== rep) throw new Error('loaded the wrong step');
    results.push(
      `${label} rep ${rep}: save ${(bytes / MB / save).toFixed(0)} MB/s (${save.toFixed(2)} s, sha256 included), load+verify ${(bytes / MB / load).toFixed(0)} MB/s (${load.toFixed(2)} s)`,
    );
  }
  await store.close();
  for (const r of results) console.log(r);
}

/** One simulated training step: a fixed amount of float work on the main thread, then a turn of the event loop. */
function makeStep(work: Float32Array, iterations: number): () => Promise<number> {
  return async () => {
    const t0 = performance.now();
    let acc = 0;
    for (let it = 0; it < iterations; it++) for (let i = 0; i < work.length; i++) acc += work[i]! * 1.0001 + 0.5;
    work[0] = acc % 1; // keep the loop from being optimized away
    await yieldLoop();
    return performance.now() - t0;
  };
}

/** A float32 array in shared memory (what the worker's reused snapshot buffer is). */
function sharedFloats(n: number): Float32Array {
  return new Float32Array(new SharedArrayBuffer(n * 4));
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function stall(url: string, storeOptions: OpenStoreOptions, state: ReturnType<typeof makeState>) {
  const work = new Float32Array(1 << 20).fill(0.25);
  // Calibrate a step to about STEP_MS.
  let iterations = 4;
  const probe = makeStep(work, iterations);
  await probe();
  const one = await probe();
  iterations = Math.max(1, Math.round((iterations * STEP_MS) / one));
  const step = makeStep(work, iterations);
  const baseline: number[] = [];
  for (let i = 0; i < 5; i++) baseline.push(await step());
  const base = median(baseline);
  console.log(`step loop: baseline median ${base.toFixed(0)} ms (${iterations} passes over 4 MB)`);

  // Synchronous: the checkpoint step waits for the upload and the commit.
  {
    const store = openStore(url, storeOptions);
    // Training waits, so the live arrays are written as they are: no snapshot copy.
    const t0 = performance.now();
    const refs = await writeCheckpointObjects(store, 100, snapshotObjects(state, false), 4);
    await commitManifest(store, manifest(100, refs), { keep: 2 });
    const saveMs = performance.now() - t0;
    const ckptStep = (await step()) + saveMs;
    console.log(
      `synchronous save: the checkpoint step took ${ckptStep.toFixed(0)} ms = +${(((ckptStep - base) / base) * 100).toFixed(0)}% (upload+commit ${saveMs.toFixed(0)} ms on the step's thread)`,
    );
    await store.close();
  }

  // Asynchronous: snapshot to host memory, hand it to the writer, keep stepping. As the worker
  // does: the snapshot goes into a host buffer allocated once and reused (shared memory: the upload
  // thread reads it in place, no transfer and no copy to hand it over). The first save also pays
  // for the buffer's first touch (page faults); the second shows the steady state.
  const host = { params: sharedFloats(state.params.length), m: sharedFloats(state.m.length), v: sharedFloats(state.v.length) };
  // Third: the live state itself in shared memory (as the worker's models keep it): the upload
  // thread copies it while the step computes; the "optimizer update" at the end of the step waits
  // for the copy (ticket.copied) before it would change the state.
  const live = { params: sharedFloats(state.params.length), m: sharedFloats(state.m.length), v: sharedFloats(state.v.length) };
  live.params.set(state.params);
  live.m.set(state.m);
  live.v.set(state.v);
  let stepNo = 200;
  for (const save of ['first save (new buffer)', 'second save (buffer reused)', 'live state copied by the upload thread']) {
    const inThread = save.startsWith('live');
    const writer = new CheckpointWriter({ url, storeOptions, concurrency: 4, transfer: false });
    await writer.start();
    const store = openStore(url, storeOptions);
    const during: number[] = [];
    const after: number[] = [];
    let snap = 0;
    let copyMs = 0;
    let handoffMs = 0;
    let commitMs = 0;
    let uploadMs = 0;
    let saving = false;
    for (let i = 0; i < STEPS; i++) {
      let extra = 0;
      let copied: Promise<void> | null = null;
      if (i === 2) {
        const t0 = performance.now();
        if (!inThread) {
          host.params.set(state.params);
          host.m.set(state.m);
          host.v.set(state.v);
        }
        const objects = snapshotObjects(inThread ? live : host, false);
        copyMs = performance.now() - t0;
        const saveStep = stepNo++;
        const ticket = writer.save(saveStep, objects, { copyInThread: inThread })!;
        copied = ticket.copied;
        snap = performance.now() - t0;
        handoffMs = snap - copyMs;
        extra = snap;
        saving = true;
        const started = performance.now();
        void ticket.done.then(async (refs) => {
          const c0 = performance.now();
          await commitManifest(store, manifest(saveStep, refs), { keep: 2 });
          commitMs = performance.now() - c0;
          uploadMs = performance.now() - started;
          saving = false;
        });
      }
      const wasSaving = saving;
      let ms = (await step()) + extra;
      if (copied) {
        // the update of this step must not change the state before the thread has copied it
        const w0 = performance.now();
        await copied;
        const waitMs = performance.now() - w0;
        ms += waitMs;
        snap += waitMs;
        copyMs += waitMs;
      }
      if (i === 2) continue;
      (wasSaving ? during : after).push(ms);
    }
    await writer.whenIdle();
    while (saving) await new Promise((r) => setTimeout(r, 50));
    const meanDuring = during.reduce((a, b) => a + b, 0) / Math.max(1, during.length);
    const worst = Math.max(...during, 0);
    console.log(
      `asynchronous save, ${save}: snapshot (copy of ${((PARAMS * 12) / MB).toFixed(0)} MB) ${snap.toFixed(0)} ms = ${((snap / base) * 100).toFixed(0)}% of a step, once; ` +
        `upload+commit ${uploadMs.toFixed(0)} ms in the background over ${during.length} steps: mean step ${meanDuring.toFixed(0)} ms (+${(((meanDuring - base) / base) * 100).toFixed(1)}%), ` +
        `worst ${worst.toFixed(0)} ms (+${(((worst - base) / base) * 100).toFixed(1)}%); steps after: median ${median(after.length ? after : [base]).toFixed(0)} ms`,
    );
    console.log(
      `  training-thread time the save itself took: ${inThread ? "waiting at the update for the thread's copy" : 'snapshot copy'} ${copyMs.toFixed(0)} ms + hand-off to the upload thread ${handoffMs.toFixed(1)} ms + commit ${commitMs.toFixed(0)} ms (wall, incl. its awaits) ` +
        `= ${(((copyMs + handoffMs) / base) * 100).toFixed(1)}% of one step before the commit`,
    );
    const extra = snap + during.reduce((a, b) => a + (b - base), 0);
    console.log(`  in all, the asynchronous save cost the loop ${extra.toFixed(0)} ms (${((extra / base) * 100).toFixed(0)}% of one step), spread over ${during.length + 1} steps`);
    if (uploadMs === 0) console.log('  (the upload outlasted the loop: raise --steps)');
    await writer.close();
    await store.close();
  }
}

async function main() {
  console.log(`checkpoint-io: ${PARAMS / 1e6}M parameters + 2 Adam moments, float32 = ${((PARAMS * 12) / MB).toFixed(0)} MB; ${cpus().length} cores, load average ${loadavg()[0]!.toFixed(1)} (other jobs may share the machine)`);
  const state = makeState(PARAMS);
  {
    const buf = Buffer.from(state.params.buffer);
    const t0 = performance.now();
    createHash('sha256').update(buf).digest();
    console.log(`sha256 alone: ${(buf.length / MB / ((performance.now() - t0) / 1000)).toFixed(0)} MB/s`);
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'parti-bench-ckpt-'));
  try {
    await saveLoad('file://', dir, {}, state);
    if (!SKIP_S3) {
      // s3rver stands in for a remote service: at nice 19 it does not compete with the step loop for CPU.
      const server = await startS3rver({ niceness: 19 });
      try {
        await saveLoad('s3rver', `s3://${server.bucket}/bench`, { s3: { endpoint: server.endpoint, credentials: server.credentials } }, state);
        await stall(`s3://${server.bucket}/stall`, { s3: { endpoint: server.endpoint, credentials: server.credentials } }, state);
      } finally {
        await server.stop();
      }
    }
    console.log('-- stall with file://');
    await stall(path.join(dir, 'stall'), {}, state);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
