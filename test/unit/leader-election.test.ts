import assert from 'node:assert/strict';
import * as FakeTimers from '@sinonjs/fake-timers';
import { BehaviorSubject, Subject, defer, map, merge, mergeMap, throwError, type Observable } from 'rxjs';
import { LeaderElection, parseLeaderRecord } from '../../controller/controller/leader.js';
import type { LeaseOptions, LockService } from '../../controller/store/lock.js';
import type { KvEntry, Store, WatchStep } from '../../controller/store/store.js';
import { controllerClock, keys, testLog } from '../support/controller-harness.js';

/**
 * One Consul lock, the leader key, on a fake clock: every call is answered `latencyMs` after it is made,
 * and a session ends its TTL after the last renewal that reached it (Consul's lower bound).
 */
class SlowLockTable implements LockService {
  private readonly holder = new BehaviorSubject<KvEntry | undefined>(undefined);
  private readonly expiries = new Map<string, FakeTimers.TimerId>();
  private readonly ttls = new Map<string, number>();
  private index = 0;
  private nextSession = 0;
  constructor(
    private readonly clock: FakeTimers.Clock,
    private readonly latencyMs: number,
  ) {}

  /** The key's watch, told of each change at once, and its reads, answered like the lock calls. */
  store(): Store {
    const unused = (): never => {
      throw new Error('not used by leader election');
    };
    const watch = (): Observable<WatchStep> => this.holder.pipe(map((entry) => ({ kind: 'reset', index: this.index, entries: entry ? [entry] : [] })));
    const get = (): Promise<KvEntry | undefined> => {
      if (this.readsFailing > 0 && this.readsFailing--) {
        return this.answer(() => undefined).then(() => {
          throw new Error('Consul answered 500');
        });
      }
      return this.answer(() => this.holder.value);
    };
    return { watch, get, list: unused, prefixIndex: unused, put: unused, delete: unused, transaction: unused, commit: unused, close: async () => undefined };
  }

  createSession(options: LeaseOptions): Promise<string> {
    return this.answer(() => {
      const id = `session-${++this.nextSession}`;
      this.keepAlive(id, options.ttlSeconds * 1000);
      return id;
    });
  }
  renewSession(id: string): Promise<boolean> {
    return this.answer(() => {
      if (!this.expiries.has(id)) return false;
      this.keepAlive(id, this.ttls.get(id)!);
      return true;
    });
  }
  destroySession(id: string): Promise<void> {
    return this.answer(() => this.end(id));
  }
  /** Reads of the key still to fail. */
  readsFailing = 0;

  /** Someone deleted the key and another replica locked it at once: one watch answer shows both. */
  lockedElsewhere(): void {
    const session = `session-${++this.nextSession}`;
    this.keepAlive(session, 15_000);
    this.holder.next({ key: keys.leader, value: '{}', createIndex: ++this.index, modifyIndex: this.index, session });
  }

  /** A plain write of the key, as `consul kv import` of a backup makes: the value changes, the lock stays. */
  overwrite(value: string): void {
    const held = this.holder.value;
    assert.ok(held, 'the key exists');
    this.holder.next({ ...held, value, modifyIndex: ++this.index });
  }

  /** The key's value as stored. */
  get value(): string | undefined {
    return this.holder.value?.value;
  }

  /** Sessions that asked for the key, in order. */
  readonly acquiredBy: string[] = [];

  acquire(key: string, value: string, session: string): Promise<boolean> {
    this.acquiredBy.push(session);
    return this.answer(() => {
      const held = this.holder.value?.session;
      if (!this.expiries.has(session) || (held !== undefined && held !== session)) return false;
      this.holder.next({ key, value, createIndex: 1, modifyIndex: ++this.index, session });
      return true;
    });
  }
  release(key: string, session: string): Promise<boolean> {
    return this.answer(() => {
      if (this.holder.value?.session !== session) return false;
      this.holder.next({ key, value: '', createIndex: 1, modifyIndex: ++this.index });
      return true;
    });
  }

  /** Ends a session as Consul does when it invalidates one (its TTL ran out, its node failed). */
  invalidate(id: string): void {
    this.end(id);
  }

  private keepAlive(id: string, ttlMs: number): void {
    this.ttls.set(id, ttlMs);
    this.clock.clearTimeout(this.expiries.get(id)!);
    this.expiries.set(id, this.clock.setTimeout(() => this.end(id), ttlMs));
  }
  private end(id: string): void {
    this.clock.clearTimeout(this.expiries.get(id)!);
    this.expiries.delete(id);
    if (this.holder.value?.session === id) this.holder.next({ ...this.holder.value, session: undefined, modifyIndex: ++this.index });
  }
  /** Applied when the request reaches Consul, answered `latencyMs` later. */
  private answer<T>(apply: () => T): Promise<T> {
    const result = apply();
    return new Promise((resolve) => this.clock.setTimeout(() => resolve(result), this.latencyMs));
  }
}

/** A replica (15 s TTL and lock-delay) against a lock table answering every call `latencyMs` after it arrives. */
function slowConsul(latencyMs: number): { clock: FakeTimers.Clock; locks: SlowLockTable; election: LeaderElection } {
  const clock = FakeTimers.createClock(0);
  const locks = new SlowLockTable(clock, latencyMs);
  const election = new LeaderElection({ store: locks.store(), locks, key: keys.leader, ttlSeconds: 15, lockDelaySeconds: 15, log: testLog, clock: controllerClock(clock), identity: { host: 'test-host', pid: 1 } });
  return { clock, locks, election };
}

