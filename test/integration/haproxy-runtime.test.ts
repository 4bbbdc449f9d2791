import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import * as FakeTimers from '@sinonjs/fake-timers';
import type { RouteRecord } from '../../controller/api/types.js';
import { RouterAgent } from '../../controller/router/agent.js';
import { HaproxyDataPlane, type RouteTable } from '../../controller/router/data-plane.js';
import { runPaths } from '../../controller/router/haproxy-config.js';
import { HaproxyProcess } from '../../controller/router/haproxy-process.js';
import { HaproxyRuntime } from '../../controller/router/haproxy-runtime.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import { silentLogger } from '../../controller/util/log.js';
import { closeServer, httpBackend, type Backend } from '../support/backends.js';
import { controllerClock, keys } from '../support/controller-harness.js';
import { startHaproxyOnFreePorts } from '../support/haproxy.js';
import { freePort, freePortRange } from '../support/ports.js';
import { waitFor } from '../support/wait.js';

// The Runtime API client, the data plane and the router agent against a real HAProxy, with OS-chosen ports and a temporary run directory.

const TEMPLATE = fs.readFileSync(path.resolve(__dirname, '../../../manifests/haproxy/haproxy.cfg'), 'utf8');

function status(port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, headers: { host }, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.setTimeout(5000, () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end();
  });
}

describe('router against a real HAProxy: admin socket limits, restarts behind its back', function () {
  this.timeout(30_000);

  let runDir: string;
  let httpPort: number;
  let tcpRange: { start: number; end: number };
  let backend: Backend;
  let proc: HaproxyProcess;

  before(async () => {
    runDir = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'manticore-runtime-'));
    backend = await httpBackend('A');
    proc = await startHaproxyOnFreePorts(async () => {
      httpPort = await freePort();
      tcpRange = await freePortRange(2);
      return new HaproxyProcess({
        runDir,
        template: TEMPLATE,
        values: { httpBind: `127.0.0.1:${httpPort}`, tcpBind: `127.0.0.1:${tcpRange.start}-${tcpRange.end}`, maxconn: 2000, hardStopAfter: '10s' },
        log: silentLogger(),
        gracefulStopMs: 2000,
      });
    });
  });

  after(async () => {
    await proc?.stop();
    if (backend) await closeServer(backend.server);
    await fs.promises.rm(runDir, { recursive: true, force: true });
  });

  it('takes a burst of hundreds of route changes at once, from several clients of the admin socket, with none refused', async () => {
    const hostsMap = runPaths(runDir).hostsMap;
    const count = 300;
    const tokens = Array.from({ length: count }, (_, i) => `burst${i}`);
    const hosts = (address: string): RouteTable => ({ hosts: new Map(tokens.map((token) => [token, address])), ports: new Map() });
    const dataPlane = new HaproxyDataPlane({ runtime: new HaproxyRuntime(proc.adminSocket), runDir, log: silentLogger(), concurrency: count });
    await dataPlane.apply(hosts('127.0.0.1:1'));
    // Every route changes value: one `set map` each, all at once, while another client adds its own entries.
    const other = new HaproxyRuntime(proc.adminSocket);
    const results = await Promise.allSettled([
      dataPlane.apply(hosts(backend.address)),
      ...Array.from({ length: 50 }, (_, i) => other.addMap(hostsMap, `extra${i}`, '127.0.0.1:3000')),
    ]);
    const failures = results.filter((result): result is PromiseRejectedResult => result.status === 'rejected').map((result) => String(result.reason));
    assert.deepEqual(failures.slice(0, 3), [], `${failures.length} of ${results.length} refused`);
    const live = await other.showMap(hostsMap);
    assert.equal(live.filter((entry) => entry.value === backend.address).length, count);
    assert.equal(live.filter((entry) => entry.key.startsWith('extra')).length, 50);
    assert.equal(await status(httpPort, `burst${count - 1}.sessions.test`), 200);
  });

  it('notices on its heartbeat that HAProxy was reloaded or restarted by someone else, and re-applies every route', async () => {
    const heartbeatMs = 10_000;
    const token = 'r'.repeat(26);
    const routes: RouteRecord = { sessionId: 'sessionr1', hosts: [{ service: 'hmi', token, backend: backend.address }], ports: [] };
    const store = EmbeddedStore.open(':memory:');
    await store.put(keys.route(routes.sessionId), JSON.stringify(routes));
    const dataPlane = new HaproxyDataPlane({ runtime: new HaproxyRuntime(proc.adminSocket), runDir, log: silentLogger() });
    const clock = FakeTimers.createClock(Date.now());
    const agent = new RouterAgent({ store, keys, name: 'edge-1', dataPlane, heartbeatMs, storeLossGraceMs: 0, log: silentLogger(), clock: controllerClock(clock) });
    const admin = new HaproxyRuntime(proc.adminSocket);
    const serving = async (): Promise<boolean> => (await status(httpPort, `${token}.sessions.test`)) === 200;
    // The map files lag the live maps (they are written in the background): a reload then comes up without the route.
    const loseRouteFromFiles = async (): Promise<void> => {
      await dataPlane.flush();
      await fs.promises.writeFile(runPaths(runDir).hostsMap, '');
    };
    try {
      await agent.start();
      assert.ok(await serving());

      // An operator's reload through the master CLI: a new worker loads the map files.
      await loseRouteFromFiles();
      const workerBefore = (await admin.showInfo()).Pid;
      await new HaproxyRuntime(proc.masterSocket, { severityOutput: false }).execute('reload').catch(() => undefined);
      await waitFor('the new worker to answer', async () => (await admin.showInfo()).Pid !== workerBefore);
      assert.equal(await serving(), false, 'the reload dropped the route');
      clock.tick(heartbeatMs);
      await waitFor('the route to serve again after the reload', serving, 3_000);

      // A restart by something else (a stop and a start the router did not ask for).
      await loseRouteFromFiles();
      await proc.stop();
      await proc.start();
      assert.equal(await serving(), false, 'the restart dropped the route');
      clock.tick(heartbeatMs);
      await waitFor('the route to serve again after the restart', serving, 3_000);
    } finally {
      await agent.stop();
      await store.close();
    }
  });
});
