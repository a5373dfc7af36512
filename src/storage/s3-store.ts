import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type { GetObjectCommandOutput, S3Client, S3ClientConfig } from '@aws-sdk/client-s3';
import type { GetOptions, ObjectInfo, ObjectStore, PutOptions, StorageFailure } from './object-store.ts';
import { StorageError, checkKey, checkPrefix } from './storage-error.ts';
import { log, tracer } from '../observability/log.ts';
import { PartiError } from '../errors.ts';
import { Semaphore } from './semaphore.ts';

const trace = tracer('storage');

/** Static credentials. Without them the AWS default chain is used (env, ~/.aws files, SSO, IMDS...). */
export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/**
 * Options of an S3Store. Each falls back to the URL's query (`?endpoint=…&region=…&forcePathStyle=…`),
 * then to the usual AWS environment and files (AWS_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL,
 * AWS_ACCESS_KEY_ID, AWS_PROFILE, ~/.aws/config...), so AWS S3, MinIO, R2 and GCS interop work.
 */
export interface S3StoreOptions {
  /** Service endpoint, e.g. `http://127.0.0.1:9000` (MinIO) or `https://<account>.r2.cloudflarestorage.com`. */
  endpoint?: string;
  /** Region; `us-east-1` when a custom endpoint is set and nothing else names one. */
  region?: string;
  /** Path-style URLs (`endpoint/bucket/key`); default true when a custom endpoint is set. */
  forcePathStyle?: boolean;
  credentials?: S3Credentials;
  /** Attempts per request, retried with exponential backoff and jitter on 5xx, SlowDown/throttling and network errors (default 6). */
  maxAttempts?: number;
  /** Objects larger than this are uploaded in parts of this size (default 16 MiB; S3's minimum is 5 MiB). */
  partSize?: number;
  /** Parts of one multipart upload in flight at once (default 4). */
  partConcurrency?: number;
  /** Whole-object puts and gets in flight at once through this store (default 8). */
  concurrency?: number;
  /** Times an interrupted GET stream is resumed with a ranged request (default 5). */
  maxResumes?: number;
  /** Connect timeout in ms (default 10 s). */
  connectTimeoutMs?: number;
  /** A request whose socket is idle this long fails as a timeout and is retried (default 120 s). */
  idleTimeoutMs?: number;
}


interface SdkError {
  name?: string;
  code?: string;
  Code?: string;
  $metadata?: { httpStatusCode?: number };
  $retryable?: unknown;
}

