import * as grpc from '@grpc/grpc-js';
import { PartiError } from '../errors.ts';
import { log, tracer } from '../observability/log.ts';
import type { JobSecurity } from '../security/job-security.ts';
import { channelCredentials, channelTlsOptions, resolveBindAddress, serverCredentials, type PlaintextBindPolicy, type TlsMaterial } from '../security/tls-credentials.ts';
import { CollectiveNode, type CollectiveNodeOptions } from './collective-node.ts';
import {
  decodeFrame,
  decodeSubscribeRequest,
  encodeFrameParts,
  type EncodedFrame,
  encodeSubscribeRequest,
  sameToken,
  type Frame,
  type SubscribeRequest,
} from './frame.ts';
import type { CollectiveTransport, Membership, TransportHandlers, TransportSession } from './transport.ts';

const trace = tracer('collective-grpc');

const SUBSCRIBE_PATH = '/parti.collective.v1.Collective/Subscribe';

/** Most subscriptions held for an epoch this worker has not entered yet (peers x streams is far less). */
const MAX_PARKED = 1024;

/**
 * proto/collective.proto's service with hand-written (de)serializers: frames are encoded once by
 * encodeFrame (header fields, then the raw tensor bytes) and decoded without copying the payload.
 */
const serviceDefinition: grpc.ServiceDefinition = {
  Subscribe: {
    path: SUBSCRIBE_PATH,
    requestStream: false,
    responseStream: true,
    requestSerialize: (r: SubscribeRequest) => encodeSubscribeRequest(r),
    requestDeserialize: (b: Buffer) => decodeSubscribeRequest(b),
    // An EncodedFrame, not a Buffer: see EncodedFrame for why and what grpc-js does with it.
    responseSerialize: (f: EncodedFrame) => f as unknown as Buffer,
    responseDeserialize: (b: Buffer) => decodeFrame(b),
    originalName: 'subscribe',
  },
};

/** Settings of the gRPC transport (on top of the node's). */
export interface GrpcTransportOptions {
  jobId: string;
  jobToken?: Uint8Array;
  /**
   * The job's config hash: sent in every subscription, and subscriptions with another are refused.
   * Unset: not checked (and an empty one sent).
   */
  configHash?: string;
  /**
   * Mutual TLS: the server requires a client certificate signed by the CA, clients verify the
   * server's. Unset or null: plaintext.
   */
  tls?: TlsMaterial | null;
  /**
   * Without `tls`: 'loopback' binds 127.0.0.1 whatever host `listen` names, 'as-configured' binds
   * it. Default 'as-configured' (callers resolving the `security` config pass its policy, which
   * defaults to 'loopback'). The choice is logged.
   */
  plaintextBind?: PlaintextBindPolicy;
  /** host:port to listen on; port 0 picks a free one. Default '127.0.0.1:0'. */
  listen?: string;
  /** host:port peers use to reach us. Default: the listen host with the bound port. */
  advertise?: string;
  /** Parallel streams (each on its own TCP connection) per pair of workers. Default 2. */
  streams?: number;
  /** Largest frame, bytes (a chunk plus a small header). Default 64 MiB. */
  maxMessageBytes?: number;
  /** HTTP/2 flow-control window of our subscriptions (what a peer may send ahead), bytes. Default 64 MiB. */
  flowControlWindow?: number;
}

interface LiveSession {
  m: Membership;
  handlers: TransportHandlers;
  closed: boolean;
  /** Outgoing streams per peer rank (server side of that peer's subscriptions), by stream index. */
  links: Map<number, grpc.ServerWritableStream<SubscribeRequest, EncodedFrame>[]>;
  linkWaiters: Map<number, { resolve(): void; reject(e: PartiError): void }[]>;
  subscriptions: grpc.ClientReadableStream<Frame>[];
  broken: Set<number>;
  roundRobin: Map<number, number>;
  closedError: PartiError | null;
  onClose: (() => void)[];
}

/** A peer-supplied string fit for a message: at most 64 characters, no control characters. */
function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  const clean = s.replace(/[\u0000-\u001f\u007f]/g, '?');
  return clean.length > 64 ? `${clean.slice(0, 64)}…` : clean;
}

function grpcError(code: grpc.status, details: string): Partial<grpc.StatusObject> {
  return { code, details, metadata: new grpc.Metadata() };
}

