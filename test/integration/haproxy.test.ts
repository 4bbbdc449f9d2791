import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import sinon from 'sinon';
import { WebSocket, WebSocketServer } from 'ws';
import { HaproxyDataPlane, type RouteTable } from '../../controller/router/data-plane.js';
import { runPaths } from '../../controller/router/haproxy-config.js';
import { HaproxyProcess, HaproxyProcessError, resolveHaproxyBinary } from '../../controller/router/haproxy-process.js';
import { HaproxyRuntime } from '../../controller/router/haproxy-runtime.js';
import { routerProbes } from '../../controller/router/status-server.js';
import { silentLogger } from '../../controller/util/log.js';
import { closeServer, httpBackend, listen, tcpEchoBackend, type Backend } from '../support/backends.js';
import { startHaproxyOnFreePorts } from '../support/haproxy.js';
import { freePort, freePortRange } from '../support/ports.js';
import { waitFor } from '../support/wait.js';
import { alive, childPids } from '../support/processes.js';

// The real HAProxy against loopback backends, with OS-chosen ports and a temporary run directory.

const TEMPLATE = fs.readFileSync(path.resolve(__dirname, '../../../manifests/haproxy/haproxy.cfg'), 'utf8');

function get(port: number, host: string, urlPath = '/', agent: http.Agent | false = false): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: urlPath, headers: { host }, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.setTimeout(5000, () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end();
  });
}

/**
 * Connects, sends `payload`, and reports what came back before the connection closed (or errored).
 * A peer that neither answers nor closes within 2 s shows up as error "timed out".
 */
function tcpExchange(port: number, payload: string): Promise<{ data: string; error?: string }> {
  return new Promise((resolve) => {
    let data = '';
    let error: string | undefined;
    const socket = net.createConnection({ host: '127.0.0.1', port }, () => socket.write(payload));
    socket.setEncoding('utf8');
    socket.setTimeout(2000, () => socket.destroy(new Error('timed out')));
    socket.on('data', (chunk: string) => {
      data += chunk;
      if (data.length >= payload.length) socket.end();
    });
    socket.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
    socket.on('close', () => resolve(error === undefined ? { data } : { data, error }));
  });
}

function wsEcho(port: number, host: string, message: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/socket`, { headers: { host } });
    ws.once('open', () => ws.send(message));
    ws.once('message', (data) => {
      resolve(String(data));
      ws.close();
    });
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused with ${res.statusCode}`)));
  });
}