/** Why an SDK or socket error happened. Only names and codes are used: never the message (it may echo request headers). */
export function s3FailureReason(err: unknown): StorageFailure {
  const e = err as SdkError;
  const name = e?.name ?? '';
  const code = e?.code ?? e?.Code ?? '';
  const status = e?.$metadata?.httpStatusCode ?? 0;
  if (name === 'AbortError' || code === 'ABORT_ERR') return 'aborted';
  if (['NoSuchKey', 'NotFound', 'NoSuchBucket', 'NoSuchUpload'].includes(name) || status === 404) return 'not-found';
  if (['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'Forbidden', 'ExpiredToken'].includes(name) || status === 403 || status === 401)
    return 'denied';
  if (['TimeoutError', 'RequestTimeout', 'RequestTimeoutException'].includes(name) || code === 'ETIMEDOUT') return 'timeout';
  if (['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNABORTED'].includes(code))
    return 'network';
  if (name === 'SlowDown' || status >= 500) return 'server';
  return 'other';
}

function isTransient(reason: StorageFailure): boolean {
  return reason === 'network' || reason === 'timeout' || reason === 'server';
}

function describe(err: unknown): string {
  const e = err as SdkError;
  const status = e?.$metadata?.httpStatusCode;
  const what = e?.code ?? e?.name ?? 'error';
  return status ? `${what} (HTTP ${status})` : what;
}

/**
 * An object store on S3 or any S3-compatible service: `s3://bucket/prefix`. Small objects are one
 * PutObject; large ones a multipart upload (aborted on failure); reads stream and resume with a
 * ranged GET (pinned to the first response's ETag) when the connection breaks.
 */
export class S3Store implements ObjectStore {
  readonly url: string;
  readonly bucket: string;
  readonly prefix: string;
  private readonly config: S3ClientConfig;
  /** The AWS SDK loads on first use: importing it costs ~0.5 s that file:// users need not pay. */
  private sdkPromise: Promise<Sdk> | null = null;
  private readonly partSize: number;
  private readonly partConcurrency: number;
  private readonly maxResumes: number;
  private readonly maxAttempts: number;
  private readonly gate: Semaphore;
  private warnedNoMultipartListing = false;

  constructor(url: string, options: S3StoreOptions = {}) {
    const parsed = new URL(url);
    if (parsed.protocol !== 's3:' || !parsed.hostname) throw new PartiError('storage', `${url}: not an s3://bucket/prefix URL`);
    if (parsed.username || parsed.password)
      throw new PartiError('storage', `s3://${parsed.hostname}${parsed.pathname}: credentials may not be written in the URL; use the AWS environment or files`);
    this.bucket = parsed.hostname;
    this.prefix = decodeURIComponent(parsed.pathname).replace(/^\/+|\/+$/g, '');
    this.url = `s3://${this.bucket}${this.prefix ? `/${this.prefix}` : ''}`;
    if (this.prefix) checkKey(this.url, 'open', this.prefix);
    const q = parsed.searchParams;
    const endpoint = options.endpoint ?? q.get('endpoint') ?? undefined;
    const customEndpoint = endpoint ?? process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL;
    const pathStyleQuery = q.get('forcePathStyle');
    const forcePathStyle = options.forcePathStyle ?? (pathStyleQuery !== null ? pathStyleQuery !== 'false' : customEndpoint !== undefined);
    const region =
      options.region ?? q.get('region') ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? (customEndpoint ? 'us-east-1' : undefined);
    this.partSize = Math.max(5 << 20, options.partSize ?? 16 << 20);
    this.partConcurrency = Math.max(1, options.partConcurrency ?? 4);
    this.maxResumes = options.maxResumes ?? 5;
    this.maxAttempts = Math.max(1, options.maxAttempts ?? 6);
    const concurrency = Math.max(1, options.concurrency ?? 8);
    this.gate = new Semaphore(concurrency);
    const agentOptions = { keepAlive: true, maxSockets: concurrency * this.partConcurrency + 8 };
    const config: S3ClientConfig = {
      forcePathStyle,
      maxAttempts: this.maxAttempts,
      retryMode: 'standard',
      requestHandler: {
        connectionTimeout: options.connectTimeoutMs ?? 10_000,
        // An idle socket fails (TimeoutError, retried); a long transfer that keeps moving does not.
        socketTimeout: options.idleTimeoutMs ?? 120_000,
        httpAgent: new HttpAgent(agentOptions),
        httpsAgent: new HttpsAgent(agentOptions),
      },
      // Checksums only where S3 requires them: S3-compatible services (and s3rver) do not all
      // speak the newer flexible-checksum trailers. The AWS_* environment overrides this.
      requestChecksumCalculation: (process.env.AWS_REQUEST_CHECKSUM_CALCULATION as 'WHEN_REQUIRED' | undefined) ?? 'WHEN_REQUIRED',
      responseChecksumValidation: (process.env.AWS_RESPONSE_CHECKSUM_VALIDATION as 'WHEN_REQUIRED' | undefined) ?? 'WHEN_REQUIRED',
    };
    if (endpoint) config.endpoint = endpoint;
    if (region) config.region = region;
    if (options.credentials) config.credentials = { ...options.credentials };
    this.config = config;
  }

  private sdk(): Promise<Sdk> {
    this.sdkPromise ??= Promise.all([import('@aws-sdk/client-s3'), import('@aws-sdk/lib-storage')]).then(([s3, lib]) => ({
      s3,
      Upload: lib.Upload,
      client: new s3.S3Client(this.config),
    }));
    return this.sdkPromise;
  }

  private full(key: string): string {
    return this.prefix ? `${this.prefix}/${key}` : key;
  }

  private fail(op: string, key: string, err: unknown): StorageError {
    if (err instanceof StorageError) return err;
    // The SDK error is not attached as cause: its fields may carry request details; the name,
    // code and status are all a caller needs.
    return new StorageError(this.url, op, key, s3FailureReason(err), describe(err));
  }

  async get(key: string, options: GetOptions = {}): Promise<Buffer> {
    checkKey(this.url, 'get', key);
    return this.gate.run(async () => {
      const { length, chunks } = await this.openRead(key, options);
      const out = Buffer.allocUnsafe(length);
      let done = 0;
      for await (const chunk of chunks) {
        (chunk as Buffer).copy(out, done);
        done += (chunk as Buffer).length;
      }
      return out;
    });
  }

  async getStream(key: string, options: GetOptions = {}): Promise<Readable> {
    checkKey(this.url, 'get', key);
    const { chunks } = await this.openRead(key, options);
    return Readable.from(chunks, { objectMode: false });
  }

  /**
   * Issues the first GET (so a missing object rejects here) and returns the bytes as an iterable
   * that, when the connection breaks, goes on with a ranged GET from the last byte it had, pinned
   * to the same ETag so that it never splices two versions of an object.
   */
  private async openRead(key: string, options: GetOptions): Promise<{ length: number; chunks: AsyncIterable<Buffer> }> {
    const { client, s3 } = await this.sdk();
    const start = options.start ?? 0;
    const end = options.end;
    const request = async (from: number, etag?: string): Promise<GetObjectCommandOutput | null> => {
      const ranged = from > 0 || end !== undefined;
      try {
        return await client.send(
          new s3.GetObjectCommand({
            Bucket: this.bucket,
            Key: this.full(key),
            Range: ranged ? `bytes=${from}-${end ?? ''}` : undefined,
            IfMatch: etag,
          }),
          { abortSignal: options.signal },
        );
      } catch (err) {
        const e = err as SdkError;
        // A range that starts at or past the end: nothing to read (the file store agrees).
        if (e?.name === 'InvalidRange' || e?.$metadata?.httpStatusCode === 416) return null;
        throw this.fail('get', key, err);
      }
    };
    const first = await request(start);
    if (!first) return { length: 0, chunks: (async function* () {})() };
    const length = first.ContentLength ?? 0;
    const etag = first.ETag;
    const target = start + length;
    const self = this;
    async function* chunks(): AsyncGenerator<Buffer> {
      let pos = start;
      let res: GetObjectCommandOutput | null = first;
      let resumes = 0;
      while (pos < target) {
        if (!res) {
          try {
            res = await request(pos, etag);
          } catch (err) {
            if (err instanceof StorageError && isTransient(err.reason) && resumes <= self.maxResumes) {
              await sleep(backoffMs(resumes), undefined, { signal: options.signal });
              resumes++;
              continue;
            }
            throw err;
          }
          if (!res) break;
        }
        const body = res.Body as Readable;
        res = null;
        try {
          for await (const chunk of body) {
            const buf = chunk as Buffer;
            const room = target - pos;
            pos += Math.min(buf.length, room);
            yield buf.length > room ? buf.subarray(0, room) : buf;
          }
        } catch (err) {
          const reason = s3FailureReason(err);
          if (options.signal?.aborted || !isTransient(reason) || resumes >= self.maxResumes) throw self.fail('get', key, err);
          trace('resume', { key, pos, reason });
        }
        if (pos < target) {
          // The body ended early or broke: go on from pos.
          if (resumes >= self.maxResumes) throw new StorageError(self.url, 'get', key, 'network', `stream broke at byte ${pos} of ${target}`);
          resumes++;
          await sleep(backoffMs(resumes - 1), undefined, { signal: options.signal });
        }
      }
      if (pos < target) throw new StorageError(self.url, 'get', key, 'network', `stream ended at byte ${pos} of ${target}`);
    }
    return { length, chunks: chunks() };
  }

  async put(key: string, body: Buffer | Uint8Array | Readable, options: PutOptions = {}): Promise<void> {
    checkKey(this.url, 'put', key);
    const { client, s3, Upload } = await this.sdk();
    await this.gate.run(async () => {
      try {
        if (!(body instanceof Readable) && body.byteLength <= this.partSize) {
          await client.send(
            new s3.PutObjectCommand({
              Bucket: this.bucket,
              Key: this.full(key),
              Body: body,
              ContentLength: body.byteLength,
              ContentType: options.contentType,
            }),
            { abortSignal: options.signal },
          );
          return;
        }
        const upload = new Upload({
          client,
          params: { Bucket: this.bucket, Key: this.full(key), Body: body, ContentType: options.contentType },
          partSize: this.partSize,
          queueSize: this.partConcurrency,
          // On failure the upload is aborted, so no parts are left behind (unless the process dies).
          leavePartsOnError: false,
        });
        const onAbort = () => void upload.abort().catch(() => {});
        options.signal?.addEventListener('abort', onAbort, { once: true });
        try {
          options.signal?.throwIfAborted();
          await upload.done();
        } finally {
          options.signal?.removeEventListener('abort', onAbort);
        }
      } catch (err) {
        throw this.fail('put', key, err);
      }
    });
  }

  async head(key: string): Promise<ObjectInfo | null> {
    checkKey(this.url, 'head', key);
    const { client, s3 } = await this.sdk();
    try {
      const res = await client.send(new s3.HeadObjectCommand({ Bucket: this.bucket, Key: this.full(key) }));
      return { key, size: res.ContentLength ?? 0, lastModified: res.LastModified };
    } catch (err) {
      if (s3FailureReason(err) === 'not-found' && (err as SdkError).name !== 'NoSuchBucket') return null;
      throw this.fail('head', key, err);
    }
  }

  async list(prefix: string): Promise<ObjectInfo[]> {
    checkPrefix(this.url, prefix);
    const { client, s3 } = await this.sdk();
    const out: ObjectInfo[] = [];
    const strip = this.prefix ? this.prefix.length + 1 : 0;
    let token: string | undefined;
    try {
      do {
        const res = await client.send(
          new s3.ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.full(prefix), ContinuationToken: token }),
        );
        for (const o of res.Contents ?? []) {
          if (!o.Key) continue;
          out.push({ key: o.Key.slice(strip), size: o.Size ?? 0, lastModified: o.LastModified });
        }
        token = res.IsTruncated ? res.NextContinuationToken : undefined;
      } while (token);
    } catch (err) {
      throw this.fail('list', prefix, err);
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async delete(key: string): Promise<void> {
    checkKey(this.url, 'delete', key);
    const { client, s3 } = await this.sdk();
    try {
      await client.send(new s3.DeleteObjectCommand({ Bucket: this.bucket, Key: this.full(key) }));
    } catch (err) {
      if (s3FailureReason(err) === 'not-found' && (err as SdkError).name !== 'NoSuchBucket') return;
      throw this.fail('delete', key, err);
    }
  }

  /**
   * Aborts multipart uploads under prefix that were started before olderThan (a process killed
   * mid-upload leaves its parts, which cost storage until aborted). Services that cannot list
   * uploads (s3rver) get a warning once; a bucket lifecycle rule `AbortIncompleteMultipartUpload`
   * does the same job there.
   */
  async cleanupIncomplete(prefix: string, olderThan: Date, only?: (key: string) => boolean): Promise<number> {
    checkPrefix(this.url, prefix);
    const { client, s3 } = await this.sdk();
    let removed = 0;
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    try {
      do {
        const res = await client.send(
          new s3.ListMultipartUploadsCommand({
            Bucket: this.bucket,
            Prefix: this.full(prefix),
            KeyMarker: keyMarker,
            UploadIdMarker: uploadIdMarker,
          }),
        );
        for (const u of res.Uploads ?? []) {
          if (!u.Key || !u.UploadId || (u.Initiated && u.Initiated >= olderThan)) continue;
          if (only && !only(this.prefix ? u.Key.slice(this.prefix.length + 1) : u.Key)) continue;
          await client.send(new s3.AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.Key, UploadId: u.UploadId }));
          removed++;
        }
        keyMarker = res.IsTruncated ? res.NextKeyMarker : undefined;
        uploadIdMarker = res.IsTruncated ? res.NextUploadIdMarker : undefined;
      } while (keyMarker);
    } catch (err) {
      const e = err as SdkError;
      if (e?.name === 'NotImplemented' || e?.$metadata?.httpStatusCode === 501) {
        if (!this.warnedNoMultipartListing) {
          this.warnedNoMultipartListing = true;
          log.warn({ store: this.url }, 'this S3 service cannot list multipart uploads; add an AbortIncompleteMultipartUpload lifecycle rule');
        }
        return removed;
      }
      throw this.fail('cleanup', prefix, err);
    }
    trace('cleanup', { prefix, removed });
    return removed;
  }

  async close(): Promise<void> {
    if (this.sdkPromise) (await this.sdkPromise).client.destroy();
  }
}

interface Sdk {
  s3: typeof import('@aws-sdk/client-s3');
  Upload: typeof import('@aws-sdk/lib-storage').Upload;
  client: S3Client;
}

/** Exponential backoff with full jitter: 100 ms, 200 ms, 400 ms... capped at 5 s. */
function backoffMs(attempt: number): number {
  return Math.random() * Math.min(5000, 100 * 2 ** attempt);
}

