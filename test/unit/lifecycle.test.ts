import assert from 'node:assert/strict';
import sinon from 'sinon';
import type { SessionRecord, SessionStatus } from '../../controller/api/types.js';
import { estimateRefreshMs } from '../../controller/controller/controller.js';
import { expiryOf, idleTimeoutProblem, idleWarningCondition, sessionExpiryPolicy, type ExpiryPolicy } from '../../controller/controller/lifecycle.js';
import { SessionReconciler } from '../../controller/controller/reconciler.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import {
  capturingLogger,
  condition,
  ControllerHarness,
  countingStore,
  createSession,
  defaultPolicy,
  keys,
  laggingWatch,
  makeReady,
  requestDeletion,
  routesOf,
  statusOf,
  statusWhen,
} from '../support/controller-harness.js';
import { FakeScheduler } from '../support/fake-scheduler.js';
import { waitFor } from '../support/wait.js';

const minute = 60_000;

async function setActivity(h: ControllerHarness, id: string, at: number): Promise<void> {
  const entry = await h.store.get(keys.activity(id));
  assert.equal(await h.store.put(keys.activity(id), JSON.stringify({ lastActivityAt: new Date(at).toISOString() }), { cas: entry?.modifyIndex ?? 0 }), true);
}

/** Every status the session is given from now on, in order (a watch sees each write, however brief). */
function recordStatuses(h: ControllerHarness, id: string): { seen: SessionStatus[]; stop: () => void } {
  const seen: SessionStatus[] = [];
  const subscription = h.store.watch(keys.statuses).subscribe((step) => {
    if (step.kind !== 'changes') return;
    for (const change of step.changes) if (change.type === 'put' && change.entry.key === keys.status(id)) seen.push(JSON.parse(change.entry.value) as SessionStatus);
  });
  return { seen, stop: () => subscription.unsubscribe() };
}

/** Gives the session a new spec (generation 2), as an edit of its record by its user or an operator. */
async function editSpec(h: ControllerHarness, id: string, edit: (spec: SessionRecord['spec']) => void): Promise<void> {
  const entry = (await h.store.get(keys.session(id)))!;
  const record = JSON.parse(entry.value) as SessionRecord;
  edit(record.spec);
  record.metadata.generation = 2;
  assert.equal(await h.store.put(keys.session(id), JSON.stringify(record), { cas: entry.modifyIndex }), true);
}

async function gone(h: ControllerHarness, id: string): Promise<void> {
  await waitFor(`session ${id} removed`, async () => (await h.store.get(keys.session(id))) === undefined);
}

/** The scheduler turns the session's first placement away: it waits with its job and claim released; its status then. */
async function turnAway(h: ControllerHarness, id: string): Promise<SessionStatus> {
  await waitFor('registered', () => h.scheduler.workload(id));
  h.scheduler.place(id, 'Resources exhausted on 1 node: memory');
  const waiting = await statusWhen(h.store, id, (s) => condition(s, 'Admitted') === 'False/InsufficientCapacity');
  await waitFor('its job and claim released', async () => h.scheduler.workload(id) === undefined && (await routesOf(h.store, id)) === undefined);
  return waiting;
}

/**
 * A scheduler whose job removals (a deleted session's purge, a failed one's stop) finish when the test says
 * (`finishRemovals()`), as a Nomad job takes a while to go.
 */
class SlowRemovalScheduler extends FakeScheduler {
  readonly removing = new Map<string, 'deregister' | 'stop'>();

  override async deregister(jobId: string): Promise<void> {
    this.removing.set(jobId, 'deregister');
  }

  override async stop(jobId: string): Promise<void> {
    this.removing.set(jobId, 'stop');
  }

  async finishRemovals(): Promise<void> {
    for (const [jobId, how] of this.removing) await (how === 'stop' ? super.stop(jobId) : super.deregister(jobId));
    this.removing.clear();
  }
}

/**
 * Ends the session holding the only slot of `limits` (`end`: deleted, or failed) while `next` waits for it,
 * and shows that `next` is admitted only once the ended session's job is gone. Returns the ended session.
 */
async function slotFreedByRemoval(h: ControllerHarness<SlowRemovalScheduler>, waitReason: string, end: (holder: string) => Promise<void>): Promise<string> {
  const { scheduler } = h;
  await h.start();
  const [holder, next] = await createInOrder(h, ['ann', 'bob']);
  await statusWhen(h.store, next!, (s) => condition(s, 'Admitted') === `False/${waitReason}`);
  await end(holder!);
  await waitFor('the removal of its job asked for', () => scheduler.removing.size === 1);
  await waitFor('nothing queued or in flight', () => h.controller.queue.length === 0 && h.controller.queue.inFlight === 0);
  assert.equal(await routesOf(h.store, holder!), undefined, 'its routes are gone');
  assert.equal(await routesOf(h.store, next!), undefined, 'the next one waits while the job holds its resources');
  assert.equal(condition(await statusOf(h.store, next!), 'Admitted'), `False/${waitReason}`);
  await scheduler.finishRemovals();
  await waitFor('the next one admitted once the job is gone', () => routesOf(h.store, next!));
  return holder!;
}

/**
 * A session's expiry as the controller's cache holds it, which the waiting list's estimates are refreshed
 * from: the status writes reach it after the store, and one seen only after a refresh waits for the next.
 */
function cachedExpiry(h: ControllerHarness, id: string): number | undefined {
  const expiresAt = h.controller.statuses.cache.get(id)?.value?.expiresAt;
  return expiresAt === undefined ? undefined : Date.parse(expiresAt);
}

/** Sessions created one second apart, oldest first, so the waiting list order is known. */
async function createInOrder(h: ControllerHarness, owners: string[]): Promise<string[]> {
  const base = Date.now() - 60 * minute;
  const ids: string[] = [];
  for (const [n, owner] of owners.entries()) ids.push(await createSession(h.store, { owner, createdAt: base + n * 1000 }));
  return ids;
}

