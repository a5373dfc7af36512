/**
 * The coordinator's gRPC service: maps the five RPCs of proto/coordinator.proto onto the
 * Coordinator state machine, with message size caps and every error mapped to a gRPC status in one
 * place (toGrpcStatus).
 */
import * as grpc from '@grpc/grpc-js';
import { PartiError } from '../errors.ts';
import { log } from '../observability/log.ts';
import { bindSecure, secureServerOptions } from '../security/grpc-security.ts';
import type { JobSecurity } from '../security/job-security.ts';
import type { Coordinator } from './coordinator.ts';
import {
  channelOptions,
  coordinatorService,
  toGrpcStatus,
  type Command,
  type CommandsRequest,
  type HeartbeatReply,
  type HeartbeatRequest,
  type JoinReply,
  type JoinRequest,
  type LeaveReply,
  type LeaveRequest,
  type ReportAck,
  type StepReport,
} from './protocol.ts';

/** A running coordinator service. */
export interface CoordinatorServer {
  /** host:port it listens on. */
  readonly address: string;
  readonly port: number;
  /** Stops accepting calls and ends every stream. */
  close(): Promise<void>;
}

function checkJob(coordinator: Coordinator, jobId: string): void {
  if (jobId !== coordinator.opts.jobId) {
    throw new PartiError('refused', `job id ${JSON.stringify(jobId)} is not this job's (${JSON.stringify(coordinator.opts.jobId)})`);
  }
}

function unary<Req, Res>(fn: (req: Req) => Res): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    try {
      callback(null, fn(call.request));
    } catch (err) {
      callback(toGrpcStatus(err) as grpc.ServiceError, null);
    }
  };
}

/**
 * Serves `coordinator` on host:port (port 0 picks a free one), with the job's security when given
 * (mutual TLS when configured, every call checked for the job token, the bind policy applied);
 * plaintext on the address as given otherwise (tests).
 */
export async function startCoordinatorServer(
  coordinator: Coordinator,
  host: string,
  port: number,
  maxMessageBytes: number,
  security?: JobSecurity,
): Promise<CoordinatorServer> {
  const server = new grpc.Server({ ...channelOptions(maxMessageBytes), ...(security ? secureServerOptions(security, 'coordinator') : {}) });
  const streams = new Set<grpc.ServerWritableStream<CommandsRequest, Command>>();
  server.addService(coordinatorService, {
    join: unary<JoinRequest, JoinReply>((req) => coordinator.join(req)),
    heartbeat: unary<HeartbeatRequest, HeartbeatReply>((req) => {
      checkJob(coordinator, req.jobId);
      return { known: coordinator.heartbeat(req.workerId, req.state) };
    }),
    report: unary<StepReport, ReportAck>((req) => {
      checkJob(coordinator, req.jobId);
      return { accepted: coordinator.report(req) };
    }),
    leave: unary<LeaveRequest, LeaveReply>((req) => {
      checkJob(coordinator, req.jobId);
      return { accepted: coordinator.leave(req.workerId, req.reason) };
    }),
    commands: (call: grpc.ServerWritableStream<CommandsRequest, Command>) => {
      const { jobId, workerId } = call.request;
      let open = true;
      const closed = (why: string) => {
        if (!open) return;
        open = false;
        streams.delete(call);
        coordinator.detach(workerId, why);
      };
      try {
        checkJob(coordinator, jobId);
        streams.add(call);
        call.on('cancelled', () => closed('cancelled'));
        call.on('error', (err) => closed(err.message));
        call.on('close', () => closed('closed'));
        coordinator.attach(workerId, (cmd) => {
          if (!open) throw new PartiError('internal', `stream of worker ${workerId} is closed`);
          call.write(cmd);
          if (cmd.stop) {
            open = false;
            streams.delete(call);
            call.end();
          }
        }, () => {
          if (!open) return;
          open = false;
          streams.delete(call);
          call.end();
        });
      } catch (err) {
        open = false;
        streams.delete(call);
        call.emit('error', toGrpcStatus(err));
      }
    },
  } as unknown as grpc.UntypedServiceImplementation);
  let address: string;
  let bound: number;
  if (security) {
    ({ address, port: bound } = await bindSecure(server, `${host}:${port}`, security, 'coordinator'));
  } else {
    bound = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    ).catch((err: Error) => {
      throw new PartiError('usage', `coordinator cannot listen on ${host}:${port}: ${err.message}`);
    });
    address = `${host}:${bound}`;
  }
  log.child({ role: 'coordinator' }).info({ address }, 'coordinator listening');
  return {
    address,
    port: bound,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of streams) s.end();
        streams.clear();
        const t = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 1000);
        server.tryShutdown(() => {
          clearTimeout(t);
          resolve();
        });
      }),
  };
}
