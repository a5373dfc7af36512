/**
 * Property-based fuzzing (fast-check) of everything that parses untrusted bytes. Shared by the
 * `npm test` suites (test/fuzz-*.test.ts, a few hundred cases each) and bench/fuzz.ts (>= 10,000
 * cases each). Every target checks: no exception other than the parser's typed refusal, no hang
 * (each case is timed; async ones have a deadline), and output bounded by the input (no
 * unbounded memory).
 */
import assert from 'node:assert/strict';
import { request } from 'node:http';
import type { Readable } from 'node:stream';
import fc from 'fast-check';
import sharp from 'sharp';
import { parseTar, tarArchive } from '../src/data/tar-format.ts';
import { decodeSample } from '../src/data/sample-format.ts';
import { readManifest } from '../src/storage/checkpoint-load.ts';
import { CHECKPOINT_FORMAT, CHECKPOINT_VERSION, manifestKey } from '../src/storage/checkpoint-manifest.ts';
import { decodeTensorBundle, encodeTensorBundle } from '../src/storage/tensor-bundle.ts';
import type { ObjectInfo, ObjectStore } from '../src/storage/object-store.ts';
import { decodeFrame, decodeSubscribeRequest, encodeFrame, encodeSubscribeRequest, type Frame } from '../src/collective/frame.ts';
import { coordinatorService } from '../src/coordinator/protocol.ts';
import { PartiError } from '../src/errors.ts';
import { startImageServer, type ImageBackend } from '../src/serve/image-server.ts';
import { createDashboardServer } from '../src/dashboard/dashboard-server.ts';
import { RunStateStore } from '../src/dashboard/run-state.ts';
import { createTrainingMetrics } from '../src/observability/metrics.ts';
import * as grpc from '@grpc/grpc-js';
import { GrpcTransport } from '../src/collective/grpc-transport.ts';
import { Coordinator } from '../src/coordinator/coordinator.ts';
import { startCoordinatorServer } from '../src/coordinator/coordinator-server.ts';
import { StepPlan } from '../src/coordinator/step-samples.ts';
import { EpochPlan } from '../src/data/epoch-plan.ts';

/** What one fuzz run did. */
export interface FuzzReport {
  target: string;
  cases: number;
  ms: number;
  /** Slowest single case, ms (a hang would show here, or hit the deadline). */
  maxCaseMs: number;
  /** Cases the parser refused with its typed error (the rest parsed). */
  refused: number;
}

/** Options of one run. */
export interface FuzzOptions {
  numRuns: number;
  seed: number;
}

class CaseClock {
  max = 0;
  refused = 0;
  time<T>(f: () => T): T {
    const t = performance.now();
    try {
      return f();
    } finally {
      this.max = Math.max(this.max, performance.now() - t);
    }
  }
  async timeAsync<T>(f: () => Promise<T>, deadlineMs: number, what: string): Promise<T> {
    const t = performance.now();
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        f(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`${what}: no answer within ${deadlineMs} ms (a hang)`)), deadlineMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
      this.max = Math.max(this.max, performance.now() - t);
    }
  }
}

async function run(target: string, o: FuzzOptions, clock: CaseClock, prop: fc.IAsyncPropertyWithHooks<unknown[]> | fc.IAsyncProperty<unknown[]> | fc.IProperty<unknown[]>): Promise<FuzzReport> {
  const t = performance.now();
  await fc.assert(prop as fc.IAsyncProperty<unknown[]>, { numRuns: o.numRuns, seed: o.seed, endOnFailure: true });
  return { target, cases: o.numRuns, ms: Math.round(performance.now() - t), maxCaseMs: Math.round(clock.max * 10) / 10, refused: clock.refused };
}

/** Byte-level damage to a valid input: flips, truncation, spliced random runs. */
export const damage = fc.record({
  flips: fc.array(fc.record({ at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }), { maxLength: 16 }),
  splice: fc.option(fc.record({ at: fc.nat(), bytes: fc.uint8Array({ maxLength: 64 }) }), { nil: null }),
  cut: fc.option(fc.nat(), { nil: null }),
});

/** One damage pattern (see `damage`). */
export interface Damage {
  flips: { at: number; xor: number }[];
  splice: { at: number; bytes: Uint8Array } | null;
  cut: number | null;
}