describe('lifecycle: waiting list and room', () => {
  let h: ControllerHarness;
  afterEach(async () => {
    sinon.restore();
    await h.stop();
  });

  it('admits first come first served up to maxSessions and shows everyone else their position', async () => {
    h = await ControllerHarness.embedded({ limits: { maxSessions: 2 } });
    const [a, b, c, d] = await createInOrder(h, ['ann', 'bob', 'cid', 'dee']);
    await makeReady(h, a!, 31000);
    await makeReady(h, b!, 31010);
    const third = await statusWhen(h.store, c!, (s) => s.phase === 'Waiting' && s.queuePosition === 1);
    assert.equal(condition(third, 'Admitted'), 'False/ClusterFull');
    assert.match(third.conditions[0]!.message, /all 2 session slots are in use/);
    await statusWhen(h.store, d!, (s) => s.phase === 'Waiting' && s.queuePosition === 2);
    assert.equal(h.scheduler.workload(c!), undefined, 'nothing is scheduled for a waiting session');
    assert.equal(await routesOf(h.store, c!), undefined, 'nor are addresses reserved');

    // The running sessions expire 30 minutes after their last activity: the waiting list can tell when it moves.
    await waitFor('both expiries in the cache', () => cachedExpiry(h, a!) !== undefined && cachedExpiry(h, b!) !== undefined);
    h.tick(estimateRefreshMs);
    const [expiresA, expiresB] = [(await statusOf(h.store, a!))!.expiresAt!, (await statusOf(h.store, b!))!.expiresAt!].map(Date.parse);
    const estimateC = Date.parse((await statusWhen(h.store, c!, (s) => s.estimatedStartAt !== undefined)).estimatedStartAt!);
    assert.ok(Math.abs(estimateC - Math.min(expiresA!, expiresB!)) <= 1000, `estimate ${estimateC} vs expiry ${Math.min(expiresA!, expiresB!)}`);

    await requestDeletion(h.store, a!);
    await gone(h, a!);
    await waitFor('cid admitted', () => routesOf(h.store, c!));
    const last = await statusWhen(h.store, d!, (s) => s.queuePosition === 1);
    assert.equal(last.phase, 'Waiting', 'dee moved up when someone ahead left');
    await makeReady(h, c!, 31020);
    assert.equal(h.scheduler.workload(d!), undefined);
  });

  it('when running sessions\' expiry times move, reconciles only the waiting sessions whose shown estimate changes', async () => {
    h = await ControllerHarness.embedded({ limits: { maxSessions: 5 }, policy: { idleMaxTimeoutMs: 600 * minute } });
    const drained = (): boolean => h.controller.queue.length === 0 && h.controller.queue.inFlight === 0;
    // Five running sessions idle out after 1, 2, 3, 4 and 10 hours: they are the estimates of waiting positions 1-5.
    const base = Date.now() - 60 * minute;
    const running: string[] = [];
    for (const [n, hours] of [1, 2, 3, 4, 10].entries()) {
      running.push(await createSession(h.store, { owner: `run-${n}`, createdAt: base + n * 1000, spec: { idle: { timeoutSeconds: hours * 3600 } } }));
    }
    const waiting: string[] = [];
    for (let n = 0; n < 50; n++) waiting.push(await createSession(h.store, { owner: `wait-${n}`, createdAt: base + (5 + n) * 1000 }));
    for (const [n, id] of running.entries()) await makeReady(h, id, 31000 + 10 * n);
    await waitFor('every expiry in the cache', () => running.every((id) => cachedExpiry(h, id) !== undefined));
    h.tick(estimateRefreshMs);
    await statusWhen(h.store, waiting[4]!, (s) => s.estimatedStartAt !== undefined);
    await waitFor('settled', drained);
    const before = await Promise.all(waiting.map((id) => statusOf(h.store, id)));
    const expiryOf = async (id: string): Promise<number> => Date.parse((await statusOf(h.store, id))!.expiresAt!);
    const reconciled = sinon.spy(SessionReconciler.prototype, 'reconcile');
    const waitingReconciled = (): string[] => reconciled.args.map(([id]) => id).filter((id) => waiting.includes(id));

    // Half an hour on, the first two users' keepalives move their sessions' expiries by 30 minutes: positions 1
    // and 2 now start half an hour later, 3 to 5 keep their estimates, and the rest have none.
    h.tick(30 * minute);
    const [expiresA, expiresB] = [h.clock.now + 60 * minute, h.clock.now + 120 * minute];
    await setActivity(h, running[0]!, h.clock.now);
    await setActivity(h, running[1]!, h.clock.now);
    await waitFor('both new expiries in the cache', () => cachedExpiry(h, running[0]!) === expiresA && cachedExpiry(h, running[1]!) === expiresB && drained());
    h.tick(estimateRefreshMs);
    await waitFor('settled after the refresh', drained);
    assert.deepEqual(waitingReconciled().sort(), [waiting[0]!, waiting[1]!]);
    for (const [n, expiry] of [expiresA, expiresB].entries()) {
      const estimate = Date.parse((await statusOf(h.store, waiting[n]!))!.estimatedStartAt!);
      assert.ok(Math.abs(estimate - expiry) <= 1000, `position ${n + 1}: estimate ${estimate} vs expiry ${expiry}`);
    }
    assert.deepEqual(await Promise.all(waiting.slice(2).map((id) => statusOf(h.store, id))), before.slice(2));

    // The last one's keepalive moves the latest expiry by half an hour: within what position 5's estimate shows.
    reconciled.resetHistory();
    const expiresE = await expiryOf(running[4]!);
    await setActivity(h, running[4]!, h.clock.now);
    await waitFor('the new expiry in the cache', () => (cachedExpiry(h, running[4]!) ?? 0) > expiresE && drained());
    h.tick(estimateRefreshMs);
    await waitFor('settled after the refresh', drained);
    assert.deepEqual(waitingReconciled(), []);
  });

  it("keeps a deleted session's slot until its job is purged", async () => {
    const slow = new ControllerHarness(EmbeddedStore.open(':memory:'), new SlowRemovalScheduler(), { limits: { maxSessions: 1 } });
    h = slow;
    const holder = await slotFreedByRemoval(slow, 'ClusterFull', async (id) => {
      await makeReady(slow, id);
      await requestDeletion(slow.store, id);
    });
    await gone(slow, holder);
  });

  it('keeps the start slot of a session deleted while starting until its job is purged', async () => {
    const slow = new ControllerHarness(EmbeddedStore.open(':memory:'), new SlowRemovalScheduler(), { limits: { maxStarting: 1 } });
    h = slow;
    await gone(slow, await slotFreedByRemoval(slow, 'StartLimit', (id) => requestDeletion(slow.store, id)));
  });

  it('keeps the start slot of a session that failed while starting until its job is stopped', async () => {
    const slow = new ControllerHarness(EmbeddedStore.open(':memory:'), new SlowRemovalScheduler(), { limits: { maxStarting: 1 }, policy: { startTimeoutMs: 10 * minute } });
    h = slow;
    await slotFreedByRemoval(slow, 'StartLimit', async (holder) => {
      await waitFor('registered', () => slow.scheduler.workload(holder));
      slow.tick(10 * minute);
      assert.equal(condition(await statusWhen(slow.store, holder, 'Failed'), 'Ready'), 'False/StartTimeout');
    });
  });

  it('frees the start slot of a session that had been Ready when it fails, without waiting for its job to stop', async () => {
    const slow = new ControllerHarness(EmbeddedStore.open(':memory:'), new SlowRemovalScheduler(), { limits: { maxStarting: 1 }, policy: { maxRestarts: 0 } });
    h = slow;
    await slow.start();
    const [served] = await createInOrder(slow, ['ann']);
    await makeReady(slow, served!);
    slow.scheduler.update(served!, { clientStatus: 'failed', healthy: false, tasks: { core: { state: 'dead', failed: true, restarts: 0, lastEvent: 'Exited with code 139' } } });
    const failed = await statusWhen(slow.store, served!, 'Failed');
    assert.equal(condition(failed, 'Ready'), 'False/CrashLoop');
    assert.ok(failed.readyAt !== undefined, 'it still says it was Ready');
    await waitFor('the stop of its job asked for', () => slow.scheduler.removing.get(`manticore-${served}`) === 'stop');
    const next = await createSession(slow.store, { owner: 'bob' });
    await waitFor('the next one admitted while the job stops', () => routesOf(slow.store, next));
    assert.equal(slow.scheduler.removing.size, 1);
  });

  it('moves everyone behind up when a waiting session ahead of them is deleted', async () => {
    h = await ControllerHarness.embedded({ limits: { maxSessions: 1 } });
    const [a, b, c, d] = await createInOrder(h, ['ann', 'bob', 'cid', 'dee']);
    await makeReady(h, a!);
    await statusWhen(h.store, d!, (s) => s.queuePosition === 3);
    await requestDeletion(h.store, b!);
    await gone(h, b!);
    await statusWhen(h.store, c!, (s) => s.queuePosition === 1);
    await statusWhen(h.store, d!, (s) => s.queuePosition === 2);
  });

  it('starts many admitted sessions at once, never more than maxStarting', async () => {
    h = await ControllerHarness.embedded({ limits: { maxStarting: 20 }, ports: { start: 20000, end: 20099 } });
    const owners = Array.from({ length: 50 }, (_, n) => `user${n}`);
    const ids = await createInOrder(h, owners);
    await waitFor('20 jobs registered', () => h.scheduler.registrations.length === 20);
    for (const id of ids.slice(20)) {
      const status = await statusWhen(h.store, id, 'Waiting');
      assert.equal(condition(status, 'Admitted'), 'False/StartLimit');
    }
    // None of the 20 is Ready yet: they were started together, not one after another.
    for (const id of ids.slice(0, 20)) assert.notEqual((await statusOf(h.store, id))?.phase, 'Ready');
    // Each session that becomes Ready lets the next one in; at no moment are more than 20 started and not yet running.
    const running = new Set<string>();
    await waitFor(
      'all 50 started',
      () => {
        assert.ok(h.scheduler.registrations.length - running.size <= 20, `${h.scheduler.registrations.length - running.size} starting at once`);
        for (const [n, job] of h.scheduler.registrations.entries()) {
          if (running.has(job.sessionId)) continue;
          running.add(job.sessionId);
          h.scheduler.run(job.sessionId, { http: `127.0.0.1:${40000 + n}`, broker: `127.0.0.1:${41000 + n}`, tcp: `127.0.0.1:${42000 + n}` });
        }
        return running.size === 50;
      },
      20_000,
    );
    for (const id of ids) await statusWhen(h.store, id, 'Ready');
    assert.equal(new Set(h.scheduler.registrations.map((job) => job.sessionId)).size, 50, 'one job per session');
  });

  it('fails a second session of the same user that got past the front end', async () => {
    h = await ControllerHarness.embedded({ limits: { sessionsPerUser: 1 } });
    const [first, second] = await createInOrder(h, ['ann', 'ann']);
    const failed = await statusWhen(h.store, second!, 'Failed');
    assert.equal(condition(failed, 'Ready'), 'False/SessionLimit');
    await makeReady(h, first!);
  });

  it('fails a second session of the same user that reaches the controller after the first was admitted, even if created earlier', async () => {
    h = await ControllerHarness.embedded({ limits: { sessionsPerUser: 1 } });
    // Two front ends whose clocks differ: the later write carries the earlier creation time.
    const base = Date.now() - 60 * minute;
    const second = await createSession(h.store, { owner: 'ann', createdAt: base + 1000 });
    await waitFor('the first to arrive admitted', () => routesOf(h.store, second));
    const first = await createSession(h.store, { owner: 'ann', createdAt: base });
    const failed = await statusWhen(h.store, first, 'Failed');
    assert.equal(condition(failed, 'Ready'), 'False/SessionLimit');
    assert.equal(await routesOf(h.store, first), undefined, 'nothing was reserved for it');
    await makeReady(h, second);
  });

  it('sends a session the scheduler cannot place back to the head of the list, and retries when room appears', async () => {
    h = await ControllerHarness.embedded({ limits: { maxSessions: 10 } });
    const [a, b] = await createInOrder(h, ['ann', 'bob']);
    const waiting = await turnAway(h, a!);
    assert.equal(waiting.phase, 'Waiting');
    assert.equal(waiting.queuePosition, 1);
    assert.match(waiting.conditions[0]!.message, /memory/);
    // Bob had been admitted alongside; the head waits for room, and nobody overtakes it.
    const c = await createSession(h.store, { owner: 'cid' });
    await statusWhen(h.store, c, (s) => s.queuePosition === 2 && condition(s, 'Admitted') === 'False/WaitingForRoom');
    const registrations = h.scheduler.registrations.length;
    assert.ok(h.scheduler.workload(b!));

    h.scheduler.capacity.next();
    await waitFor('ann registered again', () => h.scheduler.workload(a!));
    await makeReady(h, a!, 31100);
    await makeReady(h, c, 31200);
    assert.equal(h.scheduler.registrations.length, registrations + 2);
  });

  it('lets in a session that waited behind the few-at-a-time window once the retried one is placed, not taking it for turned away', async () => {
    h = await ControllerHarness.embedded({ capacityRetryMs: 5 * minute });
    const [a] = await createInOrder(h, ['ann']);
    await turnAway(h, a!);
    // A node joins: ann is tried again, alone; bob, arriving meanwhile, waits for the window.
    h.scheduler.capacity.next();
    await waitFor('ann registered again', () => h.scheduler.workload(a!));
    const b = await createSession(h.store, { owner: 'bob' });
    await statusWhen(h.store, b, (s) => s.phase === 'Waiting' && condition(s, 'Admitted') === 'False/WaitingForRoom');
    // Ann is placed: there is room, so bob goes in without waiting for the capacity retry (5 minutes away).
    await makeReady(h, a!, 31100);
    await waitFor('bob registered once ann was placed', () => h.scheduler.workload(b));
    await makeReady(h, b, 31200);
  });

  it('retries a session turned away for capacity after capacityRetry at the latest', async () => {
    h = await ControllerHarness.embedded({ capacityRetryMs: 5 * minute });
    const [a] = await createInOrder(h, ['ann']);
    await turnAway(h, a!);
    h.tick(5 * minute);
    await waitFor('registered again', () => h.scheduler.workload(a!));
  });
});