/** Refusals travel as PERMISSION_DENIED / FAILED_PRECONDITION; everything else means the link is gone. */
function fromStatus(err: grpc.ServiceError | Error, peer: string): PartiError {
  const code = (err as grpc.ServiceError).code;
  const details = (err as grpc.ServiceError).details ?? err.message;
  if (code === grpc.status.PERMISSION_DENIED || code === grpc.status.FAILED_PRECONDITION) {
    return new PartiError('refused', `${peer} refused us: ${details}`);
  }
  return new PartiError('collective-aborted', `link to ${peer} failed: ${code !== undefined ? grpc.status[code] : ''} ${details}`.trim());
}

/**
 * Collectives over @grpc/grpc-js. Pull model: on open() we Subscribe to every peer (`streams`
 * calls each, each on its own connection) and peers write their frames for us into those server
 * streams; the receiver is the HTTP/2 client, so its flow-control window (which grpc-js lets a
 * client set, not a server) governs how far a sender may run ahead.
 */
export class GrpcTransport implements CollectiveTransport {
  private readonly server = new grpc.Server({
    'grpc.max_send_message_length': -1,
    'grpc.max_receive_message_length': 1 << 16,
  });
  private readonly clients = new Map<string, grpc.Client>();
  private session: LiveSession | null = null;
  /** Subscriptions of an epoch newer than ours: a peer configured before us. */
  private parked: { req: SubscribeRequest; call: grpc.ServerWritableStream<SubscribeRequest, EncodedFrame> }[] = [];
  private closed = false;
  private boundAddress = '';
  private readonly streams: number;
  private readonly maxMessageBytes: number;
  private readonly window: number;
  private readonly jobToken: Uint8Array;
  private readonly configHash: string;
  private readonly tls: TlsMaterial | null;

  private constructor(private readonly options: GrpcTransportOptions) {
    this.configHash = options.configHash ?? '';
    this.tls = options.tls ?? null;
    this.streams = options.streams ?? 2;
    this.maxMessageBytes = options.maxMessageBytes ?? 64 << 20;
    this.window = options.flowControlWindow ?? 64 << 20;
    this.jobToken = options.jobToken ?? new Uint8Array(0);
    if (!Number.isInteger(this.streams) || this.streams < 1 || this.streams > 16) {
      throw new PartiError('usage', `grpc transport: streams must be in 1..16, got ${this.streams}`);
    }
    this.server.addService(serviceDefinition, { Subscribe: (call: grpc.ServerWritableStream<SubscribeRequest, EncodedFrame>) => this.onSubscribe(call) });
  }

  /** Starts the server; resolves once it listens. */
  static async start(options: GrpcTransportOptions): Promise<GrpcTransport> {
    const t = new GrpcTransport(options);
    const listen = resolveBindAddress(options.listen ?? '127.0.0.1:0', {
      service: 'collective',
      tls: t.tls !== null,
      policy: options.plaintextBind ?? 'as-configured',
      logger: log,
    });
    const port = await new Promise<number>((resolve, reject) =>
      t.server.bindAsync(listen, serverCredentials(t.tls), (err, p) => (err ? reject(new PartiError('usage', `collective listen ${listen}: ${err.message}`)) : resolve(p))),
    );
    const host = listen.slice(0, listen.lastIndexOf(':'));
    t.boundAddress = options.advertise ?? `${host === '0.0.0.0' || host === '[::]' ? '127.0.0.1' : host}:${port}`;
    return t;
  }

  get address(): string {
    return this.boundAddress;
  }

  private client(address: string, stream: number): grpc.Client {
    const key = `${address}#${stream}`;
    let c = this.clients.get(key);
    if (!c) {
      c = new grpc.Client(address, channelCredentials(this.tls), {
        ...channelTlsOptions(this.tls),
        'grpc.max_receive_message_length': this.maxMessageBytes + 4096,
        'grpc.max_send_message_length': 1 << 16,
        'grpc-node.flow_control_window': this.window,
        // One connection per stream index: several TCP connections share out the copying.
        'grpc.use_local_subchannel_pool': 1,
        'grpc.enable_retries': 0,
        'grpc.keepalive_time_ms': 10_000,
        'grpc.keepalive_timeout_ms': 5_000,
        'grpc.keepalive_permit_without_calls': 1,
      });
      this.clients.set(key, c);
    }
    return c;
  }