describe('HAProxy data plane (real haproxy)', function () {
  this.timeout(30_000);

  let runDir: string;
  let httpPort: number;
  let tcpRange: { start: number; end: number };
  let backendA: Backend & { wss: WebSocketServer };
  let backendB: Backend & { wss: WebSocketServer };
  let echo: Backend;
  let proc: HaproxyProcess;
  let dataPlane: HaproxyDataPlane;
  const processes: HaproxyProcess[] = [];

  const newProcess = (): HaproxyProcess => {
    const p = new HaproxyProcess({
      runDir,
      template: TEMPLATE,
      values: { httpBind: `127.0.0.1:${httpPort}`, tcpBind: `127.0.0.1:${tcpRange.start}-${tcpRange.end}`, maxconn: 2000, hardStopAfter: '10s' },
      log: silentLogger(),
      gracefulStopMs: 2000,
    });
    processes.push(p);
    return p;
  };
  const newDataPlane = (p: HaproxyProcess): HaproxyDataPlane =>
    new HaproxyDataPlane({ runtime: new HaproxyRuntime(p.adminSocket), runDir, log: silentLogger(), tcpPorts: tcpRange });
  const table = (hosts: Record<string, string>, ports: Record<number, string> = {}): RouteTable => ({
    hosts: new Map(Object.entries(hosts)),
    ports: new Map(Object.entries(ports).map(([port, backend]) => [Number(port), backend])),
  });
  let base: RouteTable;

  before(async () => {
    runDir = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'manticore-haproxy-'));
    [backendA, backendB, echo] = await Promise.all([httpBackend('A'), httpBackend('B'), tcpEchoBackend()]);
    proc = await startHaproxyOnFreePorts(async () => {
      httpPort = await freePort();
      tcpRange = await freePortRange(5);
      return newProcess();
    });
    base = table({ alpha: backendA.address, beta: backendB.address }, { [tcpRange.start]: echo.address });
    dataPlane = newDataPlane(proc);
    await dataPlane.apply(base);
  });

  after(async () => {
    for (const p of processes) await p.stop();
    for (const b of [backendA, backendB]) b?.wss.close();
    await Promise.all([backendA, backendB, echo].filter(Boolean).map((b) => closeServer(b.server)));
    await fs.promises.rm(runDir, { recursive: true, force: true });
  });

  it('routes HTTP by the first label of Host to two different backends', async () => {
    assert.deepEqual(await get(httpPort, 'alpha.sessions.test'), { status: 200, body: 'A /' });
    assert.deepEqual(await get(httpPort, 'beta.sessions.test', '/x?y=1'), { status: 200, body: 'B /x?y=1' });
    // Case and an explicit port do not matter.
    assert.deepEqual(await get(httpPort, 'ALPHA.Sessions.Test:8080'), { status: 200, body: 'A /' });
  });

  it('answers 404 with a short body for an unknown host, and serves the health URI', async () => {
    const res = await get(httpPort, 'gamma.sessions.test');
    assert.equal(res.status, 404);
    assert.equal(res.body, 'no such session\n');
    assert.equal((await get(httpPort, 'anything', '/haproxy-health')).status, 200);
  });

  it("tells browsers never to send a session's hostname (its secret) to other sites in a Referer, whatever the workload asks", async () => {
    const policy = (host: string): Promise<string | string[] | undefined> =>
      new Promise((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port: httpPort, path: '/', headers: { host }, agent: false }, (res) => {
          res.resume();
          resolve(res.headers['referrer-policy']);
        });
        req.setTimeout(5000, () => req.destroy(new Error('request timed out')));
        req.on('error', reject);
        req.end();
      });
    assert.equal(await policy('alpha.sessions.test'), 'no-referrer');
    assert.equal(await policy('gamma.sessions.test'), 'no-referrer');
  });

  it('sends each request of a keep-alive connection that switches Host to the right backend', async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const sockets = new Set<net.Socket>();
    agent.on('free', (socket: net.Socket) => sockets.add(socket));
    try {
      for (let i = 0; i < 20; i++) {
        const token = i % 3 === 0 ? 'alpha' : 'beta';
        const res = await get(httpPort, `${token}.sessions.test`, `/${i}`, agent);
        assert.deepEqual(res, { status: 200, body: `${token === 'alpha' ? 'A' : 'B'} /${i}` });
      }
      assert.equal(sockets.size, 1, 'all requests used one client connection');
    } finally {
      agent.destroy();
    }
  });

  it('never reuses an idle server connection for another destination (many keep-alive clients mixing hosts)', async () => {
    const client = async (seed: number): Promise<number> => {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      let wrong = 0;
      try {
        for (let i = 0; i < 40; i++) {
          const alpha = (seed * 7 + i * 13) % 5 < 2;
          const res = await get(httpPort, alpha ? 'alpha' : 'beta', '/', agent);
          if (res.body !== (alpha ? 'A /' : 'B /')) wrong++;
        }
      } finally {
        agent.destroy();
      }
      return wrong;
    };
    const wrong = await Promise.all(Array.from({ length: 10 }, (_, seed) => client(seed)));
    assert.deepEqual(wrong, new Array(10).fill(0));
  });

  it('passes a websocket upgrade through and echoes', async () => {
    assert.equal(await wsEcho(httpPort, 'alpha.sessions.test', 'hello'), 'A:hello');
    assert.equal(await wsEcho(httpPort, 'beta.sessions.test', 'there'), 'B:there');
  });

  it('routes a TCP port to its backend and echoes', async () => {
    assert.deepEqual(await tcpExchange(tcpRange.start, 'ping over tcp'), { data: 'ping over tcp' });
  });

  it('refuses a TCP port with no route at once, sending nothing', async () => {
    const result = await tcpExchange(tcpRange.start + 1, 'anyone there?');
    assert.deepEqual(result, { data: '', error: 'ECONNRESET' });
  });

  it('applies route changes with no reload: removed routes 404 / are refused, new ones serve', async () => {
    const workerBefore = await proc.workerPid();
    await dataPlane.apply(table({ beta: backendA.address, delta: backendB.address }, { [tcpRange.start + 2]: echo.address }));
    assert.equal((await get(httpPort, 'alpha')).status, 404);
    assert.deepEqual(await get(httpPort, 'beta'), { status: 200, body: 'A /' });
    assert.deepEqual(await get(httpPort, 'delta'), { status: 200, body: 'B /' });
    assert.deepEqual(await tcpExchange(tcpRange.start, 'x'), { data: '', error: 'ECONNRESET' });
    assert.equal((await tcpExchange(tcpRange.start + 2, 'moved')).data, 'moved');
    assert.equal(await proc.workerPid(), workerBefore, 'same worker: no reload happened');
    assert.equal(proc.reloads, 0);

    await dataPlane.apply(base);
    assert.deepEqual(await get(httpPort, 'alpha'), { status: 200, body: 'A /' });
    assert.equal(await proc.workerPid(), workerBefore);
  });

  it('writes both map files to match the table, after the routes are live', async () => {
    await dataPlane.flush();
    const paths = runPaths(runDir);
    const hosts = fs.readFileSync(paths.hostsMap, 'utf8');
    assert.match(hosts, new RegExp(`^alpha ${backendA.address}$`, 'm'));
    assert.match(hosts, new RegExp(`^beta ${backendB.address}$`, 'm'));
    assert.match(fs.readFileSync(paths.tcpMap, 'utf8'), new RegExp(`^${tcpRange.start} ${echo.address}$`, 'm'));
  });

  it('rejects an invalid table without touching HAProxy', async () => {
    await assert.rejects(dataPlane.apply(table({ 'Bad.Token': backendA.address })), /invalid route table/);
    await assert.rejects(dataPlane.apply(table({ ok: 'localhost:80' })), /not ipv4:port/);
    await assert.rejects(dataPlane.apply(table({}, { [tcpRange.end + 1]: echo.address })), /public port/);
    assert.deepEqual(await get(httpPort, 'alpha'), { status: 200, body: 'A /' });
  });

  it('a new data plane (restarted agent) syncs with the live maps: stale and duplicate entries are fixed', async () => {
    const runtime = new HaproxyRuntime(proc.adminSocket);
    const hostsMap = runPaths(runDir).hostsMap;
    await runtime.addMap(hostsMap, 'stale', backendB.address);
    await runtime.addMap(hostsMap, 'beta', backendA.address); // duplicate key with another value
    const fresh = newDataPlane(proc);
    await fresh.apply(base);
    const entries = await runtime.showMap(hostsMap);
    assert.deepEqual(
      entries.map((e) => `${e.key} ${e.value}`).sort(),
      [`alpha ${backendA.address}`, `beta ${backendB.address}`],
    );
    assert.equal((await get(httpPort, 'stale')).status, 404);
    assert.deepEqual(await get(httpPort, 'beta'), { status: 200, body: 'B /' });
  });

  it('keeps a stable route serving with zero failures while other routes churn', async () => {
    let running = true;
    let served = 0;
    const failures: string[] = [];
    const traffic = async (agent: http.Agent | false): Promise<void> => {
      while (running) {
        try {
          const res = await get(httpPort, 'alpha.sessions.test', '/steady', agent);
          if (res.status !== 200 || res.body !== 'A /steady') failures.push(`${res.status} ${res.body}`);
          else served++;
        } catch (error) {
          failures.push(String(error));
        }
      }
    };
    const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
    const load = [traffic(agent), traffic(agent), traffic(false)];
    const workerBefore = await proc.workerPid();
    try {
      const churn = new Map<string, string>();
      for (let i = 0; i < 150; i++) {
        const token = `churn${i}`;
        if (i % 3 === 0) churn.delete(`churn${i - 3}`);
        if (i % 5 === 0) for (const key of [...churn.keys()].slice(0, 2)) churn.delete(key);
        churn.set(token, backendB.address);
        const ports: Record<number, string> = { [tcpRange.start]: echo.address };
        if (i % 2 === 0) ports[tcpRange.start + 3] = echo.address;
        await dataPlane.apply(table({ ...Object.fromEntries(churn), alpha: backendA.address, beta: backendB.address }, ports));
        // A route is live as soon as apply resolves.
        assert.deepEqual(await get(httpPort, `${token}.sessions.test`), { status: 200, body: 'B /' });
      }
    } finally {
      running = false;
      await Promise.all(load);
      agent.destroy();
    }
    assert.deepEqual(failures, []);
    assert.ok(served > 100, `only ${served} requests were served`);
    assert.equal(await proc.workerPid(), workerBefore, 'no reload during churn');
    await dataPlane.apply(base);
  });

  it('serializes applies and lets a later table supersede a queued one; every caller resolves', async () => {
    const runtime = new HaproxyRuntime(proc.adminSocket);
    const added = sinon.spy(runtime, 'addMapEntries');
    const plane = new HaproxyDataPlane({ runtime, runDir, log: silentLogger() });
    await plane.apply(base);
    added.resetHistory();
    // The first runs at once; the next two are queued and superseded by the last before they run.
    await Promise.all([
      plane.apply(table({ one: backendA.address })),
      plane.apply(table({ two: backendA.address })),
      plane.apply(table({ three: backendA.address })),
      plane.apply(base),
    ]);
    const keys = added
      .getCalls()
      .filter((call) => call.args[0] === runPaths(runDir).hostsMap)
      .flatMap((call) => call.args[1].map(([key]) => key));
    assert.deepEqual(keys.sort(), ['alpha', 'beta', 'one']);
    assert.equal((await get(httpPort, 'three')).status, 404);
    assert.deepEqual(await get(httpPort, 'alpha'), { status: 200, body: 'A /' });
    await dataPlane.resync();
  });

  it('told which routes changed, reads, checks and sends only those; after a failure it compares every route again', async () => {
    const runtime = new HaproxyRuntime(proc.adminSocket);
    const plane = new HaproxyDataPlane({ runtime, runDir, log: silentLogger(), tcpPorts: tcpRange });
    const routes = { hosts: new Map(base.hosts), ports: new Map(base.ports) };
    await plane.apply(routes);
    const shown = sinon.spy(runtime, 'showMap');
    const added = sinon.spy(runtime, 'addMapEntries');
    const set = sinon.spy(runtime, 'setMap');
    const deleted = sinon.spy(runtime, 'delMapEntries');
    const sent = (): string[] => [
      ...added.getCalls().flatMap((call) => call.args[1].map(([key]) => `add ${key}`)),
      ...set.getCalls().map((call) => `set ${call.args[1]}`),
      ...deleted.getCalls().flatMap((call) => call.args[1].map((key) => `del ${key}`)),
    ];

    // One table changed in place: a route added and one moved, as told; a third changed without saying so.
    routes.hosts.set('gamma', backendB.address);
    routes.hosts.set('alpha', backendB.address);
    routes.hosts.set('beta', backendA.address);
    await plane.apply(routes, { hosts: new Set(['gamma', 'alpha']), ports: new Set() });
    assert.deepEqual(sent().sort(), ['add gamma', 'set alpha']);
    assert.equal(shown.callCount, 0, 'the live maps are not read again');
    assert.deepEqual(await get(httpPort, 'gamma'), { status: 200, body: 'B /' });
    assert.deepEqual(await get(httpPort, 'alpha'), { status: 200, body: 'B /' });
    assert.deepEqual(await get(httpPort, 'beta'), { status: 200, body: 'B /' }, 'a route not named as changed is not looked at');

    // A bad changed route is refused before anything is sent; removing routes needs no backend to check.
    routes.hosts.set('bad', 'nowhere');
    await assert.rejects(plane.apply(routes, { hosts: new Set(['bad', 'gamma']), ports: new Set() }), /not ipv4:port/);
    routes.hosts.delete('bad');
    routes.hosts.delete('gamma');
    routes.ports.delete(tcpRange.start);
    await plane.apply(routes, { hosts: new Set(['bad', 'gamma']), ports: new Set([tcpRange.start]) });
    assert.deepEqual(sent().sort(), ['add gamma', 'del gamma', `del ${tcpRange.start}`, 'set alpha'].sort());
    assert.equal((await get(httpPort, 'gamma')).status, 404);

    // A command HAProxy did not take: the next apply, even of no change, reads the live maps and repairs every
    // route, here one changed behind the data plane's back as well.
    await new HaproxyRuntime(proc.adminSocket).setMap(runPaths(runDir).hostsMap, 'beta', backendA.address);
    set.restore();
    const failing = sinon.stub(runtime, 'setMap').rejects(new Error('runtime API unreachable'));
    routes.hosts.set('alpha', backendA.address);
    await assert.rejects(plane.apply(routes, { hosts: new Set(['alpha']), ports: new Set() }), /unreachable/);
    failing.restore();
    await plane.apply(routes, { hosts: new Set(), ports: new Set() });
    assert.equal(shown.callCount, 2, 'both maps read again');
    assert.deepEqual(await get(httpPort, 'alpha'), { status: 200, body: 'A /' });
    assert.deepEqual(await get(httpPort, 'beta'), { status: 200, body: 'B /' }, 'the route changed behind its back is repaired');
    await dataPlane.resync();
  });

  it('rejects a bad config on reload and keeps serving the old one', async () => {
    const workerBefore = await proc.workerPid();
    const configBefore = fs.readFileSync(proc.configPath, 'utf8');
    await assert.rejects(proc.reload(`${configBefore}\nthis_is_not_a_keyword\n`), (error: unknown) => {
      assert.ok(error instanceof HaproxyProcessError);
      assert.match(error.message, /invalid/);
      assert.match(error.output, /this_is_not_a_keyword/);
      return true;
    });
    assert.equal(fs.readFileSync(proc.configPath, 'utf8'), configBefore);
    assert.equal(await proc.workerPid(), workerBefore);
    assert.equal(proc.reloads, 0);
    assert.deepEqual(await get(httpPort, 'alpha'), { status: 200, body: 'A /' });
  });

  it('detects a reload that fails after validation (port in use) and restores the old config', async () => {
    const blocker = net.createServer();
    const blockedPort = await listen(blocker);
    try {
      const workerBefore = await proc.workerPid();
      const configBefore = fs.readFileSync(proc.configPath, 'utf8');
      const bad = proc.renderConfig({ httpBind: `127.0.0.1:${blockedPort}`, tcpBind: `127.0.0.1:${tcpRange.start}-${tcpRange.end}` });
      await assert.rejects(proc.reload(bad), /reload failed/);
      assert.equal(fs.readFileSync(proc.configPath, 'utf8'), configBefore);
      assert.equal(await proc.workerPid(), workerBefore);
      assert.deepEqual(await get(httpPort, 'alpha'), { status: 200, body: 'A /' });
    } finally {
      await closeServer(blocker);
    }
  });

  it('reloads a good config with a new worker and keeps every route', async () => {
    const workerBefore = await proc.workerPid();
    await dataPlane.replaceWorker(() => proc.reload(proc.renderConfig({ httpBind: `127.0.0.1:${httpPort}`, tcpBind: `127.0.0.1:${tcpRange.start}-${tcpRange.end}`, maxconn: 3000 })));
    assert.equal(proc.reloads, 1);
    assert.notEqual(await proc.workerPid(), workerBefore);
    await waitFor('the old worker to exit', () => !alive(workerBefore));
    assert.deepEqual(await get(httpPort, 'alpha'), { status: 200, body: 'A /' });
    assert.deepEqual(await get(httpPort, 'beta'), { status: 200, body: 'B /' });
    assert.equal((await tcpExchange(tcpRange.start, 'after reload')).data, 'after reload');
    await dataPlane.apply(table({ alpha: backendB.address }, {}));
    assert.deepEqual(await get(httpPort, 'alpha'), { status: 200, body: 'B /' });
    await dataPlane.apply(base);
  });

  it('stops without leaving processes, and after start the routes are back from the map files', async () => {
    const master = proc.masterPid!;
    const worker = await proc.workerPid();
    await dataPlane.flush();
    await proc.stop();
    assert.equal(alive(master), false);
    assert.equal(alive(worker), false);
    await assert.rejects(get(httpPort, 'alpha'), /ECONNREFUSED/);

    await proc.start();
    assert.deepEqual(await get(httpPort, 'alpha'), { status: 200, body: 'A /' });
    assert.deepEqual(await get(httpPort, 'beta'), { status: 200, body: 'B /' });
    assert.equal((await tcpExchange(tcpRange.start, 'restarted')).data, 'restarted');
    await dataPlane.resync();
  });

  it('a second owner of a run directory in use refuses to start and leaves the first HAProxy serving', async () => {
    const master = proc.masterPid!;
    const worker = await proc.workerPid();
    await assert.rejects(newProcess().start(), /HAProxy run directory .* is in use by another Manticore process/);
    assert.equal(proc.masterPid, master);
    assert.equal(await proc.workerPid(), worker);
    assert.deepEqual(await get(httpPort, 'alpha'), { status: 200, body: 'A /' });
  });

  it('stops an HAProxy left running on the run directory by a previous run before starting', async () => {
    await dataPlane.flush();
    await proc.stop();
    // What a controller killed with -9 leaves: its HAProxy on the run directory's files, owned by no one.
    const leftover = spawn(await resolveHaproxyBinary('haproxy'), ['-W', '-S', `${proc.masterSocket},mode,600`, '-f', proc.configPath, '-p', proc.pidFile], { stdio: 'ignore' });
    const leftoverExited = new Promise<void>((resolve) => leftover.once('exit', () => resolve()));
    await waitFor('the leftover HAProxy to serve', async () => (await get(httpPort, 'alpha').catch(() => undefined))?.status === 200);
    const leftoverWorkers = childPids(leftover.pid!);
    const successor = newProcess();
    await successor.start();
    await leftoverExited;
    assert.deepEqual(leftoverWorkers.filter(alive), []);
    proc = successor;
    dataPlane = newDataPlane(proc);
    await dataPlane.apply(base);
    assert.deepEqual(await get(httpPort, 'alpha'), { status: 200, body: 'A /' });
    assert.equal((await tcpExchange(tcpRange.start, 'successor')).data, 'successor');
  });
});

