import type { RouteRecord, SessionRecord, SessionStatus } from '../api/types.js';
import type { Workload } from '../scheduler/scheduler.js';
import type { PortRoom } from './claims.js';
import type { Cache, CachedRecord, RecordCache } from './informer.js';

export interface AdmissionLimits {
  /** Sessions holding resources (a claim, or a job not yet purged, or stopped for a failed one), cluster-wide. */
  readonly maxSessions: number;
  /** Admitted sessions that have not yet been Ready once, until their job is purged. */
  readonly maxStarting: number;
  readonly sessionsPerUser: number;
  /** After the scheduler had no room, retry the waiting list after this long even without a capacity signal. */
  readonly capacityRetryMs: number;
}

export interface AdmissionState {
  readonly sessions: Cache<CachedRecord<SessionRecord>>;
  readonly statuses: RecordCache<SessionStatus>;
  readonly routes: Cache<CachedRecord<RouteRecord>>;
  readonly workloads: Cache<Workload>;
}

/**
 * Why a session waits. `InsufficientCapacity` is kept for the sessions the scheduler turned away (the list
 * reads it back from their status); `WaitingForRoom` is everyone else's while that is being sorted out.
 */
export type WaitReason = 'ClusterFull' | 'StartLimit' | 'InsufficientCapacity' | 'WaitingForRoom' | 'NoFreePort' | 'NoListenerCapacity' | 'Queued';

export type AdmissionDecision =
  | { readonly admit: true }
  | {
      readonly admit: false;
      /** 1 is next. */
      readonly position: number;
      readonly reason: WaitReason;
      readonly message: string;
      /** Estimated admission time (ms), when the running sessions' expiry times allow an estimate. */
      readonly estimatedStartAt?: number;
      /** When the waiting list should be looked at again without any event (the capacity retry). */
      readonly retryAt?: number;
    };

/** Estimates are not rewritten for changes smaller than this (or a fifth of the wait), so waiting sessions stay quiet. */
const estimateToleranceMs = 60_000;

/** The estimate a waiting session's status shows: the new one, unless it is close to the one shown already (then that one stays, and the status is not rewritten). */
export function shownEstimate(shown: string | undefined, estimate: number | undefined, now: number): string | undefined {
  if (estimate === undefined) return undefined;
  if (shown !== undefined && Math.abs(Date.parse(shown) - estimate) < Math.max(estimateToleranceMs, (estimate - now) / 5)) return shown;
  return new Date(Math.round(estimate / 1000) * 1000).toISOString();
}

/** How long a start takes when no start has been seen yet: a guess, only used for estimates. */
const defaultStartMs = 30_000;
/** Estimates use the median of this many of the most recent start durations. */
const recentStarts = 20;

/** What keeps every waiting session waiting, whatever its position (see `bindingLimit`). */
type BindingLimit = 'Blocked' | 'ClusterFull' | 'Window' | 'StartLimit' | undefined;

interface Waiter {
  readonly id: string;
  readonly createdAt: number;
  /** Set when the scheduler had no room for this session: it goes back to the head of the list. */
  readonly capacityBlockedSince?: number;
}