export function applyDamage(input: Uint8Array, d: Damage): Buffer {
  const out = Buffer.from(input);
  for (const f of d.flips) if (out.length) out[f.at % out.length]! ^= f.xor;
  if (d.splice && out.length) out.set(d.splice.bytes.subarray(0, Math.max(0, out.length - (d.splice.at % out.length))), d.splice.at % out.length);
  return d.cut === null ? out : out.subarray(0, d.cut % (out.length + 1));
}

// ---------------------------------------------------------------- tar

/** Rewrites a tar header's checksum so that a mutated header still passes it (reaches deeper code). */
function fixChecksum(buf: Buffer, at: number): void {
  if (at + 512 > buf.length) return;
  buf.fill(0x20, at + 148, at + 156);
  let sum = 0;
  for (let i = at; i < at + 512; i++) sum += buf[i]!;
  buf.write(`${sum.toString(8).padStart(6, '0')}\0 `, at + 148, 'latin1');
}

const tarFiles = fc.array(
  fc.record({ name: fc.stringMatching(/^[a-z0-9]{1,12}\.(txt|png|json|tokens)$/), data: fc.uint8Array({ maxLength: 1500 }) }),
  { minLength: 1, maxLength: 5 },
);

/** parseTar never throws; entries are views inside the input; a header that claims any size is handled. */
export async function fuzzTar(o: FuzzOptions): Promise<FuzzReport> {
  const clock = new CaseClock();
  const headerField = fc.record({
    block: fc.nat(),
    field: fc.constantFrom([0, 100], [100, 8], [124, 12], [156, 1], [257, 6], [345, 155]),
    text: fc.oneof(fc.stringMatching(/^[0-7]{1,11}$/), fc.string({ maxLength: 12 }), fc.constant('77777777777'), fc.constant('\x80\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff')),
  });
  const prop = fc.property(
    fc.oneof(
      { weight: 3, arbitrary: fc.tuple(tarFiles, damage, fc.array(headerField, { maxLength: 3 })).map(([files, d, fields]) => {
        const buf = applyDamage(tarArchive(files), d);
        for (const f of fields) {
          const at = (f.block % Math.max(1, Math.floor(buf.length / 512))) * 512;
          if (at + 512 > buf.length) continue;
          Buffer.from(f.text, 'latin1').copy(buf, at + f.field[0]!, 0, f.field[1]);
          fixChecksum(buf, at);
        }
        return buf;
      }) },
      { weight: 1, arbitrary: fc.uint8Array({ maxLength: 4096 }).map((b) => Buffer.from(b)) },
    ),
    (buf: Buffer) => {
      const parsed = clock.time(() => parseTar(buf));
      assert.ok(parsed.entries.length <= buf.length / 512);
      for (const e of parsed.entries) {
        assert.equal(e.data.buffer, buf.buffer, 'entry data must be a view of the input');
        assert.ok(e.headerOffset >= 0 && e.headerOffset + 512 + e.data.length <= buf.length);
        assert.equal(typeof e.name, 'string');
      }
      if (parsed.entries.length === 0 && parsed.problems.length === 0 && !parsed.notATar) assert.ok(buf.length >= 0);
    },
  );
  return run('tar reader (parseTar)', o, clock, prop as unknown as fc.IProperty<unknown[]>);
}

// ---------------------------------------------------------------- images

