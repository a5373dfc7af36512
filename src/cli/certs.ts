import type { Command } from 'commander';
import { usageError } from '../errors.ts';
import { createDevCertificates } from '../security/dev-certificates.ts';

interface CertsInitFlags {
  out: string;
  days: string;
  serverName: string;
  host: string[];
  force?: boolean;
}

/**
 * `parti certs init --out DIR`: a development CA plus coordinator and worker certificates for
 * mutual TLS (src/security/dev-certificates.ts, via the openssl CLI). Prints the files and the
 * `security.tls` config lines to use them.
 */
export function register(program: Command): void {
  const certs = program.command('certs').description('TLS certificates for the job\'s gRPC links (mutual TLS).');
  certs
    .command('init')
    .description('Write a development CA and coordinator/worker certificates (EC P-256, via openssl).')
    .requiredOption('--out <dir>', 'directory to write ca.crt, ca.key, coordinator.{crt,key}, worker.{crt,key}')
    .option('--days <n>', 'validity in days', '365')
    .option('--server-name <name>', 'name servers are verified against (security.tls.serverName)', 'parti')
    .option('--host <name>', 'extra DNS name or IP in the certificates (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--force', 'replace existing files')
    .action(async (flags: CertsInitFlags) => {
      const days = Number(flags.days);
      if (!/^\d+$/.test(flags.days) || days < 1 || days > 3650) throw usageError('--days', `must be an integer in 1..3650, got ${JSON.stringify(flags.days)}`);
      const f = await createDevCertificates({ out: flags.out, days, serverName: flags.serverName, hosts: flags.host, force: flags.force });
      process.stdout.write(
        [
          `wrote ${f.ca} (CA), ${f.coordinatorCert}, ${f.workerCert} and their keys (mode 0600; keep ${f.caKey} off the cluster)`,
          'coordinator config:',
          `  security: { tls: { ca: ${f.ca}, cert: ${f.coordinatorCert}, key: ${f.coordinatorKey}, serverName: ${flags.serverName} } }`,
          'worker config:',
          `  security: { tls: { ca: ${f.ca}, cert: ${f.workerCert}, key: ${f.workerKey}, serverName: ${flags.serverName} } }`,
          '',
        ].join('\n'),
      );
    });
}
