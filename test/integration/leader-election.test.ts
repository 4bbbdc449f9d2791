import assert from 'node:assert/strict';
import { LeaderElection, type LeaderRecord } from '../../controller/controller/leader.js';
import { ConsulStore } from '../../controller/store/consul-store.js';
import { MIN_SESSION_TTL_SECONDS, type LockService } from '../../controller/store/lock.js';
import { ConsulDouble } from '../fakes/consul.js';
import { merge, mergeMap, Subject, throwError } from 'rxjs';
import type { Store } from '../../controller/store/store.js';
import type { Clock } from '../../controller/util/clock.js';
import { createSession, ControllerHarness, delegatingStore, keys, testLog } from '../support/controller-harness.js';
import { FakeScheduler } from '../support/fake-scheduler.js';
import { waitFor } from '../support/wait.js';

const TTL_SECONDS = MIN_SESSION_TTL_SECONDS;
const LOCK_DELAY_SECONDS = 1;

/** Lock calls that fail while `cut` is set: one replica's network partition, without releasing anything. */
class PartitionableLocks implements LockService {
  cut = false;
  constructor(private readonly inner: LockService) {}
  createSession: LockService['createSession'] = (options) => this.pass(() => this.inner.createSession(options));
  renewSession = (id: string): Promise<boolean> => this.pass(() => this.inner.renewSession(id));
  destroySession = (id: string): Promise<void> => this.pass(() => this.inner.destroySession(id));
  acquire = (key: string, value: string, session: string): Promise<boolean> => this.pass(() => this.inner.acquire(key, value, session));
  release = (key: string, session: string): Promise<boolean> => this.pass(() => this.inner.release(key, session));
  private async pass<T>(call: () => Promise<T>): Promise<T> {
    if (this.cut) throw new Error('partitioned');
    return call();
  }
}

/** Timers that fire only when told to: what a test steps through in order. */
class SteppedClock implements Clock {
  private readonly timers = new Map<number, () => void>();
  private nextId = 0;
  now(): number {
    return Date.now();
  }
  setTimeout(callback: () => void, _delayMs: number): unknown {
    this.timers.set(++this.nextId, callback);
    return this.nextId;
  }
  clearTimeout(timer: unknown): void {
    this.timers.delete(timer as number);
  }
  /** Fires every timer pending now, in the order they were set (one cleared by an earlier one does not fire). */
  fireAll(): void {
    for (const [id, callback] of [...this.timers]) if (this.timers.delete(id)) callback();
  }
}

interface Replica {
  readonly election: LeaderElection;
  readonly locks: PartitionableLocks;
  /** When leading$ last changed to each value (ms since the epoch). */
  readonly changedAt: { true?: number; false?: number };
}

/** The store's locks, with `acquire` played by the test. */
function locksAcquiringWith(store: LockService, acquire: LockService['acquire']): LockService {
  return {
    createSession: (options) => store.createSession(options),
    renewSession: (id) => store.renewSession(id),
    destroySession: (id) => store.destroySession(id),
    release: (key, session) => store.release(key, session),
    acquire,
  };
}