describe("lifecycle: a session's own idle timeout", () => {
  const spec = (timeoutSeconds?: number): SessionRecord['spec'] => ({ template: 'demo', parameters: {}, ...(timeoutSeconds === undefined ? {} : { idle: { timeoutSeconds } }) });
  const limited: ExpiryPolicy = { idleTimeoutMs: 30 * minute, idleMaxTimeoutMs: 60 * minute, idleWarningMs: 5 * minute, maxLifetimeMs: 0 };
  const unlimited: ExpiryPolicy = { ...limited, idleMaxTimeoutMs: 0 };
  const timeoutOf = (policy: ExpiryPolicy, timeoutSeconds?: number): number => sessionExpiryPolicy(policy, spec(timeoutSeconds)).idleTimeoutMs;

  it("is the session's own within the operator's maximum, the operator's when it asks none", () => {
    assert.equal(timeoutOf(limited), 30 * minute);
    assert.equal(timeoutOf(limited, 600), 10 * minute, 'shorter');
    assert.equal(timeoutOf(limited, 3600), 60 * minute, 'longer, up to the maximum');
    assert.deepEqual(sessionExpiryPolicy(limited, spec(600)), { ...limited, idleTimeoutMs: 10 * minute }, 'the rest of the policy is the operator\'s');
  });

  it('is held to the maximum when the record asks more, or never, as one written to the store directly may', () => {
    assert.equal(timeoutOf(limited, 7200), 60 * minute);
    assert.equal(timeoutOf(limited, 0), 60 * minute, 'never is longer than any maximum');
  });

  it('may be anything, never included, without a maximum (0)', () => {
    assert.equal(timeoutOf(unlimited, 86_400), 24 * 60 * minute);
    assert.equal(timeoutOf(unlimited, 0), 0);
    assert.equal(timeoutOf(unlimited), 30 * minute);
  });

  it('may be asked for only within the maximum and above the warning', () => {
    assert.equal(idleTimeoutProblem(limited, 301), undefined);
    assert.equal(idleTimeoutProblem(limited, 3600), undefined);
    assert.equal(idleTimeoutProblem(limited, 3601), 'must be above 300 (idle.warningSeconds) and at most 3600 (idle.maxTimeoutSeconds)');
    assert.equal(idleTimeoutProblem(limited, 300), 'must be above 300 (idle.warningSeconds) and at most 3600 (idle.maxTimeoutSeconds)');
    assert.equal(idleTimeoutProblem(limited, 0), 'must be above 300 (idle.warningSeconds) and at most 3600 (idle.maxTimeoutSeconds)');
    assert.equal(idleTimeoutProblem(unlimited, 0), undefined);
    assert.equal(idleTimeoutProblem(unlimited, 31_536_000), undefined);
    assert.equal(idleTimeoutProblem(unlimited, 60), 'must be above 300 (idle.warningSeconds), or 0 for never');
  });
});

