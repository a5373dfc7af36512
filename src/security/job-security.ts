import type { SecurityConfig } from '../config/security-schema.ts';
import { JobToken } from './job-token.ts';
import { SecretRedactor } from './secret-redactor.ts';
import { loadTlsMaterial, resolveBindAddress, type BindLogger, type PlaintextBindPolicy, type TlsMaterial } from './tls-credentials.ts';

/**
 * A process's security settings, resolved once at start from the `security` config section: TLS
 * material read and checked, the job token found, a redactor that knows every secret. Hand it to
 * the gRPC services (coordinator, collectives) and to whatever writes output.
 */
export interface JobSecurity {
  /** Mutual-TLS material, or null for plaintext. */
  tls: TlsMaterial | null;
  token: JobToken;
  plaintextBind: PlaintextBindPolicy;
  redactor: SecretRedactor;
  /** The address a service should bind, given the one configured (see resolveBindAddress). */
  bindAddress(listen: string, service: string, logger?: BindLogger): string;
}

/** Resolves the `security` section. Throws PartiError('config') naming the field on bad files or tokens. */
export function resolveJobSecurity(config: SecurityConfig, env: NodeJS.ProcessEnv = process.env, extraSecrets: Iterable<string | undefined> = []): JobSecurity {
  const tls = config.tls ? loadTlsMaterial(config.tls) : null;
  const token = JobToken.resolve(config, env);
  const redactor = SecretRedactor.fromEnv(env, [token.present ? token.text() : undefined, ...extraSecrets]);
  return {
    tls,
    token,
    plaintextBind: config.plaintextBind,
    redactor,
    bindAddress: (listen, service, logger) => resolveBindAddress(listen, { service, tls: tls !== null, policy: config.plaintextBind, logger }),
  };
}
