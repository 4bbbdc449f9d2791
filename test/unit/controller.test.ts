import assert from 'node:assert/strict';
import { filter, firstValueFrom } from 'rxjs';
import sinon from 'sinon';
import { SessionReconciler } from '../../controller/controller/reconciler.js';
import { registry } from '../../controller/metrics/metrics.js';
import { StoreError, type Store } from '../../controller/store/store.js';
import {
  capturingLogger,
  condition,
  ControllerHarness,
  countingStore,
  createSession,
  delegatingStore,
  keys,
  laggingWatch,
  makeReady,
  requestDeletion,
  routesOf,
  standbyLeadership,
  statusOf,
  statusWhen,
} from '../support/controller-harness.js';
import { waitFor } from '../support/wait.js';

describe('controller: session reconciliation', () => {
  let h: ControllerHarness;
  beforeEach(async () => {
    h = await ControllerHarness.embedded();
  });
  afterEach(async () => {
    sinon.restore();
    await h.stop();
  });

  it('claims hostnames and a port, registers one job, routes it, and reports Ready with endpoints', async () => {
    const id = await createSession(h.store);
    const claim = await waitFor('routes claim', () => routesOf(h.store, id));
    assert.deepEqual(claim.hosts.map((r) => r.service).sort(), ['broker', 'hmi']);
    for (const route of claim.hosts) assert.match(route.token, /^[a-z2-7]{26}$/);
    assert.equal(claim.ports.length, 1);
    assert.ok(claim.ports[0]!.port >= 20000 && claim.ports[0]!.port <= 20009);

    await waitFor('job registration', () => h.scheduler.workload(id));
    const starting = await waitFor('Starting status', async () => {
      const status = await statusOf(h.store, id);
      return status?.phase === 'Starting' ? status : undefined;
    });
    assert.deepEqual(starting.endpoints, {}, 'no addresses before the routes are live');
    assert.equal(condition(starting, 'Admitted'), 'True/Claimed');

    // The job was told the public URLs (the HMI needs Core's broker URL up front).
    const request = h.scheduler.registrations[0]!.body as { endpoints: Record<string, { url: string }> };
    const brokerToken = claim.hosts.find((r) => r.service === 'broker')!.token;
    assert.equal(request.endpoints.broker!.url, `ws://${brokerToken}.localhost:8080/`);

    const ready = await makeReady(h, id);
    assert.equal(condition(ready, 'Routed'), 'True/RoutesApplied');
    assert.equal(condition(ready, 'Healthy'), 'True/Healthy');
    assert.equal(ready.observedGeneration, 1);
    const hmiToken = claim.hosts.find((r) => r.service === 'hmi')!.token;
    assert.deepEqual(ready.endpoints, {
      hmi: { protocol: 'http', url: `http://${hmiToken}.localhost:8080/` },
      broker: { protocol: 'ws', url: `ws://${brokerToken}.localhost:8080/` },
      tcp: { protocol: 'tcp', url: `tcp://localhost:${claim.ports[0]!.port}` },
    });
    assert.equal(h.dataPlane.table.hosts.get(hmiToken), '127.0.0.1:31000');
    assert.equal(h.dataPlane.table.ports.get(claim.ports[0]!.port), '127.0.0.1:31002');
    assert.equal(h.scheduler.registrations.length, 1, 'exactly one registration');
    assert.ok(ready.events.some((event) => event.reason === 'PhaseReady'));
  });

  it('with TLS at the edge, hands out https, wss and tls:// addresses, and tells the workload the same', async () => {
    const tls = await ControllerHarness.embedded({ addressing: { domain: 'sessions.example.com', httpScheme: 'https', httpPort: 443, tcpHost: 'apps.example.com', tcpTls: true } });
    try {
      const id = await createSession(tls.store);
      const claim = await waitFor('routes claim', () => routesOf(tls.store, id));
      const token = (service: string): string => claim.hosts.find((r) => r.service === service)!.token;
      const expected = {
        hmi: { protocol: 'http', url: `https://${token('hmi')}.sessions.example.com/`, tls: true },
        broker: { protocol: 'ws', url: `wss://${token('broker')}.sessions.example.com/`, tls: true },
        tcp: { protocol: 'tcp', url: `tls://apps.example.com:${claim.ports[0]!.port}`, tls: true },
      };
      assert.deepEqual((await makeReady(tls, id)).endpoints, expected);
      const request = tls.scheduler.registrations[0]!.body as { endpoints: Record<string, { url: string; host: string; port: number }> };
      assert.deepEqual(request.endpoints.broker, { protocol: 'ws', url: expected.broker.url, tls: true, host: `${token('broker')}.sessions.example.com`, port: 443 });
      assert.equal(request.endpoints.tcp!.url, expected.tcp.url);
    } finally {
      await tls.stop();
    }
  });

  it('tears a deleted session down (Terminating) and removes its records only when everything is gone', async () => {
    const id = await createSession(h.store);
    await makeReady(h, id);
    const port = (await routesOf(h.store, id))!.ports[0]!.port;
    await requestDeletion(h.store, id);
    await waitFor('records removed', async () => (await h.store.get(keys.session(id))) === undefined);
    assert.deepEqual(h.scheduler.deregistrations, [`manticore-${id}`]);
    assert.equal(await routesOf(h.store, id), undefined);
    assert.equal(await statusOf(h.store, id), undefined);
    assert.equal(h.dataPlane.table.ports.has(port), false, 'the router no longer serves the port');
  });

  it('stops a deleted session\'s job only once no router sends users to it', async () => {
    const id = await createSession(h.store);
    await makeReady(h, id);
    const claim = (await routesOf(h.store, id))!;
    const served: string[] = [];
    const deregister = h.scheduler.deregister.bind(h.scheduler);
    sinon.stub(h.scheduler, 'deregister').callsFake(async (jobId: string) => {
      for (const route of claim.hosts) if (h.dataPlane.table.hosts.has(route.token)) served.push(route.service);
      for (const route of claim.ports) if (h.dataPlane.table.ports.has(route.port)) served.push(route.service);
      return deregister(jobId);
    });
    await requestDeletion(h.store, id);
    await waitFor('records removed', async () => (await h.store.get(keys.session(id))) === undefined);
    assert.deepEqual(h.scheduler.deregistrations, [`manticore-${id}`]);
    assert.deepEqual(served, [], 'routes still served when the job was stopped');
  });

  it('does not tear a deleted session down twice when the status watch shows the deletion before the sessions watch', async () => {
    const id = await createSession(h.store);
    await makeReady(h, id);
    // The sessions watch lags behind the others, as separate blocking queries can: from the job's stop on,
    // it holds back what it sees (the record's deletion) until the test lets it through.
    const sessionsWatch = laggingWatch(h.store, keys.sessions);
    const counting = countingStore(sessionsWatch.store);
    await h.restartController(counting);
    const deregister = h.scheduler.deregister.bind(h.scheduler);
    sinon.stub(h.scheduler, 'deregister').callsFake(async (jobId: string) => {
      sessionsWatch.hold();
      return deregister(jobId);
    });
    const statusDeletionSeen = firstValueFrom(h.controller.statuses.cache.changes.pipe(filter((change) => change.id === id && change.current === undefined)));
    await requestDeletion(h.store, id);
    await statusDeletionSeen;
    const drained = (): boolean => h.controller.queue.length === 0 && h.controller.queue.inFlight === 0;
    await waitFor('the status deletion looked at', drained);
    assert.ok(h.controller.sessions.cache.get(id) !== undefined, 'the sessions cache still holds the deleted record');
    sessionsWatch.release();
    await waitFor('the sessions cache caught up, the queue drained', () => h.controller.sessions.cache.get(id) === undefined && drained());
    const deletedAt = counting.writes.indexOf(`delete ${keys.session(id)}`);
    assert.deepEqual(counting.writes.slice(deletedAt + 1), [], `nothing written after the record was deleted: ${JSON.stringify(counting.writes)}`);
    assert.equal(await statusOf(h.store, id), undefined);
  });

  it('keeps the activity record of a live session whose record the sessions watch has not shown yet', async () => {
    const sessionsWatch = laggingWatch(h.store, keys.sessions);
    await h.restartController(sessionsWatch.store);
    const drained = (): boolean => h.controller.queue.length === 0 && h.controller.queue.inFlight === 0;
    await waitFor('queue drained', drained);
    sessionsWatch.hold();
    // A keepalive right after the create: the front end saw the record, this controller's sessions watch not yet.
    const id = await createSession(h.store);
    const activitySeen = firstValueFrom(h.controller.activities.cache.changes.pipe(filter((change) => change.id === id)));
    await h.store.put(keys.activity(id), JSON.stringify({ lastActivityAt: new Date().toISOString() }), { cas: 0 });
    await activitySeen;
    await waitFor('the activity looked at', drained);
    sessionsWatch.release();
    await waitFor('the session looked at', () => h.controller.sessions.cache.get(id) !== undefined && drained());
    assert.ok(await h.store.get(keys.activity(id)), 'its activity record is kept');
  });

  it('finishes tearing a deleted session down while no router is alive, as there is none to wait for', async () => {
    const id = await createSession(h.store);
    await makeReady(h, id);
    // The only router stops and withdraws its heartbeat.
    await h.router.stop();
    await waitFor('no live router seen', () => h.controller.routers.cache.size === 0);
    await requestDeletion(h.store, id);
    await waitFor('records removed', async () => (await h.store.get(keys.session(id))) === undefined);
    assert.deepEqual(h.scheduler.deregistrations, [`manticore-${id}`]);
    assert.equal(await routesOf(h.store, id), undefined);
    assert.equal(await statusOf(h.store, id), undefined);
  });

  it('leaves Ready when a task crashes and returns when it is healthy again', async () => {
    const id = await createSession(h.store);
    await makeReady(h, id);
    h.scheduler.update(id, { healthy: false, tasks: { core: { state: 'dead', failed: true, restarts: 1, lastEvent: 'exited with code 1' } } });
    const down = await waitFor('not ready', async () => {
      const status = await statusOf(h.store, id);
      return status?.phase === 'Starting' ? status : undefined;
    });
    assert.equal(condition(down, 'Healthy'), 'False/TaskRestarting');
    assert.match(down.conditions.find((c) => c.type === 'Ready')!.message, /core: exited with code 1/);
    assert.equal(Object.keys(down.endpoints).length, 3, 'the addresses stay known while it recovers');
    h.scheduler.update(id, { healthy: true, tasks: { core: { state: 'running', failed: false, restarts: 1 } } });
    await waitFor('ready again', async () => (await statusOf(h.store, id))?.phase === 'Ready');
    assert.equal(h.scheduler.registrations.length, 1, 'recovery needs no new registration');
  });

  it('says which health checks have not passed, and why, while it waits for them', async () => {
    const id = await runningSession(h, 32000);
    h.scheduler.update(id, { healthy: undefined, failingChecks: ['http GET / on port http: connection refused'] });
    const waiting = await waitFor('the failing check reported', async () => {
      const status = await statusOf(h.store, id);
      return status?.conditions.some((c) => c.type === 'Healthy' && c.message.includes('connection refused')) ? status : undefined;
    });
    assert.equal(condition(waiting, 'Healthy'), 'False/CheckingHealth');
    assert.equal(waiting.conditions.find((c) => c.type === 'Healthy')!.message, 'waiting for the health checks to pass: http GET / on port http: connection refused');
  });

  it('registers an admitted session\'s job in the same pass that admits it', async () => {
    const reconciles = sinon.spy(SessionReconciler.prototype, 'reconcile');
    const register = sinon.spy(h.scheduler, 'register');
    const id = await createSession(h.store);
    await waitFor('job registration', () => h.scheduler.workload(id));
    assert.equal(register.callCount, 1);
    // No second reconcile began before the registration: the claim's echo was not waited for.
    assert.ok(reconciles.callCount === 1 || register.firstCall.calledBefore(reconciles.secondCall!), `${reconciles.callCount} reconciles`);
    assert.equal(condition(await statusWhen(h.store, id, 'Starting'), 'Admitted'), 'True/Claimed');
  });

  it('looks at a session once for a change it depends on, not again when its own status write comes back', async () => {
    const id = await createSession(h.store);
    await makeReady(h, id);
    // Requeues after a delay (routers' heartbeats) stay scheduled: "drained" is nothing queued or running.
    const drained = (): boolean => h.controller.queue.length === 0 && h.controller.queue.inFlight === 0;
    await waitFor('queue drained', drained);
    const reconciles = sinon.spy(SessionReconciler.prototype, 'reconcile');
    h.scheduler.update(id, { healthy: false, tasks: { core: { state: 'dead', failed: true, restarts: 1, lastEvent: 'exited with code 1' } } });
    // The status write's echo is in the controller's cache and the queue drained: nothing else is coming.
    await waitFor('the written status back in the cache, the queue drained', () => h.controller.statuses.cache.get(id)?.value?.phase === 'Starting' && drained());
    assert.equal(reconciles.callCount, 1);
    // A status written by anyone else is an input like any other.
    const cached = h.controller.statuses.cache.get(id)!;
    await h.store.put(keys.status(id), JSON.stringify({ ...cached.value, conditions: [] }), { cas: cached.entry.modifyIndex });
    await waitFor('the foreign status looked at and corrected', () => reconciles.callCount === 2 && drained());
    assert.notDeepEqual((await statusOf(h.store, id))?.conditions, []);
  });

  it('acts on its own status write as soon as the store answers it, while the status watch lags', async () => {
    const id = await createSession(h.store);
    await makeReady(h, id);
    const statusesWatch = laggingWatch(h.store, keys.statuses);
    await h.restartController(statusesWatch.store);
    const drained = (): boolean => h.controller.queue.length === 0 && h.controller.queue.inFlight === 0;
    await waitFor('queue drained', drained);
    statusesWatch.hold();
    h.scheduler.update(id, { healthy: false, tasks: { core: { state: 'dead', failed: true, restarts: 1, lastEvent: 'exited with code 1' } } });
    await waitFor('the crash written', async () => (await statusOf(h.store, id))?.phase === 'Starting');
    assert.equal(h.controller.statuses.cache.get(id)?.value?.phase, 'Starting', 'the cache shows the committed write, not what the watch last brought');
    h.scheduler.update(id, { healthy: true, tasks: { core: { state: 'running', failed: false, restarts: 1 } } });
    await waitFor('ready again with the watch still held', async () => (await statusOf(h.store, id))?.phase === 'Ready');
    const written = h.controller.statuses.cache.get(id)!;
    statusesWatch.release();
    await waitFor('the held steps delivered and the queue drained', () => h.controller.statuses.index >= written.entry.modifyIndex && drained());
    assert.equal(h.controller.statuses.cache.get(id), written, 'the echoes, older or equal, changed nothing');
  });

  it('takes up a reconcile put off for its own status write as soon as that write comes back', async () => {
    const id = await createSession(h.store);
    await makeReady(h, id);
    // The status watch lags and the store's answers do not say what was written (an answer Consul sent
    // without readable results), so the recovery below is looked at before the crash's status write is
    // cached: that reconcile is put off (for up to 30 s), and the write's echo must bring the session back at once.
    const statusesWatch = laggingWatch(h.store, keys.statuses);
    await h.restartController({ ...statusesWatch.store, commit: async (operations) => (await h.store.commit(operations)) && [] });
    const drained = (): boolean => h.controller.queue.length === 0 && h.controller.queue.inFlight === 0;
    await waitFor('queue drained', drained);
    statusesWatch.hold();
    h.scheduler.update(id, { healthy: false, tasks: { core: { state: 'dead', failed: true, restarts: 1, lastEvent: 'exited with code 1' } } });
    await waitFor('the crash written', async () => (await statusOf(h.store, id))?.phase === 'Starting');
    h.scheduler.update(id, { healthy: true, tasks: { core: { state: 'running', failed: false, restarts: 1 } } });
    await waitFor('the recovery looked at and put off', () => h.controller.workloads.cache.get(id)?.allocation?.healthy === true && drained());
    assert.equal(h.controller.statuses.cache.get(id)?.value?.phase, 'Ready', 'the crash\'s status write is not cached yet');
    assert.equal((await statusOf(h.store, id))?.phase, 'Starting', 'the recovery is put off, not acted on');
    const crashCached = firstValueFrom(h.controller.statuses.cache.changes.pipe(filter((change) => change.id === id && change.current?.value?.phase === 'Starting')));
    statusesWatch.release();
    await crashCached;
    await waitFor('the crash\'s status write looked at', drained);
    assert.equal((await statusOf(h.store, id))?.phase, 'Ready', 'ready again, without waiting for the put-off reconcile');
  });

  it('keeps a Ready session Ready when the routers fall silent, as they do while the store is unreachable', async () => {
    const id = await createSession(h.store);
    const ready = await makeReady(h, id);
    await h.router.stop();
    // New activity moves the expiry, so the status is written again by a pass that sees no router.
    await h.store.put(keys.activity(id), JSON.stringify({ lastActivityAt: new Date(Date.now() + 60_000).toISOString() }));
    const after = await waitFor('the status written again', async () => {
      const status = await statusOf(h.store, id);
      return status?.expiresAt !== ready.expiresAt ? status : undefined;
    });
    assert.equal(after.phase, 'Ready');
    assert.equal(condition(after, 'Routed'), 'True/RoutesApplied');
    assert.equal(after.events.filter((event) => event.reason === 'PhaseReady').length, 1);
    // A session that was never routed still waits for a live router.
    const fresh = await runningSession(h, 32000);
    await waitFor('no router', async () => {
      const status = await statusOf(h.store, fresh);
      return status !== undefined && condition(status, 'Routed') === 'False/NoRouters';
    });
  });

  describe('routers judged by their heartbeats', () => {
    /** A controller with a 30 s router staleness and no router of its own: the tests write the heartbeats. */
    let g: ControllerHarness;
    beforeEach(async () => {
      g = await ControllerHarness.embedded({ routerStaleMs: 30_000 });
      await g.router.stop();
    });
    afterEach(() => g.stop());

    it('leaves a router that fell silent out as soon as its heartbeat is routerStaleMs old, however recent it was when the session began to wait', async () => {
      // edge-1 serves everything throughout; edge-2 heartbeats at the start and 10 s in, and is never heard from again.
      await routerHeartbeat(g, 'edge-1', Number.MAX_SAFE_INTEGER);
      await routerHeartbeat(g, 'edge-2', 0);
      const id = await runningSession(g, 31000);
      await statusWhen(g.store, id, (status) => condition(status, 'Routed') === 'False/WaitingForRouters');
      g.tick(10_000);
      await routerHeartbeat(g, 'edge-2', 0);
      g.tick(20_000);
      await routerHeartbeat(g, 'edge-1', Number.MAX_SAFE_INTEGER);
      // Stale from 40 s on: 10 s after the 30 s the session would otherwise wait before looking again.
      g.tick(10_001);
      const ready = await statusWhen(g.store, id, 'Ready', 3_000);
      assert.equal(ready.conditions.find((c) => c.type === 'Routed')?.message, 'applied by 1 router(s)');
    });

    it("judges a router live by when the controller sees its heartbeats, not by the router's clock", async () => {
      const fiveMinutes = 300_000;
      await routerHeartbeat(g, 'edge-1', Number.MAX_SAFE_INTEGER);
      // edge-2's clock is 5 min behind: it is alive, and a session waits until it has applied its routes.
      await routerHeartbeat(g, 'edge-2', 0, -fiveMinutes);
      const first = await runningSession(g, 31000);
      const waiting = await statusWhen(g.store, first, (status) => ['False/WaitingForRouters', 'True/RoutesApplied'].includes(condition(status, 'Routed') ?? ''));
      assert.equal(condition(waiting, 'Routed'), 'False/WaitingForRouters');
      await routerHeartbeat(g, 'edge-2', Number.MAX_SAFE_INTEGER, -fiveMinutes);
      assert.equal(condition(await statusWhen(g.store, first, 'Ready', 3_000), 'Routed'), 'True/RoutesApplied');

      // edge-2 now runs 5 min ahead and falls silent with a session waiting for it: it is left out 30 s on.
      await routerHeartbeat(g, 'edge-2', 0, fiveMinutes);
      const second = await runningSession(g, 32000);
      await statusWhen(g.store, second, (status) => condition(status, 'Routed') === 'False/WaitingForRouters');
      g.tick(20_000);
      await routerHeartbeat(g, 'edge-1', Number.MAX_SAFE_INTEGER);
      g.tick(10_001);
      assert.equal(condition(await statusWhen(g.store, second, 'Ready', 3_000), 'Routed'), 'True/RoutesApplied');
    });

    it('does not wait for a router whose last heartbeat was already stale when the controller started', async () => {
      await routerHeartbeat(g, 'edge-1', Number.MAX_SAFE_INTEGER, 60_000);
      await routerHeartbeat(g, 'edge-2', 0, -30_001);
      await g.restartController();
      const id = await runningSession(g, 31000);
      assert.equal((await statusWhen(g.store, id, 'Ready', 3_000)).conditions.find((c) => c.type === 'Routed')?.message, 'applied by 1 router(s)');
    });
  });

  it('reports malformed and impossible records in their status and keeps serving the others', async () => {
    await h.store.put(keys.session('brokenrecord1'), '{"metadata": nope');
    const unknownTemplate = await createSession(h.store, { spec: { template: 'nosuchtemplate' } });
    const badParameter = await createSession(h.store, { spec: { parameters: { coreVersion: '0.0.1', hmiType: 'generic' } } });
    const sdlOnEmbedded = await createSession(h.store, { spec: { template: 'sdl', parameters: {} } });
    const good = await createSession(h.store);

    const broken = await waitFor('status of the malformed record', () => statusOf(h.store, 'brokenrecord1'));
    assert.equal(broken.phase, 'Failed');
    assert.equal(condition(broken, 'Valid'), 'False/InvalidRecord');
    assert.match(broken.conditions[0]!.message, /not valid JSON/);
    const expectations: Array<[string, string, RegExp]> = [
      [unknownTemplate, 'False/TemplateNotFound', /nosuchtemplate/],
      [badParameter, 'False/InvalidParameters', /\/parameters\/coreVersion/],
      [sdlOnEmbedded, 'False/Unschedulable', /no embedded backend/],
    ];
    for (const [id, expected, message] of expectations) {
      const status = await waitFor(`Failed status of ${id}`, async () => {
        const s = await statusOf(h.store, id);
        return s?.phase === 'Failed' ? s : undefined;
      });
      assert.equal(condition(status, 'Ready'), expected);
      assert.match(status.conditions[0]!.message, message);
    }
    await makeReady(h, good);
  });

  it('reports a record holding a time Date.parse cannot read (a leap second) as invalid, like any malformed record', async () => {
    const record = { metadata: { id: 'leapsecond1', owner: 'ann', createdAt: '2016-12-31T23:59:60Z', generation: 1 }, spec: { template: 'demo', parameters: {} } };
    await h.store.put(keys.session('leapsecond1'), JSON.stringify(record));
    const status = await statusWhen(h.store, 'leapsecond1', 'Failed');
    assert.equal(condition(status, 'Valid'), 'False/InvalidRecord');
    assert.match(status.conditions[0]!.message, /\/metadata\/createdAt: must match format "date-time"/);
    assert.equal(await routesOf(h.store, 'leapsecond1'), undefined, 'nothing is claimed for it');
  });

  it('removes jobs, routes and statuses that belong to no session', async () => {
    await h.controller.stop();
    h.scheduler.adopt({ jobId: 'manticore-orphan00001', sessionId: 'orphan00001', specHash: 'x' });
    await h.store.put(keys.route('orphan00002'), JSON.stringify({ sessionId: 'orphan00002', hosts: [], ports: [{ service: 'tcp', port: 20003 }] }));
    await h.store.put(keys.status('orphan00003'), JSON.stringify({ phase: 'Ready', observedGeneration: 1, conditions: [], endpoints: {}, events: [] }));
    h.controller = await h.startController();
    await waitFor('orphans collected', async () =>
      h.scheduler.workload('orphan00001') === undefined &&
      (await h.store.get(keys.route('orphan00002'))) === undefined &&
      (await h.store.get(keys.status('orphan00003'))) === undefined,
    );
    assert.deepEqual(h.scheduler.deregistrations, ['manticore-orphan00001']);
  });

  it('renders a session\'s job again only when what it is rendered from changed', async () => {
    const id = await createSession(h.store);
    await makeReady(h, id);
    // Requeues after a delay (routers' heartbeats) stay scheduled: "drained" is nothing queued or running.
    const drained = (): boolean => h.controller.queue.length === 0 && h.controller.queue.inFlight === 0;
    await waitFor('queue drained', drained);
    const renders = h.scheduler.renders;
    for (let i = 0; i < 5; i++) h.controller.queue.add(id);
    await waitFor('queue drained', drained);
    assert.equal(h.scheduler.renders, renders, 'reconciles of an unchanged session render nothing');
  });

  it('begins a term only once its caches show what the store held: a session the previous leader removed is not brought back', async () => {
    // A standby whose sessions watch lags its statuses watch (each prefix has its own).
    const sessionsWatch = laggingWatch(h.store, keys.sessions);
    let readsOfSessions = 0;
    const lagging: Store = {
      ...sessionsWatch.store,
      prefixIndex: (prefix) => {
        if (prefix === keys.sessions) readsOfSessions += 1;
        return h.store.prefixIndex(prefix);
      },
    };
    const standbyTerm = standbyLeadership();
    const standby = await h.startController(lagging, standbyTerm.leadership);
    const id = await createSession(h.store);
    await makeReady(h, id);
    await waitFor('the standby seeing it Ready', () => standby.statuses.cache.get(id)?.value?.phase === 'Ready');
    sessionsWatch.hold();
    await requestDeletion(h.store, id);
    await waitFor('the leader removing the session', async () => (await h.store.get(keys.session(id))) === undefined && standby.statuses.cache.get(id) === undefined);
    assert.ok(standby.sessions.cache.get(id) !== undefined, "the standby's sessions cache still holds it");
    await h.controller.stop();
    h.controller = standby;
    const registrations = h.scheduler.registrations.length;
    const readsBefore = readsOfSessions;
    standbyTerm.lead();
    // Either the term reads the store to catch up, or (acting on its caches as they are) it brings the session back.
    await waitFor('the new term reading the store, or acting', async () => readsOfSessions > readsBefore || h.scheduler.registrations.length > registrations || (await statusOf(h.store, id)) !== undefined);
    assert.equal(h.scheduler.registrations.length, registrations, 'nothing registered before the caches caught up');
    assert.equal(await statusOf(h.store, id), undefined, 'nothing written before the caches caught up');
    sessionsWatch.release();
    await waitFor('the new leader at work, the session seen gone', () => standby.sessions.cache.get(id) === undefined && standby.queue.idle);
    assert.equal(await statusOf(h.store, id), undefined, 'no status written for it again');
    assert.equal(await routesOf(h.store, id), undefined, 'no routes claimed for it again');
    assert.equal(h.scheduler.registrations.length, registrations, 'its job is not registered again');
  });

  it('confirms every session after a restart without registering or writing anything', async () => {
    const ids = [await createSession(h.store), await createSession(h.store), await createSession(h.store)];
    for (const [n, id] of ids.entries()) await makeReady(h, id, 32000 + n * 10);
    const registrations = h.scheduler.registrations.length;
    const counting = countingStore(h.store);
    await h.restartController(counting);
    await waitFor('queue drained', () => h.controller.queue.idle);
    assert.equal(h.scheduler.registrations.length, registrations);
    assert.deepEqual(counting.writes, []);
  });
});

