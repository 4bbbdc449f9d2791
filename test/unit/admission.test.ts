import assert from 'node:assert/strict';
import type { RouteRecord, SessionRecord, SessionStatus } from '../../controller/api/types.js';
import { Admission, shownEstimate } from '../../controller/controller/admission.js';
import { Cache, RecordCache, type CachedRecord } from '../../controller/controller/informer.js';

describe('admission: the waiting list', () => {
  let sessions: Cache<CachedRecord<SessionRecord>>;
  let statuses: RecordCache<SessionStatus>;
  let routes: Cache<CachedRecord<RouteRecord>>;
  let requeued: string[];
  let admission: Admission;
  let index = 0;

  const record = <T>(id: string, value: T): CachedRecord<T> => ({ id, entry: { key: id, createIndex: 1, modifyIndex: ++index }, value });
  const id = (n: number): string => `s${String(n).padStart(3, '0')}`;
  const addSession = (n: number, createdAt = new Date(n * 1000).toISOString()): void =>
    sessions.upsert(id(n), record(id(n), { metadata: { id: id(n), owner: `user-${n}`, createdAt, generation: 1 }, spec: { template: 'sdl', parameters: {} } }));
  const addClaim = (n: number): void => routes.upsert(id(n), record(id(n), { sessionId: id(n), hosts: [], ports: [] }));
  const position = (n: number): number | undefined => {
    const decision = admission.decide(id(n));
    return decision.admit ? undefined : decision.position;
  };

  /** The time the estimate tests run at. */
  const now = 1_000_000;
  const minute = 60_000;
  const iso = (ms: number): string => new Date(ms).toISOString();
  /** Gives session n a status: Ready unless `fields` say otherwise. */
  const setStatus = (n: number, fields: Partial<SessionStatus>): void =>
    statuses.upsert(id(n), record(id(n), { phase: 'Ready', observedGeneration: 1, conditions: [], endpoints: {}, events: [], ...fields }));

  beforeEach(() => {
    sessions = new Cache();
    statuses = new RecordCache();
    routes = new Cache();
    requeued = [];
    admission = new Admission(
      { sessions, statuses, routes, workloads: new Cache() },
      { maxSessions: 10, maxStarting: 10, sessionsPerUser: 1, capacityRetryMs: 60_000 },
      () => now,
      (requeuedId) => requeued.push(requeuedId),
      () => undefined,
    );
  });

  it('is loaded from filled caches at once, requeueing nobody, in the order the sessions were created', () => {
    // A restart: 200 sessions, the first ten holding the cluster's ten slots, as the caches hold them once synced.
    for (let n = 199; n >= 0; n--) addSession(n);
    for (let n = 0; n < 10; n++) addClaim(n);
    admission.load(sessions.ids());
    assert.deepEqual(requeued, []);
    assert.equal(admission.waitingCount, 190);
    assert.equal(position(0), undefined);
    assert.equal(position(10), 1);
    assert.equal(position(199), 190);
    assert.equal(admission.decide(id(10)).admit, false);
  });

  it('after loading, moves everyone behind a change and lets the head go when a slot frees up', () => {
    for (let n = 0; n < 15; n++) addSession(n);
    for (let n = 0; n < 10; n++) addClaim(n);
    admission.load(sessions.ids());
    // Session 12 is deleted: 13 and 14 move up.
    sessions.remove(id(12));
    admission.refresh(id(12));
    assert.deepEqual(requeued.sort(), [id(13), id(14)]);
    assert.equal(position(13), 3);
    // Session 3 ends and gives back its claim: the head (10) may now be admitted, and nobody else moved.
    requeued = [];
    sessions.remove(id(3));
    routes.remove(id(3));
    admission.refresh(id(3));
    assert.deepEqual(requeued, [id(10)]);
    assert.deepEqual(admission.decide(id(10)), { admit: true });
    assert.equal(position(11), 2);
  });

  it('estimates starts as a restarted controller would, once starting sessions became Ready (their start no longer counted)', () => {
    const limited = (): Admission =>
      new Admission({ sessions, statuses, routes, workloads: new Cache() }, { maxSessions: 10, maxStarting: 1, sessionsPerUser: 1, capacityRetryMs: 60_000 }, () => now, () => undefined, () => undefined);
    const live = limited();
    live.load([]);
    // Sessions 0 and 1 were admitted, started in 30 s each, and became Ready (an expiry with it), one change at a time.
    for (const n of [0, 1]) {
      addSession(n);
      live.refresh(id(n));
      addClaim(n);
      live.refresh(id(n));
      setStatus(n, { phase: 'Starting', admittedAt: iso(900_000) });
      live.refresh(id(n));
      setStatus(n, { phase: 'Ready', admittedAt: iso(900_000), readyAt: iso(930_000), expiresAt: iso(now + 3_600_000) });
      live.refresh(id(n));
    }
    // Session 2 is starting; with maxStarting 1, sessions 3, 4 and 5 each wait for the start before them.
    addSession(2);
    addClaim(2);
    setStatus(2, { phase: 'Starting', admittedAt: iso(990_000) });
    live.refresh(id(2));
    for (const n of [3, 4, 5]) {
      addSession(n);
      live.refresh(id(n));
    }
    const restarted = limited();
    restarted.load(sessions.ids());
    const estimates = (of: Admission): Array<number | undefined> => [3, 4, 5].map((n) => {
      const decision = of.decide(id(n));
      return decision.admit ? undefined : decision.estimatedStartAt;
    });
    assert.deepEqual(estimates(restarted), [1_020_000, 1_050_000, 1_080_000]);
    assert.deepEqual(estimates(live), estimates(restarted));
  });

  it('on a refresh of the estimates, requeues only the waiting sessions whose status would show another', () => {
    const estimatesChanged: string[] = [];
    const limited = new Admission(
      { sessions, statuses, routes, workloads: new Cache() },
      { maxSessions: 3, maxStarting: 10, sessionsPerUser: 1, capacityRetryMs: 60_000 },
      () => now,
      (requeuedId) => requeued.push(requeuedId),
      () => estimatesChanged.push('changed'),
    );
    // Sessions 0-2 run, expiring in 1, 2 and 3 hours; 3-7 wait, and 3-5 show those times as their estimates.
    const expire = (n: number, inMinutes: number): void =>
      setStatus(n, { admittedAt: iso(now - 2 * minute), readyAt: iso(now - minute), expiresAt: iso(now + inMinutes * minute) });
    for (let n = 0; n < 8; n++) addSession(n);
    for (let n = 0; n < 3; n++) {
      addClaim(n);
      expire(n, 60 * (n + 1));
    }
    limited.load(sessions.ids());
    for (let n = 3; n < 8; n++) {
      const decision = limited.decide(id(n));
      const estimate = shownEstimate(undefined, decision.admit ? undefined : decision.estimatedStartAt, now);
      setStatus(n, { phase: 'Waiting', ...(estimate === undefined ? {} : { estimatedStartAt: estimate }) });
    }
    assert.deepEqual([3, 4, 5].map((n) => statuses.get(id(n))?.value?.estimatedStartAt), [iso(now + 60 * minute), iso(now + 120 * minute), iso(now + 180 * minute)]);

    // Keepalives: session 1 now expires in 160 minutes (position 2's estimate moves 40 minutes), session 2 in
    // 190 (position 3's moves 10 minutes, within what its status shows); session 6's status is being written.
    expire(1, 160);
    limited.refresh(id(1));
    expire(2, 190);
    limited.refresh(id(2));
    statuses.writing(id(6), '{}', statuses.get(id(6))!.value!);
    assert.deepEqual(requeued, []);
    assert.equal(estimatesChanged.length, 2);
    limited.refreshEstimates();
    assert.deepEqual(requeued, [id(4), id(6)]);

    // Nothing shown changes: nobody is requeued.
    requeued = [];
    statuses.takeWritten(id(6), '{}');
    setStatus(4, { phase: 'Waiting', estimatedStartAt: iso(now + 160 * minute) });
    expire(0, 65);
    limited.refresh(id(0));
    limited.refreshEstimates();
    assert.deepEqual(requeued, []);
  });

  it('estimates starts behind the sessions beyond a limit the operator lowered, which must end before anyone is let in', () => {
    const restarted = (maxSessions: number, maxStarting: number): Admission =>
      new Admission({ sessions, statuses, routes, workloads: new Cache() }, { maxSessions, maxStarting, sessionsPerUser: 1, capacityRetryMs: 60_000 }, () => now, () => undefined, () => undefined);
    const estimate = (of: Admission, n: number): number | undefined => {
      const decision = of.decide(id(n));
      return decision.admit ? undefined : decision.estimatedStartAt;
    };
    // Sessions 0-2 run (expiring in 10, 20 and 30 minutes) and session 3 waits; the controller restarts with
    // maxSessions lowered from 3 to 2: two of the three must end before session 3 has a slot.
    for (let n = 0; n < 4; n++) addSession(n);
    for (let n = 0; n < 3; n++) {
      addClaim(n);
      setStatus(n, { admittedAt: iso(now - 2 * minute), readyAt: iso(now - minute), expiresAt: iso(now + 10 * (n + 1) * minute) });
    }
    const fewerSessions = restarted(2, 10);
    fewerSessions.load(sessions.ids());
    assert.equal(estimate(fewerSessions, 3), now + 20 * minute);

    // Sessions 0-2 start instead (admitted 20, 10 and 0 s ago, a start taking 30 s when none has been seen),
    // with maxStarting lowered from 3 to 1: all three must be done before session 3 may start.
    for (let n = 0; n < 3; n++) setStatus(n, { phase: 'Starting', admittedAt: iso(now - 10_000 * (2 - n)) });
    const fewerStarts = restarted(10, 1);
    fewerStarts.load(sessions.ids());
    assert.equal(estimate(fewerStarts, 3), now + 30_000);
  });

  it('estimates that the slot of a session being torn down (deleted, or failed) frees as soon as its job is gone', () => {
    const limited = new Admission(
      { sessions, statuses, routes, workloads: new Cache() },
      { maxSessions: 2, maxStarting: 10, sessionsPerUser: 1, capacityRetryMs: 60_000 },
      () => now,
      () => undefined,
      () => undefined,
    );
    const estimate = (n: number): number | undefined => {
      const decision = limited.decide(id(n));
      return decision.admit ? undefined : decision.estimatedStartAt;
    };
    // Sessions 0 and 1 run, expiring in 1 and 2 hours; sessions 2 and 3 wait for their slots.
    for (let n = 0; n < 4; n++) addSession(n);
    for (const n of [0, 1]) {
      addClaim(n);
      setStatus(n, { admittedAt: iso(now - 2 * minute), readyAt: iso(now - minute), expiresAt: iso(now + 60 * (n + 1) * minute) });
    }
    limited.load(sessions.ids());
    assert.deepEqual([estimate(2), estimate(3)], [now + 60 * minute, now + 120 * minute]);

    // Session 1 is deleted: Terminating, it holds its slot only until its routes and job are gone.
    const deleted = sessions.get(id(1))!.value!;
    sessions.upsert(id(1), record(id(1), { ...deleted, metadata: { ...deleted.metadata, deletionRequestedAt: iso(now - 1000), deletionReason: 'Deleted' } }));
    setStatus(1, { phase: 'Terminating', readyAt: iso(now - minute) });
    limited.refresh(id(1));
    assert.deepEqual([estimate(2), estimate(3)], [now, now + 60 * minute]);

    // Session 0 fails: its slot is free once its job has stopped.
    setStatus(0, { phase: 'Failed', readyAt: iso(now - minute), failedAt: iso(now - 1000) });
    limited.refresh(id(0));
    assert.deepEqual([estimate(2), estimate(3)], [now, now]);
  });

  it('tells every waiting session when another limit keeps the list waiting, though nobody moved and no room appeared', () => {
    const limited = new Admission(
      { sessions, statuses, routes, workloads: new Cache() },
      { maxSessions: 2, maxStarting: 1, sessionsPerUser: 1, capacityRetryMs: 60_000 },
      () => now,
      (requeuedId) => requeued.push(requeuedId),
      () => undefined,
    );
    const reason = (n: number): string | undefined => {
      const decision = limited.decide(id(n));
      return decision.admit ? undefined : decision.reason;
    };
    // Session 0 is Ready and session 1 starting: both slots are in use; sessions 2 and 3 wait.
    for (let n = 0; n < 4; n++) addSession(n);
    for (const n of [0, 1]) addClaim(n);
    statuses.upsert(id(0), record(id(0), { phase: 'Ready', observedGeneration: 1, conditions: [], endpoints: {}, events: [], admittedAt: iso(900_000), readyAt: iso(930_000) }));
    statuses.upsert(id(1), record(id(1), { phase: 'Starting', observedGeneration: 1, conditions: [], endpoints: {}, events: [], admittedAt: iso(990_000) }));
    limited.load(sessions.ids());
    assert.deepEqual([reason(2), reason(3)], ['ClusterFull', 'ClusterFull']);
    // Session 0 ends: a slot is free, but session 1's start holds the only starting slot.
    sessions.remove(id(0));
    routes.remove(id(0));
    limited.refresh(id(0));
    assert.deepEqual([reason(2), reason(3)], ['StartLimit', 'StartLimit']);
    assert.deepEqual(requeued.sort(), [id(2), id(3)]);
  });

  it('takes the session that leaves out of the list, not another, even when a creation time cannot be ordered', () => {
    for (let n = 0; n < 10; n++) {
      addSession(n);
      addClaim(n);
    }
    // Created out of id order, one at a time Date.parse cannot read (a leap second: the schema refuses it,
    // should it get in anyway): its place in the list is arbitrary, and a search by order can miss.
    addSession(10, new Date(12_000).toISOString());
    addSession(11, '2016-12-31T23:59:60Z');
    addSession(12, new Date(11_000).toISOString());
    addSession(13, new Date(14_000).toISOString());
    admission.load(sessions.ids());
    sessions.remove(id(10));
    admission.refresh(id(10));
    assert.deepEqual(admission.waitingIds().sort(), [id(11), id(12), id(13)]);
  });
});
