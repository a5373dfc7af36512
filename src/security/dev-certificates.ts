import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PartiError } from '../errors.ts';

const run = promisify(execFile);

/** Options of {@link createDevCertificates}. */
export interface DevCertificateOptions {
  /** Directory to write into (created if missing). */
  out: string;
  /** Validity of every certificate, days. Default 365. */
  days?: number;
  /** The name servers are checked against (security.tls.serverName). Default 'parti'. */
  serverName?: string;
  /** Extra DNS names or IP addresses to put in the certificates' subjectAltName. */
  hosts?: readonly string[];
  /** Overwrite files that exist. Default false: an existing CA is never replaced by accident. */
  force?: boolean;
  /** The openssl binary. Default 'openssl' (on PATH). */
  openssl?: string;
}

/** The files written (absolute or as joined with `out`). */
export interface DevCertificateFiles {
  ca: string;
  caKey: string;
  coordinatorCert: string;
  coordinatorKey: string;
  workerCert: string;
  workerKey: string;
}

const IPV4 = /^\d{1,3}(\.\d{1,3}){3}$/;
const DNS_NAME = /^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

function altNames(serverName: string, hosts: readonly string[]): string {
  const names = new Set([serverName, 'localhost', '127.0.0.1', ...hosts]);
  return [...names]
    .map((h) => {
      if (IPV4.test(h) || h.includes(':')) return `IP:${h}`;
      if (!DNS_NAME.test(h)) throw new PartiError('usage', `--host: '${h}' is neither a DNS name nor an IP address`);
      return `DNS:${h}`;
    })
    .join(',');
}

async function openssl(bin: string, args: string[]): Promise<void> {
  try {
    await run(bin, args, { timeout: 30_000 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new PartiError('usage', `${bin} not found: parti certs init needs the openssl command line tool`);
    // openssl's stderr names files and options only, never key material.
    throw new PartiError('internal', `openssl ${args[0]} failed: ${(e.stderr ?? e.message).trim().split('\n')[0]}`);
  }
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}

/**
 * Writes a development CA and two certificates signed by it: one for the coordinator, one shared
 * by the workers (a job's workers are interchangeable). Keys are EC P-256, written with mode 0600.
 * Both certificates are valid for server and client authentication (mutual TLS both ways) and
 * carry `serverName`, localhost and 127.0.0.1 (plus `hosts`) as subjectAltNames.
 *
 * The openssl command line tool does the cryptography: it is on every image we build and on
 * developer machines, and a maintained X.509 library in npm would be a new dependency for a
 * development-only command. Production clusters should issue certificates from their own PKI
 * (e.g. cert-manager) into the same Secret layout.
 */
export async function createDevCertificates(o: DevCertificateOptions): Promise<DevCertificateFiles> {
  const bin = o.openssl ?? 'openssl';
  const days = o.days ?? 365;
  if (!Number.isInteger(days) || days < 1 || days > 3650) throw new PartiError('usage', `--days: must be an integer in 1..3650, got ${days}`);
  const serverName = o.serverName ?? 'parti';
  const san = altNames(serverName, o.hosts ?? []);
  const f: DevCertificateFiles = {
    ca: join(o.out, 'ca.crt'),
    caKey: join(o.out, 'ca.key'),
    coordinatorCert: join(o.out, 'coordinator.crt'),
    coordinatorKey: join(o.out, 'coordinator.key'),
    workerCert: join(o.out, 'worker.crt'),
    workerKey: join(o.out, 'worker.key'),
  };
  await mkdir(o.out, { recursive: true, mode: 0o700 });
  if (!o.force) {
    for (const file of Object.values(f)) {
      if (await exists(file)) throw new PartiError('usage', `--out: ${file} exists; pass --force to replace the CA and certificates`);
    }
  }
  // openssl keeps the mode of a file it truncates: create the keys 0600 first, so that no key is
  // ever readable by others, not even between its writing and a chmod.
  for (const key of [f.caKey, f.coordinatorKey, f.workerKey]) {
    await rm(key, { force: true });
    await writeFile(key, '', { mode: 0o600 });
  }
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  await openssl(bin, [
    'req', '-x509', '-new', ...ec, '-keyout', f.caKey, '-out', f.ca, '-days', String(days), '-subj', `/CN=parti development CA ${randomBytes(4).toString('hex')}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  const ext = join(o.out, 'leaf.ext');
  await writeFile(
    ext,
    [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature,keyEncipherment',
      'extendedKeyUsage=serverAuth,clientAuth',
      `subjectAltName=${san}`,
      '',
    ].join('\n'),
  );
  try {
    for (const [role, cert, key] of [
      ['coordinator', f.coordinatorCert, f.coordinatorKey],
      ['worker', f.workerCert, f.workerKey],
    ] as const) {
      const csr = join(o.out, `${role}.csr`);
      await openssl(bin, ['req', '-new', ...ec, '-keyout', key, '-out', csr, '-subj', `/CN=parti-${role}`]);
      await openssl(bin, [
        'x509', '-req', '-in', csr, '-CA', f.ca, '-CAkey', f.caKey, '-set_serial', `0x${randomBytes(16).toString('hex')}`, '-days', String(days), '-extfile', ext, '-out', cert,
      ]);
      await rm(csr, { force: true });
    }
  } finally {
    await rm(ext, { force: true });
  }
  for (const key of [f.caKey, f.coordinatorKey, f.workerKey]) await chmod(key, 0o600);
  return f;
}