describe('controller: scheduler calls belong to the leadership term', () => {
  let h: ControllerHarness;
  let lines: ReturnType<typeof capturingLogger>['lines'];
  let term: ReturnType<typeof standbyLeadership>;
  beforeEach(async () => {
    const captured = capturingLogger();
    lines = captured.lines;
    h = await ControllerHarness.embedded({ log: captured.log });
    // A controller whose leadership the test takes away, in place of the harness's sole leader.
    await h.controller.stop();
    term = standbyLeadership();
  });
  afterEach(async () => {
    await h.stop();
  });

  const leadOver = async (store: Store): Promise<void> => {
    h.controller = await h.startController(store, term.leadership);
    term.lead();
  };
  const dropped = (): boolean => lines.some((line) => line.msg === 'the leadership term ended before the scheduler call finished; reconcile dropped');
  const failures = (): unknown[] => lines.filter((line) => line.msg === 'reconcile failed; will retry');

  it('abandons a job registration on its way when leadership is lost, and writes no failure for it', async () => {
    await leadOver(h.store);
    const release = h.scheduler.slowRegistrations();
    const id = await createSession(h.store);
    await waitFor('the registration on its way', () => h.scheduler.registerCalls.begun === 1);
    term.lose();
    release();
    await waitFor('the registration settled', () => h.scheduler.registerCalls.settled === 1);
    await waitFor('the reconcile ended', async () => dropped() || (await statusOf(h.store, id)) !== undefined);
    assert.deepEqual(h.scheduler.registrations, [], 'the job registered after the term ended');
    assert.equal(await statusOf(h.store, id), undefined, 'a status written after the term ended');
    assert.deepEqual(failures(), [], 'the abandoned call counted as a failure');
  });

  /** Leads over a store that holds the first session's claim write until released. */
  async function leadWithClaimHeld(): Promise<{ id: string; releaseClaim: () => void }> {
    let claimHeld = false;
    let releaseClaim!: () => void;
    const claimWritten = new Promise<void>((resolve) => (releaseClaim = resolve));
    const slowClaims: Store = {
      ...delegatingStore(h.store),
      commit: async (operations) => {
        if (operations.some((operation) => operation.key.startsWith(keys.routes))) {
          claimHeld = true;
          await claimWritten;
        }
        return h.store.commit(operations);
      },
    };
    await leadOver(slowClaims);
    const id = await createSession(h.store);
    await waitFor('the claim write on its way', () => claimHeld);
    return { id, releaseClaim };
  }

  it('does not send a job registration once leadership is lost on the way to it', async () => {
    const { id, releaseClaim } = await leadWithClaimHeld();
    term.lose();
    releaseClaim();
    await waitFor('the reconcile ended', async () => dropped() || h.scheduler.registerCalls.begun > 0 || (await statusOf(h.store, id)) !== undefined);
    assert.equal(h.scheduler.registerCalls.begun, 0, 'register called after the term ended');
    assert.equal(await statusOf(h.store, id), undefined, 'a status written after the term ended');
    assert.deepEqual(failures(), []);
  });

  it('does not send a job registration once leadership is lost while stopping drains the reconciles in flight', async () => {
    const { id, releaseClaim } = await leadWithClaimHeld();
    // A SIGTERM: the stop waits for the reconcile in flight, and the lease ends meanwhile (renewals failed).
    const stopped = h.controller.stop();
    term.lose();
    releaseClaim();
    await stopped;
    assert.equal(h.scheduler.registerCalls.begun, 0, 'register called after the term ended');
    assert.equal(await statusOf(h.store, id), undefined, 'a status written after the term ended');
    assert.ok(dropped(), 'the reconcile was not dropped as the term ended');
    assert.deepEqual(failures(), []);
  });
});

