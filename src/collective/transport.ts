import type { PartiError } from '../errors.ts';
import type { Frame } from './frame.ts';

/** Who is in the ring for one membership epoch. */
export interface Membership {
  jobId: string;
  /** Reserved for the job token; empty when the job has none. */
  jobToken: Uint8Array;
  epoch: number;
  /** This worker's index in `peers`. */
  rank: number;
  /** Addresses of all workers in ring order (this worker's own address at `rank`). */
  peers: readonly string[];
}

/** What a transport reports to the node that owns it. */
export interface TransportHandlers {
  /** A frame of this session's epoch arrived from a peer. The payload may be a view: copy to keep. */
  onFrame(frame: Frame): void;
  /** The link with peer `rank` broke, was refused, or the peer left. Called at most once per peer. */
  onLinkError(rank: number, err: PartiError): void;
}

/** Links to every peer of one membership epoch. */
export interface TransportSession {
  /**
   * Hands a frame to the peer `to`. Resolves when the transport took it (the payload may be reused
   * right after); waits for the link to come up and for flow control. Rejects with a PartiError
   * ('refused' or 'collective-aborted') when the link fails or the session closes.
   */
  send(to: number, frame: Frame): Promise<void>;
  /** Closes every link of the session; peers see their links to us end. Idempotent. */
  close(): void;
}

/**
 * How frames move between workers: the only part that differs between the in-memory transport
 * (tests) and gRPC. The collective algorithms and the epoch/abort rules live in CollectiveNode.
 *
 * Contract (checked by the shared suite in collective-contract.ts):
 * - frames between two workers of the same epoch all arrive (order between chunks not required);
 * - frames and links of another job id or token are refused ('refused' to the side that learns it);
 * - links of an epoch older than the receiver's are refused; newer ones wait for the receiver's
 *   session of that epoch;
 * - when a worker's session closes or its process dies, every peer of that epoch gets onLinkError.
 */
export interface CollectiveTransport {
  /** Where peers reach this worker. */
  readonly address: string;
  /** Opens the links of a membership epoch. The previous session must be closed first. */
  open(membership: Membership, handlers: TransportHandlers): TransportSession;
  /** Closes the transport and all sessions. Idempotent. */
  close(): Promise<void>;
}