/** PNG IHDR width/height rewritten (with a valid CRC), to try decompression bombs and absurd sizes. */
function pngWithSize(png: Buffer, width: number, height: number): Buffer {
  const out = Buffer.from(png);
  out.writeUInt32BE(width >>> 0, 16);
  out.writeUInt32BE(height >>> 0, 20);
  out.writeUInt32BE(crc32(out.subarray(12, 29)) >>> 0, 29);
  return out;
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC_TABLE[(c ^ x) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Valid 32x32 images to start from: PNG (RGB and RGBA), JPEG, WebP. */
export async function baseImages(): Promise<{ ext: string; bytes: Buffer }[]> {
  const px = Buffer.alloc(32 * 32 * 3);
  for (let i = 0; i < px.length; i++) px[i] = (i * 37 + (i >> 5) * 11) & 0xff;
  const raw = sharp(px, { raw: { width: 32, height: 32, channels: 3 } });
  return [
    { ext: 'png', bytes: await raw.clone().png().toBuffer() },
    { ext: 'png', bytes: await raw.clone().ensureAlpha().png().toBuffer() },
    { ext: 'jpg', bytes: await raw.clone().jpeg({ quality: 80 }).toBuffer() },
    { ext: 'webp', bytes: await raw.clone().webp().toBuffer() },
  ];
}

/** decodeSample (sharp/libvips) on damaged images: an outcome every time, never a throw or a hang. */
export async function fuzzImages(o: FuzzOptions): Promise<FuzzReport> {
  const clock = new CaseClock();
  const bases = await baseImages();
  const png = bases[0]!.bytes;
  const prop = fc.asyncProperty(
    fc.oneof(
      { weight: 4, arbitrary: fc.tuple(fc.nat(bases.length - 1), damage).map(([i, d]) => ({ ext: bases[i]!.ext, bytes: applyDamage(bases[i]!.bytes, d) })) },
      { weight: 1, arbitrary: fc.tuple(fc.nat(), fc.nat()).map(([w, h]) => ({ ext: 'png', bytes: pngWithSize(png, w % 2 ? w : (w % 70000) + 1, h % 2 ? h : (h % 70000) + 1) })) },
      { weight: 1, arbitrary: fc.tuple(fc.constantFrom('png', 'jpg', 'webp'), fc.uint8Array({ maxLength: 512 })).map(([ext, b]) => ({ ext, bytes: Buffer.from(b) })) },
    ),
    async (img: { ext: string; bytes: Buffer }) => {
      const files = new Map<string, Buffer>([[img.ext, img.bytes], ['txt', Buffer.from('a caption')]]);
      const out = await clock.timeAsync(() => decodeSample({ key: 'k', files }, { imageSize: 32, maxCaptionBytes: 256, tokenCount: 0 }), 10_000, 'decodeSample');
      if (out.ok) {
        assert.equal(out.sample.image.length, 32 * 32 * 3);
        assert.deepEqual([out.sample.width, out.sample.height], [32, 32]);
      } else {
        clock.refused++;
        assert.equal(typeof out.detail, 'string');
      }
    },
  );
  return run('image decoding (decodeSample)', o, clock, prop as unknown as fc.IAsyncProperty<unknown[]>);
}

// ---------------------------------------------------------------- checkpoint manifest and bundles

/** One object in memory: the only calls readManifest makes are get(). */
class OneObjectStore implements ObjectStore {
  readonly url = 'mem://fuzz';
  constructor(
    private readonly key: string,
    private readonly bytes: Buffer,
  ) {}
  async get(key: string): Promise<Buffer> {
    if (key !== this.key) throw new PartiError('storage', `mem://fuzz: ${key} not found`);
    return this.bytes;
  }
  async getStream(): Promise<Readable> {
    throw new PartiError('internal', 'not used by readManifest');
  }
  async put(): Promise<void> {
    throw new PartiError('internal', 'read-only');
  }
  async head(key: string): Promise<ObjectInfo | null> {
    return key === this.key ? ({ key, size: this.bytes.length } as ObjectInfo) : null;
  }
  async list(): Promise<ObjectInfo[]> {
    return [];
  }
  async delete(): Promise<void> {}
  async cleanupIncomplete(): Promise<number> {
    return 0;
  }
  async close(): Promise<void> {}
}

function validManifest(step: number): Record<string, unknown> {
  return {
    format: CHECKPOINT_FORMAT, version: CHECKPOINT_VERSION, step, worldSize: 2, configHash: 'cafe0123cafe0123',
    config: { name: 'tiny' }, cursor: { epoch: 0, offset: 16 }, rng: { seed: 0, counter: 3 },
    objects: [{ name: 'params.bin', key: `steps/${String(step).padStart(12, '0')}/params.bin`, size: 1024, sha256: 'a'.repeat(64) }],
    committedAt: '2026-11-27T05:00:00.000Z',
  };
}

/** readManifest on damaged JSON, mutated fields and random bytes: a valid manifest or PartiError('checkpoint'). */
export async function fuzzManifest(o: FuzzOptions): Promise<FuzzReport> {
  const clock = new CaseClock();
  const fieldValue = fc.oneof(fc.anything(), fc.integer(), fc.double(), fc.string(), fc.constant(null), fc.constant(-1), fc.constant(1e300), fc.constant('../../etc/passwd'));
  const step = 1000;
  const prop = fc.asyncProperty(
    fc.oneof(
      { weight: 2, arbitrary: fc.tuple(fc.constantFrom('format', 'version', 'step', 'worldSize', 'configHash', 'objects', 'committedAt', 'meta', 'extra'), fieldValue).map(([k, v]) => Buffer.from(JSON.stringify({ ...validManifest(step), [k]: v }))) },
      { weight: 2, arbitrary: fc.tuple(fc.constantFrom('name', 'key', 'size', 'sha256', 'extra'), fieldValue).map(([k, v]) => {
        const m = validManifest(step);
        (m.objects as Record<string, unknown>[])[0]![k] = v;
        return Buffer.from(JSON.stringify(m));
      }) },
      { weight: 2, arbitrary: damage.map((d) => applyDamage(Buffer.from(JSON.stringify(validManifest(step))), d)) },
      { weight: 1, arbitrary: fc.json().map((j) => Buffer.from(j)) },
      { weight: 1, arbitrary: fc.uint8Array({ maxLength: 512 }).map((b) => Buffer.from(b)) },
    ),
    async (bytes: Buffer) => {
      const store = new OneObjectStore(manifestKey(step), bytes);
      try {
        const m = await clock.timeAsync(() => readManifest(store, step), 5000, 'readManifest');
        assert.equal(m.step, step);
        assert.equal(m.format, CHECKPOINT_FORMAT);
        for (const ref of m.objects) {
          assert.ok(Number.isSafeInteger(ref.size) && ref.size >= 0);
          assert.ok(ref.key.startsWith(`steps/${String(step).padStart(12, '0')}/`), `object key ${ref.key} outside its step`);
        }
      } catch (err) {
        clock.refused++;
        assert.ok(err instanceof PartiError && err.code === 'checkpoint', `not a checkpoint error: ${String(err)}`);
        assert.ok(err.message.length < 2000, 'error messages stay one short line');
      }
    },
  );
  return run('checkpoint manifest (readManifest)', o, clock, prop as unknown as fc.IAsyncProperty<unknown[]>);
}

/** decodeTensorBundle (checkpoint objects) on damaged bundles and random bytes. */
export async function fuzzTensorBundle(o: FuzzOptions): Promise<FuzzReport> {
  const clock = new CaseClock();
  const bundle = Buffer.concat(encodeTensorBundle([
    { name: 'w', shape: [4, 8], data: Float32Array.from({ length: 32 }, (_, i) => i / 3) },
    { name: 'step', shape: [1], data: Int32Array.from([7]) },
  ]));
  const prop = fc.property(
    fc.oneof(
      { weight: 3, arbitrary: damage.map((d) => applyDamage(bundle, d)) },
      { weight: 1, arbitrary: fc.tuple(fc.json(), fc.uint8Array({ maxLength: 256 })).map(([j, tail]) => {
        const json = Buffer.from(j);
        const head = Buffer.alloc(8);
        bundle.copy(head, 0, 0, 4);
        head.writeUInt32LE(json.length, 4);
        return Buffer.concat([head, json, Buffer.from(tail)]);
      }) },
      { weight: 1, arbitrary: fc.uint8Array({ maxLength: 512 }).map((b) => Buffer.from(b)) },
    ),
    (bytes: Buffer) => {
      try {
        const out = clock.time(() => decodeTensorBundle(bytes, 'fuzz'));
        let total = 0;
        for (const e of out.values()) {
          assert.equal(e.shape.reduce((a, b) => a * b, 1), e.data.length);
          total += e.data.byteLength;
        }
        assert.ok(total <= bytes.length * 2 + 1024, 'decoded arrays bounded by the input');
      } catch (err) {
        clock.refused++;
        assert.ok(err instanceof PartiError, `not a PartiError: ${String(err)}`);
      }
    },
  );
  return run('checkpoint tensor bundle (decodeTensorBundle)', o, clock, prop as unknown as fc.IProperty<unknown[]>);
}

// ---------------------------------------------------------------- protobuf messages

const frameArb: fc.Arbitrary<Frame> = fc.record({
  jobId: fc.string({ maxLength: 20 }),
  epoch: fc.nat(),
  fromRank: fc.nat(1000),
  op: fc.nat(),
  kind: fc.constantFrom('data' as const, 'abort' as const),
  phase: fc.nat(4),
  step: fc.nat(),
  chunk: fc.nat(),
  reason: fc.string({ maxLength: 40 }),
  jobToken: fc.uint8Array({ maxLength: 40 }),
  payload: fc.uint8Array({ maxLength: 300 }),
});

/** Collective frames and subscriptions: round trips, and damaged or random bytes refused as PartiError('refused'). */
export async function fuzzFrames(o: FuzzOptions): Promise<FuzzReport> {
  const clock = new CaseClock();
  const prop = fc.property(frameArb, damage, fc.uint8Array({ maxLength: 256 }), (f, d, random) => {
    const wire = encodeFrame(f);
    const back = clock.time(() => decodeFrame(wire));
    assert.deepEqual({ ...back, payload: [...back.payload], jobToken: [...back.jobToken] }, { ...f, payload: [...f.payload], jobToken: [...f.jobToken] });
    for (const bytes of [applyDamage(wire, d), Buffer.from(random)]) {
      for (const decode of [decodeFrame, decodeSubscribeRequest] as ((b: Uint8Array) => object)[]) {
        try {
          const m = clock.time(() => decode(bytes)) as Record<string, unknown>;
          for (const v of Object.values(m)) {
            if (typeof v === 'number') assert.ok(Number.isSafeInteger(v) && v >= 0, `number field ${v}`);
            if (v instanceof Uint8Array) assert.ok(v.byteLength <= bytes.length);
          }
        } catch (err) {
          clock.refused++;
          assert.ok(err instanceof PartiError && err.code === 'refused', `not a refusal: ${String(err)}`);
        }
      }
    }
    const sub = { jobId: f.jobId, epoch: f.epoch, rank: f.fromRank, stream: f.chunk % 16, jobToken: f.jobToken, configHash: f.reason };
    const subBack = decodeSubscribeRequest(encodeSubscribeRequest(sub));
    assert.deepEqual({ ...subBack, jobToken: [...subBack.jobToken] }, { ...sub, jobToken: [...sub.jobToken] });
  });
  return run('collective frames (decodeFrame, decodeSubscribeRequest)', o, clock, prop as unknown as fc.IProperty<unknown[]>);
}

/**
 * The coordinator's protobuf messages (protobufjs, as grpc-js's deserializers call them) on random
 * and damaged bytes: decoded or thrown (grpc-js answers a throwing deserializer with a status; it
 * must not take the process down), and a decoded message is never larger than its bytes allow.
 */
export async function fuzzCoordinatorMessages(o: FuzzOptions): Promise<FuzzReport> {
  const clock = new CaseClock();
  const methods = Object.values(coordinatorService);
  const samples: Buffer[] = [
    methods[0]!.requestSerialize({ jobId: 'job', configHash: 'h', workerName: 'w', collectiveAddress: '127.0.0.1:1', paramCount: 10 } as never),
    methods[3]!.requestSerialize({ workerId: 'w1', step: 5, kind: 'APPLIED', loss: 1.5 } as never),
  ];
  const prop = fc.property(fc.nat(methods.length - 1), fc.oneof(fc.tuple(fc.nat(samples.length - 1), damage).map(([i, d]) => applyDamage(samples[i]!, d)), fc.uint8Array({ maxLength: 256 }).map((b) => Buffer.from(b))), (mi, bytes) => {
    const m = methods[mi]!;
    for (const des of [m.requestDeserialize, m.responseDeserialize] as ((b: Buffer) => unknown)[]) {
      try {
        const v = clock.time(() => des(bytes));
        assert.ok(JSON.stringify(v).length <= 64 + bytes.length * 24, 'decoded size bounded by the input');
      } catch (err) {
        clock.refused++;
        assert.ok(err instanceof Error, String(err));
      }
    }
  });
  return run('coordinator protobuf messages (protobufjs)', o, clock, prop as unknown as fc.IProperty<unknown[]>);
}

// ---------------------------------------------------------------- HTTP bodies

interface HttpAnswer {
  status: number;
  body: string;
}

function http(url: string, method: string, path: string, headers: Record<string, string>, body: Buffer | null): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = request({ host: u.hostname, port: u.port, method, path, headers: { ...headers, ...(body ? { 'content-length': String(body.length) } : {}) }, agent: false }, (res) => {
      const parts: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size < 1 << 20) parts.push(c);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body ?? undefined);
  });
}