describe('controller: public TCP ports', () => {
  let h: ControllerHarness;
  beforeEach(async () => {
    h = await ControllerHarness.embedded({ ports: { start: 20000, end: 20000 } });
  });
  afterEach(async () => {
    await h.stop();
  });

  it('makes a session wait while every port is taken and admits it when one is freed', async () => {
    const first = await createSession(h.store);
    await makeReady(h, first);
    const second = await createSession(h.store);
    const waiting = await waitFor('Waiting', async () => {
      const status = await statusOf(h.store, second);
      return status?.phase === 'Waiting' ? status : undefined;
    });
    assert.equal(condition(waiting, 'Admitted'), 'False/NoFreePort');
    await requestDeletion(h.store, first);
    const claim = await waitFor('second admitted', () => routesOf(h.store, second));
    assert.equal(claim.ports[0]!.port, 20000);
  });

  it('holds the port of a claim whose write the store did not answer until it is known whether the claim was written', async () => {
    // The first claim is written, but its answer is lost (a Consul 5xx, a timeout); the routes watch is slow to show it.
    const routesWatch = laggingWatch(h.store, keys.routes);
    let unanswered: string | undefined;
    const store: Store = {
      ...delegatingStore(routesWatch.store),
      commit: async (operations) => {
        const puts = await routesWatch.store.commit(operations);
        const claim = operations.find((operation) => operation.key.startsWith(keys.routes));
        if (unanswered !== undefined || claim === undefined) return puts;
        unanswered = claim.key;
        throw new StoreError('no answer', 'transaction', claim.key, { kind: 'unavailable' });
      },
    };
    await h.restartController(store);
    routesWatch.hold();
    const first = await createSession(h.store);
    await waitFor('the claim written without an answer', () => unanswered === keys.route(first));
    // Created earlier (another front end's clock), the second session is ahead of the first in the waiting list.
    const second = await createSession(h.store, { createdAt: Date.now() - 60_000 });
    const decided = await statusWhen(h.store, second, (status) => status.phase === 'Waiting' || status.phase === 'Starting');
    assert.equal(condition(decided, 'Admitted'), 'False/NoFreePort');
    await waitFor('nothing queued or in flight', () => h.controller.queue.length === 0 && h.controller.queue.inFlight === 0);
    assert.equal(await routesOf(h.store, second), undefined, 'the port of the first claim is not handed out again');
    routesWatch.release();
    await makeReady(h, first);
    assert.equal((await routesOf(h.store, first))?.ports[0]?.port, 20000);
    assert.equal(await routesOf(h.store, second), undefined);
    assert.equal(condition(await statusOf(h.store, second), 'Admitted'), 'False/NoFreePort');
  });
});