describe('HAProxy process start-up failures (real haproxy)', function () {
  this.timeout(30_000);
  let runDir: string;

  beforeEach(async () => {
    runDir = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'manticore-haproxy-'));
  });
  afterEach(async () => {
    await fs.promises.rm(runDir, { recursive: true, force: true });
  });

  const processWith = async (template: string, httpPort: number): Promise<HaproxyProcess> => {
    const range = await freePortRange(2);
    return new HaproxyProcess({
      runDir,
      template,
      values: { httpBind: `127.0.0.1:${httpPort}`, tcpBind: `127.0.0.1:${range.start}-${range.end}` },
      log: silentLogger(),
    });
  };

  it("is ready for the router's /readyz only once HAProxy answers on its sockets, not while it is starting (a restart after a crash, a slow start-up)", async () => {
    // Passes the config check, then never opens its sockets: a HAProxy still loading its maps or resolving its servers.
    const slow = path.join(runDir, 'slow-haproxy');
    await fs.promises.writeFile(slow, '#!/bin/sh\ncase "$1" in -c) exit 0;; esac\nexec sleep 60\n', { mode: 0o755 });
    const range = await freePortRange(2);
    const starting = new HaproxyProcess({
      runDir,
      template: TEMPLATE,
      values: { httpBind: `127.0.0.1:${await freePort()}`, tcpBind: `127.0.0.1:${range.start}-${range.end}` },
      binary: slow,
      log: silentLogger(),
      readyTimeoutMs: 60_000,
    });
    const agent = { serving: true, progress: { router: 'edge-1', appliedIndex: 1, lag: 0, routes: 0 } };
    const started = starting.start();
    await waitFor('the process spawned', () => starting.masterPid !== undefined);
    assert.equal(routerProbes(agent, starting).ready(), false, 'spawned, but nothing listens on its ports yet');
    process.kill(starting.masterPid!, 'SIGKILL');
    await assert.rejects(started, /exited during start-up/);
    await starting.stop();

    const p = await startHaproxyOnFreePorts(async () => processWith(TEMPLATE, await freePort()));
    try {
      assert.equal(routerProbes(agent, p).ready(), true, 'answering on its sockets');
    } finally {
      await p.stop();
    }
    assert.equal(routerProbes(agent, p).ready(), false, 'stopped');
  });

  it('never starts a config that fails the check, and says why', async () => {
    const p = await processWith(`${TEMPLATE}\nfrontend broken\n    no_such_directive on\n`, await freePort());
    await assert.rejects(p.start(), (error: unknown) => {
      assert.ok(error instanceof HaproxyProcessError);
      assert.match(error.output, /no_such_directive/);
      return true;
    });
    assert.equal(p.running, false);
    assert.equal(fs.existsSync(runPaths(runDir).config), false, 'the invalid config was not installed');
  });

  it('fails start-up with HAProxy’s output when a port is taken, leaving no process', async () => {
    const blocker = net.createServer();
    const port = await listen(blocker);
    try {
      const p = await processWith(TEMPLATE, port);
      await assert.rejects(p.start(), (error: unknown) => {
        assert.ok(error instanceof HaproxyProcessError);
        assert.match(error.output, /cannot bind|Address already in use/i);
        return true;
      });
      assert.equal(p.running, false);
      await p.stop();
    } finally {
      await closeServer(blocker);
    }
  });

  it('fails start-up when another HAProxy (another Manticore) listens on its ports, rather than sharing them', async () => {
    const otherRunDir = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'manticore-haproxy-'));
    let values: { httpBind: string; tcpBind: string } | undefined;
    const first = await startHaproxyOnFreePorts(async () => {
      const range = await freePortRange(2);
      values = { httpBind: `127.0.0.1:${await freePort()}`, tcpBind: `127.0.0.1:${range.start}-${range.end}` };
      return new HaproxyProcess({ runDir: otherRunDir, template: TEMPLATE, values, log: silentLogger() });
    });
    const second = new HaproxyProcess({ runDir, template: TEMPLATE, values: values!, log: silentLogger() });
    try {
      await assert.rejects(second.start(), (error: unknown) => {
        assert.ok(error instanceof HaproxyProcessError);
        assert.match(error.output, /cannot bind|Address already in use/i);
        return true;
      });
      assert.equal(second.running, false);
    } finally {
      await second.stop();
      await first.stop();
      await fs.promises.rm(otherRunDir, { recursive: true, force: true });
    }
  });

  it('stops waiting for a HAProxy that exited during start-up, however long it would wait', async () => {
    const blocker = net.createServer();
    const port = await listen(blocker);
    try {
      const range = await freePortRange(2);
      const p = new HaproxyProcess({ runDir, template: TEMPLATE, values: { httpBind: `127.0.0.1:${port}`, tcpBind: `127.0.0.1:${range.start}-${range.end}` }, log: silentLogger(), readyTimeoutMs: 600_000 });
      const probes = sinon.spy(p, 'processes');
      await assert.rejects(p.start(), /HAProxy did not start/);
      const after = probes.callCount;
      // A readiness poll still running would ask every 20 ms (and hold a CLI's exit for ten minutes).
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.equal(probes.callCount, after, 'HAProxy is still asked whether it is ready after it exited');
    } finally {
      await closeServer(blocker);
    }
  });

  it('says that HAProxy is not installed, not that its configuration is invalid, when the binary cannot be found', async () => {
    const range = await freePortRange(2);
    const p = new HaproxyProcess({ runDir, binary: path.join(runDir, 'no-haproxy'), template: TEMPLATE, values: { httpBind: `127.0.0.1:${await freePort()}`, tcpBind: `127.0.0.1:${range.start}-${range.end}` }, log: silentLogger() });
    await assert.rejects(p.start(), (error: unknown) => {
      assert.ok(error instanceof HaproxyProcessError);
      assert.doesNotMatch(error.message, /configuration is invalid/);
      assert.match(error.message, /^HAProxy is not installed: cannot run .*no-haproxy \(router\.haproxyBinary\); on Debian: apt-get install haproxy/);
      return true;
    });
    assert.equal(p.running, false);
  });

  it('finds the haproxy binary when it is not on PATH', async () => {
    const found = await resolveHaproxyBinary('haproxy', path.join(runDir, 'empty-path'));
    assert.ok(path.isAbsolute(found) && fs.existsSync(found), `resolved to ${found}`);
    assert.equal(await resolveHaproxyBinary('/opt/custom/haproxy'), '/opt/custom/haproxy');
  });
});