/** Head of the list first: sessions the scheduler turned away, then first come first served. */
function compareWaiters(a: Waiter, b: Waiter): number {
  const blockedA = a.capacityBlockedSince === undefined ? 1 : 0;
  const blockedB = b.capacityBlockedSince === undefined ? 1 : 0;
  return blockedA - blockedB || a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/**
 * The waiting list and the room in the cluster, kept from the caches one session at a time (no walks over
 * every session). A session waits while it is wanted and holds no claim; it is admitted when its position
 * is within the free room: min(maxSessions − holding, maxStarting − starting), and none while the
 * scheduler last said it had no room and nothing has changed since. Decisions are synchronous and
 * reserve at once, so concurrent workers never admit past a limit.
 */
export class Admission {
  private readonly waiting: Waiter[] = [];
  private readonly waiterOf = new Map<string, Waiter>();
  private readonly holding = new Set<string>();
  private readonly starting = new Set<string>();
  /** Admitted by this process, claim not yet seen in the routes cache. */
  private readonly reserved = new Set<string>();
  /** Live sessions of each owner, oldest first (for the per-user limit). */
  private readonly liveByOwner = new Map<string, Waiter[]>();
  private readonly ownerOf = new Map<string, string>();
  /** Known expiry times (ms) of sessions holding a claim: when room will free up. */
  private readonly expiries = new Map<string, number>();
  /** Admission times (ms) of sessions still starting. */
  private readonly admittedAt = new Map<string, number>();
  /** Start durations (ms) of sessions seen Ready, most recent last. */
  private readonly startDurations = new Map<string, number>();
  /**
   * How many sessions may wait for placement at once. Unlimited until the scheduler turns a session away;
   * then 1, doubling with each placement (as TCP's slow start probes a link), so the head of the list is
   * not beaten to the room that appears by those behind it, and few registrations are wasted on a full
   * cluster.
   */
  private window = Infinity;
  /** Sessions admitted while the window is limited, until they are placed or let go. */
  private readonly probing = new Set<string>();
  /** Counts capacity signals; a session turned away in an earlier epoch no longer blocks the list. */
  private capacityEpoch = 0;
  private readonly blockedInEpoch = new Map<string, number>();
  /** Estimated admission times by list position, until the next change. */
  private estimates: number[] | undefined;
  /**
   * The room last computed. Remembered rather than recomputed before a change, because the port room can
   * grow before the change that caused it reaches the waiting list (the allocator sees the claim first).
   */
  private lastFree = 0;
  /** The limit that kept the list waiting when last computed: when another one does, every waiting session's reason changes. */
  private lastLimit: BindingLimit = undefined;

  constructor(
    private readonly state: AdmissionState,
    private readonly limits: AdmissionLimits,
    private readonly now: () => number,
    /** Called with sessions whose decision may have changed (their position, or room for them). */
    private readonly requeue: (id: string) => void,
    /** Called when the running sessions' expiry or start times changed, so the estimates may be stale. */
    private readonly estimatesChanged: () => void,
    /** Free public ports (and load-balancer listeners): each waiting session is counted as needing one. */
    private readonly portRoom?: () => PortRoom,
  ) {}

  /** The waiting sessions, head first. */
  waitingIds(): string[] {
    return this.waiting.map((waiter) => waiter.id);
  }

  get waitingCount(): number {
    return this.waiting.length;
  }

  /** Re-reads one session from the caches; call on every change to its record, status or claim. */
  refresh(id: string): void {
    this.update(id, this.requeue);
  }

  /**
   * Reads every session from the filled caches at once, requeueing nobody: for a start, where everything is
   * queued anyway. Fed change by change while the caches fill, each claim that arrives after its session
   * would move everyone behind it, which is quadratic in the number of sessions.
   */
  load(ids: Iterable<string>): void {
    for (const id of ids) this.update(id, undefined);
  }

  /** Re-reads one session; `requeue` is told of every other session whose decision may have changed. */
  private update(id: string, requeue: ((other: string) => void) | undefined): void {
    this.estimates = undefined;
    const freeBefore = this.lastFree;
    const cached = this.state.sessions.get(id)?.value;
    const record = cached?.metadata.id === id ? cached : undefined;
    const status = this.state.statuses.get(id)?.value;
    const claimed = this.state.routes.get(id) !== undefined;
    if (claimed || record === undefined) this.reserved.delete(id);
    // Teardown removes the routes first and purges the job last: the slot is held until the job is gone,
    // since until then it holds the cluster's resources (a start in progress still pulls its images).
    const holding = claimed || this.reserved.has(id) || this.state.workloads.get(id) !== undefined;
    const failed = status?.phase === 'Failed' && status.observedGeneration === record?.metadata.generation;
    const deleting = record?.metadata.deletionRequestedAt !== undefined;
    const wanted = record !== undefined && !deleting && !failed;

    // Wanted, failed or being deleted: a start that never got to Ready holds its slot until its job is purged.
    setMember(this.starting, id, holding && record !== undefined && status?.readyAt === undefined);
    const placed = status?.conditions.some((condition) => condition.type === 'Scheduled' && condition.status === 'True') ?? false;
    if (!holding) {
      this.probing.delete(id);
    } else if (!this.holding.has(id) && this.window !== Infinity) {
      this.probing.add(id);
    }
    if (placed && this.probing.delete(id)) {
      // Room was found: let twice as many try next, back to unlimited once that reaches maxStarting.
      this.window = this.window * 2 >= this.limits.maxStarting ? Infinity : this.window * 2;
      if (this.window === Infinity) this.probing.clear();
    }
    setMember(this.holding, id, holding);
    // Both are tracked whatever the first says: Ready brings an expiry and ends the start in one write.
    // Torn down (deleted, or failed and its job stopping), a session's slot frees as soon as its job is gone.
    const endsAt = deleting ? parseTime(record.metadata.deletionRequestedAt) : failed ? parseTime(status.failedAt) : parseTime(status?.expiresAt);
    const expiryChanged = this.track(this.expiries, id, holding ? endsAt : undefined);
    const startChanged = this.track(this.admittedAt, id, holding && status?.readyAt === undefined ? parseTime(status?.admittedAt) : undefined);
    const timesChanged = expiryChanged || startChanged;
    const admitted = parseTime(status?.admittedAt);
    const ready = parseTime(status?.readyAt);
    if (holding && admitted !== undefined && ready !== undefined && !this.startDurations.has(id)) this.startDurations.set(id, ready - admitted);
    if (!holding) this.startDurations.delete(id);

    this.setOwner(id, wanted ? record : undefined);
    const blockedSince = wanted && !holding ? capacityBlockedSince(status) : undefined;
    if (!wanted || (holding && placed)) this.blockedInEpoch.delete(id);
    // Seen turned away without this process having decided it (a restart): blocked until the next signal.
    else if (blockedSince !== undefined && !this.blockedInEpoch.has(id)) this.turnedAway(id);
    const changedAt = this.setWaiter(
      id,
      wanted && !holding
        ? { id, createdAt: Date.parse(record.metadata.createdAt), ...(blockedSince === undefined ? {} : { capacityBlockedSince: blockedSince }) }
        : undefined,
    );
    const freeAfter = this.freeSlots();
    this.lastFree = freeAfter;
    const limitBefore = this.lastLimit;
    this.lastLimit = this.bindingLimit();
    if (requeue !== undefined) {
      // Everyone behind a change moved; when room grew, the head of the list may now go (and everyone moves as
      // it does); when the list still waits, but for another limit, everyone's reason changed.
      const moved = this.lastLimit !== undefined && this.lastLimit !== limitBefore ? 0 : (changedAt ?? this.waiting.length);
      const head = freeAfter > freeBefore ? Math.min(freeAfter, moved) : 0;
      for (let index = 0; index < head; index++) requeue(this.waiting[index]!.id);
      for (let index = moved; index < this.waiting.length; index++) requeue(this.waiting[index]!.id);
    }
    if (timesChanged && this.waiting.length > 0) this.estimatesChanged();
  }

  /** Whether the waiting session may be admitted now, or its place in the list and why it waits. */
  decide(id: string): AdmissionDecision {
    const waiter = this.waiterOf.get(id);
    if (waiter === undefined) return { admit: true };
    const position = this.indexOf(waiter) + 1;
    const free = this.freeSlots();
    if (position <= free) return { admit: true };
    const { maxSessions, maxStarting } = this.limits;
    const estimatedStartAt = this.estimateStart(position);
    const wait = (reason: WaitReason, message: string, retryAt?: number): AdmissionDecision => ({
      admit: false,
      position,
      reason,
      message,
      ...(estimatedStartAt === undefined ? {} : { estimatedStartAt }),
      ...(retryAt === undefined ? {} : { retryAt }),
    });
    // A session waiting behind one the scheduler turned away was not turned away itself: were its status to say
    // InsufficientCapacity, the list would read it back as turned away (to the head, the window reset).
    const capacityReason = waiter.capacityBlockedSince === undefined ? 'WaitingForRoom' : 'InsufficientCapacity';
    switch (this.bindingLimit()) {
      case 'Blocked':
        return wait(capacityReason, 'the cluster has no room for another session; retrying as soon as room appears', this.capacityBlockedUntil());
      case 'ClusterFull':
        return wait('ClusterFull', `all ${maxSessions} session slots are in use`);
      case 'Window':
        return wait(capacityReason, 'the cluster was full; sessions are admitted a few at a time until it has room');
      case 'StartLimit':
        return wait('StartLimit', `${maxStarting} sessions are starting; waiting for one to be ready`);
    }
    const ports = this.portRoom?.();
    if (ports !== undefined && position > ports.free) return wait(ports.reason, ports.message);
    return wait('Queued', `${position - 1} session(s) ahead in the waiting list`);
  }

  /**
   * The running sessions' expiry or start times moved (see `estimatesChanged`): recomputes the estimates and
   * requeues only the waiting sessions whose status would show another, and those whose status write is
   * still on its way (what it shows is not known yet). Sessions whose position changed were requeued then.
   */
  refreshEstimates(): void {
    this.estimates = undefined;
    const now = this.now();
    this.waiting.forEach((waiter, index) => {
      const shown = this.state.statuses.get(waiter.id)?.value?.estimatedStartAt;
      if (this.state.statuses.writePending(waiter.id) || shownEstimate(shown, this.estimateStart(index + 1), now) !== shown) this.requeue(waiter.id);
    });
  }

  /** Counts the session as admitted until its claim shows up in the cache (or `cancel`). */
  reserve(id: string): void {
    this.reserved.add(id);
    this.refresh(id);
  }

  /** Gives back a reservation whose claim could not be written; the session itself retries with its own backoff. */
  cancel(id: string): void {
    if (this.reserved.delete(id)) this.update(id, (other) => other !== id && this.requeue(other));
  }

  /**
   * The scheduler had no room for this session: it blocks the list until the next capacity signal (one
   * that arrives from now on counts, even before the session is back in the list), and admissions restart
   * one at a time.
   */
  turnedAway(id: string): void {
    this.blockedInEpoch.set(id, this.capacityEpoch);
    this.window = 1;
    this.probing.clear();
    this.estimates = undefined;
  }

  /** The cluster may have room again (a node joined, a workload ended): try the head of the list. */
  capacityChanged(): void {
    const wasBlocked = this.capacityBlockedUntil() !== undefined;
    this.capacityEpoch += 1;
    this.estimates = undefined;
    if (wasBlocked) for (const waiter of this.waiting.slice(0, Math.max(1, this.freeSlots()))) this.requeue(waiter.id);
  }

  /** Room for ports may have grown without a session changing (a load balancer's listener went away): try the head. */
  roomChanged(): void {
    const free = this.freeSlots();
    if (free > this.lastFree) this.waiting.slice(0, free).forEach((waiter) => this.requeue(waiter.id));
    this.lastFree = free;
  }

  /**
   * 1 plus the owner's live sessions ahead of this one: those already admitted, and the older ones; beyond
   * sessionsPerUser a session is over the per-user limit. Admitted sessions come first because creation
   * times come from the front ends' clocks: an older session whose record arrives after a newer one was
   * admitted is the one to refuse, not the one already starting.
   */
  ownerRank(id: string): number | undefined {
    const owner = this.ownerOf.get(id);
    const list = owner === undefined ? undefined : this.liveByOwner.get(owner);
    const self = list?.find((entry) => entry.id === id);
    if (self === undefined) return undefined;
    return 1 + list!.filter((entry) => entry.id !== id && (this.holding.has(entry.id) || compareWaiters(entry, self) < 0)).length;
  }

  /** The limit that keeps the whole list waiting, if one does (then every waiting session shows it), first match wins. */
  private bindingLimit(): BindingLimit {
    if (this.capacityBlockedUntil() !== undefined) return 'Blocked';
    if (this.holding.size >= this.limits.maxSessions) return 'ClusterFull';
    if (this.window !== Infinity) return 'Window';
    if (this.starting.size >= this.limits.maxStarting) return 'StartLimit';
    return undefined;
  }

  /** Room for admissions right now. */
  private freeSlots(): number {
    if (this.capacityBlockedUntil() !== undefined) return 0;
    const free = Math.max(0, Math.min(this.limits.maxSessions - this.holding.size, this.limits.maxStarting - this.starting.size, this.portRoom?.().free ?? Infinity));
    return Math.min(free, Math.max(0, this.window - this.probing.size));
  }

  /**
   * While the scheduler's last answer was "no room" and no capacity signal came after it, nobody is
   * admitted (first come first served: no one overtakes the head) until the retry time.
   */
  private capacityBlockedUntil(): number | undefined {
    const head = this.waiting[0];
    const since = head?.capacityBlockedSince;
    if (since === undefined || this.blockedInEpoch.get(head!.id) !== this.capacityEpoch) return undefined;
    const until = since + this.limits.capacityRetryMs;
    return this.now() < until ? until : undefined;
  }

  /**
   * When each waiting session should leave the list: each admission needs a session slot (free now, or
   * when the next running session expires) and a starting slot (free now, or when a start in progress is
   * expected to finish, going by the median recent start duration). Computed for the whole list at once
   * and kept until anything changes, so reconciling every waiting session costs one pass.
   */
  private estimateStart(position: number): number | undefined {
    this.estimates ??= this.estimateAll();
    return this.estimates[position - 1];
  }

  private estimateAll(): number[] {
    const now = this.now();
    const { maxSessions, maxStarting } = this.limits;
    const startMs = median([...this.startDurations.values()].slice(-recentStarts)) ?? defaultStartMs;
    const freeSessions = Math.max(0, maxSessions - this.holding.size);
    // Beyond a limit lowered since they were admitted, sessions must end (or finish starting) before anyone is let
    // in: only the last `limit` of those times free a slot.
    const expiries = [...this.expiries.values()].sort((a, b) => a - b).slice(Math.max(0, this.holding.size - maxSessions));
    const startsDone = [...this.admittedAt.values()].map((at) => Math.max(now, at + startMs));
    while (startsDone.length < maxStarting) startsDone.push(now);
    startsDone.sort((a, b) => a - b).splice(0, startsDone.length - maxStarting);
    const estimates: number[] = [];
    for (let p = 1; p <= this.waiting.length; p++) {
      const sessionSlot = p <= freeSessions ? now : expiries[p - freeSessions - 1];
      if (sessionSlot === undefined) break;
      const estimate = Math.max(sessionSlot, startsDone.shift()!);
      estimates.push(estimate);
      insertSorted(startsDone, estimate + startMs);
    }
    return estimates;
  }

  private indexOf(waiter: Waiter): number {
    let low = 0;
    let high = this.waiting.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (compareWaiters(this.waiting[middle]!, waiter) < 0) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  /** Puts the session in the list (or takes it out); returns the first index whose occupant changed. */
  private setWaiter(id: string, next: Waiter | undefined): number | undefined {
    const previous = this.waiterOf.get(id);
    if (previous === undefined && next === undefined) return undefined;
    if (previous !== undefined && next !== undefined && compareWaiters(previous, next) === 0 && previous.capacityBlockedSince === next.capacityBlockedSince) {
      return undefined;
    }
    let changedAt = Infinity;
    if (previous !== undefined) {
      // Should the order ever be inconsistent (a time that is not a number), the search may land on another
      // session: that one must not be taken out instead.
      const found = this.indexOf(previous);
      const index = this.waiting[found]?.id === id ? found : this.waiting.findIndex((waiter) => waiter.id === id);
      this.waiting.splice(index, 1);
      this.waiterOf.delete(id);
      changedAt = index;
    }
    if (next !== undefined) {
      const index = this.indexOf(next);
      this.waiting.splice(index, 0, next);
      this.waiterOf.set(id, next);
      changedAt = Math.min(changedAt, index);
    }
    return changedAt;
  }

  private setOwner(id: string, record: SessionRecord | undefined): void {
    const owner = this.ownerOf.get(id);
    if (owner !== undefined && owner !== record?.metadata.owner) {
      const list = this.liveByOwner.get(owner)!.filter((entry) => entry.id !== id);
      if (list.length === 0) this.liveByOwner.delete(owner);
      else this.liveByOwner.set(owner, list);
      this.ownerOf.delete(id);
    }
    if (record === undefined || this.ownerOf.has(id)) return;
    const entry: Waiter = { id, createdAt: Date.parse(record.metadata.createdAt) };
    const list = this.liveByOwner.get(record.metadata.owner) ?? [];
    list.push(entry);
    list.sort(compareWaiters);
    this.liveByOwner.set(record.metadata.owner, list);
    this.ownerOf.set(id, record.metadata.owner);
  }

  /** Sets or removes the session's entry; returns whether it changed. */
  private track(map: Map<string, number>, id: string, value: number | undefined): boolean {
    if (map.get(id) === value) return false;
    if (value === undefined) map.delete(id);
    else map.set(id, value);
    return true;
  }
}

function capacityBlockedSince(status: SessionStatus | undefined): number | undefined {
  const admitted = status?.conditions.find((condition) => condition.type === 'Admitted');
  return admitted?.status === 'False' && admitted.reason === 'InsufficientCapacity' ? Date.parse(admitted.lastTransitionTime) : undefined;
}

function setMember(set: Set<string>, id: string, member: boolean): void {
  if (member) set.add(id);
  else set.delete(id);
}

function parseTime(value: string | undefined): number | undefined {
  return value === undefined ? undefined : Date.parse(value);
}

function median(values: number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function insertSorted(values: number[], value: number): void {
  let index = 0;
  while (index < values.length && values[index]! <= value) index++;
  values.splice(index, 0, value);
}
