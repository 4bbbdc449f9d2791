import os from 'node:os';
import { BehaviorSubject, type Observable, type Subscription } from 'rxjs';
import type { LockService } from '../store/lock.js';
import type { KvEntry, Store, TxnOperation, WatchStep } from '../store/store.js';
import { systemClock, type Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';

/** The value of the leader key: who leads, and since when. */
export interface LeaderRecord {
  readonly host: string;
  readonly pid: number;
  /** ISO time the leader won the lock. */
  readonly since: string;
}

/** The leader key's value, checked: a key edited by hand into another shape names no one. */
export function parseLeaderRecord(value: string): LeaderRecord {
  let record: unknown;
  try {
    record = JSON.parse(value);
  } catch (error) {
    throw new Error(`not valid JSON: ${(error as Error).message}`);
  }
  const { host, pid, since } = (typeof record === 'object' && record !== null ? record : {}) as Partial<Record<keyof LeaderRecord, unknown>>;
  if (typeof host !== 'string' || !Number.isInteger(pid) || typeof since !== 'string' || Number.isNaN(Date.parse(since))) {
    throw new Error('not a leader record: expected {"host": string, "pid": integer, "since": ISO time}');
  }
  return { host, pid: pid as number, since };
}

export interface Identity {
  readonly host: string;
  readonly pid: number;
}

/** Whether this process may act; the controller runs its workers only while `leading$` says true. */
export interface Leadership {
  /** Replays the current value to each subscriber, then every change. */
  readonly leading$: Observable<boolean>;
  readonly leading: boolean;
  readonly identity: Identity;
  start(): void;
  /** Stops leading and hands the lead over (a standby can win at once). */
  stop(): Promise<void>;
  /** The transaction operation that makes a write fail unless this process still holds the lease; undefined when writes need no fence. */
  fence(): TxnOperation | undefined;
  /** The leader as last seen (undefined when no one leads). */
  leader(): LeaderRecord | undefined;
}

function currentIdentity(): Identity {
  return { host: os.hostname(), pid: process.pid };
}

/**
 * The embedded backend's leadership: its store file is held exclusively by one process, so that process
 * is the only possible controller and leads from start to stop. Its writes need no fence.
 */
export class SoleLeader implements Leadership {
  private readonly state = new BehaviorSubject(false);
  readonly leading$: Observable<boolean> = this.state.asObservable();
  private since: string | undefined;

  constructor(readonly identity: Identity = currentIdentity()) {}

  get leading(): boolean {
    return this.state.value;
  }

  start(): void {
    this.since = new Date().toISOString();
    this.state.next(true);
  }

  async stop(): Promise<void> {
    this.since = undefined;
    this.state.next(false);
  }

  fence(): undefined {
    return undefined;
  }

  leader(): LeaderRecord | undefined {
    return this.since === undefined ? undefined : { ...this.identity, since: this.since };
  }
}

export interface LeaderElectionOptions {
  readonly store: Store;
  readonly locks: LockService;
  /** The lock key, `<prefix>leader`. */
  readonly key: string;
  readonly ttlSeconds: number;
  readonly lockDelaySeconds: number;
  readonly log: Logger;
  readonly clock?: Clock;
  readonly identity?: Identity;
  /** Pause before trying again after a failed request (default 1000 ms). */
  readonly retryMs?: number;
}

/**
 * How long before its session could expire a leader that cannot renew stops leading. Consul ends a session
 * no sooner than TTL after the renewal it last received, and that renewal was sent at or after the time
 * counted here; stopping 2 s before that leaves room for timer lateness and in-flight writes, whose fence
 * fails anyway once the session is gone. With TTL ≥ 10 s this is after at least one retried renewal.
 */
const STEP_DOWN_MARGIN_MS = 2_000;
const DEFAULT_RETRY_MS = 1_000;
/**
 * The watch of the leader key fails only on what the store's own retries do not mend (Consul refusing it,
 * e.g. an ACL token without read on the key): watched again retryMs later, doubling up to this.
 */
const WATCH_RETRY_MAX_MS = 10_000;

/**
 * Leader election over a store lock (ARCHITECTURE §8): each replica keeps a TTL session, renewed at TTL/2,
 * and tries to acquire the leader key with it. The holder leads; the others watch the key with blocking
 * queries and try again as soon as it has no holder (after the lock-delay, if the leader's session ended
 * rather than released). A leader whose renewals fail stops leading STEP_DOWN_MARGIN_MS before its session
 * could expire; one whose session is gone starts a new one and competes again. stop() releases the key
 * before destroying the session, since Consul applies the lock-delay after a destroy but not a release.
 */
export class LeaderElection implements Leadership {
  readonly identity: Identity;
  private readonly state = new BehaviorSubject(false);
  readonly leading$: Observable<boolean> = this.state.asObservable();
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly ttlMs: number;
  private readonly retryMs: number;
  private session: string | undefined;
  /** The session this process last won with, for fencing writes (a lost session's fence fails). */
  private fenceSession: string | undefined;
  /** When the last successful renewal (or the creation) of the session was sent. */
  private renewedAt = 0;
  private since: string | undefined;
  /** The record this process wrote into the leader key when it won it. */
  private ownRecord: string | undefined;
  /** The write putting the record back (see restoreRecord); stop() waits for it, lest it lock the key after the release. */
  private restoring: Promise<void> | undefined;
  /** The leader key as last seen by the watch. */
  private holder: KvEntry | undefined;
  private watch: Subscription | undefined;
  private competition: Promise<void> | undefined;
  private competeAgain = false;
  private renewTimer: unknown;
  private stepDownTimer: unknown;
  private retryTimer: unknown;
  /** Its own timer: an attempt clears retryTimer, and must not cancel the watch's restart with it. */
  private watchRetryTimer: unknown;
  /** Failed watches since the last answer. */
  private watchFailures = 0;
  /** Judges the leader key again after a failed read (another session shown holding it) or write (restoreRecord). */
  private confirmTimer: unknown;
  private stopped = true;

  constructor(private readonly options: LeaderElectionOptions) {
    this.identity = options.identity ?? currentIdentity();
    this.clock = options.clock ?? systemClock;
    this.log = options.log.child({ component: 'leader-election', key: options.key });
    this.ttlMs = options.ttlSeconds * 1000;
    this.retryMs = options.retryMs ?? DEFAULT_RETRY_MS;
  }

  get leading(): boolean {
    return this.state.value;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.watchKey();
    this.compete();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const timer of [this.renewTimer, this.stepDownTimer, this.retryTimer, this.watchRetryTimer, this.confirmTimer]) this.clock.clearTimeout(timer);
    this.watch?.unsubscribe();
    await this.competition;
    await this.restoring;
    const session = this.session;
    this.session = undefined;
    this.setLeading(false, 'stopping');
    if (session === undefined) return;
    const { key } = this.options;
    try {
      // Also when not leading: an attempt may have won just as stop() began.
      await this.options.locks.release(key, session);
    } catch (error) {
      this.log.warn({ err: error, consulSession: session }, 'releasing the leader key failed; a standby takes over after the session ends');
    }
    try {
      await this.options.locks.destroySession(session);
    } catch (error) {
      this.log.warn({ err: error, consulSession: session }, 'destroying the session failed; it ends after its TTL');
    }
  }

  fence(): TxnOperation | undefined {
    return this.fenceSession === undefined ? undefined : { verb: 'check-session', key: this.options.key, session: this.fenceSession };
  }

  leader(): LeaderRecord | undefined {
    if (this.leading && this.since !== undefined) return { ...this.identity, since: this.since };
    if (this.holder?.session === undefined) return undefined;
    try {
      return parseLeaderRecord(this.holder.value);
    } catch {
      return undefined;
    }
  }

  private watchKey(): void {
    if (this.stopped) return;
    const { key } = this.options;
    this.watch = this.options.store.watch(key).subscribe({
      next: (step) => this.observe(step),
      error: (error: unknown) => {
        const retryInMs = Math.min(this.retryMs * 2 ** this.watchFailures, WATCH_RETRY_MAX_MS);
        this.watchFailures++;
        this.log.warn({ err: error, retryInMs, failures: this.watchFailures }, 'watching the leader key failed; watching again');
        this.watchRetryTimer = this.clock.setTimeout(() => this.watchKey(), retryInMs);
      },
    });
  }

  private observe(step: WatchStep): void {
    const { key } = this.options;
    this.watchFailures = 0;
    if (step.kind === 'reset') this.holder = step.entries.find((entry) => entry.key === key);
    for (const change of step.kind === 'changes' ? step.changes : []) {
      if (change.type === 'put' && change.entry.key === key) this.holder = change.entry;
      if (change.type === 'delete' && change.key === key) this.holder = undefined;
    }
    this.judge();
  }

  /** Acts on the leader key as last seen. */
  private judge(): void {
    if (this.stopped) return;
    if (this.leading && this.holder?.session !== this.session) {
      void this.confirmLoss();
    } else if (this.leading && this.holder !== undefined && this.holder.value !== this.ownRecord) {
      this.restoring ??= this.restoreRecord(this.holder.value).finally(() => (this.restoring = undefined));
    } else if (!this.leading && this.holder?.session === undefined) {
      this.compete();
    }
  }

  /**
   * The key is still locked by this process but holds another record: a plain write replaced it (`consul kv
   * import` of a backup taken under another leader), and `manticore status` would name that leader. Written
   * back with the session, as Consul lets the holder re-acquire its lock.
   */
  private async restoreRecord(found: string): Promise<void> {
    const { session, ownRecord } = this;
    if (session === undefined || ownRecord === undefined) return;
    try {
      if (await this.options.locks.acquire(this.options.key, ownRecord, session)) {
        this.log.warn({ consulSession: session, found }, 'the leader key held another record (a backup imported?); wrote this leader\'s back');
      }
    } catch (error) {
      this.log.warn({ err: error, retryInMs: this.retryMs }, 'writing this leader\'s record back to the leader key failed; trying again');
      this.clock.clearTimeout(this.confirmTimer);
      this.confirmTimer = this.clock.setTimeout(() => this.judge(), this.retryMs);
    }
  }

  /** A watch answer may predate our own acquire: only a fresh read proves someone else holds the key. */
  private async confirmLoss(): Promise<void> {
    try {
      const entry = await this.options.store.get(this.options.key);
      if (!this.leading || entry?.session === this.session) return;
      this.setLeading(false, 'the leader key is no longer ours');
      // The key went without a holder (Consul lost its state): no later change of it will say so.
      if (entry?.session === undefined) this.compete();
    } catch (error) {
      // Read again: the key may not change again, and a session still renewed never steps down on its own.
      this.log.warn({ err: error, retryInMs: this.retryMs }, 'reading the leader key failed; reading it again');
      this.clock.clearTimeout(this.confirmTimer);
      this.confirmTimer = this.clock.setTimeout(() => this.judge(), this.retryMs);
    }
  }

  /** Tries to win, one attempt at a time; a request to try while an attempt runs makes it try once more. */
  private compete(): void {
    if (this.competition !== undefined) {
      this.competeAgain = true;
      return;
    }
    this.competition = (async () => {
      do {
        this.competeAgain = false;
        await this.attempt();
      } while (this.competeAgain && !this.stopped && !this.leading);
    })().finally(() => {
      this.competition = undefined;
    });
  }

  private async attempt(): Promise<void> {
    if (this.stopped || this.leading) return;
    const { locks, key, ttlSeconds, lockDelaySeconds } = this.options;
    this.clock.clearTimeout(this.retryTimer);
    try {
      if (this.session === undefined) {
        const sentAt = this.clock.now();
        const name = `manticore-controller ${this.identity.host}:${this.identity.pid}`;
        this.session = await locks.createSession({ name, ttlSeconds, lockDelaySeconds });
        this.renewedAt = sentAt;
        this.log.info({ consulSession: this.session, ttlSeconds, lockDelaySeconds }, 'Consul session created');
        // Stopped meanwhile: stop() destroys the session; locking the key now would only hold up the standbys.
        if (this.stopped) return;
        this.scheduleRenewal(sentAt + this.ttlMs / 2 - this.clock.now());
      }
      const session = this.session;
      const since = new Date(this.clock.now()).toISOString();
      const record = JSON.stringify({ ...this.identity, since } satisfies LeaderRecord);
      if (await locks.acquire(key, record, session)) {
        if (this.stopped || session !== this.session) return;
        this.since = since;
        this.ownRecord = record;
        this.fenceSession = session;
        this.setLeading(true, 'won the leader key');
        // The watch may have shown the key lose its holder while the answer was on its way, and will not say so again.
        this.judge();
        return;
      }
      // Refused with no holder in sight: the key is in its lock-delay (or the watch is behind); try after it.
      if (this.holder?.session === undefined) this.retryLater(Math.max(lockDelaySeconds * 1000, this.retryMs));
    } catch (error) {
      this.log.warn({ err: error }, 'competing for the leader key failed; trying again');
      this.retryLater(this.retryMs);
      // Consul refuses to lock with a session it no longer has (500 "invalid session"): find that out now
      // and start a new session, rather than trying with the dead one until the next renewal.
      if (this.session !== undefined) void this.dropIfGone(this.session);
    }
  }

  private retryLater(delayMs: number): void {
    if (this.stopped) return;
    this.clock.clearTimeout(this.retryTimer);
    this.retryTimer = this.clock.setTimeout(() => this.compete(), delayMs);
  }

  private scheduleRenewal(delayMs: number): void {
    this.clock.clearTimeout(this.renewTimer);
    this.renewTimer = this.clock.setTimeout(() => void this.renew(), delayMs);
  }

  /**
   * The next renewal is due TTL/2 after this one is sent, whenever (and whether) this one is answered: a
   * renewal answered slowly, or not at all until the request times out, must not push the next one back
   * past the step-down time. A failed one is retried sooner.
   */
  private async renew(): Promise<void> {
    const session = this.session;
    if (session === undefined || this.stopped) return;
    const sentAt = this.clock.now();
    this.scheduleRenewal(this.ttlMs / 2);
    try {
      const alive = await this.options.locks.renewSession(session);
      if (this.stopped || session !== this.session) return;
      if (!alive) {
        this.sessionGone(session);
        return;
      }
      // Renewals may overlap: one sent earlier can be answered after a later one.
      if (sentAt <= this.renewedAt) return;
      this.renewedAt = sentAt;
      if (this.leading) this.armStepDown();
      // Renewed after a lapse while still holding the key (or the key is free): lead again.
      else if (this.holder?.session === session || this.holder?.session === undefined) this.compete();
    } catch (error) {
      if (this.stopped || session !== this.session || sentAt <= this.renewedAt) return;
      this.log.warn({ err: error, consulSession: session }, 'renewing the session failed; trying again');
      this.scheduleRenewal(this.retryMs);
    }
  }

  /** Renews `session` only to learn whether Consul still has it; the regular renewals go on as scheduled. */
  private async dropIfGone(session: string): Promise<void> {
    try {
      const alive = await this.options.locks.renewSession(session);
      if (!alive && !this.stopped && session === this.session) this.sessionGone(session);
    } catch {
      // Unreachable: the retry already scheduled and the regular renewals will tell.
    }
  }

  private sessionGone(session: string): void {
    this.log.warn({ consulSession: session }, 'the Consul session is gone; starting a new one');
    this.session = undefined;
    this.setLeading(false, 'the session ended');
    this.compete();
  }

  private armStepDown(): void {
    this.clock.clearTimeout(this.stepDownTimer);
    const dueAt = this.renewedAt + this.ttlMs - STEP_DOWN_MARGIN_MS;
    this.stepDownTimer = this.clock.setTimeout(
      () => this.setLeading(false, `no renewal succeeded for ${this.ttlMs - STEP_DOWN_MARGIN_MS} ms; the session may be about to expire`),
      Math.max(0, dueAt - this.clock.now()),
    );
  }

  private setLeading(leading: boolean, reason: string): void {
    if (leading === this.leading) return;
    if (leading) {
      this.armStepDown();
      this.log.info({ consulSession: this.session, since: this.since, reason }, 'leading');
    } else {
      this.clock.clearTimeout(this.stepDownTimer);
      this.since = undefined;
      this.log[this.stopped ? 'info' : 'warn']({ consulSession: this.session, reason }, 'no longer leading');
    }
    this.state.next(leading);
  }
}
