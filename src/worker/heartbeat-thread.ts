/**
 * The worker's heartbeats, on a thread of their own: a forward/backward pass on tfjs blocks the
 * worker's event loop for seconds, and heartbeats must keep going meanwhile, or a busy worker
 * would look dead. The main thread tells this one who it is and what state it is in; this one
 * tells the main thread when the coordinator no longer knows the worker (it must join again).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { createCoordinatorClient, deadlineIn } from '../coordinator/protocol.ts';
import type { SecurityConfig } from '../config/security-schema.ts';
import { resolveJobSecurity } from '../security/job-security.ts';

/** What the main thread sends. */
export type HeartbeatControl = { type: 'identity'; workerId: string } | { type: 'state'; state: string } | { type: 'stop' };
/** What this thread sends back: it has loaded (and heartbeats from now on); the coordinator does not know the worker. */
export type HeartbeatNews = { type: 'loaded' } | { type: 'unknown'; workerId: string };
/** workerData of the thread. */
export interface HeartbeatThreadData {
  coordinator: string;
  jobId: string;
  heartbeatMs: number;
  rpcDeadlineMs: number;
  maxMessageBytes: number;
  /** The `security` section (plain data; the thread resolves it itself), or null for plaintext. */
  security: SecurityConfig | null;
}

const data = workerData as HeartbeatThreadData;
const client = createCoordinatorClient(data.coordinator, data.maxMessageBytes, data.security ? resolveJobSecurity(data.security) : undefined);
let workerId = '';
let state = 'starting';
let inFlight = false;

const timer = setInterval(() => {
  if (!workerId || inFlight) return;
  inFlight = true;
  const id = workerId;
  client.heartbeat({ jobId: data.jobId, workerId: id, state }, { deadline: deadlineIn(data.rpcDeadlineMs) }, (err, reply) => {
    inFlight = false;
    // A failed call says nothing (the coordinator may be restarting); the stream tells the rest.
    if (!err && reply && !reply.known && id === workerId) parentPort!.postMessage({ type: 'unknown', workerId: id } satisfies HeartbeatNews);
  });
}, data.heartbeatMs);

parentPort!.on('message', (m: HeartbeatControl) => {
  if (m.type === 'identity') workerId = m.workerId;
  else if (m.type === 'state') state = m.state;
  else {
    clearInterval(timer);
    client.close();
    parentPort!.close();
  }
});

parentPort!.postMessage({ type: 'loaded' } satisfies HeartbeatNews);
