import type { FastifyReply, FastifyRequest } from 'fastify';
import { ApiError } from './errors.js';
import type { Authenticator, Identity } from './identity.js';

export interface RateLimit {
  /** Tokens added to each bucket per second: the sustained rate. */
  readonly requestsPerSecond: number;
  /** The bucket's size: how many requests may come at once after a quiet spell. */
  readonly burst: number;
}

export type Admission = { readonly allowed: true } | { readonly allowed: false; readonly retryAfterSeconds: number };

interface Bucket {
  tokens: number;
  /** When `tokens` was last brought up to date (ms). */
  at: number;
}

/**
 * A token bucket per key. Memory is bounded: the buckets live in two generations of `maxKeys / 2`. A key
 * is looked up in the current one, then in the previous one, from which it moves to the current one; when
 * the current one is full it becomes the previous one, and the old previous one is dropped. So a bucket
 * is dropped only after half of `maxKeys` other keys came since it was last used; it has usually refilled
 * completely by then, and a full bucket is the same as none. (A least-recently-used order kept in one map
 * cost some 10 µs a request once thousands of keys had come and gone: V8 skips every deleted entry when
 * it looks for the oldest.)
 */
export class RateLimiter {
  private buckets = new Map<string, Bucket>();
  private bucketsBefore = new Map<string, Bucket>();

  constructor(
    readonly limit: RateLimit,
    private readonly now: () => number,
    private readonly maxKeys = 10_000,
  ) {}

  /** Takes one token from the key's bucket, or says how many whole seconds until one is there (at least 1). */
  take(key: string): Admission {
    const now = this.now();
    const { requestsPerSecond, burst } = this.limit;
    const bucket = this.bucketOf(key) ?? { tokens: burst, at: now };
    // A clock that steps back adds nothing rather than taking tokens away.
    bucket.tokens = Math.min(burst, bucket.tokens + (Math.max(0, now - bucket.at) * requestsPerSecond) / 1000);
    bucket.at = now;
    this.keep(key, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return { allowed: true };
    }
    return { allowed: false, retryAfterSeconds: Math.max(1, Math.ceil((1 - bucket.tokens) / requestsPerSecond)) };
  }

  /** How many buckets are held. */
  get size(): number {
    return this.buckets.size + this.bucketsBefore.size;
  }

  private bucketOf(key: string): Bucket | undefined {
    return this.buckets.get(key) ?? this.bucketsBefore.get(key);
  }

  /** Puts the bucket in the current generation, starting a new one when the current one is full. */
  private keep(key: string, bucket: Bucket): void {
    if (this.buckets.has(key)) return;
    if (this.buckets.size >= this.maxKeys / 2) {
      this.bucketsBefore = this.buckets;
      this.buckets = new Map();
    }
    this.bucketsBefore.delete(key);
    this.buckets.set(key, bucket);
  }
}

/**
 * Limits each identity's requests (unlimited without a limiter): every route that asks who the caller is
 * is limited. A request is identified once however often it is asked (a hook, a handler and a helper), so
 * it costs one token and an anonymous caller is given one id.
 */
export class RateLimitedAuthenticator implements Authenticator {
  private readonly identified = new WeakMap<FastifyRequest, Identity>();

  constructor(
    private readonly inner: Authenticator,
    private readonly limiter: RateLimiter | undefined,
  ) {}

  identify(request: FastifyRequest, reply: FastifyReply): Identity {
    const known = this.identified.get(request);
    if (known !== undefined) return known;
    const identity = this.inner.identify(request, reply);
    if (this.limiter !== undefined) admit(this.limiter, identity.user);
    this.identified.set(request, identity);
    return identity;
  }
}

/** Takes a token of `user`'s, or throws 429 with Retry-After. */
function admit(limiter: RateLimiter, user: string): void {
  const admission = limiter.take(user);
  if (admission.allowed) return;
  const { requestsPerSecond, burst } = limiter.limit;
  throw new ApiError(
    429,
    'too many requests',
    [`at most ${requestsPerSecond} requests per second per user (bursts of ${burst}); retry in ${admission.retryAfterSeconds} s`],
    {},
    { 'retry-after': String(admission.retryAfterSeconds) },
  );
}