describe('Leader election (Consul double)', function () {
  this.timeout(30_000);
  let double: ConsulDouble;
  let store: ConsulStore;
  let replicas: Replica[];

  /** A replica on `clock` (real time unless a test passes timers of its own). */
  function replica(pid: number, clock?: Clock): Replica {
    const locks = new PartitionableLocks(store);
    const election = new LeaderElection({
      store,
      locks,
      key: keys.leader,
      ttlSeconds: TTL_SECONDS,
      lockDelaySeconds: LOCK_DELAY_SECONDS,
      log: testLog,
      identity: { host: 'test-host', pid },
      retryMs: 200,
      clock,
    });
    const changedAt: Replica['changedAt'] = {};
    election.leading$.subscribe((leading) => {
      changedAt[String(leading) as 'true' | 'false'] = Date.now();
    });
    const created = { election, locks, changedAt };
    replicas.push(created);
    return created;
  }

  const leaders = (): Replica[] => replicas.filter((r) => r.election.leading);

  beforeEach(async function () {
    double = await ConsulDouble.start();
    store = new ConsulStore({ address: double.address, log: testLog });
    replicas = [];
  });

  afterEach(async function () {
    for (const r of replicas) {
      r.locks.cut = false;
      await r.election.stop();
    }
    await store.close();
    await double.stop();
  });

  it('elects exactly one of three, which writes itself into the leader key', async function () {
    const all = [replica(1), replica(2), replica(3)];
    for (const r of all) r.election.start();
    const [leader] = await waitFor('a leader', () => (leaders().length > 0 ? leaders() : undefined));
    const entry = await store.get(keys.leader);
    const record = JSON.parse(entry!.value) as LeaderRecord;
    assert.equal(record.pid, leader.election.identity.pid);
    assert.ok(!Number.isNaN(Date.parse(record.since)));
    assert.ok(entry!.session);
    await waitFor('standbys see the leader', () => all.every((r) => r.election.leader()?.pid === record.pid));
    assert.equal(leaders().length, 1);
  });

  it('watches the key again after a failed watch, even when a retry to win it runs first, and so takes over', async function () {
    const a = replica(1).election;
    a.start();
    await waitFor('a leads', () => a.leading);
    // B's watch of the key fails once (Consul answering 403), and its first attempt to win it fails (a 500).
    const breakWatch = new Subject<void>();
    const flakyStore: Store = { ...delegatingStore(store), watch: (prefix, index) => merge(store.watch(prefix, index), breakWatch.pipe(mergeMap(() => throwError(() => new Error('Consul answered 403'))))) };
    let acquireFailures = 1;
    const flakyLocks = locksAcquiringWith(store, async (key, value, session) => {
      if (acquireFailures-- > 0) throw new Error('Consul answered 500');
      return store.acquire(key, value, session);
    });
    const clock = new SteppedClock();
    const b = new LeaderElection({ store: flakyStore, locks: flakyLocks, key: keys.leader, ttlSeconds: TTL_SECONDS, lockDelaySeconds: LOCK_DELAY_SECONDS, log: testLog, identity: { host: 'test-host', pid: 2 }, retryMs: 200, clock });
    replicas.push({ election: b, locks: new PartitionableLocks(store), changedAt: {} });
    b.start();
    await waitFor('b sees a lead', () => b.leader()?.pid === 1);
    breakWatch.next();
    // The retry to win the key fires first: it must not cancel the watch's restart.
    clock.fireAll();
    await a.stop();
    await waitFor('b takes over once a released the key', () => b.leading);
  });

  it('elects a leader again at once when Consul lost its state, sessions and leader key included', async function () {
    // Timers that never fire: the replicas must act on what Consul answers, not on a retry or on their next
    // renewal (TTL/2 later), which is all that would tell them that their sessions are gone.
    const clock = new SteppedClock();
    const relocked = async (): Promise<boolean> => {
      const entry = await store.get(keys.leader);
      if (entry?.session === undefined || leaders().length !== 1) return false;
      return (JSON.parse(entry.value) as LeaderRecord).pid === leaders()[0]!.election.identity.pid;
    };
    // A leader alone must see that the key it held is free, and win it again itself.
    replica(1, clock).election.start();
    await waitFor('a leader', () => leaders().length === 1);
    await waitFor('the leader watches', () => double.heldQueries >= 1);
    double.reset();
    await waitFor('the leader key locked again by the leader alone', relocked);
    // With a standby, whichever of them locks the key leads, and only that one.
    replica(2, clock).election.start();
    await waitFor('the standby watches', () => double.heldQueries >= 2);
    double.reset();
    await waitFor('the leader key locked again by the only leader', relocked);
  });

  it('keeps to its retry pace when locking fails while its session is alive', async function () {
    let attempts = 0;
    const refusing = locksAcquiringWith(store, async () => {
      attempts++;
      throw new Error('Consul answered 403: Permission denied');
    });
    const clock = new SteppedClock();
    const election = new LeaderElection({ store, locks: refusing, key: keys.leader, ttlSeconds: TTL_SECONDS, lockDelaySeconds: LOCK_DELAY_SECONDS, log: testLog, identity: { host: 'test-host', pid: 1 }, retryMs: 200, clock });
    replicas.push({ election, locks: new PartitionableLocks(store), changedAt: {} });
    election.start();
    // The check of the session after a failure is answered (alive) long before the retry is due.
    await waitFor('the session checked', () => double.requests.some((r) => r.path.startsWith('/v1/session/renew/') && r.status === 200));
    const before = attempts;
    for (let i = 0; i < 5; i++) await store.get(keys.leader);
    assert.equal(attempts, before, 'no attempt but the scheduled retry follows a failure');
    clock.fireAll();
    await waitFor('the retry', () => attempts > before);
  });

  it('hands over at once when the leader stops, with no lock-delay to wait out', async function () {
    // Timers that never fire: a standby refused during a lock-delay would wait for its retry, and never win.
    const clock = new SteppedClock();
    for (const pid of [1, 2, 3]) replica(pid, clock).election.start();
    const [leader] = await waitFor('a leader', () => (leaders().length > 0 ? leaders() : undefined));
    await waitFor('standbys have sessions and watch', () => double.heldQueries >= 3);
    await leader.election.stop();
    const [next] = await waitFor('a new leader', () => (leaders().length > 0 ? leaders() : undefined));
    assert.notEqual(next, leader);
    assert.equal(leaders().length, 1);
  });

  it('replaces a leader that cannot renew: it stops leading before its session expires, another wins after TTL + lock-delay, and its fenced writes fail', async function () {
    const a = replica(1);
    a.election.start();
    await waitFor('a leads', () => a.election.leading);
    const b = replica(2);
    b.election.start();
    await waitFor('b watches', () => double.heldQueries >= 2);
    const fence = a.election.fence()!;
    assert.equal(await store.transaction([fence, { verb: 'put', key: 'manticore/probe', value: 'a' }]), true);

    const cutAt = Date.now();
    a.locks.cut = true;
    await waitFor('b leads', () => b.election.leading, (TTL_SECONDS + LOCK_DELAY_SECONDS + 2) * 1000, 5);
    const failoverMs = Date.now() - cutAt;
    process.stdout.write(`      failover took ${failoverMs} ms (TTL ${TTL_SECONDS} s, lock-delay ${LOCK_DELAY_SECONDS} s)\n`);
    assert.ok(failoverMs <= (TTL_SECONDS + LOCK_DELAY_SECONDS + 1) * 1000, `failover took ${failoverMs} ms`);

    // a stepped down on its own, before its session could have ended (b wins at the earliest lock-delay after that).
    assert.equal(a.election.leading, false);
    const steppedDownAt = a.changedAt.false!;
    assert.ok(steppedDownAt > cutAt);
    assert.ok(steppedDownAt <= b.changedAt.true! - LOCK_DELAY_SECONDS * 1000, `a stepped down ${b.changedAt.true! - steppedDownAt} ms before b won`);

    // The deposed leader's late write fails; the new leader's goes through.
    assert.equal(await store.transaction([fence, { verb: 'put', key: 'manticore/probe', value: 'late' }]), false);
    assert.equal((await store.get('manticore/probe'))!.value, 'a');
    assert.equal(await store.transaction([b.election.fence()!, { verb: 'put', key: 'manticore/probe', value: 'b' }]), true);

    // Once its network is back, a finds its session gone, starts a new one and stands by.
    a.locks.cut = false;
    await waitFor('a stands by with a new session', () => a.election.fence() !== undefined && a.election.leader()?.pid === 2);
    assert.equal(leaders().length, 1);
  });
});

