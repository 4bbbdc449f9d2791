import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Session } from '../../controller/api/types.js';
import { httpRequest, jsonRequest, tcpConversation, tcpProbe, websocketEcho } from '../support/http.js';
import { repeatedKeys } from '../support/log-lines.js';
import { isolatedEnvironment, startManticore, stopManticore, waitForFrontend, type ManticoreProcess } from '../support/manticore.js';
import { waitFor } from '../support/wait.js';
import { alive } from '../support/processes.js';
import { LogClient } from '../support/log-client.js';

/** What differs between the backends the flow runs on. */
export interface Backend {
  readonly name: string;
  readonly configFile: string;
  /** Whether the `sdl` template (Docker images) can run here. */
  readonly runsDocker: boolean;
  /** Starts what the backend needs besides Manticore (the API doubles) and returns the environment for it. */
  setUp(stateDir: string): Promise<NodeJS.ProcessEnv>;
  tearDown(): Promise<void>;
  /** Kills the session's Core task the way a crash would. */
  killCoreTask(stateDir: string, session: Session): Promise<void>;
  /** Process ids of the session's tasks when they are Manticore's own children (they stop with it), else undefined. */
  ownTaskPids(stateDir: string, session: Session): number[] | undefined;
}

/**
 * The whole user flow against `manticore up` as a child process on OS-chosen ports: templates, bad
 * requests, two sessions at once, traffic through HAProxy over HTTP, websocket and TCP, a task killed by
 * hand, HAProxy killed by hand, deletion, Ctrl-C and a restart that finds the sessions again.
 */
