/**
 * The coordinator service contract (proto/coordinator.proto) as TypeScript: message types and the
 * gRPC service definition, loaded with protobufjs at run time (no code generation). This module is
 * the contract both roles share: the worker imports it and nothing else from src/coordinator.
 */
import { fileURLToPath } from 'node:url';
import { join, resolve } from 'node:path';
import type { Config } from '../config/schema.ts';
import { secureClient } from '../security/grpc-security.ts';
import type { JobSecurity } from '../security/job-security.ts';
import protobuf from 'protobufjs';
import * as grpc from '@grpc/grpc-js';
import { PartiError } from '../errors.ts';

const PROTO_FILE = fileURLToPath(new URL('../../proto/coordinator.proto', import.meta.url));

export interface JoinRequest {
  jobId: string;
  configHash: string;
  workerName: string;
  collectiveAddress: string;
  paramCount: number;
}
export interface JoinReply {
  workerId: string;
  jobId: string;
  configHash: string;
  heartbeatMs: number;
}
export interface HeartbeatRequest {
  jobId: string;
  workerId: string;
  state: string;
}
export interface HeartbeatReply {
  known: boolean;
}
export interface CommandsRequest {
  jobId: string;
  workerId: string;
}
export interface ReconfigureCommand {
  epoch: number;
  rank: number;
  peers: string[];
  syncFromRank: number;
  restoreStep: number;
  step: number;
}
export interface SampleRefMessage {
  epoch: number;
  shard: number;
  ordinal: number;
}
export interface StepCommand {
  epoch: number;
  step: number;
  refs: SampleRefMessage[];
  globalBatch: number;
  microBatch: number;
  ids: number[];
}
export interface CommitCommand {
  epoch: number;
  step: number;
}
export interface AbortCommand {
  epoch: number;
  reason: string;
}
export interface CheckpointCommand {
  step: number;
  epoch: number;
}
export interface StopCommand {
  reason: string;
  /**
   * The job ran all its steps; false on every other stop (left, stopped early, failed). Undefined
   * only from a coordinator that predates the field (the proto field has explicit presence).
   */
  finished?: boolean;
}
/** Exactly one field is set. */
export interface Command {
  reconfigure?: ReconfigureCommand;
  step?: StepCommand;
  commit?: CommitCommand;
  abort?: AbortCommand;
  checkpoint?: CheckpointCommand;
  stop?: StopCommand;
}
export type ReportKind = 'READY' | 'REDUCED' | 'APPLIED' | 'CHECKPOINTED' | 'FAILED' | 'CHECKPOINT_FAILED';
export interface StepReport {
  jobId: string;
  workerId: string;
  kind: ReportKind;
  epoch: number;
  step: number;
  loss: number;
  nonFinite: boolean;
  computeMs: number;
  allReduceMs: number;
  optimizerMs: number;
  samples: number;
  optimizerStateBytes: number;
  gradNorm: number;
  error: string;
  checkpointObjectsJson: string;
  learningRate: number;
  tokens: number;
  /**
   * REDUCED: bytes of the buffer this rank all-reduced for the gradient (the nccl-tests `size`:
   * 4 x (gradient floats + reduced statistics)); with ZeRO stage 1, the reduce-scatter's input.
   */
  allReduceBytes: number;
  /** REDUCED: samples this rank's reader skipped during the step (bad samples), by reason. */
  skippedSamples: Record<string, number>;
  /** CHECKPOINTED / CHECKPOINT_FAILED: training-thread time of the host-memory snapshot (ms). */
  snapshotMs: number;
}
export interface ReportAck {
  accepted: boolean;
}
export interface LeaveRequest {
  jobId: string;
  workerId: string;
  reason: string;
}
export interface LeaveReply {
  accepted: boolean;
}

const root = protobuf.loadSync(PROTO_FILE);

function codec<T>(typeName: string) {
  const type = root.lookupType(`parti.coordinator.${typeName}`);
  return {
    serialize(value: T): Buffer {
      return Buffer.from(type.encode(type.fromObject(value as Record<string, unknown>)).finish());
    },
    deserialize(bytes: Buffer): T {
      return type.toObject(type.decode(bytes), { longs: Number, enums: String, defaults: true, oneofs: false }) as T;
    },
  };
}

function method<Req, Res>(name: string, req: string, res: string, responseStream = false) {
  const a = codec<Req>(req);
  const b = codec<Res>(res);
  return {
    path: `/parti.coordinator.Coordinator/${name}`,
    requestStream: false,
    responseStream,
    requestSerialize: a.serialize,
    requestDeserialize: a.deserialize,
    responseSerialize: b.serialize,
    responseDeserialize: b.deserialize,
    originalName: name,
  };
}

/** The grpc-js service definition of parti.coordinator.Coordinator. */
export const coordinatorService = {
  join: method<JoinRequest, JoinReply>('Join', 'JoinRequest', 'JoinReply'),
  heartbeat: method<HeartbeatRequest, HeartbeatReply>('Heartbeat', 'HeartbeatRequest', 'HeartbeatReply'),
  commands: method<CommandsRequest, Command>('Commands', 'CommandsRequest', 'Command', true),
  report: method<StepReport, ReportAck>('Report', 'StepReport', 'ReportAck'),
  leave: method<LeaveRequest, LeaveReply>('Leave', 'LeaveRequest', 'LeaveReply'),
} satisfies grpc.ServiceDefinition;

