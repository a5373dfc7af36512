import { readFileSync } from 'node:fs';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { PartiError } from '../errors.ts';

/** Where a process's TLS material is (the `security.tls` config section; in k8s a mounted Secret). */
export interface TlsFiles {
  /** PEM file of the CA that signs every party's certificate; peers must chain to it. */
  ca: string;
  /** PEM certificate of this process (coordinator or worker). */
  cert: string;
  /** PEM private key of `cert`. */
  key: string;
  /**
   * Name checked in the server's certificate (and sent as SNI) whatever address is dialled: pod
   * IPs change, so parties verify "signed by our CA and issued for this name" instead of the IP.
   * `parti certs init` puts it in every certificate. Default 'parti'.
   */
  serverName?: string;
}

/** Loaded TLS material, ready for grpc-js. The key stays in memory only; never logged. */
export interface TlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  serverName: string;
  /** Subject of `cert` and when it expires, for a start-up log line. */
  subject: string;
  validTo: string;
}

function readPem(file: string, field: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new PartiError('config', `security.tls.${field}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
}

/**
 * Reads and checks the three PEM files: the certificate parses, the key is its key, the CA
 * parses and signed the certificate. Fails at start with the field and file, never later in a
 * handshake. Messages never contain key bytes.
 */
export function loadTlsMaterial(files: TlsFiles): TlsMaterial {
  const ca = readPem(files.ca, 'ca');
  const cert = readPem(files.cert, 'cert');
  const key = readPem(files.key, 'key');
  let x509: X509Certificate;
  let caX509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch {
    throw new PartiError('config', `security.tls.cert: ${files.cert} is not a PEM certificate`);
  }
  try {
    caX509 = new X509Certificate(ca);
  } catch {
    throw new PartiError('config', `security.tls.ca: ${files.ca} is not a PEM certificate`);
  }
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch {
    throw new PartiError('config', `security.tls.key: ${files.key} is not an unencrypted PEM private key`);
  }
  if (!x509.checkPrivateKey(privateKey)) {
    throw new PartiError('config', `security.tls.key: ${files.key} is not the key of the certificate ${files.cert}`);
  }
  if (!x509.verify(caX509.publicKey)) {
    throw new PartiError('config', `security.tls.cert: ${files.cert} is not signed by the CA in ${files.ca}`);
  }
  return { ca, cert, key, serverName: files.serverName ?? 'parti', subject: x509.subject.replace(/\n/g, ', '), validTo: x509.validTo };
}

/**
 * Server credentials: TLS with this process's certificate, and client certificates REQUIRED and
 * verified against the CA (mutual TLS). Without material: plaintext.
 */
export function serverCredentials(tls: TlsMaterial | null): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(tls.ca, [{ cert_chain: tls.cert, private_key: tls.key }], true);
}

/** Client credentials: verify the server against the CA and present our certificate. Without material: plaintext. */
export function channelCredentials(tls: TlsMaterial | null): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(tls.ca, tls.key, tls.cert);
}

/** Channel options to merge into a client's options: the name its server certificate must carry. */
export function channelTlsOptions(tls: TlsMaterial | null): grpc.ChannelOptions {
  return tls ? { 'grpc.ssl_target_name_override': tls.serverName, 'grpc.default_authority': tls.serverName } : {};
}

/** The part of a pino logger the bind decision is logged through. */
export interface BindLogger {
  info(fields: object, msg: string): void;
  warn(fields: object, msg: string): void;
}

/** What to do with a non-loopback listen address when there is no TLS. */
export type PlaintextBindPolicy = 'loopback' | 'as-configured';

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|localhost|\[?::1\]?)$/i;

/** Whether `host` (without port) is a loopback address. */
export function isLoopbackHost(host: string): boolean {
  return LOOPBACK.test(host);
}

function splitHostPort(listen: string): { host: string; port: string } {
  const i = listen.lastIndexOf(':');
  if (i <= 0) throw new PartiError('usage', `listen address '${listen}' must be host:port`);
  return { host: listen.slice(0, i), port: listen.slice(i + 1) };
}

/**
 * The address a service actually binds. With TLS, or with `policy: 'as-configured'`, the one asked
 * for. Without TLS and with the default policy, a non-loopback host is replaced by 127.0.0.1: a
 * plaintext service with no client authentication must not be reachable from the network by
 * accident. Either way the decision is logged once (service name, address, whether TLS is on).
 */
export function resolveBindAddress(
  listen: string,
  o: { service: string; tls: boolean; policy: PlaintextBindPolicy; logger?: BindLogger },
): string {
  const { host, port } = splitHostPort(listen);
  if (o.tls) {
    o.logger?.info({ service: o.service, listen }, `${o.service}: mutual TLS on ${listen}`);
    return listen;
  }
  if (isLoopbackHost(host)) {
    o.logger?.info({ service: o.service, listen }, `${o.service}: no TLS certificates configured; plaintext on loopback ${listen}`);
    return listen;
  }
  if (o.policy === 'as-configured') {
    o.logger?.warn({ service: o.service, listen }, `${o.service}: no TLS certificates configured; plaintext on ${listen} because security.plaintextBind is 'as-configured'`);
    return listen;
  }
  const bound = `127.0.0.1:${port}`;
  o.logger?.warn(
    { service: o.service, listen, bound },
    `${o.service}: no TLS certificates configured; binding ${bound} instead of ${listen} (configure security.tls, or set security.plaintextBind: as-configured)`,
  );
  return bound;
}