describe('controller: records other than sessions that cannot be read', () => {
  let h: ControllerHarness;
  let lines: ReturnType<typeof capturingLogger>['lines'];
  beforeEach(async () => {
    const captured = capturingLogger();
    lines = captured.lines;
    h = await ControllerHarness.embedded({ log: captured.log });
  });
  afterEach(async () => {
    await h.stop();
  });

  it('logs each unreadable status, activity record and router heartbeat once, with its key and the problem; its session stays Ready, and a fixed one is read again', async () => {
    const id = await createSession(h.store);
    await makeReady(h, id);
    const unreadable: Record<string, string> = {
      [keys.status(id)]: '{"phase": 3}',
      [keys.activity(id)]: '[]',
      [keys.router('edge-9')]: 'not JSON',
    };
    for (const [key, value] of Object.entries(unreadable)) await h.store.put(key, value);
    const reports = (): typeof lines => lines.filter((line) => line.level === 40 && typeof line.key === 'string' && line.key in unreadable);
    await waitFor('each unreadable record reported', () => new Set(reports().map((line) => line.key)).size === 3);
    // The leader writes the status again; the other session and further passes go on as before.
    await statusWhen(h.store, id, 'Ready');
    const other = await createSession(h.store);
    await makeReady(h, other, 32000);
    for (let pass = 0; pass < 3; pass++) h.controller.queue.add(id);
    await waitFor('queue drained', () => h.controller.queue.length === 0 && h.controller.queue.inFlight === 0);
    const byKey = new Map(reports().map((line) => [line.key, String(line.problem)]));
    assert.equal(reports().length, 3, 'each said once, not at every pass');
    assert.match(byKey.get(keys.status(id))!, /\/phase: must be equal to one of the allowed values/);
    assert.match(byKey.get(keys.activity(id))!, /\(root\): must be object/);
    assert.match(byKey.get(keys.router('edge-9'))!, /not valid JSON/);
    // Counted for an alert until fixed or deleted (the status has been written again by now).
    const counted = async (): Promise<string[]> => (await registry.getSingleMetricAsString('manticore_unreadable_records')).split('\n').filter((line) => !line.startsWith('#') && !line.endsWith(' 0'));
    assert.deepEqual((await counted()).sort(), [keys.activities, keys.routers].map((prefix) => `manticore_unreadable_records{resource="${prefix}"} 1`).sort());

    // Fixed: the activity moves the idle clock again, and the heartbeat counts.
    const lastActivityAt = new Date(h.clock.now + 60_000).toISOString();
    await h.store.put(keys.activity(id), JSON.stringify({ lastActivityAt }));
    await waitFor('the activity read', () => h.controller.activities.cache.get(id)?.value?.lastActivityAt === lastActivityAt);
    await h.store.delete(keys.router('edge-9'));
    assert.equal(reports().length, 3);
    await waitFor('the heartbeat gone', () => h.controller.routers.cache.get('edge-9') === undefined);
    assert.deepEqual(await counted(), []);
  });
});

/** A new session whose workload runs, its services on ports from `firstPort` on; its id. */
async function runningSession(g: ControllerHarness, firstPort: number): Promise<string> {
  const id = await createSession(g.store);
  await waitFor('job registration', () => g.scheduler.workload(id));
  g.scheduler.run(id, { http: `127.0.0.1:${firstPort}`, broker: `127.0.0.1:${firstPort + 1}`, tcp: `127.0.0.1:${firstPort + 2}` });
  return id;
}

/** Writes a router's heartbeat stamped by a clock `skewMs` off the controller's, and waits until the controller has seen it. */
async function routerHeartbeat(g: ControllerHarness, name: string, appliedIndex: number, skewMs = 0): Promise<void> {
  await g.store.put(keys.router(name), JSON.stringify({ name, appliedIndex, heartbeatAt: new Date(g.clock.now + skewMs).toISOString() }));
  const { modifyIndex } = (await g.store.get(keys.router(name)))!;
  await waitFor(`${name}'s heartbeat seen`, () => g.controller.routers.cache.get(name)?.entry.modifyIndex === modifyIndex);
}