  private refuse(call: grpc.ServerWritableStream<SubscribeRequest, EncodedFrame>, code: grpc.status, details: string, warn = false): void {
    trace('refused subscription', { details });
    // Refusals of another job, token or config are this side's half of "a clear error on both sides".
    if (warn) log.warn({ service: 'collective', peer: call.getPeer(), reason: details }, `collective: refused a subscription: ${details}`);
    call.emit('error', grpcError(code, details));
  }

  private onSubscribe(call: grpc.ServerWritableStream<SubscribeRequest, EncodedFrame>): void {
    const req = call.request;
    if (this.closed) return this.refuse(call, grpc.status.UNAVAILABLE, `${this.address} is closed`);
    const who = `rank ${req.rank} stream ${req.stream} (${call.getPeer()})`;
    if (req.jobId !== this.options.jobId) {
      return this.refuse(call, grpc.status.PERMISSION_DENIED, `${who}: job id '${printable(req.jobId)}' is not this worker's job '${this.options.jobId}'`, true);
    }
    if (!sameToken(req.jobToken, this.jobToken)) {
      const why = req.jobToken.byteLength === 0 ? 'no job token presented (this job requires one)' : this.jobToken.byteLength === 0 ? 'a job token was presented but this job has none' : 'wrong job token';
      return this.refuse(call, grpc.status.PERMISSION_DENIED, `${who}: ${why} for job '${this.options.jobId}'`, true);
    }
    if (this.configHash !== '' && req.configHash !== this.configHash) {
      return this.refuse(call, grpc.status.PERMISSION_DENIED, `${who}: config hash '${printable(req.configHash)}' differs from this worker's '${this.configHash}' (job '${this.options.jobId}')`, true);
    }
    const s = this.session;
    if (!s || req.epoch > s.m.epoch) {
      // Parked streams wait for our next epoch: a peer must not make us hold them without bound.
      if (this.parked.length >= MAX_PARKED) {
        return this.refuse(call, grpc.status.RESOURCE_EXHAUSTED, `${MAX_PARKED} subscriptions already wait for a newer epoch`, true);
      }
      this.parked.push({ req, call });
      call.on('cancelled', () => (this.parked = this.parked.filter((p) => p.call !== call)));
      return;
    }
    if (req.epoch < s.m.epoch) {
      return this.refuse(call, grpc.status.FAILED_PRECONDITION, `epoch ${req.epoch} is older than this worker's epoch ${s.m.epoch}`);
    }
    this.attach(s, req, call);
  }

  private attach(s: LiveSession, req: SubscribeRequest, call: grpc.ServerWritableStream<SubscribeRequest, EncodedFrame>): void {
    if (s.closed) return this.refuse(call, grpc.status.UNAVAILABLE, `epoch ${s.m.epoch} of ${this.address} has ended`);
    if (req.rank >= s.m.peers.length || req.rank === s.m.rank || req.stream >= this.streams) {
      return this.refuse(call, grpc.status.FAILED_PRECONDITION, `rank ${req.rank} stream ${req.stream} is not a peer stream of epoch ${s.m.epoch}`);
    }
    let links = s.links.get(req.rank);
    if (!links) s.links.set(req.rank, (links = []));
    // Within an epoch a link is never re-opened (a broken one fails the epoch): a second
    // subscription for the same stream is someone else's, not a reconnect.
    if (links[req.stream]) {
      return this.refuse(call, grpc.status.FAILED_PRECONDITION, `rank ${req.rank} stream ${req.stream} of epoch ${s.m.epoch} is already subscribed`, true);
    }
    links[req.stream] = call;
    call.on('cancelled', () => this.linkLost(s, req.rank, new PartiError('collective-aborted', `rank ${req.rank} (${s.m.peers[req.rank]}) cancelled its stream`)));
    call.on('error', () => {});
    if (links.filter(Boolean).length === this.streams) {
      for (const w of s.linkWaiters.get(req.rank) ?? []) w.resolve();
      s.linkWaiters.delete(req.rank);
    }
  }

  private linkLost(s: LiveSession, rank: number, err: PartiError): void {
    if (s.closed || s.broken.has(rank)) return;
    s.broken.add(rank);
    trace('link lost', { rank, message: err.message });
    s.handlers.onLinkError(rank, err);
  }