describe('lifecycle: expiry and warning times', () => {
  const policy: ExpiryPolicy = { idleTimeoutMs: 30 * minute, idleMaxTimeoutMs: 0, idleWarningMs: 5 * minute, maxLifetimeMs: 0 };
  const readyAt = Date.parse('2026-01-01T00:00:00Z');

  it('warns the warning time before the end, and says so', () => {
    const expiry = expiryOf(policy, readyAt, readyAt + minute)!;
    assert.deepEqual(expiry, { at: readyAt + 31 * minute, warnAt: readyAt + 26 * minute, reason: 'IdleTimeout' });
    assert.match(idleWarningCondition(expiry, expiry.warnAt).message, /\(in 300 s\)/);
  });

  it('warns a limit no longer than the warning from its start, with the time really left', () => {
    // A stored record asking 120 s, or a warning raised since the session asked: the warning cannot come earlier.
    const idle = expiryOf({ ...policy, idleTimeoutMs: 2 * minute }, readyAt, readyAt + minute)!;
    assert.deepEqual(idle, { at: readyAt + 3 * minute, warnAt: readyAt + minute, reason: 'IdleTimeout' });
    assert.match(idleWarningCondition(idle, idle.warnAt).message, /\(in 120 s\) unless there is activity/);
    const lifetime = expiryOf({ ...policy, maxLifetimeMs: 3 * minute }, readyAt, undefined)!;
    assert.deepEqual(lifetime, { at: readyAt + 3 * minute, warnAt: readyAt, reason: 'MaxLifetime' });
    assert.match(idleWarningCondition(lifetime, readyAt).message, /\(in 180 s\)/);
  });
});

describe('lifecycle: idle warning, expiry and the lifetime cap', () => {
  let h: ControllerHarness;
  afterEach(async () => {
    await h.stop();
  });

  it('warns an idle session, clears the warning on activity, and deletes it at the timeout, across a restart', async () => {
    h = await ControllerHarness.embedded();
    const [id] = await createInOrder(h, ['ann']);
    const ready = await makeReady(h, id!);
    const readyAt = Date.parse(ready.readyAt!);
    assert.equal(Date.parse(ready.expiresAt!), readyAt + 30 * minute);
    assert.equal(condition(ready, 'IdleWarning'), 'False/Active');

    h.tick(25 * minute);
    const warned = await statusWhen(h.store, id!, (s) => condition(s, 'IdleWarning') === 'True/Idle');
    assert.equal(warned.phase, 'Ready', 'a warned session still serves');
    const event = warned.events.at(-1)!;
    assert.equal(event.reason, 'Idle');
    assert.match(event.message, /will be deleted at .* \(in 300 s\) unless there is activity/);

    await setActivity(h, id!, h.clock.now);
    const cleared = await statusWhen(h.store, id!, (s) => condition(s, 'IdleWarning') === 'False/Active');
    assert.equal(Date.parse(cleared.expiresAt!), h.clock.now + 30 * minute);

    // A restart in between changes nothing: the clock is in the stored times.
    await h.restartController();
    h.tick(25 * minute);
    await statusWhen(h.store, id!, (s) => condition(s, 'IdleWarning') === 'True/Idle');
    await h.restartController();
    h.tick(5 * minute);
    await gone(h, id!);
    assert.deepEqual(h.scheduler.deregistrations, [`manticore-${id}`]);
    assert.equal(await h.store.get(keys.activity(id!)), undefined, 'the activity record goes with the session');
  });

  it('keeps a session whose keepalive was stored just before its idle end, though the controller had not seen it yet', async () => {
    h = await ControllerHarness.embedded();
    const [id] = await createInOrder(h, ['ann']);
    await makeReady(h, id!);
    const lagging = laggingWatch(h.store, keys.activities);
    let refusedEnds = 0;
    await h.restartController({
      ...lagging.store,
      commit: async (operations) => {
        const puts = await h.store.commit(operations);
        if (puts === undefined && operations.some((operation) => operation.verb === 'check-index')) refusedEnds += 1;
        return puts;
      },
    });
    h.tick(25 * minute);
    await statusWhen(h.store, id!, (s) => condition(s, 'IdleWarning') === 'True/Idle');
    // The user's keepalive is stored (and answered with a later expiry); the controller's watch brings it only later.
    lagging.hold();
    await setActivity(h, id!, h.clock.now);
    h.tick(5 * minute);
    /** Being deleted, or gone already. */
    const ended = async (): Promise<boolean> => {
      const entry = await h.store.get(keys.session(id!));
      return entry === undefined || (JSON.parse(entry.value) as SessionRecord).metadata.deletionRequestedAt !== undefined;
    };
    await waitFor('the controller ending the session, or refused', async () => refusedEnds > 0 || (await ended()));
    lagging.release();
    const kept = await statusWhen(h.store, id!, (s) => condition(s, 'IdleWarning') === 'False/Active');
    assert.equal(Date.parse(kept.expiresAt!), h.clock.now + 25 * minute);
    assert.equal(await ended(), false, 'the session was ended for an idleness its keepalive had ended');
  });

  it('deletes an idle session on time although its activity record holds a time Date.parse cannot read (a leap second)', async () => {
    h = await ControllerHarness.embedded();
    const [id] = await createInOrder(h, ['ann']);
    await makeReady(h, id!);
    // Written by any KV client: RFC 3339 allows second 60, Date.parse does not. The record is invalid, so unread.
    assert.equal(await h.store.put(keys.activity(id!), JSON.stringify({ lastActivityAt: '2016-12-31T23:59:60Z' })), true);
    await waitFor('the activity record seen', () => h.controller.activities.cache.get(id!) !== undefined);
    h.tick(30 * minute);
    await gone(h, id!);
  });

  it('deletes sessions whose idle deadline passed while no controller ran, without first starting their workloads again', async () => {
    h = await ControllerHarness.embedded();
    const [vanished, crashed] = await createInOrder(h, ['ann', 'bob']);
    await makeReady(h, vanished!);
    await makeReady(h, crashed!, 31010);
    h.scheduler.update(crashed!, { clientStatus: 'failed', healthy: false, tasks: { core: { state: 'dead', failed: true, restarts: 3, lastEvent: 'Exited with code 139' } } });
    await statusWhen(h.store, crashed!, (s) => condition(s, 'Healthy') === 'False/Restarting');
    await h.controller.stop();
    // While no controller runs: one job is purged by hand, and both sessions' idle deadlines pass.
    await h.scheduler.deregister(`manticore-${vanished}`);
    h.tick(31 * minute);
    const registrations = h.scheduler.registrations.length;
    const statuses = [vanished!, crashed!].map((id) => recordStatuses(h, id));
    h.controller = await h.startController();
    await gone(h, vanished!);
    await gone(h, crashed!);
    for (const { seen, stop } of statuses) {
      await waitFor('its teardown seen', () => seen.some((status) => status.phase === 'Terminating'));
      stop();
      assert.deepEqual(
        seen.map((status) => `${status.phase} ${condition(status, 'Ready')}`),
        ['Terminating False/IdleTimeout'],
      );
    }
    assert.equal(h.scheduler.registrations.length, registrations, 'the purged job is not registered again');
    assert.deepEqual(h.scheduler.reschedules, [], 'the failed workload is not replaced');
  });

  it("warns and deletes a session at its own shorter idle timeout, while one that asked for none keeps the operator's", async () => {
    h = await ControllerHarness.embedded();
    const base = Date.now() - 60 * minute;
    const own = await createSession(h.store, { owner: 'ann', createdAt: base, spec: { idle: { timeoutSeconds: 600 } } });
    const operators = await createSession(h.store, { owner: 'bob', createdAt: base + 1000 });
    const ready = await makeReady(h, own);
    await makeReady(h, operators, 31010);
    assert.equal(Date.parse(ready.expiresAt!), Date.parse(ready.readyAt!) + 10 * minute);
    assert.equal(condition(ready, 'IdleWarning'), 'False/Active');

    h.tick(5 * minute);
    const warned = await statusWhen(h.store, own, (s) => condition(s, 'IdleWarning') === 'True/Idle');
    assert.match(warned.events.at(-1)!.message, /will be deleted at .* \(in 300 s\) unless there is activity/);
    assert.equal(condition(await statusOf(h.store, operators), 'IdleWarning'), 'False/Active');

    h.tick(5 * minute);
    await gone(h, own);
    await waitFor('nothing queued or in flight', () => h.controller.queue.length === 0 && h.controller.queue.inFlight === 0);
    const other = (await statusOf(h.store, operators))!;
    assert.equal(other.phase, 'Ready', 'the session without a timeout of its own is not deleted at the other\'s deadline');
    assert.equal(condition(other, 'IdleWarning'), 'False/Active');
    assert.equal(Date.parse(other.expiresAt!), Date.parse(other.readyAt!) + 30 * minute);
  });

  it("gives a session asking for a longer idle timeout than the operator's maximum the maximum, not a failure", async () => {
    h = await ControllerHarness.embedded({ policy: { idleMaxTimeoutMs: 60 * minute } });
    const base = Date.now() - 60 * minute;
    const longer = await createSession(h.store, { owner: 'ann', createdAt: base, spec: { idle: { timeoutSeconds: 3000 } } });
    const beyond = await createSession(h.store, { owner: 'bob', createdAt: base + 1000, spec: { idle: { timeoutSeconds: 86_400 } } });
    const never = await createSession(h.store, { owner: 'cid', createdAt: base + 2000, spec: { idle: { timeoutSeconds: 0 } } });
    const expiries = [];
    for (const [n, id] of [longer, beyond, never].entries()) {
      const ready = await makeReady(h, id, 31000 + 10 * n);
      expiries.push((Date.parse(ready.expiresAt!) - Date.parse(ready.readyAt!)) / minute);
    }
    assert.deepEqual(expiries, [50, 60, 60]);
    assert.equal(defaultPolicy.idleTimeoutMs, 30 * minute, 'all beyond the operator\'s own timeout');
  });

  it('ends a session at its maximum lifetime whatever the activity, after the same warning', async () => {
    h = await ControllerHarness.embedded({ policy: { maxLifetimeMs: 60 * minute, idleTimeoutMs: 0 } });
    const [id] = await createInOrder(h, ['ann']);
    const ready = await makeReady(h, id!);
    assert.equal(Date.parse(ready.expiresAt!), Date.parse(ready.readyAt!) + 60 * minute);
    h.tick(56 * minute);
    await setActivity(h, id!, h.clock.now);
    await statusWhen(h.store, id!, (s) => condition(s, 'IdleWarning') === 'True/MaxLifetime');
    const statuses = recordStatuses(h, id!);
    h.tick(4 * minute);
    await gone(h, id!);
    statuses.stop();
    const ending = statuses.seen.find((status) => status.phase === 'Terminating');
    assert.ok(ending, `phases seen: ${statuses.seen.map((status) => status.phase).join(', ')}`);
    assert.equal(condition(ending, 'Ready'), 'False/MaxLifetime');
    assert.match(ending.conditions[0]!.message, /reached its maximum lifetime/);
    await gone(h, id!);
  });

  it('tells in the history when activity leaves a warned session to end at its maximum lifetime instead', async () => {
    h = await ControllerHarness.embedded({ policy: { maxLifetimeMs: 60 * minute } });
    const [id] = await createInOrder(h, ['ann']);
    const ready = await makeReady(h, id!);
    h.tick(28 * minute);
    await setActivity(h, id!, h.clock.now);
    await statusWhen(h.store, id!, (s) => Date.parse(s.expiresAt!) === h.clock.now + 30 * minute);
    h.tick(25 * minute);
    await statusWhen(h.store, id!, (s) => condition(s, 'IdleWarning') === 'True/Idle');
    // Activity puts the idle deadline off past the lifetime cap, which is already within its warning.
    h.tick(3 * minute);
    await setActivity(h, id!, h.clock.now);
    const capped = await statusWhen(h.store, id!, (s) => condition(s, 'IdleWarning') === 'True/MaxLifetime');
    assert.equal(Date.parse(capped.expiresAt!), Date.parse(ready.readyAt!) + 60 * minute);
    const event = capped.events.at(-1)!;
    assert.equal(event.reason, 'MaxLifetime');
    assert.match(event.message, /maximum lifetime and will be deleted at/);
  });
});