/** A backend that answers at once with a blank image of the right size: the fuzz is about HTTP. */
class BlankBackend implements ImageBackend {
  readonly imageSize = 8;
  readonly channels = 3;
  readonly imageTokens = 4;
  readonly defaults = { cfg: 1, topK: 0, topP: 1, temperature: 1, seed: 0 } as ImageBackend['defaults'];
  readonly info = { backend: 'blank' };
  calls = 0;
  async generate(_prompt: string, n: number): Promise<{ tokens: Int32Array[]; images: Uint8Array[]; truncated: boolean }> {
    this.calls++;
    return { tokens: Array.from({ length: n }, () => new Int32Array(4)), images: Array.from({ length: n }, () => new Uint8Array(8 * 8 * 3)), truncated: false };
  }
}

const jsonBody = fc.oneof(
  fc.record(
    {
      prompt: fc.oneof(fc.string({ maxLength: 120 }), fc.anything()),
      n: fc.oneof(fc.integer({ min: -3, max: 12 }), fc.double(), fc.anything()),
      cfg: fc.oneof(fc.double(), fc.anything()),
      top_k: fc.oneof(fc.integer(), fc.anything()),
      top_p: fc.oneof(fc.double(), fc.anything()),
      temperature: fc.oneof(fc.double(), fc.anything()),
      seed: fc.oneof(fc.integer(), fc.constant(2 ** 60), fc.anything()),
      format: fc.oneof(fc.constantFrom('png', 'json', 'gif'), fc.anything()),
      extra: fc.anything(),
    },
    { requiredKeys: [] },
  ).map((o) => Buffer.from(JSON.stringify(o) ?? 'null')),
  fc.json().map((j) => Buffer.from(j)),
  fc.uint8Array({ maxLength: 2048 }).map((b) => Buffer.from(b)),
  fc.constant(Buffer.from('{"prompt":"' + 'x'.repeat(5000) + '"}')),
);