/** A typed client of the coordinator service. */
export interface CoordinatorClient extends grpc.Client {
  join(req: JoinRequest, options: grpc.CallOptions, cb: grpc.requestCallback<JoinReply>): grpc.ClientUnaryCall;
  heartbeat(req: HeartbeatRequest, options: grpc.CallOptions, cb: grpc.requestCallback<HeartbeatReply>): grpc.ClientUnaryCall;
  commands(req: CommandsRequest, options?: grpc.CallOptions): grpc.ClientReadableStream<Command>;
  report(req: StepReport, options: grpc.CallOptions, cb: grpc.requestCallback<ReportAck>): grpc.ClientUnaryCall;
  leave(req: LeaveRequest, options: grpc.CallOptions, cb: grpc.requestCallback<LeaveReply>): grpc.ClientUnaryCall;
}

const ClientConstructor = grpc.makeGenericClientConstructor(coordinatorService, 'Coordinator');

/**
 * gRPC channel options that cap message sizes (both directions). No HTTP/2 keepalive: a worker's
 * event loop is blocked for seconds by a tfjs step, so it cannot answer pings in time, and a
 * keepalive would drop a healthy connection. Liveness is the heartbeats' job (a thread of their
 * own) and a dead process closes its connections at once.
 */
export function channelOptions(maxMessageBytes: number): grpc.ChannelOptions {
  return {
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
  };
}

/**
 * Opens a client of the coordinator at host:port: with the job's security (mutual TLS when
 * configured, the job token on every call), or plaintext without a token when none is given (tests).
 */
export function createCoordinatorClient(address: string, maxMessageBytes: number, security?: JobSecurity): CoordinatorClient {
  if (!security) return new ClientConstructor(address, grpc.credentials.createInsecure(), channelOptions(maxMessageBytes)) as unknown as CoordinatorClient;
  const { credentials, options } = secureClient(security);
  return new ClientConstructor(address, credentials, { ...channelOptions(maxMessageBytes), ...options }) as unknown as CoordinatorClient;
}

/** Prefix of the gRPC status message of a refused peer; the worker maps it back to PartiError('refused'). */
export const REFUSED_PREFIX = 'refused: ';

/** What a refused Join means beyond its text (proto JoinRefusal). */
export interface JoinRefusal {
  /** The job ran all its steps: a worker started after the end has nothing to do. */
  finished: boolean;
}

/** Trailing metadata key of a refused Join's JoinRefusal (binary: the serialized message). */
export const JOIN_REFUSAL_METADATA = 'parti-join-refusal-bin';

const joinRefusalCodec = codec<JoinRefusal>('JoinRefusal');

/**
 * A refused Join with its typed meaning beside the text: the coordinator throws it, toGrpcStatus
 * sends `refusal` as trailing metadata, fromGrpcError gives it back to the worker.
 */
export class JoinRefusedError extends PartiError {
  constructor(
    message: string,
    /** What the refusal means (proto JoinRefusal). */
    readonly refusal: JoinRefusal,
    options?: { cause?: unknown },
  ) {
    super('refused', message, options);
  }
}

/** Maps a PartiError to the gRPC status a server answers with (one place for the mapping). */
export function toGrpcStatus(err: unknown): Partial<grpc.StatusObject> {
  const e = PartiError.from(err);
  const code =
    e.code === 'refused'
      ? grpc.status.FAILED_PRECONDITION
      : e.code === 'illegal-state'
        ? grpc.status.FAILED_PRECONDITION
        : e.code === 'deadline'
          ? grpc.status.DEADLINE_EXCEEDED
          : e.code === 'usage' || e.code === 'config'
            ? grpc.status.INVALID_ARGUMENT
            : grpc.status.INTERNAL;
  const details = e.code === 'refused' ? `${REFUSED_PREFIX}${e.message}` : e.message;
  if (!(e instanceof JoinRefusedError)) return { code, details };
  const metadata = new grpc.Metadata();
  metadata.set(JOIN_REFUSAL_METADATA, joinRefusalCodec.serialize(e.refusal));
  return { code, details, metadata };
}

/** The JoinRefusal in a refused call's trailing metadata; undefined when there is none (or it does not decode). */
function joinRefusalOf(metadata: unknown): JoinRefusal | undefined {
  const bytes = metadata instanceof grpc.Metadata ? metadata.get(JOIN_REFUSAL_METADATA)[0] : undefined;
  if (!Buffer.isBuffer(bytes)) return undefined;
  try {
    return joinRefusalCodec.deserialize(bytes);
  } catch {
    return undefined;
  }
}

/** Maps a gRPC error a client got back to a PartiError (refused, deadline, or the code given). */
export function fromGrpcError(err: unknown, what: string): PartiError {
  const e = err as Partial<grpc.ServiceError>;
  const details = e.details ?? (err instanceof Error ? err.message : String(err));
  if (typeof details === 'string' && details.startsWith(REFUSED_PREFIX)) {
    const message = `${what}: ${details.slice(REFUSED_PREFIX.length)}`;
    const refusal = joinRefusalOf(e.metadata);
    return refusal ? new JoinRefusedError(message, refusal, { cause: err }) : new PartiError('refused', message, { cause: err });
  }
  if (e.code === grpc.status.DEADLINE_EXCEEDED) return new PartiError('deadline', `${what}: deadline exceeded`, { cause: err });
  return new PartiError('internal', `${what}: ${details}`, { cause: err });
}

/** A call deadline `ms` from now. */
export function deadlineIn(ms: number): Date {
  return new Date(Date.now() + ms);
}

/** Where a job's checkpoints live (both roles must agree): checkpoint.url, else `<run dir>/checkpoints`. */
export function checkpointUrl(config: Config, runDir: string): string {
  return config.checkpoint.url ?? join(resolve(runDir), 'checkpoints');
}