describe('lifecycle: failures', () => {
  let h: ControllerHarness;
  afterEach(async () => {
    await h.stop();
  });

  const crash = (id: string): void =>
    h.scheduler.update(id, { clientStatus: 'failed', healthy: false, tasks: { core: { state: 'dead', failed: true, restarts: 3, lastEvent: 'Exited with code 139' } } });
  /** Crashes the session's workload `times` times, each replaced after its backoff and Ready again. */
  const crashAndRecover = async (id: string, times: number): Promise<void> => {
    for (let n = 1; n <= times; n++) {
      crash(id);
      await statusWhen(h.store, id, (s) => s.failures?.length === n);
      h.tick(5_000 * 2 ** (n - 1));
      await waitFor(`reschedule ${n}`, () => h.scheduler.reschedules.length === n);
      await makeReady(h, id, 31000 + n * 10);
    }
  };

  it('replaces a failed workload after a backoff and returns to Ready with the same addresses', async () => {
    h = await ControllerHarness.embedded();
    const [id] = await createInOrder(h, ['ann']);
    const ready = await makeReady(h, id!);
    crash(id!);
    const down = await statusWhen(h.store, id!, (s) => condition(s, 'Healthy') === 'False/Restarting');
    assert.equal(down.phase, 'Starting');
    assert.equal(down.failures?.length, 1);
    assert.equal(down.failures![0]!.reason, 'AllocationFailed');
    assert.match(down.failures![0]!.message, /Exited with code 139/);
    assert.deepEqual(down.endpoints, ready.endpoints, 'the addresses stay while it recovers');
    assert.deepEqual(h.scheduler.reschedules, [], 'not before the backoff');
    h.tick(5_000);
    await waitFor('rescheduled', () => h.scheduler.reschedules.length === 1);
    const back = await makeReady(h, id!, 31050);
    assert.deepEqual(back.endpoints, ready.endpoints);
    assert.equal(h.scheduler.registrations.length, 1, 'the job is not registered again');
  });

  it('does not count the fresh allocation the embedded scheduler starts after a restart of Manticore as a failure', async () => {
    h = await ControllerHarness.embedded({ policy: { maxRestarts: 0 } });
    const [id] = await createInOrder(h, ['ann']);
    const ready = await makeReady(h, id!);
    // What `manticore up` started again finds: the job, with a new allocation whose tasks are starting.
    await h.controller.stop();
    const workload = h.scheduler.workload(id!)!;
    h.scheduler.adopt({ ...workload, allocation: { ...workload.allocation!, id: 'alloc-after-restart', healthy: undefined } });
    h.controller = await h.startController();
    const starting = await statusWhen(h.store, id!, (s) => s.allocationId === 'alloc-after-restart');
    assert.equal(starting.phase, 'Starting');
    assert.equal(starting.failures, undefined, 'a restart of Manticore is no crash');
    h.scheduler.update(id!, { healthy: true });
    const back = await statusWhen(h.store, id!, (s) => s.phase === 'Ready' && s.allocationId === 'alloc-after-restart');
    assert.deepEqual(back.endpoints, ready.endpoints);
    assert.equal(back.failures, undefined);
  });

  it('gives up after maxRestarts failures within the window: Failed with the reason, everything released', async () => {
    h = await ControllerHarness.embedded({ policy: { maxRestarts: 2 } });
    const [id] = await createInOrder(h, ['ann']);
    await makeReady(h, id!);
    await crashAndRecover(id!, 2);
    const crashed = h.scheduler.workload(id!)!.allocation!.id;
    crash(id!);
    const failed = await statusWhen(h.store, id!, 'Failed');
    assert.equal(condition(failed, 'Ready'), 'False/CrashLoop');
    assert.match(failed.conditions[0]!.message, /failed 3 times within 10 min; last: core: Exited with code 139/);
    await waitFor('released', async () => h.scheduler.workload(id!) === undefined && (await routesOf(h.store, id!)) === undefined);
    // Its job is stopped, not purged, and its status still names the allocation: the logs say why it failed.
    assert.deepEqual(h.scheduler.stops, [`manticore-${id}`]);
    assert.deepEqual(h.scheduler.deregistrations, []);
    assert.equal(failed.jobId, `manticore-${id}`);
    assert.equal(failed.allocationId, crashed);

    // Failed stays readable for the retention time, then goes.
    h.tick(59 * minute);
    assert.equal((await statusOf(h.store, id!))?.phase, 'Failed');
    h.tick(1 * minute);
    await gone(h, id!);
    assert.deepEqual(h.scheduler.deregistrations, [], 'nothing left to purge: the scheduler collects the stopped job');
  });

  it('leaves a serving session alone when maxRestarts was lowered below its failures, and ends it at its next failure', async () => {
    const policy = { maxRestarts: 3 };
    h = await ControllerHarness.embedded({ policy });
    const [id] = await createInOrder(h, ['ann']);
    await makeReady(h, id!);
    await crashAndRecover(id!, 2);
    // The operator allows one restart now: the session, serving with two failures behind it, is not failed for them.
    policy.maxRestarts = 1;
    await h.restartController();
    await waitFor('the restarted controller idle', () => h.controller.queue.length === 0 && h.controller.queue.inFlight === 0);
    assert.equal((await statusOf(h.store, id!))?.phase, 'Ready');
    assert.deepEqual(h.scheduler.stops, []);
    crash(id!);
    const failed = await statusWhen(h.store, id!, 'Failed');
    assert.equal(condition(failed, 'Ready'), 'False/CrashLoop');
    assert.match(failed.conditions[0]!.message, /failed 3 times within 10 min/);
  });

  it('updates the job of a Ready session whose spec changed, without counting the replacement as a failure', async () => {
    h = await ControllerHarness.embedded({ policy: { maxRestarts: 0 } });
    const [id] = await createInOrder(h, ['ann']);
    const ready = await makeReady(h, id!);
    await editSpec(h, id!, (spec) => (spec.parameters = { ...spec.parameters, coreVersion: '8.1.0' }));
    const updating = await statusWhen(h.store, id!, (s) => s.observedGeneration === 2);
    assert.equal(updating.phase, 'Starting');
    assert.equal(updating.failures, undefined, 'a new spec is no crash');
    await waitFor('the job updated', () => h.scheduler.registrations.length === 2);
    const back = await makeReady(h, id!, 31050);
    assert.equal(back.observedGeneration, 2);
    assert.deepEqual(back.endpoints, ready.endpoints);
    assert.equal(back.failures, undefined);
  });

  it('starts a session that failed from crashing afresh when its spec changes, its old failures not counted', async () => {
    h = await ControllerHarness.embedded({ policy: { maxRestarts: 0 } });
    const [id] = await createInOrder(h, ['ann']);
    await makeReady(h, id!);
    crash(id!);
    assert.equal(condition(await statusWhen(h.store, id!, 'Failed'), 'Ready'), 'False/CrashLoop');
    await waitFor('released', () => h.scheduler.workload(id!) === undefined);
    await editSpec(h, id!, (spec) => (spec.parameters = { ...spec.parameters, coreVersion: '8.1.0' }));
    const restarted = await statusWhen(h.store, id!, (s) => s.observedGeneration === 2);
    assert.equal(restarted.phase, 'Starting', `${condition(restarted, 'Ready')}`);
    assert.equal(restarted.failures, undefined, 'the failures of the old spec are not held against the new one');
    const back = await makeReady(h, id!, 31050);
    assert.equal(back.observedGeneration, 2);
  });

  it('updates the jobs of Ready sessions when their template was edited, without counting the replacement as a failure', async () => {
    h = await ControllerHarness.embedded({ policy: { maxRestarts: 0 } });
    const [id] = await createInOrder(h, ['ann']);
    const ready = await makeReady(h, id!);
    const demo = h.templates.get('demo')!;
    const core = { ...demo.spec.backends.embedded!.tasks[0]!, env: { CORE_VERSION: '${params.coreVersion}', LOG_LEVEL: 'debug' } };
    const edited = { ...demo, spec: { ...demo.spec, backends: { ...demo.spec.backends, embedded: { tasks: [core, ...demo.spec.backends.embedded!.tasks.slice(1)] } } } };
    h.templates = new Map([...h.templates, ['demo', edited]]);
    await h.restartController();
    await waitFor('the job updated', () => h.scheduler.registrations.length === 2);
    const updating = await statusWhen(h.store, id!, (s) => s.phase !== 'Ready');
    assert.equal(updating.phase, 'Starting');
    assert.equal(updating.failures, undefined, 'an edited template is no crash');
    const back = await makeReady(h, id!, 31050);
    assert.deepEqual(back.endpoints, ready.endpoints);
    assert.equal(back.failures, undefined);
  });

  it('gives a Ready session an address for a service added to its template and drops the one of a service removed', async () => {
    h = await ControllerHarness.embedded();
    const [id] = await createInOrder(h, ['ann']);
    const ready = await makeReady(h, id!);
    const demo = h.templates.get('demo')!;
    const services = [...demo.spec.services.filter((service) => service.name !== 'broker'), { name: 'extra', port: 'http', expose: 'http' as const }];
    h.templates = new Map([...h.templates, ['demo', { ...demo, spec: { ...demo.spec, services } }]]);
    await h.restartController();
    await waitFor('the job updated', () => h.scheduler.registrations.length === 2);
    const back = await makeReady(h, id!, 31050);
    assert.deepEqual(Object.keys(back.endpoints).sort(), ['extra', 'hmi', 'tcp']);
    assert.equal(back.endpoints.hmi?.url, ready.endpoints.hmi?.url, 'the services it had keep their addresses');
    assert.equal(back.endpoints.tcp?.url, ready.endpoints.tcp?.url);
    assert.deepEqual((await routesOf(h.store, id!))?.hosts.map((route) => route.service).sort(), ['extra', 'hmi']);
  });

  it('shows a session short of a public TCP port for a service added to its template, and gives it the next port freed before any waiting session', async () => {
    h = await ControllerHarness.embedded({ ports: { start: 20000, end: 20001 } });
    const [a, b] = await createInOrder(h, ['ann', 'bob']);
    const ready = await makeReady(h, a!, 31000);
    await makeReady(h, b!, 31010);
    const demo = h.templates.get('demo')!;
    const services = [...demo.spec.services, { name: 'tcp2', port: 'broker', expose: 'tcp' as const }];
    h.templates = new Map([...h.templates, ['demo', { ...demo, spec: { ...demo.spec, services } }]]);
    await h.restartController();
    const short = await statusWhen(h.store, a!, (s) => condition(s, 'Ready') === 'False/NoFreePort');
    assert.equal(condition(short, 'Routed'), 'False/NoFreePort');
    assert.match(short.conditions.find((c) => c.type === 'Ready')!.message, /no public TCP port for tcp2 .*all 2 public TCP ports are in use/);
    assert.deepEqual(short.endpoints, ready.endpoints, 'the services it had keep their addresses');
    assert.equal(h.scheduler.registrations.length, 2, 'its job is not updated until every service has an address');
    await statusWhen(h.store, b!, (s) => condition(s, 'Ready') === 'False/NoFreePort');
    const c = await createSession(h.store, { owner: 'cid' });
    await statusWhen(h.store, c, (s) => condition(s, 'Admitted') === 'False/NoFreePort');

    // Bob leaves: his port goes to ann, who is owed one, not to cid at the head of the waiting list.
    await requestDeletion(h.store, b!);
    await gone(h, b!);
    const claim = await waitFor('ann given a port for tcp2', async () => (await routesOf(h.store, a!))?.ports.find((route) => route.service === 'tcp2'));
    await waitFor('the job updated', () => h.scheduler.registrations.length === 3);
    const { endpoints } = h.scheduler.registrations[2]!.body as { endpoints: Record<string, { port: number }> };
    assert.equal(endpoints.tcp2?.port, claim.port);
    const back = await makeReady(h, a!, 31050);
    assert.equal(back.endpoints.tcp2?.url, `tcp://localhost:${claim.port}`);
    assert.equal(back.endpoints.tcp?.url, ready.endpoints.tcp?.url);
    const waiting = await statusOf(h.store, c);
    assert.equal(condition(waiting, 'Admitted'), 'False/NoFreePort');
    assert.equal(await routesOf(h.store, c), undefined);
  });

  it('gives a session short of a public TCP port the whole start timeout to recover from a task restart, however long it was short', async () => {
    h = await ControllerHarness.embedded({ ports: { start: 20000, end: 20000 }, policy: { startTimeoutMs: 10 * minute, idleTimeoutMs: 0 } });
    const [id] = await createInOrder(h, ['ann']);
    await makeReady(h, id!);
    const demo = h.templates.get('demo')!;
    const services = [...demo.spec.services, { name: 'tcp2', port: 'broker', expose: 'tcp' as const }];
    h.templates = new Map([...h.templates, ['demo', { ...demo, spec: { ...demo.spec, services } }]]);
    await h.restartController();
    await statusWhen(h.store, id!, (s) => condition(s, 'Ready') === 'False/NoFreePort');
    h.tick(30 * minute);
    h.scheduler.update(id!, { healthy: false, tasks: { core: { state: 'pending', failed: false, restarts: 1, lastEvent: 'Restarting: exited with code 1' } } });
    const restarting = await statusWhen(h.store, id!, (s) => condition(s, 'Healthy') === 'False/TaskRestarting' || s.phase === 'Failed');
    assert.notEqual(restarting.phase, 'Failed', `${condition(restarting, 'Ready')}: ${restarting.conditions[0]?.message}`);
    h.tick(9 * minute);
    h.scheduler.run(id!, { http: '127.0.0.1:31000', broker: '127.0.0.1:31001', tcp: '127.0.0.1:31002' });
    const back = await statusWhen(h.store, id!, (s) => condition(s, 'Healthy') === 'True/Healthy' || s.phase === 'Failed');
    assert.equal(condition(back, 'Ready'), 'False/NoFreePort');
  });

  it('moves a session whose public TCP port a restart left outside the configured range into it, updating its job', async () => {
    h = await ControllerHarness.embedded({ ports: { start: 20000, end: 20000 } });
    const [id] = await createInOrder(h, ['ann']);
    const ready = await makeReady(h, id!);
    assert.equal(ready.endpoints.tcp?.url, 'tcp://localhost:20000');
    h.ports = { start: 20001, end: 20002 };
    await h.restartController();
    await waitFor('the job updated', () => h.scheduler.registrations.length === 2);
    const updating = await statusWhen(h.store, id!, (s) => s.phase !== 'Ready');
    assert.equal(updating.phase, 'Starting');
    const back = await makeReady(h, id!, 31050);
    const port = Number(back.endpoints.tcp?.url.split(':').at(-1));
    assert.ok(port === 20001 || port === 20002, `port ${port} is in the configured range`);
    assert.equal(back.endpoints.hmi?.url, ready.endpoints.hmi?.url, 'its hostnames stay');
    assert.deepEqual((await routesOf(h.store, id!))?.ports.map((route) => route.port), [port]);
    await waitFor('the router serving the new port only', () => [...h.dataPlane.table.ports.keys()].join() === String(port));
  });

  it('fails a session that does not become healthy before the start timeout, with the last task event', async () => {
    h = await ControllerHarness.embedded({ policy: { startTimeoutMs: 10 * minute } });
    const [id] = await createInOrder(h, ['ann']);
    await waitFor('registered', () => h.scheduler.workload(id!));
    h.scheduler.run(id!, { http: '127.0.0.1:31000', broker: '127.0.0.1:31001', tcp: '127.0.0.1:31002' });
    h.scheduler.update(id!, { clientStatus: 'pending', healthy: undefined, tasks: { core: { state: 'pending', failed: false, restarts: 0, lastEvent: 'Downloading image' } } });
    await statusWhen(h.store, id!, (s) => s.phase === 'Starting' && s.allocationId !== undefined);
    h.tick(10 * minute);
    const failed = await statusWhen(h.store, id!, 'Failed');
    assert.equal(condition(failed, 'Ready'), 'False/StartTimeout');
    assert.match(failed.conditions[0]!.message, /not ready within 10 min: the workload is starting/);
    await waitFor('released', async () => h.scheduler.workload(id!) === undefined && (await routesOf(h.store, id!)) === undefined);
  });

  it('shows why the scheduler refuses a job, retries it, and fails the session at the start timeout, releasing its claim', async () => {
    h = await ControllerHarness.embedded({ policy: { startTimeoutMs: 10 * minute } });
    h.scheduler.refusal = new Error('registering job: Nomad 400: 1 error occurred: * Task group "session" validation failed');
    const [id] = await createInOrder(h, ['ann']);
    const refused = await statusWhen(h.store, id!, (s) => condition(s, 'Scheduled') === 'False/RegisterFailed');
    assert.equal(refused.phase, 'Starting');
    assert.equal(condition(refused, 'Ready'), 'False/RegisterFailed');
    assert.match(refused.conditions.find((c) => c.type === 'Scheduled')!.message, /Nomad 400: .*validation failed/);
    assert.equal(Date.parse(refused.admittedAt!), h.clock.now, 'the start timeout runs from admission');
    assert.ok(await routesOf(h.store, id!), 'its claim is held meanwhile');
    await waitFor('the registration retried', () => h.scheduler.refusals >= 3);
    h.tick(10 * minute);
    const failed = await statusWhen(h.store, id!, 'Failed');
    assert.equal(condition(failed, 'Ready'), 'False/StartTimeout');
    assert.match(failed.conditions[0]!.message, /not ready within 10 min: registering job: Nomad 400/);
    await waitFor('claim released', async () => (await routesOf(h.store, id!)) === undefined);
    assert.deepEqual(h.scheduler.registrations, []);
  });

  it('fails a served session whose failed workload the scheduler refuses to replace, at the start timeout', async () => {
    h = await ControllerHarness.embedded({ policy: { startTimeoutMs: 10 * minute } });
    const [id] = await createInOrder(h, ['ann']);
    await makeReady(h, id!);
    h.scheduler.refusal = new Error('rescheduling job: Nomad 403: Permission denied');
    crash(id!);
    await statusWhen(h.store, id!, (s) => condition(s, 'Healthy') === 'False/Restarting');
    h.tick(5_000);
    const refused = await statusWhen(h.store, id!, (s) => condition(s, 'Scheduled') === 'False/RescheduleFailed');
    assert.match(refused.conditions.find((c) => c.type === 'Scheduled')!.message, /Nomad 403: Permission denied/);
    await waitFor('the replacement retried', () => h.scheduler.refusals >= 3);
    h.tick(10 * minute);
    const failed = await statusWhen(h.store, id!, 'Failed');
    assert.equal(condition(failed, 'Ready'), 'False/StartTimeout');
    assert.match(failed.conditions[0]!.message, /not ready within 10 min: rescheduling job: Nomad 403/);
    await waitFor('released', async () => h.scheduler.workload(id!) === undefined && (await routesOf(h.store, id!)) === undefined);
  });
});

