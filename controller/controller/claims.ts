import crypto from 'node:crypto';
import type { RouteRecord } from '../api/types.js';
import type { CacheChange, CachedRecord } from './informer.js';

const base32 = 'abcdefghijklmnopqrstuvwxyz234567';

/** Lower-case base32 of fresh random bytes: DNS-label and URL safe. */
function randomBase32(characters: number): string {
  const bytes = crypto.randomBytes(Math.ceil((characters * 5) / 8));
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5 && out.length < characters) {
      out += base32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  return out;
}

/** A secret hostname label: 26 base32 characters carry 130 bits of randomness. */
export const newToken = (): string => randomBase32(26);

/** A session id: 16 base32 characters (80 bits), so ids cannot be enumerated. */
export const newSessionId = (): string => randomBase32(16);

/**
 * Hands out public TCP ports from the configured range. It knows every port claimed in a routes record
 * (fed from the routes cache) plus reservations made but not yet seen in the cache, so two sessions never
 * get the same port. Ports are picked at random among the free ones, which makes it unlikely that a port
 * a user just lost is handed straight to someone else.
 */
export class PortAllocator {
  private readonly owners = new Map<number, string>();

  constructor(
    readonly start: number,
    readonly end: number,
  ) {}

  get used(): number {
    return this.owners.size;
  }

  get capacity(): number {
    return this.end - this.start + 1;
  }

  /** Keeps the allocator in step with the routes cache. */
  observe(change: CacheChange<CachedRecord<RouteRecord>>): void {
    for (const route of change.previous?.value?.ports ?? []) {
      if (this.owners.get(route.port) === change.id) this.owners.delete(route.port);
    }
    for (const route of change.current?.value?.ports ?? []) this.owners.set(route.port, change.id);
  }

  /** Reserves a free port for a session, or returns undefined when the range is exhausted. */
  reserve(sessionId: string): number | undefined {
    const size = this.capacity;
    const offset = crypto.randomInt(size);
    for (let i = 0; i < size; i++) {
      const port = this.start + ((offset + i) % size);
      if (!this.owners.has(port)) {
        this.owners.set(port, sessionId);
        return port;
      }
    }
    return undefined;
  }

  /** Gives back a reservation that was never written (e.g. its write lost a compare-and-set). */
  release(sessionId: string, port: number): void {
    if (this.owners.get(port) === sessionId) this.owners.delete(port);
  }
}