  open(m: Membership, handlers: TransportHandlers): TransportSession {
    if (this.closed) throw new PartiError('illegal-state', `transport ${this.address} is closed`);
    if (this.session && !this.session.closed) throw new PartiError('illegal-state', `transport ${this.address}: close the epoch ${this.session.m.epoch} session first`);
    const s: LiveSession = {
      m, handlers, closed: false, links: new Map(), linkWaiters: new Map(), subscriptions: [], broken: new Set(),
      roundRobin: new Map(), closedError: null, onClose: [],
    };
    this.session = s;
    const parked = this.parked;
    this.parked = [];
    for (const p of parked) {
      if (p.req.epoch === m.epoch) this.attach(s, p.req, p.call);
      else if (p.req.epoch > m.epoch) this.parked.push(p);
      else this.refuse(p.call, grpc.status.FAILED_PRECONDITION, `epoch ${p.req.epoch} is older than this worker's epoch ${m.epoch}`);
    }
    for (let rank = 0; rank < m.peers.length; rank++) {
      if (rank === m.rank) continue;
      const peer = m.peers[rank]!;
      for (let stream = 0; stream < this.streams; stream++) {
        const req: SubscribeRequest = { jobId: m.jobId, epoch: m.epoch, rank: m.rank, stream, jobToken: m.jobToken, configHash: this.configHash };
        const call = this.client(peer, stream).makeServerStreamRequest<SubscribeRequest, Frame>(
          SUBSCRIBE_PATH,
          serviceDefinition.Subscribe!.requestSerialize,
          serviceDefinition.Subscribe!.responseDeserialize,
          req,
        );
        call.on('data', (f: Frame) => {
          if (!s.closed) handlers.onFrame(f);
        });
        call.on('error', (err: grpc.ServiceError) => this.linkLost(s, rank, fromStatus(err, `rank ${rank} (${peer})`)));
        call.on('end', () => this.linkLost(s, rank, new PartiError('collective-aborted', `rank ${rank} (${peer}) ended its stream`)));
        s.subscriptions.push(call);
      }
    }
    return {
      send: (to, frame) => this.send(s, to, frame),
      close: () => this.closeSession(s),
    };
  }

  private async send(s: LiveSession, to: number, frame: Frame): Promise<void> {
    const closedErr = (): PartiError => s.closedError ?? new PartiError('collective-aborted', `epoch ${s.m.epoch} session of ${this.address} is closed`);
    if (s.closed) throw closedErr();
    if (s.broken.has(to)) throw new PartiError('collective-aborted', `the link to rank ${to} is broken`);
    const bytes = frame.payload.byteLength;
    if (bytes > this.maxMessageBytes) throw new PartiError('usage', `a frame of ${bytes} bytes is over the cap of ${this.maxMessageBytes}`);
    let links = s.links.get(to);
    if (!links || links.filter(Boolean).length < this.streams) {
      await new Promise<void>((resolve, reject) => {
        const list = s.linkWaiters.get(to) ?? [];
        list.push({ resolve, reject });
        s.linkWaiters.set(to, list);
      });
      links = s.links.get(to)!;
    }
    const i = s.roundRobin.get(to) ?? 0;
    s.roundRobin.set(to, (i + 1) % this.streams);
    const call = links[i]!;
    // Resolve only once grpc-js has serialized the frame (the write callback): until then it holds
    // a view of the caller's payload, and the caller may reuse that memory as soon as we resolve.
    await new Promise<void>((resolve, reject) => {
      let settled = false;
      const onClose = (): void => {
        if (!settled) reject(closedErr());
        settled = true;
      };
      s.onClose.push(onClose);
      call.write(encodeFrameParts(frame), (err?: Error | null) => {
        if (settled) return;
        settled = true;
        s.onClose.splice(s.onClose.indexOf(onClose), 1);
        if (err) reject(new PartiError('collective-aborted', `write to rank ${to} failed: ${err.message}`));
        else resolve();
      });
    });
  }

