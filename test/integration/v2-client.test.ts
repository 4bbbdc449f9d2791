import assert from 'node:assert/strict';
import path from 'node:path';
import type { SessionRecord } from '../../controller/api/types.js';
import { Frontend } from '../../controller/frontend/server.js';
import type { JobConnection } from '../../controller/frontend/v2.js';
import { NomadScheduler } from '../../controller/scheduler/nomad-scheduler.js';
import type { Scheduler } from '../../controller/scheduler/scheduler.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import { NomadDouble } from '../fakes/nomad.js';
import { condition, ControllerHarness, defaultPolicy, keys, statusWhen, templates, testLog, type HarnessOptions } from '../support/controller-harness.js';
import { jsonRequest } from '../support/http.js';
import { V2Socket } from '../support/v2-client.js';
import { waitFor } from '../support/wait.js';

const repoRoot = path.resolve(__dirname, '../../..');
const minute = 60_000;
const job = { core: { version: '8.2.0-ubuntu-update', build: 'default' }, hmi: { type: 'generic', version: 'minimal-0.13.0' } };
const v2Names = ['core-broker', 'core-tcp', 'core-file', 'core-log', 'core-policy', 'core-ws-server', 'core-store', 'core-python', 'hmi-user'];
const activity = { inactivityTime: (defaultPolicy.idleTimeoutMs - defaultPolicy.idleWarningMs) / 1000, remainingTime: defaultPolicy.idleWarningMs / 1000 };

/**
 * The whole v2 client flow against real front ends on loopback ports chosen by the OS, with a controller and
 * a router in this process over the Nomad API double (docker simulated, so the `sdl` template runs) and
 * the embedded store. The lifecycle clock is the harness's fake clock, shared by the front ends so that
 * recorded activity and the controller's deadlines agree.
 */
