import { PartiError } from '../errors.ts';
import { CollectiveNode, type CollectiveNodeOptions } from './collective-node.ts';
import { sameToken, type Frame } from './frame.ts';
import type { CollectiveTransport, Membership, TransportHandlers, TransportSession } from './transport.ts';
import { copyBytes } from './wire-compression.ts';

interface LiveSession {
  m: Membership;
  handlers: TransportHandlers;
  closed: boolean;
  /** Peers whose link already failed (onLinkError is called once per peer). */
  broken: Set<number>;
}

/**
 * Workers of one process that reach each other through memory: the test double of the gRPC
 * transport, with the same rules (see CollectiveTransport). Payloads are copied on send, as a
 * wire would, so a sender may reuse its buffer at once.
 */
export class InMemoryHub {
  private readonly endpoints = new Map<string, InMemoryTransport>();
  private counter = 0;

  /** A new transport with a fresh address `mem://N`. */
  transport(): InMemoryTransport {
    const t = new InMemoryTransport(this, `mem://${this.counter++}`);
    this.endpoints.set(t.address, t);
    return t;
  }

  /** @internal */
  lookup(address: string): InMemoryTransport | undefined {
    return this.endpoints.get(address);
  }

  /** @internal The transport at `address` is gone: every session that lists it loses its link. */
  departed(address: string, epoch: number | null): void {
    this.endpoints.forEach((t) => t.peerDeparted(address, epoch));
    if (epoch === null) this.endpoints.delete(address);
  }
}

export class InMemoryTransport implements CollectiveTransport {
  private session: LiveSession | null = null;
  /** Frames of an epoch newer than ours, held until we open it (a peer configured before us). */
  private early: Frame[] = [];
  private closed = false;

  constructor(
    private readonly hub: InMemoryHub,
    readonly address: string,
  ) {}

  open(m: Membership, handlers: TransportHandlers): TransportSession {
    if (this.closed) throw new PartiError('illegal-state', `transport ${this.address} is closed`);
    if (this.session && !this.session.closed) throw new PartiError('illegal-state', `transport ${this.address}: close the epoch ${this.session.m.epoch} session first`);
    const s: LiveSession = { m, handlers, closed: false, broken: new Set() };
    this.session = s;
    const held = this.early.filter((f) => f.epoch === m.epoch);
    this.early = this.early.filter((f) => f.epoch > m.epoch);
    for (const f of held) setImmediate(() => !s.closed && s.handlers.onFrame(f));
    return {
      send: async (to, frame) => {
        if (s.closed) throw new PartiError('collective-aborted', `epoch ${m.epoch} session of ${this.address} is closed`);
        const peer = this.hub.lookup(m.peers[to]!);
        if (!peer) throw new PartiError('collective-aborted', `rank ${to} (${m.peers[to]}) is unreachable`);
        peer.accept({ ...frame, payload: copyBytes(frame.payload) });
      },
      close: () => {
        if (s.closed) return;
        s.closed = true;
        this.hub.departed(this.address, m.epoch);
      },
    };
  }

  /** @internal Takes a frame from a peer, refusing it the way the gRPC transport would. */
  accept(frame: Frame): void {
    if (this.closed) throw new PartiError('collective-aborted', `peer ${this.address} is closed`);
    const s = this.session;
    if (frame.jobId !== (s?.m.jobId ?? frame.jobId) || (s && !sameToken(frame.jobToken, s.m.jobToken))) {
      throw new PartiError('refused', `${this.address} refused a frame of job '${frame.jobId}' (other job or token)`);
    }
    if (s && frame.epoch < s.m.epoch) {
      throw new PartiError('refused', `${this.address} refused a frame of epoch ${frame.epoch}: it is in epoch ${s.m.epoch}`);
    }
    if (!s || frame.epoch > s.m.epoch || (s.closed && frame.epoch === s.m.epoch)) {
      if (!s || frame.epoch > s.m.epoch) this.early.push(frame);
      return;
    }
    setImmediate(() => !s.closed && s.handlers.onFrame(frame));
  }

  /** @internal */
  peerDeparted(address: string, epoch: number | null): void {
    const s = this.session;
    if (!s || s.closed || address === this.address || (epoch !== null && epoch !== s.m.epoch)) return;
    const rank = s.m.peers.indexOf(address);
    if (rank < 0 || s.broken.has(rank)) return;
    s.broken.add(rank);
    setImmediate(() => !s.closed && s.handlers.onLinkError(rank, new PartiError('collective-aborted', `peer ${address} left epoch ${s.m.epoch}`)));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.session) this.session.closed = true;
    this.hub.departed(this.address, null);
  }
}

/**
 * `size` collective nodes wired through one in-memory hub, configured as a ring in epoch 0 (ranks
 * in array order). For tests and single-process experiments.
 */
export function createInMemoryCollectiveGroup(size: number, options: CollectiveNodeOptions): CollectiveNode[] {
  const hub = new InMemoryHub();
  const nodes = Array.from({ length: size }, () => new CollectiveNode(hub.transport(), options));
  const peers = nodes.map((n) => n.address);
  nodes.forEach((n, rank) => n.configure({ epoch: 0, rank, peers }));
  return nodes;
}