  private closeSession(s: LiveSession): void {
    if (s.closed) return;
    s.closed = true;
    const err = new PartiError('collective-aborted', `epoch ${s.m.epoch} session of ${this.address} is closed`);
    s.closedError = err;
    for (const list of s.linkWaiters.values()) for (const w of list) w.reject(err);
    s.linkWaiters.clear();
    for (const f of s.onClose) f();
    for (const links of s.links.values()) for (const call of links) call?.end();
    for (const sub of s.subscriptions) sub.cancel();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.session) this.closeSession(this.session);
    for (const p of this.parked) this.refuse(p.call, grpc.status.UNAVAILABLE, `${this.address} is closing`);
    this.parked = [];
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
    this.server.forceShutdown();
  }
}

/** Options of {@link createGrpcCollectiveNode}: the node's settings plus where to listen. */
export interface GrpcCollectiveNodeOptions extends CollectiveNodeOptions {
  /** host:port to listen on; port 0 picks a free port. Default '127.0.0.1:0'. */
  listen?: string;
  /** host:port peers use to reach this worker (e.g. the pod IP). Default: listen host + bound port. */
  advertise?: string;
  /** Parallel streams per pair of workers, each on its own TCP connection. Default 2. */
  streams?: number;
  /** HTTP/2 flow-control window of incoming streams, bytes. Default 64 MiB. */
  flowControlWindow?: number;
  /** The job's config hash; peers presenting another are refused (see GrpcTransportOptions). */
  configHash?: string;
  /**
   * The process's resolved `security` section (src/security/job-security.ts): mutual TLS, the job
   * token (overrides `jobToken`) and the plaintext bind policy.
   */
  security?: JobSecurity;
}

/**
 * Starts a worker's collective endpoint on gRPC and returns its {@link CollectiveNode}.
 *
 * ```ts
 * const node = await createGrpcCollectiveNode({ jobId, listen: '0.0.0.0:0', advertise: `${podIp}:0` });
 * report(node.address);                                  // tell the coordinator where we are
 * node.configure({ epoch, rank, peers });                // on every membership change (peers in ring order)
 * const avg = await node.allReduce(grads, { op: 'mean', deadlineMs: 30_000 });
 * const { chunk, start, end } = await node.reduceScatter(grads);   // this rank's share
 * const full = await node.allGather(chunk, { length: grads.length });
 * const state = await node.broadcast(0, rank === 0 ? params : null);
 * node.abort('peer 3 missed its heartbeat');             // fail the epoch on every rank now
 * await node.close();
 * ```
 *
 * Failures are PartiError: 'deadline', 'collective-aborted', 'refused', 'illegal-state'. After any
 * failure the node refuses work until configure() brings a newer epoch (see CollectiveNode).
 * With `advertise` unset and `listen` on 0.0.0.0 the address reported is 127.0.0.1:port.
 */
export async function createGrpcCollectiveNode(options: GrpcCollectiveNodeOptions): Promise<CollectiveNode> {
  const sec = options.security;
  const jobToken = sec ? sec.token.bytes() : options.jobToken;
  const transport = await GrpcTransport.start({
    jobId: options.jobId,
    jobToken,
    configHash: options.configHash,
    tls: sec?.tls ?? null,
    plaintextBind: sec?.plaintextBind,
    listen: options.listen,
    advertise: options.advertise,
    streams: options.streams,
    maxMessageBytes: options.maxMessageBytes,
    flowControlWindow: options.flowControlWindow,
  });
  return new CollectiveNode(transport, { ...options, jobToken });
}

/** Node options from the job's `collective` config section (src/config/collective-schema.ts). */
export function grpcNodeOptionsFromConfig(
  config: {
    compress: 'none' | 'bf16' | 'fp16';
    chunkKiB: number;
    inflight: number;
    streams: number;
    deadlineMs: number;
    maxMessageMiB: number;
    flowControlWindowMiB: number;
  },
  where: { jobId: string; jobToken?: Uint8Array; listen?: string; advertise?: string; configHash?: string; security?: JobSecurity },
): GrpcCollectiveNodeOptions {
  return {
    ...where,
    compress: config.compress,
    chunkBytes: config.chunkKiB * 1024,
    inflight: config.inflight,
    streams: config.streams,
    deadlineMs: config.deadlineMs,
    maxMessageBytes: config.maxMessageMiB * 1024 * 1024,
    flowControlWindow: config.flowControlWindowMiB * 1024 * 1024,
  };
}
