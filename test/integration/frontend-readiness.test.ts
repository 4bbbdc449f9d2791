import assert from 'node:assert/strict';
import * as FakeTimers from '@sinonjs/fake-timers';
import { StoreReadiness } from '../../controller/frontend/readiness.js';
import type { Frontend } from '../../controller/frontend/server.js';
import { ConsulStore } from '../../controller/store/consul-store.js';
import { silentLogger } from '../../controller/util/log.js';
import { ConsulDouble } from '../fakes/consul.js';
import type { KvEntry, Store } from '../../controller/store/store.js';
import { capturingLogger, controllerClock } from '../support/controller-harness.js';
import { testFrontend } from '../support/frontend.js';

describe('front end: readiness', () => {
  let consul: ConsulDouble;
  let store: ConsulStore;
  let frontend: Frontend;
  let base: string;
  let logged: ReturnType<typeof capturingLogger>['lines'];

  beforeEach(async () => {
    consul = await ConsulDouble.start();
    store = new ConsulStore({ address: consul.address, log: silentLogger() });
    const captured = capturingLogger();
    logged = captured.lines;
    frontend = testFrontend(store, { log: captured.log });
    base = await frontend.start('127.0.0.1', 0);
  });
  afterEach(async () => {
    await frontend.stop();
    await store.close();
    await consul.stop();
  });

  const probe = async (path: string): Promise<{ status: number; body: { ready?: boolean; ok?: boolean; reason?: string } }> => {
    const answer = await fetch(`${base}${path}`);
    return { status: answer.status, body: (await answer.json()) as { ready?: boolean; ok?: boolean; reason?: string } };
  };

  it('is ready only while it reaches the store: a front end that cannot create, delete or keep a session alive gets no users; it stays alive meanwhile', async () => {
    assert.deepEqual(await probe('/readyz'), { status: 200, body: { ready: true } });
    await consul.outage(true);
    const down = await probe('/readyz');
    assert.equal(down.status, 503);
    assert.equal(down.body.ready, false);
    assert.match(down.body.reason ?? '', /cannot reach Consul at http:\/\/127\.0\.0\.1:\d+/, 'the answer says why, naming the agent');
    assert.deepEqual(await probe('/healthz'), { status: 200, body: { ok: true } }, 'the process is not restarted for its store being away');
    assert.equal((await probe('/readyz')).status, 503);
    await consul.outage(false);
    assert.deepEqual(await probe('/readyz'), { status: 200, body: { ready: true } }, 'ready again as soon as the store answers');
    const readiness = logged.filter(({ msg }) => msg.startsWith('the store'));
    assert.deepEqual(
      readiness.map(({ level, msg }) => [level, msg]),
      [
        [40, 'the store does not answer: not ready (/readyz answers 503) until it does'],
        [30, 'the store answers again: ready'],
      ],
      'the outage is logged once as it starts and once as it ends',
    );
  });

  it('is not ready before its caches are synced', async () => {
    const starting = testFrontend(store);
    const answer = await starting.app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(answer.statusCode, 503);
    assert.deepEqual(answer.json(), { ready: false, reason: 'the caches are not synced yet' });
    await starting.app.close();
  });
});

describe('front end: readiness of a store that does not answer', () => {
  it('answers within a second, before the job file\'s 2 s check times out, saying why, while the read of an agent that hangs goes on', async () => {
    const clock = FakeTimers.createClock(0);
    let reads = 0;
    let hanging = true;
    let answer: ((entry: KvEntry | undefined) => void) | undefined;
    // An agent that accepts the connection and does not answer (wedged, or paused) until answer() is called.
    const store = {
      get: (): Promise<KvEntry | undefined> => {
        reads++;
        return hanging ? new Promise((resolve) => (answer = resolve)) : Promise.resolve(undefined);
      },
    } as unknown as Store;
    const captured = capturingLogger();
    const readiness = new StoreReadiness(store, 'manticore/leader', captured.log, controllerClock(clock));
    let first: string | undefined | 'pending' = 'pending';
    void readiness.check().then((problem) => (first = problem));
    await clock.tickAsync(999);
    assert.equal(first, 'pending');
    await clock.tickAsync(1);
    assert.equal(first, 'the store did not answer a read of manticore/leader within 1000 ms');
    const second = readiness.check();
    await clock.tickAsync(1_000);
    assert.equal(await second, 'the store did not answer a read of manticore/leader within 1000 ms');
    assert.equal(reads, 1, 'the checks share the read on its way, so a hung agent is not sent a pile of them');
    hanging = false;
    answer!(undefined);
    await clock.tickAsync(0);
    assert.equal(await readiness.check(), undefined, 'ready once the store answers');
    assert.deepEqual(
      captured.lines.filter(({ msg }) => msg.startsWith('the store')).map(({ level, msg }) => [level, msg]),
      [
        [40, 'the store does not answer: not ready (/readyz answers 503) until it does'],
        [30, 'the store answers again: ready'],
      ],
    );
  });
});