/** `parti serve`'s HTTP API (startImageServer) on random bodies, methods, paths and headers. */
export async function fuzzServeHttp(o: FuzzOptions): Promise<FuzzReport> {
  const clock = new CaseClock();
  const backend = new BlankBackend();
  const srv = await startImageServer(backend, { port: 0, host: '127.0.0.1', concurrency: 2, queueLimit: 64, maxBodyBytes: 4096, maxImages: 4, maxPromptChars: 100, timeoutMs: 10_000 });
  try {
    const prop = fc.asyncProperty(
      fc.constantFrom('POST', 'POST', 'POST', 'GET', 'PUT', 'DELETE'),
      fc.constantFrom('/v1/images', '/v1/images', '/v1/images?x=1', '/healthz', '/metrics', '/nope', '/v1/images/../healthz'),
      fc.constantFrom('application/json', 'text/plain', 'image/png', ''),
      fc.constantFrom('image/png', 'application/json', '*/*'),
      jsonBody,
      async (method, path, contentType, accept, body) => {
        const ans = await clock.timeAsync(() => http(srv.url, method, path, { ...(contentType ? { 'content-type': contentType } : {}), accept }, method === 'GET' ? null : body), 10_000, `${method} ${path}`);
        assert.ok([200, 400, 404, 405, 413, 415, 429].includes(ans.status), `status ${ans.status}: ${ans.body.slice(0, 200)}`);
        if (ans.status !== 200) clock.refused++;
        if (ans.status === 400) assert.match(ans.body, /"error"/);
      },
    );
    const report = await run('serve HTTP bodies (startImageServer)', o, clock, prop as unknown as fc.IAsyncProperty<unknown[]>);
    const health = await http(srv.url, 'GET', '/healthz', {}, null);
    assert.equal(health.status, 200, 'the server still answers after the fuzz');
    return report;
  } finally {
    await srv.close();
  }
}

