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
 * A token bucket per key. Memory is bounded: the buckets are kept in least-recently-used order and, past
 * `maxKeys`, the least recently used one is dropped. That one has usually refilled completely, and a full
 * bucket is the same as none; only when more than `maxKeys` keys are busy at once does one get a fresh
 * bucket early.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    readonly limit: RateLimit,
    private readonly now: () => number,
    private readonly maxKeys = 10_000,
  ) {}

  /** Takes one token from the key's bucket, or says how many whole seconds until one is there (at least 1). */
  take(key: string): Admission {
    const now = this.now();
    const { requestsPerSecond, burst } = this.limit;
    const bucket = this.buckets.get(key) ?? { tokens: burst, at: now };
    // A clock that steps back adds nothing rather than taking tokens away.
    bucket.tokens = Math.min(burst, bucket.tokens + (Math.max(0, now - bucket.at) * requestsPerSecond) / 1000);
    bucket.at = now;
    // Re-inserting moves the key to the end of the map's order, which is the LRU order.
    this.buckets.delete(key);
    this.buckets.set(key, bucket);
    if (this.buckets.size > this.maxKeys) this.buckets.delete(this.buckets.keys().next().value!);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return { allowed: true };
    }
    return { allowed: false, retryAfterSeconds: Math.max(1, Math.ceil((1 - bucket.tokens) / requestsPerSecond)) };
  }

  /** How many buckets are held. */
  get size(): number {
    return this.buckets.size;
  }
}

/**
 * Limits each identity's requests: every route that asks who the caller is is limited, and asking twice
 * in one request (a handler and a helper) costs one token.
 */
export class RateLimitedAuthenticator implements Authenticator {
  private readonly identified = new WeakMap<FastifyRequest, Identity>();

  constructor(
    private readonly inner: Authenticator,
    private readonly limiter: RateLimiter,
  ) {}

  identify(request: FastifyRequest, reply: FastifyReply): Identity {
    const known = this.identified.get(request);
    if (known !== undefined) return known;
    const identity = this.inner.identify(request, reply);
    const admission = this.limiter.take(identity.user);
    if (!admission.allowed) {
      const { requestsPerSecond, burst } = this.limiter.limit;
      throw new ApiError(
        429,
        'too many requests',
        [`at most ${requestsPerSecond} requests per second per user (bursts of ${burst}); retry in ${admission.retryAfterSeconds} s`],
        {},
        { 'retry-after': String(admission.retryAfterSeconds) },
      );
    }
    this.identified.set(request, identity);
    return identity;
  }
}
