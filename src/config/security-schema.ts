import { z } from 'zod';

/** TLS files of one process. In Kubernetes they are mounted from a Secret. */
export const tlsSchema = z.strictObject({
  /** PEM file of the job's CA; every party's certificate must be signed by it. */
  ca: z.string().min(1),
  /** PEM certificate of this process (`parti certs init` makes coordinator.crt and worker.crt). */
  cert: z.string().min(1),
  /** PEM private key of `cert` (unencrypted; protect the file, not the key). */
  key: z.string().min(1),
  /** Name every server certificate carries and clients check (pod IPs change). `parti certs init` uses 'parti'. */
  serverName: z.string().min(1).max(253).default('parti'),
});

/**
 * Who may talk to the job's gRPC services (coordinator and collectives) and how secrets are
 * found. Not in the config hash: tokens and file paths do not change what is computed, and a
 * hash must not be a function of a secret.
 */
export const securitySchema = z.strictObject({
  /** Mutual TLS on every gRPC link when set: servers require client certificates from the same CA. */
  tls: tlsSchema.optional(),
  /**
   * The job token (a shared secret every join and collective link presents). Prefer `tokenFile`
   * or `tokenEnv`, so the secret stays out of config files.
   */
  token: z.string().min(16, 'at least 16 characters').max(4096).optional(),
  /** A file holding the job token (a mounted Kubernetes Secret); surrounding whitespace is ignored. */
  tokenFile: z.string().min(1).optional(),
  /** An environment variable holding the job token, used when set and non-empty. */
  tokenEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name').default('PARTI_JOB_TOKEN'),
  /**
   * Without `tls`: `loopback` binds every gRPC service to 127.0.0.1 whatever host is configured
   * (and logs it); `as-configured` binds the configured host in plaintext (a trusted network only).
   */
  plaintextBind: z.enum(['loopback', 'as-configured']).default('loopback'),
});
export type SecurityConfig = z.infer<typeof securitySchema>;