export function describeSessionFlow(backend: Backend): void {
  describe(`end to end: \`manticore up\` on ${backend.name}`, function () {
    this.timeout(120_000);
    let stateDir: string;
    let env: NodeJS.ProcessEnv;
    let api: string;
    let httpPort: number;
    let tcpRange: { start: number; end: number };
    let statusPorts: { controller: number; router: number; haproxy: number };
    let instance: ManticoreProcess;

    const start = (): ManticoreProcess => startManticore(backend.configFile, env);

    /** Waits until the session is Ready, and on `allocationOtherThan` when given. */
    async function ready(id: string, user = 'alice', allocationOtherThan?: string): Promise<Session> {
      return waitFor(
        `session ${id} Ready${allocationOtherThan === undefined ? '' : ` on an allocation other than ${allocationOtherThan}`}`,
        async () => {
          const { body } = await jsonRequest<Session>(`${api}/api/v1/sessions/${id}`, 'GET', undefined, { 'x-manticore-user': user });
          if (body.status.phase === 'Failed') throw new Error(`session failed: ${JSON.stringify(body.status)}`);
          return body.status.phase === 'Ready' && body.status.allocationId !== allocationOtherThan ? body : undefined;
        },
        30_000,
        50,
      );
    }

    async function create(user: string): Promise<Session> {
      const { status, body } = await jsonRequest<Session>(`${api}/api/v1/sessions`, 'POST', { template: 'demo' }, { 'x-manticore-user': user });
      assert.equal(status, 201, JSON.stringify(body));
      return body;
    }

    before(async () => {
      stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-e2e-'));
      const isolated = await isolatedEnvironment(stateDir, 6);
      ({ api, httpPort, tcpRange, statusPorts } = isolated);
      // At info, so that the log lines checked at the end include what a running Manticore usually writes.
      env = { ...process.env, ...(await backend.setUp(stateDir)), ...isolated.env, MANTICORE_LOG_LEVEL: 'info' };
      instance = start();
      await waitForFrontend(api, instance);
    });

    after(async () => {
      await stopManticore(instance);
      await backend.tearDown();
      fs.rmSync(stateDir, { recursive: true, force: true });
    });

    let alice: Session;
    let bob: Session;

    it('lists the templates with their parameters', async () => {
      const { status, body } = await jsonRequest<Array<{ name: string; available: boolean; parameters: unknown[]; unavailableReason?: string }>>(
        `${api}/api/v1/templates`,
        'GET',
      );
      assert.equal(status, 200);
      const demo = body.find((t) => t.name === 'demo')!;
      assert.equal(demo.available, true);
      assert.deepEqual(demo.parameters, [
        { name: 'coreVersion', description: 'Version string the demo Core reports.', enum: ['8.2.0', '8.1.0'], default: '8.2.0' },
        { name: 'hmiType', description: 'Which demo HMI page to serve.', enum: ['generic'], default: 'generic' },
      ]);
      const sdl = body.find((t) => t.name === 'sdl')!;
      assert.equal(sdl.available, backend.runsDocker);
      if (!backend.runsDocker) assert.match(sdl.unavailableReason!, /nomad/);
    });

    it('rejects bad requests with 4xx and a message naming the field', async () => {
      const cases: Array<[unknown, number, RegExp]> = [
        [{ template: 'nope' }, 400, /\/template/],
        [{ template: 'demo', parameters: { coreVersion: '1.0' } }, 400, /\/parameters\/coreVersion/],
        [{ template: 'demo', parameters: { colour: 'red' } }, 400, /\/parameters\/colour/],
        ...(backend.runsDocker ? [] : [[{ template: 'sdl' }, 400, /nomad/] as [unknown, number, RegExp]]),
        [{ template: 'demo', extra: 1 }, 400, /extra/],
        [{}, 400, /template/],
        ['{"template": ', 400, /JSON/i],
      ];
      for (const [body, expected, message] of cases) {
        const answer = await jsonRequest<{ error: string; details: string[] }>(`${api}/api/v1/sessions`, 'POST', body);
        assert.equal(answer.status, expected, JSON.stringify(body));
        assert.match(`${answer.body.error} ${answer.body.details.join(' ')}`, message);
      }
      const badUser = await jsonRequest(`${api}/api/v1/sessions`, 'GET', undefined, { 'x-manticore-user': 'no spaces allowed' });
      assert.equal(badUser.status, 400);
      assert.equal((await jsonRequest(`${api}/api/v1/sessions/doesnotexist1`, 'GET')).status, 404);
      const { body } = await jsonRequest<{ items: Session[] }>(`${api}/api/v1/sessions`, 'GET');
      assert.deepEqual(body.items, [], 'nothing was created by the bad requests');
    });

    it('creates sessions that become Ready with private endpoints', async () => {
      const created = await create('alice');
      assert.match(created.metadata.id, /^[a-z0-9]{8,40}$/);
      assert.equal(created.metadata.owner, 'alice');
      assert.deepEqual(created.spec.parameters, { coreVersion: '8.2.0', hmiType: 'generic' });
      assert.equal(created.status.phase, 'Pending');
      const other = await create('bob');
      [alice, bob] = await Promise.all([ready(created.metadata.id), ready(other.metadata.id, 'bob')]);

      for (const session of [alice, bob]) {
        const { hmi, broker, tcp } = session.status.endpoints;
        assert.equal(hmi!.protocol, 'http');
        assert.match(hmi!.url, new RegExp(`^http://[a-z2-7]{26}\\.localhost:${httpPort}/$`));
        assert.equal(broker!.protocol, 'ws');
        assert.match(broker!.url, new RegExp(`^ws://[a-z2-7]{26}\\.localhost:${httpPort}/$`));
        assert.equal(tcp!.protocol, 'tcp');
        const port = Number(new URL(tcp!.url).port);
        assert.ok(port >= tcpRange.start && port <= tcpRange.end);
        assert.deepEqual(
          session.status.conditions.map((c) => `${c.type}=${c.status}`),
          ['Admitted=True', 'Scheduled=True', 'Healthy=True', 'Routed=True', 'Ready=True', 'IdleWarning=False'],
        );
      }
      assert.notEqual(alice.status.endpoints.hmi!.url, bob.status.endpoints.hmi!.url);
      assert.notEqual(alice.status.endpoints.tcp!.url, bob.status.endpoints.tcp!.url);
    });

    it('serves each session through HAProxy: HMI page, websocket echo, TCP conversation', async () => {
      for (const session of [alice, bob]) {
        const { hmi, broker, tcp } = session.status.endpoints;
        const page = await httpRequest(hmi!.url);
        assert.equal(page.status, 200);
        assert.match(page.body, /Manticore demo HMI/);
        assert.ok(page.body.includes(broker!.url), 'the HMI was told its own Core broker URL');
        const other = session === alice ? bob : alice;
        assert.ok(!page.body.includes(other.status.endpoints.broker!.url), 'and not anyone else’s');
        assert.equal(await websocketEcho(broker!.url, `hello ${session.metadata.owner}`), `hello ${session.metadata.owner}`);
        const conversation = await tcpConversation(tcp!.url, 'ping');
        assert.equal(conversation.greeting, 'manticore demo core 8.2.0');
        assert.equal(conversation.reply, 'ping');
      }
    });

    it('answers unknown hostnames with 404 and refuses unassigned TCP ports', async () => {
      const unknown = await httpRequest(`http://${'a'.repeat(26)}.localhost:${httpPort}/`);
      assert.equal(unknown.status, 404);
      const used = new Set([alice, bob].map((s) => Number(new URL(s.status.endpoints.tcp!.url).port)));
      const free = [...Array(tcpRange.end - tcpRange.start + 1).keys()].map((i) => tcpRange.start + i).find((p) => !used.has(p))!;
      assert.notEqual(await tcpProbe('127.0.0.1', free), 'open');
    });

    it('lists only the caller’s sessions', async () => {
      const mine = await jsonRequest<{ items: Session[] }>(`${api}/api/v1/sessions`, 'GET', undefined, { 'x-manticore-user': 'alice' });
      assert.deepEqual(mine.body.items.map((s) => s.metadata.id), [alice.metadata.id]);
      const notMine = await jsonRequest(`${api}/api/v1/sessions/${alice.metadata.id}`, 'GET', undefined, { 'x-manticore-user': 'bob' });
      assert.equal(notMine.status, 404, 'someone else’s session looks missing');
    });

    it("follows Core's output through the front end while it writes, resumes after a reconnect, and shows it to nobody else", async () => {
      const logs = `${api}/api/v1/sessions/${alice.metadata.id}/logs`;
      const as = (user: string): Record<string, string> => ({ 'x-manticore-user': user });
      const clients: LogClient[] = [];
      const follow = (query: string, headers: Record<string, string>): LogClient => {
        const client = new LogClient(`${logs}?follow=true&${query}`, headers);
        clients.push(client);
        return client;
      };
      try {
        // Someone else's session looks missing here too, followed or not.
        assert.equal((await httpRequest(logs, { headers: as('bob') })).status, 404);
        assert.equal((await httpRequest(`${logs}?follow=true`, { headers: as('bob') })).status, 404);

        const tcp = alice.status.endpoints.tcp!.url;
        const first = follow('task=core&tail=0', as('alice'));
        await waitFor('the stream open', () => first.events.some((event) => event.event === 'start'), 10_000);
        assert.equal(first.status, 200);
        // An app talks to Core through HAProxy; Core logs each line, and the owner watches it happen.
        await tcpConversation(tcp, 'line A from the app');
        await waitFor('line A in the log', () => /tcp [^ ]+: line A from the app\n/.test(first.text), 10_000);
        const lastId = first.lastId!;
        assert.match(lastId, new RegExp(`^${alice.status.allocationId}:\\d+$`));
        first.close();

        // While nobody follows, Core goes on writing; the reconnection takes up exactly where it stopped.
        await tcpConversation(tcp, 'line B while away');
        const again = follow('task=core&tail=0', { ...as('alice'), 'last-event-id': lastId });
        await waitFor('line B after the reconnection', () => again.text.includes('line B while away'), 10_000);
        await tcpConversation(tcp, 'line C after');
        await waitFor('line C', () => again.text.includes('line C after'), 10_000);
        assert.doesNotMatch(again.text, /line A/, 'nothing seen before is sent again');
        assert.match(again.text, /line B while away\n.*line C after\n$/s);

        // The same from a position, not followed: text.
        const offset = Number(lastId.slice(lastId.indexOf(':') + 1));
        const fromOffset = await httpRequest(`${logs}?task=core&offset=${offset}`, { headers: as('alice') });
        assert.equal(fromOffset.status, 200);
        assert.equal(fromOffset.headers['content-type'], 'text/plain; charset=utf-8');
        assert.match(fromOffset.body, /^[^\n]*line B while away\n[^\n]*line C after\n$/);
        const stderr = await httpRequest(`${logs}?task=core&stream=stderr`, { headers: as('alice') });
        assert.match(stderr.body, /a demo stand-in for SDL Core, not SDL Core/);
        const hmi = await httpRequest(`${logs}?task=hmi&tail=5`, { headers: as('alice') });
        assert.match(hmi.body, /demo hmi \(generic\): http on /);
      } finally {
        for (const client of clients) client.close();
      }
    });

    it('notices a task killed by hand, leaves Ready, and comes back without help', async () => {
      await backend.killCoreTask(stateDir, alice);
      await waitFor(
        'alice leaves Ready',
        async () => (await jsonRequest<Session>(`${api}/api/v1/sessions/${alice.metadata.id}`, 'GET', undefined, { 'x-manticore-user': 'alice' })).body.status.phase !== 'Ready',
        10_000,
        10,
      );
      const back = await ready(alice.metadata.id);
      const reason = back.status.events.map((event) => event.reason);
      assert.ok(reason.includes('TaskRestarting'), `events: ${reason.join(', ')}`);
      assert.deepEqual(back.status.endpoints, alice.status.endpoints, 'same addresses after recovery');
      assert.equal(await websocketEcho(back.status.endpoints.broker!.url, 'again'), 'again');
    });

    it('deletes a session: Terminating, then gone, and its addresses stop answering', async () => {
      const pids = backend.ownTaskPids(stateDir, bob) ?? [];
      const { status, body } = await jsonRequest<Session>(`${api}/api/v1/sessions/${bob.metadata.id}`, 'DELETE', undefined, { 'x-manticore-user': 'bob' });
      assert.equal(status, 202);
      assert.ok(body.metadata.deletionRequestedAt);
      await waitFor(
        'bob gone',
        async () => (await jsonRequest(`${api}/api/v1/sessions/${bob.metadata.id}`, 'GET', undefined, { 'x-manticore-user': 'bob' })).status === 404,
        20_000,
        50,
      );
      assert.equal((await httpRequest(bob.status.endpoints.hmi!.url)).status, 404);
      const port = Number(new URL(bob.status.endpoints.tcp!.url).port);
      assert.notEqual(await tcpProbe('127.0.0.1', port), 'open');
      for (const pid of pids) assert.equal(alive(pid), false, `task ${pid} stopped`);
    });

    it('restarts HAProxy killed by hand, with every route', async () => {
      const session = await ready(alice.metadata.id);
      const pidFile = path.join(stateDir, 'haproxy/haproxy.pid');
      const before = Number(fs.readFileSync(pidFile, 'utf8'));
      process.kill(before, 'SIGKILL');
      await waitFor('HAProxy restarted', () => {
        const now = Number(fs.readFileSync(pidFile, 'utf8'));
        return now !== before && alive(now);
      });
      const echo = await waitFor('routes served again', () => websocketEcho(session.status.endpoints.broker!.url, 'still here').catch(() => undefined));
      assert.equal(echo, 'still here');
      assert.equal((await httpRequest(session.status.endpoints.hmi!.url)).status, 200);
    });

    it('exports its metrics on every status port, and they moved with the flow', async () => {
      const scrape = async (url: string): Promise<string> => {
        const answer = await httpRequest(url);
        assert.equal(answer.status, 200, url);
        return answer.body;
      };
      const [frontend, controller, router, haproxy] = await Promise.all([
        scrape(`${api}/metrics`),
        scrape(`http://127.0.0.1:${statusPorts.controller}/metrics`),
        scrape(`http://127.0.0.1:${statusPorts.router}/metrics`),
        scrape(`http://127.0.0.1:${statusPorts.haproxy}/metrics`),
      ]);
      // One process runs every part here, so each status port serves the same registry.
      assert.equal(controller.includes('manticore_sessions{'), true);
      assert.equal(router.includes('manticore_router_applied_index{'), true);
      const value = (name: string, labels = ''): number => {
        const line = frontend.split('\n').find((candidate) => candidate.startsWith(`${name}${labels ? `{${labels}}` : ''} `) || (labels === '' && candidate.startsWith(`${name}{`)));
        assert.ok(line, `${name}${labels ? `{${labels}}` : ''} is exported`);
        return Number(line.slice(line.lastIndexOf(' ') + 1));
      };
      const moved = [
        ['manticore_sessions', 'phase="Ready"'],
        ['manticore_session_create_to_ready_seconds_count'],
        ['manticore_reconcile_duration_seconds_count'],
        ['manticore_workqueue_wait_seconds_count'],
        ['manticore_watch_lag_seconds_count', 'resource="status"'],
        ['manticore_leader'],
        ['manticore_leader_transitions_total'],
        ['manticore_router_applied_index', 'router="local"'],
        ['manticore_router_apply_duration_seconds_count'],
        ['manticore_http_requests_total', 'server="frontend",method="POST",route="/api/v1/sessions",status="201"'],
        ['manticore_http_request_duration_seconds_count', 'server="frontend",method="GET",route="/api/v1/sessions/:id"'],
        ...(backend.name.includes('Consul')
          ? [
              ['manticore_backend_requests_total', 'backend="consul",operation="put",outcome="ok"'],
              ['manticore_backend_requests_total', 'backend="nomad",operation="PUT /v1/jobs",outcome="ok"'],
            ]
          : []),
      ];
      for (const [name, labels] of moved) assert.ok(value(name!, labels) > 0, `${name}{${labels ?? ''}} moved`);
      for (const name of ['manticore_waiting_sessions', 'manticore_waiting_oldest_seconds', 'manticore_workqueue_depth', 'manticore_router_applied_index_lag', 'manticore_reconcile_errors_total', 'manticore_watch_restarts_total', 'manticore_process_resident_memory_bytes']) {
        assert.match(frontend, new RegExp(`^# TYPE ${name} `, 'm'), `${name} is exported`);
      }
      assert.match(haproxy, /^haproxy_frontend_http_requests_total\{proxy="sessions_http"\} [1-9]/m, "HAProxy's exporter counts the session traffic");
    });

    it('stops everything on Ctrl-C and brings surviving sessions back on the next start', async () => {
      const running = await ready(alice.metadata.id);
      const ownPids = backend.ownTaskPids(stateDir, running);
      const pids = ownPids ?? [];
      const haproxyPid = Number(fs.readFileSync(path.join(stateDir, 'haproxy/haproxy.pid'), 'utf8'));
      instance.child.kill('SIGINT');
      assert.equal(await instance.exited, 0, instance.output());
      for (const pid of [...pids, haproxyPid]) assert.equal(alive(pid), false, `process ${pid} stopped with Manticore`);
      const lines = instance.output().split('\n').filter((line) => line.startsWith('{'));
      assert.ok(lines.some((line) => line.includes('"msg":"stopped"')), 'the whole run was logged, up to the end');
      for (const line of lines) assert.deepEqual(repeatedKeys(line), [], `a log line names a field once: ${line}`);
      assert.equal(await tcpProbe('127.0.0.1', httpPort), 'refused', 'HAProxy is gone');

      instance = start();
      // Tasks that stopped with Manticore start again on a fresh allocation. Until the controller has seen it,
      // the store still shows the last run's Ready status, which the front end serves as it is.
      const again = await ready(alice.metadata.id, 'alice', ownPids === undefined ? undefined : running.status.allocationId);
      assert.deepEqual(again.status.endpoints, alice.status.endpoints, 'the session keeps its addresses');
      assert.equal(await websocketEcho(again.status.endpoints.broker!.url, 'after restart'), 'after restart');
    });
  });
}