/** The dashboard's HTTP server (createDashboardServer, token on) on random methods, paths, queries, headers and bodies. */
export async function fuzzDashboardHttp(o: FuzzOptions): Promise<FuzzReport> {
  const clock = new CaseClock();
  const token = 'dashboard-fuzz-token-0123456789';
  const metrics = createTrainingMetrics();
  const view = new RunStateStore({ jobId: 'fuzz-1', name: 'fuzz', configHash: 'cafe0123', totalSteps: 100, targetWorkers: 2, batchSize: 16, metrics, eventsKept: 50 });
  const srv = await createDashboardServer({ view, token, registry: metrics.registry, host: '127.0.0.1', port: 0 });
  try {
    const prop = fc.asyncProperty(
      fc.constantFrom('GET', 'GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS'),
      fc.constantFrom('/', '/api/overview', '/api/workers', '/api/history', '/api/events', '/api/checkpoints', '/api/gallery', '/api/session', '/metrics', '/healthz', '/nope', '/app.js', '/../etc/passwd', '/%2e%2e/%2e%2e/etc/passwd'),
      fc.dictionary(fc.constantFrom('since', 'limit', 'points', 'from', 'to', 'step', 'x'), fc.oneof(fc.string({ maxLength: 12 }), fc.integer().map(String), fc.constant('1e309'), fc.constant('-1'))),
      fc.oneof(fc.constant(`Bearer ${token}`), fc.constant('Bearer wrong'), fc.string({ maxLength: 40 }), fc.constant('')),
      fc.oneof(fc.constant(''), fc.string({ maxLength: 60 }), fc.constant('parti_dashboard_session=garbage')),
      fc.oneof(fc.constant(null), fc.uint8Array({ maxLength: 1024 }).map((b) => Buffer.from(b))),
      async (method, path, query, authorization, cookie, body) => {
        const qs = new URLSearchParams(query).toString();
        const headers: Record<string, string> = {};
        if (authorization) headers.authorization = authorization.replace(/[^\t\x20-\x7e]/g, '');
        if (cookie) headers.cookie = cookie.replace(/[^\t\x20-\x7e]/g, '');
        const ans = await clock.timeAsync(() => http(srv.url, method, `${path}${qs ? `?${qs}` : ''}`, headers, method === 'GET' || method === 'HEAD' ? null : body), 10_000, `${method} ${path}`);
        assert.ok(ans.status >= 200 && ans.status < 500, `status ${ans.status} for ${method} ${path}?${qs}: ${ans.body.slice(0, 200)}`);
        if (ans.status >= 400) clock.refused++;
        const authed = authorization === `Bearer ${token}`;
        if (!authed && ans.status === 200 && method !== 'HEAD') {
          assert.ok(['/healthz', '/readyz', '/login.js', '/login.css'].includes(path) || ans.body.includes('<form') || /login/i.test(ans.body), `unauthenticated 200 on ${path}`);
        }
        assert.ok(!ans.body.includes(token), 'the token never comes back in a body');
      },
    );
    const report = await run('dashboard HTTP (createDashboardServer)', o, clock, prop as unknown as fc.IAsyncProperty<unknown[]>);
    const health = await http(srv.url, 'GET', '/healthz', {}, null);
    assert.equal(health.status, 200, 'the server still answers after the fuzz');
    return report;
  } finally {
    await srv.close();
  }
}