describe('lifecycle: garbage collection and restarts', () => {
  let h: ControllerHarness;
  afterEach(async () => {
    await h.stop();
  });

  it('removes activity records that belong to no session', async () => {
    h = await ControllerHarness.embedded();
    await h.store.put(keys.activity('orphan00004'), JSON.stringify({ lastActivityAt: new Date().toISOString() }));
    await waitFor('activity orphan removed', async () => (await h.store.get(keys.activity('orphan00004'))) === undefined);
  });

  it('keeps a running workload whose session record vanished for the grace period, then removes it', async () => {
    const { log, lines } = capturingLogger();
    h = await ControllerHarness.embedded({ orphanGracePeriodMs: 15 * minute, log });
    const [id] = await createInOrder(h, ['ann']);
    await makeReady(h, id!);
    await h.store.delete(keys.session(id!));
    const kept = (line: { msg: string; session?: unknown }): boolean => line.session === id && /keeping it for the grace period/.test(line.msg);
    await waitFor('the orphan noticed', () => lines.some(kept));
    // The sweep looks at it again meanwhile: it stays, and is not reported twice.
    h.tick(15 * minute - 1000);
    await waitFor('looked at again by the sweep', () => lines.some((line) => line.session === id && /still orphaned/.test(line.msg)));
    assert.ok(h.scheduler.workload(id!), 'the workload still runs');
    assert.ok(await routesOf(h.store, id!), 'its routes still serve');
    assert.deepEqual(h.scheduler.deregistrations, []);
    assert.equal(lines.filter(kept).length, 1);
    h.tick(1000);
    await waitFor('removed', async () => h.scheduler.workload(id!) === undefined && (await routesOf(h.store, id!)) === undefined && (await statusOf(h.store, id!)) === undefined);
  });

  it('adopts the running workloads without re-registering them when a lost store is restored within the grace period', async () => {
    const { log, lines } = capturingLogger();
    h = await ControllerHarness.embedded({ orphanGracePeriodMs: 15 * minute, log });
    const ids = await createInOrder(h, ['ann', 'bob']);
    for (const [n, id] of ids.entries()) await makeReady(h, id, 31000 + n * 10);
    const registrations = h.scheduler.registrations.length;
    const backup = [];
    for (const prefix of [keys.sessions, keys.statuses, keys.routes, keys.activities]) backup.push(...(await h.store.list(prefix)).entries);
    for (const entry of backup) await h.store.delete(entry.key);
    const lost = await waitFor('the store loss reported', () => lines.find((line) => line.level === 50));
    assert.match(lost.msg, /the store looks lost: 2 of 2 workloads have no session record/);
    assert.match(lost.msg, /Restore the key prefix manticore\/ from a backup/);
    assert.equal(lost['removeAt'], new Date(h.clock.now + 15 * minute).toISOString());
    await waitFor('both noticed', () => lines.filter((line) => /keeping it for the grace period/.test(line.msg)).length === 2);
    h.tick(10 * minute);
    // Restored as a KV import writes it: key by key in key order, so each session's routes come back before it.
    for (const entry of [...backup].sort((a, b) => a.key.localeCompare(b.key))) await h.store.put(entry.key, entry.value);
    await waitFor('both adopted', () => ids.every((id) => lines.some((line) => line.session === id && /record is back/.test(line.msg))));
    // Past the end of the grace period the sessions are still served by the same jobs.
    h.tick(10 * minute);
    for (const id of ids) await statusWhen(h.store, id, (s) => s.phase === 'Ready' && s.allocationId === h.scheduler.workload(id)?.allocation?.id);
    assert.equal(h.scheduler.registrations.length, registrations);
    assert.deepEqual(h.scheduler.deregistrations, []);
    assert.equal(lines.filter((line) => line.level === 50).length, 1);
  });

  it('gives a running orphan its whole grace period in each term as leader, whatever an earlier term saw', async () => {
    const { log, lines } = capturingLogger();
    h = await ControllerHarness.embedded({ orphanGracePeriodMs: 15 * minute, log });
    const [id] = await createInOrder(h, ['ann']);
    await makeReady(h, id!);
    const verdicts = (): string[] => lines.filter((line) => line.session === id && /keeping it for the grace period|grace period over/.test(line.msg)).map((line) => line.msg);
    const record = (await h.store.get(keys.session(id!)))!.value;
    await h.store.delete(keys.session(id!));
    await waitFor('the orphan noticed', () => verdicts().length === 1);
    // Standing by, this replica sees the record restored and, much later, gone again.
    await h.controller.leadership.stop();
    assert.equal(await h.store.put(keys.session(id!), record, { cas: 0 }), true);
    await waitFor('the restored record cached', () => h.controller.sessions.cache.get(id!) !== undefined);
    h.tick(20 * minute);
    await h.store.delete(keys.session(id!));
    await waitFor('its second loss cached', () => h.controller.sessions.cache.get(id!) === undefined);
    h.controller.leadership.start();
    await waitFor('the orphan noticed by the new term', () => verdicts().length === 2);
    assert.match(verdicts()[1]!, /keeping it for the grace period/);
    assert.ok(h.scheduler.workload(id!), 'the workload still runs');
    h.tick(15 * minute);
    await waitFor('removed when the new term\'s grace period ends', () => h.scheduler.workload(id!) === undefined);
  });

  it('removes orphan workloads that do not run at once, whatever the grace period', async () => {
    h = await ControllerHarness.embedded({ orphanGracePeriodMs: 15 * minute });
    const allocation = { healthy: undefined, ports: {}, tasks: {} };
    h.scheduler.adopt({ jobId: 'manticore-orphan00005', sessionId: 'orphan00005', specHash: 'x', allocation: { ...allocation, id: 'a5', clientStatus: 'pending' } });
    h.scheduler.adopt({ jobId: 'manticore-orphan00006', sessionId: 'orphan00006', specHash: 'x', allocation: { ...allocation, id: 'a6', clientStatus: 'complete' } });
    await waitFor('removed', () => h.scheduler.workload('orphan00005') === undefined && h.scheduler.workload('orphan00006') === undefined);
    assert.deepEqual(h.scheduler.deregistrations.sort(), ['manticore-orphan00005', 'manticore-orphan00006']);
  });

  it('fails sessions whose template was removed, releasing what they held', async () => {
    h = await ControllerHarness.embedded();
    const [id] = await createInOrder(h, ['ann']);
    await makeReady(h, id!);
    // The operator removed the template: the record now names one this controller does not know.
    await editSpec(h, id!, (spec) => (spec.template = 'retired'));
    const failed = await statusWhen(h.store, id!, 'Failed');
    assert.equal(condition(failed, 'Ready'), 'False/TemplateNotFound');
    await waitFor('released', () => h.scheduler.workload(id!) === undefined);
  });

  it('changes nothing a user can see when the controller restarts with sessions waiting, starting and warned', async () => {
    h = await ControllerHarness.embedded({ limits: { maxSessions: 2 }, policy: { startTimeoutMs: 60 * minute } });
    const [a, b, c] = await createInOrder(h, ['ann', 'bob', 'cid']);
    await makeReady(h, a!);
    await statusWhen(h.store, b!, (s) => s.phase === 'Starting' && s.jobId !== undefined);
    h.tick(26 * minute);
    await statusWhen(h.store, a!, (s) => condition(s, 'IdleWarning') === 'True/Idle');
    await statusWhen(h.store, c!, (s) => s.queuePosition === 1 && s.estimatedStartAt !== undefined);
    const before = await Promise.all([a!, b!, c!].map((id) => statusOf(h.store, id)));
    const counting = countingStore(h.store);
    await h.restartController(counting);
    await waitFor('settled after restart', () => h.controller.queue.idle);
    assert.deepEqual(counting.writes, []);
    assert.deepEqual(await Promise.all([a!, b!, c!].map((id) => statusOf(h.store, id))), before);
  });
});