describe('Controllers with leader election (Consul double)', function () {
  this.timeout(30_000);

  it('lets only the leader register jobs, and the standby take over without registering anything twice', async function () {
    const double = await ConsulDouble.start();
    const store = new ConsulStore({ address: double.address, log: testLog });
    const scheduler = new FakeScheduler();
    const h = new ControllerHarness(store, scheduler);
    // Timers that never fire: the standby takes over on seeing the key released, not on a retry.
    const clock = new SteppedClock();
    const election = (pid: number): LeaderElection =>
      new LeaderElection({ store, locks: store, key: keys.leader, ttlSeconds: TTL_SECONDS, lockDelaySeconds: LOCK_DELAY_SECONDS, log: testLog, identity: { host: 'test-host', pid }, clock });
    const first = await h.startController(store, election(1));
    await waitFor('the first leads', () => first.leadership.leading);
    const second = await h.startController(store, election(2));
    try {
      const one = await createSession(store);
      await waitFor('job of one registered', () => scheduler.registrations.some((job) => job.id.includes(one)));
      assert.equal(second.leadership.leading, false);

      await first.stop();
      await waitFor('the second leads', () => second.leadership.leading);
      const two = await createSession(store);
      await waitFor('job of two registered', () => scheduler.registrations.some((job) => job.id.includes(two)));
      await waitFor('queue drained', () => second.queue.idle);
      const ids = scheduler.registrations.map((job) => job.id);
      assert.deepEqual(ids, [...new Set(ids)], `registered twice: ${ids.join(', ')}`);
    } finally {
      await second.stop();
      await first.stop();
      await scheduler.close();
      await store.close();
      await double.stop();
    }
  });
});