// ---------------------------------------------------------------- gRPC servers on untrusted bytes


function rawCall(client: grpc.Client, path: string, bytes: Buffer, stream: boolean): Promise<string> {
  const id = (b: Buffer): Buffer => b;
  return new Promise((resolve) => {
    const deadline = Date.now() + 5000;
    if (stream) {
      const call = client.makeServerStreamRequest(path, id, id, bytes, { deadline });
      const t = setTimeout(() => (call.cancel(), resolve('open')), 300);
      call.on('data', () => {});
      call.on('error', (e: grpc.ServiceError) => (clearTimeout(t), resolve(grpc.status[e.code] ?? String(e.code))));
      call.on('end', () => (clearTimeout(t), resolve('end')));
    } else {
      client.makeUnaryRequest(path, id, id, bytes, { deadline }, (err) => resolve(err ? (grpc.status[err.code] ?? String(err.code)) : 'OK'));
    }
  });
}

/**
 * A real collective endpoint (GrpcTransport, token and config hash set) sent random and damaged
 * Subscribe requests: every call ends with a status or stays parked (a valid request for a future
 * epoch), none is served frames, and the server still answers afterwards.
 */
export async function fuzzCollectiveServer(o: FuzzOptions): Promise<FuzzReport> {
  const clock = new CaseClock();
  const token = new Uint8Array(Buffer.from('collective-fuzz-token-0123'));
  const t = await GrpcTransport.start({ jobId: 'fuzz', jobToken: token, configHash: 'h1', listen: '127.0.0.1:0' });
  const client = new grpc.Client(t.address, grpc.credentials.createInsecure());
  const good = encodeSubscribeRequest({ jobId: 'fuzz', epoch: 5, rank: 1, stream: 0, jobToken: token, configHash: 'h1' });
  try {
    const prop = fc.asyncProperty(fc.oneof(damage.map((d) => applyDamage(good, d)), fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b))), async (bytes) => {
      const outcome = await clock.timeAsync(() => rawCall(client, '/parti.collective.v1.Collective/Subscribe', bytes, true), 10_000, 'Subscribe');
      if (outcome !== 'open') clock.refused++;
      assert.ok(['open', 'PERMISSION_DENIED', 'INTERNAL', 'FAILED_PRECONDITION', 'RESOURCE_EXHAUSTED', 'UNAVAILABLE', 'CANCELLED'].includes(outcome), outcome);
    });
    const report = await run('collective gRPC server (Subscribe, raw bytes)', o, clock, prop as unknown as fc.IAsyncProperty<unknown[]>);
    assert.equal(await rawCall(client, '/parti.collective.v1.Collective/Subscribe', good, true), 'open', 'still serving after the fuzz');
    return report;
  } finally {
    client.close();
    await t.close();
  }
}