describe('a v2 client against the front end, with a controller on the Nomad API double', function () {
  this.timeout(60_000);
  let nomad: NomadDouble;
  let h: ControllerHarness<Scheduler>;
  const frontends: Frontend[] = [];

  async function start(options: HarnessOptions = {}): Promise<void> {
    nomad = await NomadDouble.start({ workDir: repoRoot, log: testLog });
    const scheduler = new NomadScheduler({
      address: nomad.address,
      log: testLog,
      job: { datacenters: ['dc1'], restart: { attempts: 3, intervalMs: 60_000, delayMs: 50 }, healthyDeadlineMs: 30_000, checkIntervalMs: 50, checkTimeoutMs: 1_000 },
      requestTimeoutMs: 5_000,
    });
    await scheduler.start();
    h = new ControllerHarness<Scheduler>(EmbeddedStore.open(':memory:'), scheduler, { templates, ports: { start: 20000, end: 20099 }, ...options });
    await h.start();
  }

  /** A front end replica on the harness's store; returns its base URL. */
  async function startFrontend(): Promise<string> {
    const frontend = new Frontend({
      store: h.store,
      keys,
      templates,
      backend: 'nomad',
      bodyLimitBytes: 65_536,
      sessionsPerUser: 1,
      activityWriteIntervalMs: 30_000,
      expiry: defaultPolicy,
      log: testLog,
      now: () => h.clock.now,
      v2: { address: { protocol: 'ws' } },
    });
    frontends.push(frontend);
    return frontend.start('127.0.0.1', 0);
  }

  afterEach(async () => {
    for (const frontend of frontends.splice(0)) await frontend.stop();
    await h.stop();
    await nomad.stop();
  });

  /** POST /api/v2/job as a v2 client does, and the websocket URL it builds from the answer. */
  async function requestJob(base: string, id: string): Promise<{ passcode: string; socketUrl: string }> {
    const { status, body } = await jsonRequest<JobConnection>(`${base}/api/v2/job`, 'POST', { id, ...job });
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.domain, undefined, 'no domain configured: the client uses the host it POSTed to');
    return { passcode: body.passcode, socketUrl: `${body.protocol}://${new URL(base).host}${body.path}${body.passcode}` };
  }

  async function sessionIdOf(owner: string): Promise<string> {
    return waitFor(`${owner}'s session`, async () => {
      const { entries } = await h.store.list(keys.sessions);
      return entries.map((entry) => JSON.parse(entry.value) as SessionRecord).find((record) => record.metadata.owner === owner)?.metadata.id;
    });
  }

  it('POST job → position → services → activity on the idle warning → keep-alive clears it → DELETE → dead', async () => {
    await start();
    const base = await startFrontend();
    const { socketUrl } = await requestJob(base, 'dev-1');
    const id = await sessionIdOf('dev-1');
    const client = await V2Socket.open(socketUrl);

    const services = await client.next('services', 0, 30_000);
    assert.deepEqual(Object.keys(services.data).sort(), [...v2Names].sort());
    assert.match(String(services.data['core-tcp']), /^localhost:200\d\d$/);
    assert.match(String(services.data['hmi-user']), /^http:\/\/[a-z2-7]+\.localhost:8080$/, 'as v2 gave addresses: no trailing slash');
    assert.match(String(services.data['core-broker']), /^ws:\/\/[a-z2-7]+\.localhost:8080$/, 'as v2 gave addresses: no trailing slash');
    // Admitted at once (room for 100): no waiting, so one position, already not waiting.
    assert.deepEqual(client.messages[0], { type: 'position', data: { position: 0, wait: false } });

    h.tick(25 * minute);
    assert.deepEqual((await client.next('activity', 2)).data, activity);
    client.send({ type: 'activity' });
    await statusWhen(h.store, id, (status) => condition(status, 'IdleWarning') === 'False/Active');
    assert.equal(client.types.filter((type) => type === 'activity').length, 1);

    // The warning comes again only after another idle spell.
    h.tick(25 * minute);
    await client.next('activity', 3);

    const deleted = await jsonRequest(`${base}/api/v2/job`, 'DELETE', { id: 'dev-1' });
    assert.equal(deleted.status, 200);
    assert.deepEqual(await client.whenClosed(), { code: 1000, reason: 'the session has ended' });
    assert.deepEqual(client.types, ['position', 'services', 'activity', 'activity', 'dead']);
    await waitFor('the session is gone', async () => (await h.store.get(keys.session(id))) === undefined, 30_000);
  });

  it('replays the current state to a client that reconnects through another front end replica, which can also keep it alive and end it', async () => {
    await start();
    const first = await startFrontend();
    const { passcode, socketUrl } = await requestJob(first, 'dev-1');
    const id = await sessionIdOf('dev-1');
    const original = await V2Socket.open(socketUrl);
    const services = await original.next('services', 0, 30_000);
    original.close();

    const second = await startFrontend();
    await waitFor('the replica caches the session', () => frontends[1]!.sessions.sessions.cache.get(id));
    const info = await jsonRequest<JobConnection>(`${second}/api/v2/info`, 'POST', { id: 'dev-1' });
    assert.equal(info.status, 200);
    assert.equal(info.body.passcode, passcode);
    const reconnected = await V2Socket.open(`ws://${new URL(second).host}/api/v2/job/${passcode}`);
    await reconnected.nth(2);
    assert.deepEqual(reconnected.messages, [{ type: 'position', data: { position: 0, wait: false } }, services]);

    h.tick(25 * minute);
    await reconnected.next('activity', 2);
    reconnected.send({ type: 'activity' });
    await statusWhen(h.store, id, (status) => condition(status, 'IdleWarning') === 'False/Active');

    assert.equal((await jsonRequest(`${second}/api/v2/job`, 'DELETE', { id: 'dev-1' })).status, 200);
    await reconnected.whenClosed();
    assert.deepEqual(reconnected.types, ['position', 'services', 'activity', 'dead']);
  });

  it('tells waiting users their position, moves them up when a session ends, and admits the next', async () => {
    await start({ limits: { maxSessions: 1 } });
    const base = await startFrontend();
    // First come first served by creation time, which the front end takes from the lifecycle clock: move it between requests.
    const first = await requestJob(base, 'dev-1');
    h.tick(1000);
    const second = await requestJob(base, 'dev-2');
    h.tick(1000);
    const third = await requestJob(base, 'dev-3');
    const running = await V2Socket.open(first.socketUrl);
    await running.next('services', 0, 30_000);
    const next = await V2Socket.open(second.socketUrl);
    const last = await V2Socket.open(third.socketUrl);
    assert.deepEqual((await next.nth(1)).data, { position: 0, wait: true });
    assert.deepEqual((await last.nth(1)).data, { position: 1, wait: true });

    assert.equal((await jsonRequest(`${base}/api/v2/job`, 'DELETE', { id: 'dev-1' })).status, 200);
    await running.whenClosed();
    await next.next('services', 1, 30_000);
    assert.deepEqual(next.messages.slice(0, 2).map((message) => message.data), [
      { position: 0, wait: true },
      { position: 0, wait: false },
    ]);
    assert.deepEqual(next.types, ['position', 'position', 'services']);
    await last.nth(2);
    assert.deepEqual(last.messages, [
      { type: 'position', data: { position: 1, wait: true } },
      { type: 'position', data: { position: 0, wait: true } },
    ]);
  });
});
