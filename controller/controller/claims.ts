import crypto from 'node:crypto';
import { Subject, type Observable } from 'rxjs';
import type { RouteRecord } from '../api/types.js';
import type { CacheChange, CachedRecord } from './informer.js';

const base32 = 'abcdefghijklmnopqrstuvwxyz234567';

/**
 * Random bytes from the OS's generator, drawn a few kilobytes at a time and each handed out once (as
 * crypto.randomUUID does): one draw per id cost more than all the rest of making a session.
 */
const randomPool = Buffer.alloc(4096);
let randomPoolOffset = randomPool.length;

function freshRandomBytes(count: number): Buffer {
  if (randomPoolOffset + count > randomPool.length) {
    crypto.randomFillSync(randomPool);
    randomPoolOffset = 0;
  }
  const bytes = randomPool.subarray(randomPoolOffset, randomPoolOffset + count);
  randomPoolOffset += count;
  return bytes;
}

/** Lower-case base32 of fresh random bytes: DNS-label and URL safe. */
function randomBase32(characters: number): string {
  const bytes = freshRandomBytes(Math.ceil((characters * 5) / 8));
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

/** The base32 characters in ascending order: numbers written with them sort as the numbers do. */
const sortableBase32 = '234567abcdefghijklmnopqrstuvwxyz';
/** Leading characters of a session id that tell the time: milliseconds modulo 2^20 (17½ minutes). */
const ID_CLOCK_CHARACTERS = 4;

/**
 * A session id: 16 base32 characters, the first 4 the millisecond clock `now` (modulo 17½ minutes), the
 * other 12 random (60 bits), so ids cannot be enumerated. Ids made moments apart sort next to each other:
 * the embedded store's key index takes a burst of creates on a page or two instead of a random page each
 * (a 4 kB WAL frame per create, which is most of what a group commit writes and syncs).
 */
export function newSessionId(now = Date.now()): string {
  let clock = '';
  for (let i = 0, value = now; i < ID_CLOCK_CHARACTERS; i++, value = Math.floor(value / 32)) clock = sortableBase32[value % 32] + clock;
  return clock + randomBase32(16 - ID_CLOCK_CHARACTERS);
}

/** A load balancer of the pool as the allocator sees it: how many listeners it may hold in all. */
export interface ListenerPoolMember {
  readonly name: string;
  readonly listenerQuota: number;
}

/** A reserved port and, with a load-balancer pool, the load balancer that listens on it. */
export interface PortAssignment {
  readonly port: number;
  readonly loadBalancer?: string;
}

/** Room for new ports, and what limits it when there is none. */
export interface PortRoom {
  readonly free: number;
  readonly reason: 'NoFreePort' | 'NoListenerCapacity';
  readonly message: string;
}

/**
 * Hands out public TCP ports from the configured range. It knows every port claimed in a routes record
 * (fed from the routes cache) plus reservations made but not yet seen in the cache, so two sessions never
 * get the same port. Ports are picked at random among the free ones, which makes it unlikely that a port
 * a user just lost is handed straight to someone else.
 *
 * With a load-balancer pool (AWS), a port is only handed out together with a load balancer that can still
 * listen on it: one below its listener quota, counting every listener it really has (ours being deleted,
 * other people's, the fixed ones) as well as the ports claimed on it. A port on which any load balancer of
 * the pool still listens is not handed out at all until that listener is gone. The assignment is recorded
 * in the claim, so it survives restarts and failovers.
 */
export class PortAllocator {
  private readonly owners = new Map<number, string>();
  private readonly loadBalancerOf = new Map<number, string>();
  private readonly claimedOn = new Map<string, Set<number>>();
  /** Listener ports each load balancer was last seen to have (any owner). */
  private readonly listenersOn = new Map<string, ReadonlySet<number>>();
  /** Listener quotas lowered at run time, after AWS refused a listener below the configured one. */
  private readonly learnedQuota = new Map<string, number>();
  /** Listeners in use per load balancer: |claimed ∪ listening|, kept up to date on every change. */
  private readonly occupied = new Map<string, number>();
  private readonly assignments = new Subject<string>();
  /** Emits the name of a load balancer whose set of claimed ports changed. */
  readonly assignmentChanges: Observable<string> = this.assignments.asObservable();
  /**
   * Admitted sessions owed ports (a tcp service added to their template while none was free), and how many.
   * Owed ports are not room for the waiting list: a port freed goes to them first, as the claim they have.
   */
  private readonly owed = new Map<string, number>();
  private owedTotal = 0;
  private readonly owedRoom = new Subject<string>();
  /** Emits each session owed a port when a port or listener slot may have been freed for it. */
  readonly owedRoomChanges: Observable<string> = this.owedRoom.asObservable();

  constructor(
    readonly start: number,
    readonly end: number,
    readonly pool: readonly ListenerPoolMember[] = [],
  ) {
    for (const member of pool) {
      this.claimedOn.set(member.name, new Set());
      this.occupied.set(member.name, 0);
    }
  }

  get used(): number {
    return this.owners.size;
  }

  get capacity(): number {
    return this.end - this.start + 1;
  }

  /** Keeps the allocator in step with the routes cache. */
  observe(change: CacheChange<CachedRecord<RouteRecord>>): void {
    const current = change.current?.value?.ports ?? [];
    let freed = false;
    for (const route of change.previous?.value?.ports ?? []) {
      if (this.owners.get(route.port) !== change.id) continue;
      this.forget(route.port);
      freed ||= !current.some((kept) => kept.port === route.port);
    }
    for (const route of current) this.claim(change.id, route.port, route.loadBalancer);
    // A session without a claim holds nothing and is owed nothing: it waits for admission instead.
    if (change.current === undefined) this.owe(change.id, 0);
    if (freed) this.offerOwed();
  }

  /** Records how many ports an admitted session still lacks for its template's tcp services (0: none). */
  owe(sessionId: string, count: number): void {
    this.owedTotal += count - (this.owed.get(sessionId) ?? 0);
    if (count > 0) this.owed.set(sessionId, count);
    else this.owed.delete(sessionId);
  }

  /** Whether a port is in the configured range (HAProxy listens on no other). */
  covers(port: number): boolean {
    return port >= this.start && port <= this.end;
  }

  /** The session that holds a port, if any. */
  ownerOf(port: number): string | undefined {
    return this.owners.get(port);
  }

  /** Ports claimed (or reserved) on a load balancer of the pool. */
  claimedPorts(loadBalancer: string): ReadonlySet<number> {
    return this.claimedOn.get(loadBalancer) ?? new Set();
  }

  /** Every port claimed on some load balancer of the pool. */
  allClaimedPorts(): number[] {
    return [...this.claimedOn.values()].flatMap((ports) => [...ports]);
  }

  /**
   * What the load balancer was last seen listening on (any owner): those slots and ports are not free there.
   * True when that may make room: its first sighting, or a listener gone.
   */
  setListeners(loadBalancer: string, ports: ReadonlySet<number>): boolean {
    if (!this.claimedOn.has(loadBalancer)) return false;
    const before = this.listenersOn.get(loadBalancer);
    this.listenersOn.set(loadBalancer, ports);
    this.recount(loadBalancer);
    const roomMayGrow = before === undefined || [...before].some((port) => !ports.has(port));
    if (roomMayGrow) this.offerOwed();
    return roomMayGrow;
  }

  /** AWS refused a listener for quota with fewer listeners than configured: use what it holds as its quota. */
  lowerQuota(loadBalancer: string, quota: number): void {
    this.learnedQuota.set(loadBalancer, quota);
  }

  /** Room for new ports: free ports in the range, and with a pool free listener slots, less the ports owed. */
  room(): PortRoom {
    const freePorts = Math.max(0, this.capacity - this.used - this.lingeringPorts() - this.owedTotal);
    if (this.pool.length === 0) {
      return { free: freePorts, reason: 'NoFreePort', message: `all ${this.capacity} public TCP ports are in use` };
    }
    const freeListeners = Math.max(0, this.pool.reduce((sum, member) => sum + this.roomOn(member), 0) - this.owedTotal);
    if (freePorts <= freeListeners) {
      const lingering = this.lingeringPorts();
      const held = lingering > 0 ? ` (${lingering} of them by an ended session's listener still being removed)` : '';
      return { free: freePorts, reason: 'NoFreePort', message: `all ${this.capacity} public TCP ports are in use${held}` };
    }
    const quotas = this.pool.map((member) => `${member.name} ${this.quotaOf(member)}`).join(', ');
    return { free: freeListeners, reason: 'NoListenerCapacity', message: `every load balancer is at its listener quota (${quotas})` };
  }

  /** Reserves a free port (and a load balancer with room for it) for a session, or undefined when there is none. */
  reserve(sessionId: string): PortAssignment | undefined {
    const size = this.capacity;
    const offset = crypto.randomInt(size);
    // Most room first: sessions spread over the pool, so no load balancer's API is the only one busy.
    const candidates = this.pool.filter((member) => this.roomOn(member) > 0).sort((a, b) => this.roomOn(b) - this.roomOn(a));
    if (this.pool.length > 0 && candidates.length === 0) return undefined;
    for (let i = 0; i < size; i++) {
      const port = this.start + ((offset + i) % size);
      if (this.owners.has(port) || this.lingering(port)) continue;
      if (this.pool.length === 0) {
        this.claim(sessionId, port, undefined);
        return { port };
      }
      // No load balancer listens on a port that is neither claimed nor lingering: the one with most room takes it.
      const member = candidates[0]!;
      this.claim(sessionId, port, member.name);
      return { port, loadBalancer: member.name };
    }
    return undefined;
  }

  /**
   * Whether a load balancer of the pool still listens on an unclaimed port (an ended session's listener not yet
   * deleted): HAProxy routes by destination port alone, so that listener would lead its old address to the
   * port's next owner, whichever load balancer the port were handed out on.
   */
  private lingering(port: number): boolean {
    return !this.owners.has(port) && [...this.listenersOn.values()].some((ports) => ports.has(port));
  }

  /** Ports of the range that no session claims and some load balancer of the pool still listens on. */
  private lingeringPorts(): number {
    const ports = new Set<number>();
    for (const listening of this.listenersOn.values()) for (const port of listening) if (this.covers(port) && this.lingering(port)) ports.add(port);
    return ports.size;
  }

  /** A load balancer with room for a port claimed without one (or on one no longer in the pool). */
  reassign(sessionId: string, port: number): string | undefined {
    if (this.owners.get(port) !== sessionId) return undefined;
    const member = this.pool
      .filter((candidate) => this.roomOn(candidate) > 0 && !this.listenersOn.get(candidate.name)?.has(port))
      .sort((a, b) => this.roomOn(b) - this.roomOn(a))[0];
    if (member === undefined) return undefined;
    this.forget(port);
    this.claim(sessionId, port, member.name);
    return member.name;
  }

  /** Gives back a reservation that was never written (e.g. its write lost a compare-and-set). */
  release(sessionId: string, port: number): void {
    if (this.owners.get(port) !== sessionId) return;
    this.forget(port);
    this.offerOwed();
  }

  private offerOwed(): void {
    for (const sessionId of this.owed.keys()) this.owedRoom.next(sessionId);
  }

  private claim(sessionId: string, port: number, loadBalancer: string | undefined): void {
    if (this.owners.has(port)) this.forget(port);
    this.owners.set(port, sessionId);
    const ports = loadBalancer === undefined ? undefined : this.claimedOn.get(loadBalancer);
    if (ports === undefined) return;
    this.loadBalancerOf.set(port, loadBalancer!);
    ports.add(port);
    this.recount(loadBalancer!);
    this.assignments.next(loadBalancer!);
  }

  private forget(port: number): void {
    this.owners.delete(port);
    const loadBalancer = this.loadBalancerOf.get(port);
    if (loadBalancer === undefined) return;
    this.loadBalancerOf.delete(port);
    this.claimedOn.get(loadBalancer)!.delete(port);
    this.recount(loadBalancer);
    this.assignments.next(loadBalancer);
  }

  private recount(loadBalancer: string): void {
    const claimed = this.claimedOn.get(loadBalancer)!;
    let count = claimed.size;
    for (const port of this.listenersOn.get(loadBalancer) ?? []) if (!claimed.has(port)) count += 1;
    this.occupied.set(loadBalancer, count);
  }

  private quotaOf(member: ListenerPoolMember): number {
    return Math.min(member.listenerQuota, this.learnedQuota.get(member.name) ?? Infinity);
  }

  private roomOn(member: ListenerPoolMember): number {
    // Not yet described: the listeners it has (the fixed one, others' and ours from before a restart) are unknown.
    if (!this.listenersOn.has(member.name)) return 0;
    return Math.max(0, this.quotaOf(member) - (this.occupied.get(member.name) ?? 0));
  }
}