/**
 * A real coordinator (state machine + gRPC service) with two joined workers, sent random and
 * damaged messages on all five methods, and well-formed reports with random values (worker ids,
 * kinds, epochs, steps, checkpoint object lists): every call ends with a status within its
 * deadline, and the coordinator still answers a known worker's heartbeat afterwards.
 */
export async function fuzzCoordinatorServer(o: FuzzOptions): Promise<FuzzReport> {
  const clock = new CaseClock();
  const coordinator = new Coordinator({
    jobId: 'job', configHash: 'h', totalSteps: 1000, microBatch: 2,
    plan: new StepPlan(new EpochPlan([{ samples: 20 }], { seed: 0, globalBatch: 4 })),
    targetWorkers: 2, minWorkers: 2, heartbeatMs: 50, failureTimeoutMs: 600_000, stepDeadlineMs: 600_000,
    zeroStage: 0, checkpointEvery: 0, checkpointAtEnd: false, checkpoints: null, ledgerFile: null,
  });
  const server = await startCoordinatorServer(coordinator, '127.0.0.1', 0, 1 << 20);
  const client = new grpc.Client(server.address, grpc.credentials.createInsecure());
  const ser = coordinatorService;
  try {
    const ids: string[] = [];
    for (const name of ['a', 'b']) {
      const reply = coordinator.join({ jobId: 'job', configHash: 'h', workerName: name, collectiveAddress: `127.0.0.1:${name === 'a' ? 1 : 2}`, paramCount: 10 });
      ids.push(reply.workerId);
    }
    const methods = Object.values(ser);
    const report = fc.record({
      jobId: fc.constantFrom('job', 'other', ''),
      workerId: fc.oneof(fc.constantFrom(...ids), fc.string({ maxLength: 10 })),
      kind: fc.constantFrom('READY', 'REDUCED', 'APPLIED', 'CHECKPOINTED', 'FAILED', 'KIND_UNSPECIFIED'),
      epoch: fc.nat(3),
      step: fc.oneof(fc.nat(3), fc.nat()),
      loss: fc.double(),
      nonFinite: fc.boolean(),
      error: fc.string({ maxLength: 30 }),
      checkpointObjectsJson: fc.oneof(fc.constant(''), fc.json(), fc.string({ maxLength: 40 })),
    });
    const prop = fc.asyncProperty(
      fc.nat(methods.length - 1),
      fc.oneof(
        { weight: 2, arbitrary: report.map((r) => ser.report.requestSerialize(r as never)) },
        { weight: 1, arbitrary: fc.tuple(report, damage).map(([r, d]) => applyDamage(ser.report.requestSerialize(r as never), d)) },
        { weight: 1, arbitrary: fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)) },
      ),
      async (mi, bytes) => {
        const m = methods[mi]!;
        // Report-shaped bytes go to Report half the time, whatever method was drawn.
        const target = mi % 2 === 0 ? ser.report : m;
        const outcome = await clock.timeAsync(() => rawCall(client, target.path, bytes, target.responseStream), 10_000, target.path);
        if (outcome !== 'OK' && outcome !== 'open' && outcome !== 'end') clock.refused++;
        assert.ok(!['DEADLINE_EXCEEDED', 'UNKNOWN'].includes(outcome), `${target.path}: ${outcome}`);
      },
    );
    const r = await run('coordinator gRPC server (all methods)', o, clock, prop as unknown as fc.IAsyncProperty<unknown[]>);
    const hb = await rawCall(client, ser.heartbeat.path, ser.heartbeat.requestSerialize({ jobId: 'job', workerId: ids[0]!, state: 'ok' } as never), false);
    assert.equal(hb, 'OK', 'the coordinator still answers after the fuzz');
    return r;
  } finally {
    client.close();
    await server.close();
    coordinator.close();
  }
}

/** Every target, in the order bench/fuzz.ts runs them. */
export const FUZZ_TARGETS = {
  tar: fuzzTar,
  images: fuzzImages,
  manifest: fuzzManifest,
  bundle: fuzzTensorBundle,
  frames: fuzzFrames,
  coordinator: fuzzCoordinatorMessages,
  serve: fuzzServeHttp,
  dashboard: fuzzDashboardHttp,
  collectiveServer: fuzzCollectiveServer,
  coordinatorServer: fuzzCoordinatorServer,
} as const;
