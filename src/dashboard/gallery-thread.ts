/**
 * The gallery's thread: sampling a few images on tfjs blocks for seconds, and the coordinator's
 * event loop (heartbeats, the step clock, the dashboard) must not. The main thread
 * (gallery-generator.ts) sends one request at a time; this thread answers with the PNGs.
 */
import { setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { PartiError } from '../errors.ts';
import { GallerySampler, type GalleryRender } from './gallery-samples.ts';
import type { GallerySource } from './gallery-source.ts';

/** workerData of the thread. */
export interface GalleryThreadData extends GallerySource {
  /** Nice value of this thread (Linux keeps one per thread): training processes keep the CPU. */
  niceness: number;
}

/** Main thread -> gallery thread. */
export type GalleryRequest = { type: 'warm' } | { type: 'close' } | { type: 'generate'; id: number; step: number; prompts: string[]; attentionMaps: boolean };
/** Gallery thread -> main thread. */
export type GalleryReply =
  | { type: 'done'; id: number; step: number; items: GalleryRender[]; ms: number }
  | { type: 'failed'; id: number; step: number; message: string; code: string };

const data = workerData as GalleryThreadData;
if (data.niceness > 0) {
  try {
    setPriority(0, data.niceness);
  } catch {
    // not permitted or not supported: run at normal priority
  }
}
const sampler = new GallerySampler(data);

parentPort!.on('message', (req: GalleryRequest) => {
  if (req.type === 'close') {
    // Leave from here, between two pieces of JavaScript: a thread terminated from outside can be
    // stopped inside zlib's set-up (pngjs), and Node 20 then aborts the whole process in the
    // thread's clean-up ("close before init", seen as a coordinator killed by SIGABRT).
    process.exit(0);
  }
  if (req.type === 'warm') {
    // A problem here shows again, as a failure, when the first samples are asked for.
    sampler.warm().catch(() => {});
    return;
  }
  const started = performance.now();
  sampler.render(req.step, req.prompts, req.attentionMaps).then(
    (items) => {
      // Copied, not transferred: the PNGs are a few KiB, and small Buffers share Node's pool.
      const reply: GalleryReply = { type: 'done', id: req.id, step: req.step, items, ms: performance.now() - started };
      parentPort!.postMessage(reply);
    },
    (err: unknown) => {
      const e = PartiError.from(err);
      parentPort!.postMessage({ type: 'failed', id: req.id, step: req.step, message: e.message.split('\n')[0]!, code: e.code } satisfies GalleryReply);
    },
  );
});
