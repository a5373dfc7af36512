import * as grpc from '@grpc/grpc-js';
import { PartiError } from '../errors.ts';
import { log } from '../observability/log.ts';
import type { JobSecurity } from './job-security.ts';
import type { JobToken } from './job-token.ts';
import { channelCredentials, channelTlsOptions, serverCredentials } from './tls-credentials.ts';

/** gRPC metadata key that carries the job token on every call of the coordinator service. */
export const JOB_TOKEN_METADATA = 'x-parti-job-token';

/** The status and message a call without the right token gets (the peer maps it to PartiError 'refused'). */
export const TOKEN_REFUSED_PREFIX = 'refused: ';

function presented(metadata: grpc.Metadata): string {
  const v = metadata.get(JOB_TOKEN_METADATA)[0];
  return typeof v === 'string' ? v : v ? v.toString('utf8') : '';
}

/**
 * A server interceptor that refuses, before any handler or message is read, every call that does
 * not carry the job's token in metadata (PERMISSION_DENIED, "refused: …"). The refusal is logged on
 * this side with the peer's address and method, never the value presented. With no token
 * configured, calls presenting one are refused too (two jobs must not mix by accident).
 */
export function jobTokenServerInterceptor(token: JobToken, service: string): grpc.ServerInterceptor {
  return (method, call) =>
    new grpc.ServerInterceptingCall(call, {
      start: (next) => {
        next(
          new grpc.ServerListenerBuilder()
            .withOnReceiveMetadata((metadata, mdNext) => {
              const got = presented(metadata);
              if (token.matches(got)) return mdNext(metadata);
              const why = got === '' ? 'no job token presented (this job requires one)' : token.present ? 'wrong job token' : 'a job token was presented but this job has none';
              log.warn({ service, method: method.path, peer: call.getPeer() }, `${service}: refused a call: ${why}`);
              call.sendStatus({ code: grpc.status.PERMISSION_DENIED, details: `${TOKEN_REFUSED_PREFIX}${why}`, metadata: new grpc.Metadata() });
            })
            .build(),
        );
      },
    });
}

/** A client interceptor that puts the job token in the metadata of every call (nothing when the job has none). */
export function jobTokenClientInterceptor(token: JobToken): grpc.Interceptor {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start: (metadata, listener, next) => {
        if (token.present) metadata.set(JOB_TOKEN_METADATA, token.text());
        next(metadata, listener);
      },
    });
}

/** Server options that add the job-token check (merge into the options a grpc.Server is built with). */
export function secureServerOptions(security: JobSecurity, service: string): grpc.ServerOptions {
  return { interceptors: [jobTokenServerInterceptor(security.token, service)] };
}

/** Channel credentials and options of a client of a job service: mTLS when configured, and the token on every call. */
export function secureClient(security: JobSecurity): { credentials: grpc.ChannelCredentials; options: grpc.ClientOptions } {
  return { credentials: channelCredentials(security.tls), options: { ...channelTlsOptions(security.tls), interceptors: [jobTokenClientInterceptor(security.token)] } };
}

/**
 * Binds `server` with the job's credentials (mutual TLS, or plaintext) on the address the bind
 * policy allows (without TLS, non-loopback hosts become 127.0.0.1 unless the config says
 * otherwise; logged either way). Resolves with the bound host:port.
 */
export async function bindSecure(server: grpc.Server, listen: string, security: JobSecurity, service: string): Promise<{ address: string; port: number }> {
  const at = security.bindAddress(listen, service, log);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(at, serverCredentials(security.tls), (err, p) => (err ? reject(new PartiError('usage', `${service} cannot listen on ${at}: ${err.message}`)) : resolve(p))),
  );
  return { address: `${at.slice(0, at.lastIndexOf(':'))}:${port}`, port };
}