describe('Leader election (a lock table on a fake clock)', () => {
  it('keeps the lead while Consul answers every call in 3 s, with a 15 s TTL', async () => {
    const { clock, election } = slowConsul(3_000);
    const changes: boolean[] = [];
    election.leading$.subscribe((leading) => changes.push(leading));
    election.start();
    await clock.tickAsync(10_000);
    assert.equal(election.leading, true);
    // A renewal sent every 7.5 s is answered 3 s later, well before the leader's 13 s without one runs out.
    await clock.tickAsync(120_000);
    assert.deepEqual(changes, [false, true], 'the leader never stepped down');
    const stopped = election.stop();
    await clock.tickAsync(10_000);
    await stopped;
  });

  it('neither locks the key nor keeps a timer when stopped while its session is being created', async () => {
    const { clock, locks, election } = slowConsul(100);
    election.start();
    await clock.tickAsync(50);
    const stopped = election.stop();
    await clock.tickAsync(1_000);
    await stopped;
    assert.deepEqual(locks.acquiredBy, []);
    assert.equal(election.leading, false);
    assert.equal(clock.countTimers(), 0, 'no renewal or retry left behind');
  });

  it('stops leading once a read confirms that another session holds the key, however many reads fail first', async () => {
    const { clock, locks, election } = slowConsul(10);
    election.start();
    await clock.tickAsync(1_000);
    assert.equal(election.leading, true);
    // Its own session stays alive and renewed: only the key says it no longer leads.
    locks.readsFailing = 2;
    locks.lockedElsewhere();
    await clock.tickAsync(10_000);
    assert.equal(election.leading, false);
    const stopped = election.stop();
    await clock.tickAsync(1_000);
    await stopped;
  });

  it('writes its own name back over the leader key when a plain write (a backup imported) replaced it, keeping the lock', async () => {
    const { clock, locks, election } = slowConsul(10);
    election.start();
    await clock.tickAsync(1_000);
    assert.equal(election.leading, true);
    const own = locks.value;
    locks.overwrite(JSON.stringify({ host: 'old-host', pid: 99, since: '2020-01-01T00:00:00.000Z' }));
    await clock.tickAsync(1_000);
    assert.equal(locks.value, own, 'manticore status names the replica that leads, not the one in the backup');
    assert.equal(election.leading, true);
    assert.equal(new Set(locks.acquiredBy).size, 1, 'with the session it holds the lock with');
    const stopped = election.stop();
    await clock.tickAsync(1_000);
    await stopped;
  });

  it('does not lead when its session ended while the answer to its acquire was on its way', async () => {
    const { clock, locks, election } = slowConsul(100);
    election.start();
    // The session is created at 0 (answered at 100); the key is locked at 100 (answered at 200).
    await clock.tickAsync(150);
    const [session] = locks.acquiredBy;
    assert.ok(session);
    locks.invalidate(session);
    // Long before its next renewal (at 7.5 s), which is what would otherwise tell it.
    await clock.tickAsync(2_000);
    assert.equal(election.leading, false);
    const stopped = election.stop();
    await clock.tickAsync(1_000);
    await stopped;
  });

  it('watches the key again after failures at a pace that doubles up to 10 s, and after 1 s again once it answered', async () => {
    const clock = FakeTimers.createClock(0);
    const locks = new SlowLockTable(clock, 10);
    const watchedAt: number[] = [];
    let refusing = true;
    const breakWatch = new Subject<void>();
    // Consul refusing the watch (an ACL token without read on the key): an error no retry inside the store mends.
    const refused = (): Observable<never> => throwError(() => new Error('Consul answered 403: Permission denied'));
    const store: Store = {
      ...locks.store(),
      watch: (prefix, index) =>
        defer(() => {
          watchedAt.push(clock.now);
          return refusing ? refused() : merge(locks.store().watch(prefix, index), breakWatch.pipe(mergeMap(refused)));
        }),
    };
    const election = new LeaderElection({ store, locks, key: keys.leader, ttlSeconds: 15, lockDelaySeconds: 15, log: testLog, clock: controllerClock(clock), identity: { host: 'test-host', pid: 1 } });
    election.start();
    await clock.tickAsync(60_000);
    const gaps = (since: number): number[] => watchedAt.filter((at) => at >= since).map((at) => at - since);
    assert.deepEqual(gaps(0), [0, 1_000, 3_000, 7_000, 15_000, 25_000, 35_000, 45_000, 55_000]);
    refusing = false;
    await clock.tickAsync(10_000);
    assert.deepEqual(gaps(60_000), [5_000], 'the watch answering');
    refusing = true;
    breakWatch.next();
    await clock.tickAsync(10_000);
    assert.deepEqual(gaps(70_000), [71_000, 73_000, 77_000].map((at) => at - 70_000));
    const stopped = election.stop();
    await clock.tickAsync(1_000);
    await stopped;
  });
});

describe('the leader key, read', () => {
  it('names the leader only from a record of the right shape; a key edited into another shape or into bad JSON names no one, with the reason', () => {
    const since = '2026-01-01T00:00:00.000Z';
    assert.deepEqual(parseLeaderRecord(JSON.stringify({ host: 'ctl-a', pid: 7, since })), { host: 'ctl-a', pid: 7, since });
    for (const value of ['3', 'null', '[]', JSON.stringify({ host: 'ctl-a', pid: '7', since }), JSON.stringify({ host: 'ctl-a', pid: 7, since: 'yesterday' })]) {
      assert.throws(() => parseLeaderRecord(value), /^Error: not a leader record: expected/, value);
    }
    assert.throws(() => parseLeaderRecord('{"host"'), /^Error: not valid JSON: /);
  });
});
