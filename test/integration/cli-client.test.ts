import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import sinon from 'sinon';
import { exitCodes, runClientCommand } from '../../controller/cli/client/commands.js';
import { ReplicaHeartbeat } from '../../controller/controller/replica-heartbeat.js';
import { AdminTokenAuthenticator, AnonymousOrHeaderAuthenticator, createAuthenticator } from '../../controller/frontend/auth.js';
import type { ClusterStatus } from '../../controller/frontend/cluster.js';
import type { Frontend } from '../../controller/frontend/server.js';
import { LogFiles, RotatingLogWriter, closeWriter } from '../../controller/scheduler/log-files.js';
import { silentLogger } from '../../controller/util/log.js';
import { ControllerHarness, createSession, keys, makeReady, requestDeletion, statusWhen, testLog } from '../support/controller-harness.js';
import { testFrontend } from '../support/frontend.js';
import { hs256Token } from '../support/jwt.js';
import { freePort } from '../support/ports.js';
import { turnsUntil, waitFor } from '../support/wait.js';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

const cli = path.resolve(__dirname, '../../controller/cli/main.js');
const adminToken = 'an-admin-token-for-the-cli-test';

/**
 * `manticore sessions|templates` against a real front end on a loopback port, over a controller on the
 * fake scheduler (which this test drives to Ready), as a user or a script would call them.
 */
describe('the client commands (manticore sessions, templates)', function () {
  this.timeout(30_000);
  let h: ControllerHarness;
  let frontend: Frontend;
  let url: string;
  /** Task logs as the embedded scheduler keeps them, `<logsRoot>/<allocation>/logs/`, for `sessions logs`. */
  let logsRoot: string;
  /** `<allocation>/<task>.<stream>` → its writer. */
  let writers: Map<string, RotatingLogWriter>;

  /**
   * Runs a command in this process against the front end at `at` and collects what it printed; `output` is
   * watched while it runs, `interrupt` is Ctrl-C.
   */
  function run(command: 'sessions' | 'templates' | 'status' | 'limits', args: string[], env: NodeJS.ProcessEnv = {}, at = url): Promise<Run> & { output: () => string; interrupt: () => void } {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let out = '';
    let err = '';
    stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
    const interrupted = new AbortController();
    const done = runClientCommand(command, [...args, '--url', at], { stdout, stderr, env: { MANTICORE_USER: 'alice', ...env }, signal: interrupted.signal }).then((code) => ({
      code,
      stdout: out,
      stderr: err,
    }));
    return Object.assign(done, { output: () => out, interrupt: () => interrupted.abort() });
  }

  beforeEach(async () => {
    h = await ControllerHarness.embedded({ limits: { maxSessions: 1 } });
    logsRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-cli-logs-'));
    writers = new Map();
    frontend = newFrontend();
    url = await frontend.start('127.0.0.1', 0);
  });

  afterEach(async () => {
    await frontend.stop();
    await h.stop();
    await Promise.all([...writers.values()].map(closeWriter));
    fs.rmSync(logsRoot, { recursive: true, force: true });
  });

  /** A front end over the harness's store, reading the task logs under `logsRoot`. */
  /** A front end that takes requests and never answers them. */
  async function silentFrontend(): Promise<{
    /** Runs the command against it and presses Ctrl-C once its request has arrived. */
    interruptWhenAsked: (command: 'sessions' | 'templates' | 'status' | 'limits', args: string[]) => Promise<{ code: number; stderr: string }>;
    close: () => Promise<void>;
  }> {
    const sockets = new Set<net.Socket>();
    let requests = 0;
    const server = net.createServer((socket) => {
      sockets.add(socket);
      socket.on('data', () => (requests += 1));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const silentUrl = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    return {
      interruptWhenAsked: async (command, args) => {
        const sent = requests + 1;
        const running = run(command, args, {}, silentUrl);
        await waitFor('the request', () => requests >= sent);
        running.interrupt();
        const { code, stderr } = await running;
        return { code, stderr };
      },
      close: async () => {
        for (const socket of sockets) socket.destroy();
        await new Promise((resolve) => server.close(resolve));
      },
    };
  }

  function newFrontend(): Frontend {
    return testFrontend(h.store, {
      sessionsPerUser: 1,
      authenticator: new AdminTokenAuthenticator(adminToken, new AnonymousOrHeaderAuthenticator()),
      logs: { source: new LogFiles({ dirOf: (allocId) => path.join(logsRoot, allocId, 'logs'), log: silentLogger() }), streamsPerUser: 5 },
    });
  }

  /** Appends to a task's log as the embedded scheduler writes it. */
  async function taskOutput(allocId: string, task: string, stream: string, text: string): Promise<void> {
    const key = `${allocId}/${task}.${stream}`;
    const writer = writers.get(key) ?? new RotatingLogWriter(path.join(logsRoot, allocId, 'logs'), `${task}.${stream}`);
    writers.set(key, writer);
    await new Promise<void>((resolve, reject) => writer.write(text, (error) => (error ? reject(error) : resolve())));
  }

  it("creates a session with its own idle timeout (--idle-timeout), and reports the front end's refusal of one beyond the limit", async () => {
    const beyond = await run('sessions', ['create', '--template', 'demo', '--idle-timeout', '7200']);
    assert.equal(beyond.code, exitCodes.refused);
    assert.match(beyond.stderr, /idle\.timeoutSeconds 7200 is outside this Manticore's limits: it must be above 300 \(idle\.warningSeconds\) and at most 1800 \(idle\.maxTimeoutSeconds\) \(HTTP 400\)/);
    const created = await run('sessions', ['create', '--template', 'demo', '--idle-timeout', '600', '-o', 'json']);
    assert.equal(created.code, exitCodes.ok, created.stderr);
    assert.deepEqual((JSON.parse(created.stdout) as { spec: { idle?: unknown } }).spec.idle, { timeoutSeconds: 600 });
  });

  it('creates, lists, gets and deletes a session, with tables for people and JSON for scripts', async () => {
    const created = await run('sessions', ['create', '--template', 'demo', '--param', 'hmiType=generic', '--output', 'json']);
    assert.equal(created.code, exitCodes.ok, created.stderr);
    const session = JSON.parse(created.stdout) as { metadata: { id: string; owner: string }; spec: { parameters: Record<string, string> } };
    assert.equal(session.metadata.owner, 'alice');
    assert.equal(session.spec.parameters.hmiType, 'generic');
    const id = session.metadata.id;

    const listed = await run('sessions', ['list']);
    assert.equal(listed.code, exitCodes.ok);
    assert.match(listed.stdout, /^ID +OWNER +TEMPLATE +PHASE +DETAIL +CREATED\n/);
    assert.match(listed.stdout, new RegExp(`^${id} +alice +demo +`, 'm'));
    const asJson = JSON.parse((await run('sessions', ['list', '-o', 'json'])).stdout) as Array<{ metadata: { id: string } }>;
    assert.deepEqual(asJson.map((item) => item.metadata.id), [id]);
    assert.equal((await run('sessions', ['list'], { MANTICORE_USER: 'bob' })).stdout, 'no sessions\n', 'another user sees none of it');
    await run('sessions', ['create', '--template', 'demo'], { MANTICORE_USER: 'bob' });
    const everyone = await run('sessions', ['list'], { MANTICORE_TOKEN: adminToken });
    assert.deepEqual(everyone.stdout.split('\n').slice(1, -1).map((line) => line.split(/ +/)[1]).sort(), ['alice', 'bob'], `operators see whose each session is:\n${everyone.stdout}`);

    await makeReady(h, id);
    // The front end answers from its own cache, which follows the store a moment behind.
    const got = await waitFor('the front end showing it Ready', async () => {
      const answer = await run('sessions', ['get', id]);
      return /^phase +Ready/m.test(answer.stdout) ? answer : undefined;
    });
    assert.equal(got.code, exitCodes.ok);
    assert.match(got.stdout, new RegExp(`^session +${id}$`, 'm'));
    assert.match(got.stdout, /^phase +Ready/m);
    assert.match(got.stdout, /^addresses\n {2}\S+ +(http|ws|tcp):\/\//m);

    const deleted = await run('sessions', ['delete', id]);
    assert.equal(deleted.code, exitCodes.ok);
    assert.equal(deleted.stdout, `session ${id} is being deleted\n`);
    await waitFor('the session gone', async () => (await run('sessions', ['get', id])).code === exitCodes.notFound);
  });

  it('watches a session from the queue to Ready, printing each change', async () => {
    const first = await run('sessions', ['create', '--template', 'demo', '-o', 'json'], { MANTICORE_USER: 'first' });
    const firstId = (JSON.parse(first.stdout) as { metadata: { id: string } }).metadata.id;
    const second = await run('sessions', ['create', '--template', 'demo', '-o', 'json']);
    const id = (JSON.parse(second.stdout) as { metadata: { id: string } }).metadata.id;
    await statusWhen(h.store, id, (status) => status.queuePosition === 1);
    // Why it waits, as the operator's troubleshooting table has them look it up: the Ready reason, then the place.
    const waiting = await waitFor('the front end showing it waiting', async () => {
      const answer = await run('sessions', ['get', id]);
      return /^phase +Waiting/m.test(answer.stdout) ? answer : undefined;
    });
    assert.match(waiting.stdout, /^phase +Waiting \(ClusterFull: .+; queue position 1/m);

    const watch = run('sessions', ['watch', id]);
    await waitFor('the queue position printed', () => /Waiting +ClusterFull: .+; queue position 1/.test(watch.output()));
    await requestDeletion(h.store, firstId);
    await makeReady(h, id, 32000);
    const result = await watch;
    assert.equal(result.code, exitCodes.ok, result.stderr);
    const phases = result.stdout.split('\n').filter((line) => /^\d\d:\d\d:\d\d {2}/.test(line)).map((line) => line.split(/ +/)[1]);
    assert.equal(phases[0], 'Waiting');
    assert.equal(phases.at(-1), 'Ready');
    assert.ok(phases.includes('Starting'), `went through Starting: ${result.stdout}`);
    assert.match(result.stdout, /^addresses$/m);
  });

  it('ends a watch with exit code 5 when the session is deleted before it is Ready', async () => {
    const created = await run('sessions', ['create', '--template', 'demo', '-o', 'json']);
    const id = (JSON.parse(created.stdout) as { metadata: { id: string } }).metadata.id;
    const watch = run('sessions', ['watch', id]);
    const asJson = run('sessions', ['watch', id, '-o', 'json']);
    await waitFor('the first state printed', () => watch.output().length > 0 && asJson.output().length > 0);
    assert.equal((await run('sessions', ['delete', id])).code, exitCodes.ok);
    for (const ended of [await watch, await asJson]) {
      assert.equal(ended.code, exitCodes.sessionEnded);
      // Said on stderr, as for a failure: JSON for a script has no line of its own for it.
      assert.equal(ended.stderr, `manticore: session ${id} is being deleted (Deleted) before it was Ready\n`);
    }
  });

  it('ends a watch and a create --wait with exit code 5 when the session fails, saying how to read why', async () => {
    const waiting = run('sessions', ['create', '--template', 'demo', '--wait']);
    await waitFor('the session created', () => /^session \S+ created\n/.test(waiting.output()));
    const id = /^session (\S+) created/.exec(waiting.output())![1]!;
    const watch = run('sessions', ['watch', id, '-o', 'json']);
    await waitFor('job registration', () => h.scheduler.workload(id));
    // Placed, never healthy: the start timeout fails it.
    h.scheduler.run(id, { http: '127.0.0.1:31000', broker: '127.0.0.1:31001', tcp: '127.0.0.1:31002' }, false);
    await waitFor('the watch following', () => watch.output().length > 0);
    h.tick(10 * 60_000);
    for (const ended of [await waiting, await watch]) {
      assert.equal(ended.code, exitCodes.sessionEnded, ended.stderr);
      assert.equal(
        ended.stderr,
        `manticore: session ${id} failed (StartTimeout: not ready within 10 min: a task is not running); its logs may say why: manticore sessions logs ${id} --stream stderr\n`,
      );
    }
  });

  it('says why a session failed before it had a workload, and sends no one to logs it does not have', async () => {
    // As a controller of an earlier release leaves a record holding a field it does not know, during a rollout.
    await h.controller.stop();
    const id = await createSession(h.store);
    const failed = { type: 'Valid', status: 'False', reason: 'InvalidRecord', message: 'invalid session: /spec: unknown field "idle"', lastTransitionTime: new Date().toISOString() };
    await h.store.put(keys.status(id), JSON.stringify({ phase: 'Failed', observedGeneration: 0, conditions: [failed], endpoints: {}, events: [] }));
    const watched = await run('sessions', ['watch', id]);
    assert.equal(watched.code, exitCodes.sessionEnded);
    assert.equal(watched.stderr, `manticore: session ${id} failed (InvalidRecord: invalid session: /spec: unknown field "idle")\n`);
    const got = await run('sessions', ['get', id]);
    assert.match(got.stdout, /^phase +Failed \(InvalidRecord: invalid session: \/spec: unknown field "idle"\)$/m);
    h.controller = await h.startController();
  });

  it('answers with exit codes scripts can rely on, and says why on stderr', async () => {
    const missing = await run('sessions', ['get', 'nosuchsession0000']);
    assert.equal(missing.code, exitCodes.notFound);
    assert.match(missing.stderr, /not found \(HTTP 404\)/);

    const invalid = await run('sessions', ['create', '--template', 'demo', '--param', 'hmiType=nonsense']);
    assert.equal(invalid.code, exitCodes.refused);
    assert.match(invalid.stderr, /HTTP 400/);

    assert.equal((await run('sessions', ['create', '--template', 'demo'])).code, exitCodes.ok);
    const limit = await run('sessions', ['create', '--template', 'demo']);
    assert.equal(limit.code, exitCodes.refused, 'the second session of a user is refused (409)');
    assert.match(limit.stderr, /HTTP 409\)\n {2}existing session: /);

    for (const args of [['frobnicate'], [], ['get'], ['create'], ['create', '--template', 'demo', '--param', 'novalue'], ['list', '--output', 'yaml'], ['get', 'x', '--template', 'demo']]) {
      const usage = await run('sessions', args);
      assert.equal(usage.code, exitCodes.usage, `sessions ${args.join(' ')}: ${usage.stderr}`);
      assert.match(usage.stderr, /^manticore: /);
    }

    for (const value of ['ten', '-5', '1.5', '', '1e3']) {
      const bad = await run('sessions', ['create', '--template', 'demo', `--idle-timeout=${value}`]);
      assert.equal(bad.code, exitCodes.usage, `--idle-timeout=${value}: ${bad.stderr}`);
      assert.equal(bad.stderr, `manticore: --idle-timeout wants a whole number of seconds (0: never), got "${value}"\n(see: manticore sessions --help)\n`);
    }
    // A negative value given apart (--tail -1) is named with what the option takes too, not taken for an option of its own.
    for (const args of [['logs', 'x', '--tail', '-1'], ['logs', 'x', '--tail=-1'], ['logs', 'x', '--tail', '1.5'], ['logs', 'x', '--tail', '--follow']]) {
      const bad = await run('sessions', args);
      assert.equal(bad.code, exitCodes.usage, `sessions ${args.join(' ')}: ${bad.stderr}`);
      assert.match(bad.stderr, /^manticore: --tail wants a whole number of lines, got "(-1|1\.5|--follow)"\n\(see: manticore sessions --help\)\n$/);
    }
    assert.match((await run('sessions', ['create', '--template', 'demo', '--idle-timeout', '-5'])).stderr, /^manticore: --idle-timeout wants a whole number of seconds \(0: never\), got "-5"\n/);
    assert.match((await run('sessions', ['get', 'x', '--idle-timeout', '600'])).stderr, /^manticore: --idle-timeout goes only with "sessions create"\n/);
    assert.match((await run('sessions', ['--help'])).stdout, /--idle-timeout SECONDS/);
    assert.match((await run('sessions', ['list', '--wait'])).stderr, /^manticore: --wait goes only with "sessions create"\n\(see: manticore sessions --help\)\n$/);
    assert.match((await run('sessions', ['get', 'x', '--task', 'hmi', '--tail', '5'])).stderr, /^manticore: --task, --tail go only with "sessions logs"\n/);
    assert.match((await run('templates', ['a', 'b'])).stderr, /\(see: manticore templates --help\)\n$/);
    // Refused, not ignored, by the other commands too: `templates --template demo` would list them all.
    for (const [command, args, said] of [
      ['templates', ['--template', 'demo'], '--template goes only with "sessions create"'],
      ['limits', ['--follow'], '--follow goes only with "sessions logs"'],
      ['status', ['--wait', '--idle-timeout', '60'], '--idle-timeout, --wait go only with "sessions create"'],
    ] as const) {
      const misplaced = await run(command, [...args]);
      assert.deepEqual(misplaced, { code: exitCodes.usage, stdout: '', stderr: `manticore: ${said}\n(see: manticore ${command} --help)\n` }, `${command} ${args.join(' ')}`);
    }
    // The front end's rule for a user name, checked before anything is sent.
    const badUser = await run('sessions', ['list', '--user', 'alice smith']);
    assert.equal(badUser.code, exitCodes.usage, badUser.stderr);
    assert.equal(badUser.stderr, 'manticore: --user wants 1 to 128 characters of A-Z a-z 0-9 . _ @ -, got "alice smith"\n(see: manticore sessions --help)\n');
    assert.match((await run('sessions', ['list'], { MANTICORE_USER: 'al/ice' })).stderr, /^manticore: MANTICORE_USER wants 1 to 128 characters of A-Z a-z 0-9 \. _ @ -, got "al\/ice"\n/);
    const logsAsJson = await run('sessions', ['logs', 'x', '-o', 'json']);
    assert.equal(logsAsJson.code, exitCodes.usage, 'a script asking for JSON does not get the log text instead');
    assert.match(logsAsJson.stderr, /^manticore: sessions logs prints the log as text/);

    const port = await freePort();
    const unreachable = await runClientCommand('sessions', ['list', '--url', `http://127.0.0.1:${port}`], { stdout: new PassThrough(), stderr: new PassThrough(), env: {} });
    assert.equal(unreachable, exitCodes.unavailable);
  });

  it('keeps a session alive and says until when, or answers 3 for a session that is not there', async () => {
    const created = await run('sessions', ['create', '--template', 'demo', '-o', 'json']);
    const id = (JSON.parse(created.stdout) as { metadata: { id: string } }).metadata.id;
    await makeReady(h, id);
    const kept = await run('sessions', ['keepalive', id]);
    assert.equal(kept.code, exitCodes.ok, kept.stderr);
    assert.match(kept.stdout, new RegExp(`^session ${id} kept alive \\(expires \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z\\)\n$`));
    const asJson = await run('sessions', ['keepalive', id, '-o', 'json']);
    const answer = JSON.parse(asJson.stdout) as { id: string; lastActivityAt: string };
    assert.equal(answer.id, id);
    assert.ok(Date.now() - Date.parse(answer.lastActivityAt) < 60_000, asJson.stdout);
    assert.equal((await run('sessions', ['keepalive', id], { MANTICORE_USER: 'bob' })).code, exitCodes.notFound);
    assert.equal((await run('sessions', ['keepalive'])).code, exitCodes.usage);
  });

  it('acts as the login name by default, and asks for --user when it cannot be read or used rather than go anonymous or be refused', async () => {
    const noUser = { MANTICORE_USER: undefined };
    const login = sinon.stub(os, 'userInfo');
    try {
      login.returns({ username: 'carol', uid: 1000, gid: 1000, shell: null, homedir: '/home/carol' });
      const created = await run('sessions', ['create', '--template', 'demo', '-o', 'json'], noUser);
      assert.equal(created.code, exitCodes.ok, created.stderr);
      assert.equal((JSON.parse(created.stdout) as { metadata: { owner: string } }).metadata.owner, 'carol');

      // As in a container run as a user id the system does not name: each command would be a new anonymous user.
      login.throws(Object.assign(new Error('ENOENT: no such file or directory, uv_os_get_passwd'), { code: 'ENOENT' }));
      const unnamed = await run('sessions', ['list'], noUser);
      assert.deepEqual(unnamed, {
        code: exitCodes.usage,
        stdout: '',
        stderr: 'manticore: who you are is needed, and the login name cannot be read: give --user NAME (or MANTICORE_USER), or a token\n(see: manticore sessions --help)\n',
      });
      login.returns({ username: 'carol smith', uid: 1000, gid: 1000, shell: null, homedir: '/home/carol' });
      const refused = await run('sessions', ['list'], noUser);
      assert.equal(refused.code, exitCodes.usage);
      assert.equal(
        refused.stderr,
        'manticore: who you are is needed, and the login name "carol smith" is not a user name (1 to 128 characters of A-Z a-z 0-9 . _ @ -): give --user NAME (or MANTICORE_USER), or a token\n(see: manticore sessions --help)\n',
      );
      // A token names the caller: the login name is not needed, nor sent.
      const operator = await run('sessions', ['list'], { ...noUser, MANTICORE_TOKEN: adminToken });
      assert.equal(operator.code, exitCodes.ok, operator.stderr);
    } finally {
      login.restore();
    }
  });

  it('acts as its user when the front end does not take its token (auth mode none, not the admin token)', async () => {
    const mistyped = { MANTICORE_TOKEN: `${adminToken}-mistyped` };
    const created = await run('sessions', ['create', '--template', 'demo', '-o', 'json'], mistyped);
    assert.equal(created.code, exitCodes.ok, created.stderr);
    const { metadata } = JSON.parse(created.stdout) as { metadata: { id: string; owner: string } };
    assert.equal(metadata.owner, 'alice');
    assert.match((await run('sessions', ['list'], mistyped)).stdout, new RegExp(`^${metadata.id} `, 'm'));
    assert.equal((await run('sessions', ['delete', metadata.id], mistyped)).code, exitCodes.ok);
  });

  it('says how to give the command a token when the front end wants one (HTTP 401), none given or one refused', async () => {
    const secret = 'a-shared-secret-of-at-least-32-characters';
    await frontend.stop();
    frontend = testFrontend(h.store, { authenticator: createAuthenticator({ mode: 'jwt', jwt: { secret, userClaim: 'sub', operatorClaim: 'manticore_operator' } }) });
    url = await frontend.start('127.0.0.1', 0);
    const hint = '  run it with a valid token: --token TOKEN (or MANTICORE_TOKEN)\n';
    const none = await run('sessions', ['list']);
    assert.equal(none.code, exitCodes.refused);
    assert.equal(none.stderr, `manticore: authentication required (HTTP 401)\n  Authorization: Bearer <token> (or ?access_token=<token> on GET requests)\n${hint}`);
    const refused = await run('sessions', ['list'], { MANTICORE_TOKEN: hs256Token({ sub: 'jo', exp: Math.floor(Date.now() / 1000) + 60 }, 'another-secret-of-at-least-32-characters') });
    assert.equal(refused.code, exitCodes.refused);
    assert.match(refused.stderr, /^manticore: invalid bearer token \(HTTP 401\)\n {2}\S.*\n/);
    assert.ok(refused.stderr.endsWith(hint), refused.stderr);
  });

  it("stops a watch and a log follow with the front end's reason (exit 4) once the token it follows with has expired, without reconnecting to a 401", async () => {
    let now = Date.now();
    const secret = 'a-shared-secret-of-at-least-32-characters';
    await frontend.stop();
    const requests: string[] = [];
    frontend = testFrontend(h.store, {
      authenticator: createAuthenticator({ mode: 'jwt', jwt: { secret, userClaim: 'sub', operatorClaim: 'manticore_operator' } }, () => now),
      now: () => now,
      logs: { source: new LogFiles({ dirOf: (allocId) => path.join(logsRoot, allocId, 'logs'), log: silentLogger() }), streamsPerUser: 5 },
    });
    frontend.app.addHook('onRequest', async (request) => void requests.push(`${request.method} ${request.url}`));
    url = await frontend.start('127.0.0.1', 0);
    const env = { MANTICORE_TOKEN: hs256Token({ sub: 'jo', exp: Math.floor(now / 1000) + 60 }, secret) };
    const create = async (): Promise<string> => (JSON.parse((await run('sessions', ['create', '--template', 'demo', '-o', 'json'], env)).stdout) as { metadata: { id: string } }).metadata.id;
    // One Ready, whose log is followed, and one waiting for room, which is watched.
    const readyId = await create();
    await taskOutput((await makeReady(h, readyId)).allocationId!, 'core', 'stdout', 'one\n');
    const waitingId = await create();
    await statusWhen(h.store, waitingId, (status) => status.queuePosition === 1);
    // Only timeouts are fake: the streams' expiry and a reconnection's pause, which must not come.
    const clock = sinon.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'], shouldClearNativeTimers: true });
    try {
      const watch = run('sessions', ['watch', waitingId, '-o', 'json'], env);
      const following = run('sessions', ['logs', readyId, '--follow'], env);
      await turnsUntil(() => watch.output().length > 0 && following.output() === 'one\n');
      const streamsOpened = requests.length;
      let results: Run[] | undefined;
      void Promise.all([watch, following]).then((done) => (results = done));
      now += 90_000;
      await clock.tickAsync(90_000);
      // Time enough (fake) for a reconnection, should either try one.
      for (let step = 0; results === undefined && step < 300; step++) await clock.tickAsync(100);
      const [watched, followed] = results ?? assert.fail(`still running: ${watch.output()}`);
      for (const [result, stream, id] of [[watched, 'event', waitingId], [followed, 'log', readyId]] as const) {
        assert.equal(result.code, exitCodes.refused, result.stderr);
        assert.equal(
          result.stderr,
          `manticore: the front end closed the ${stream} stream of session ${id}: the bearer token has expired; authenticate again\n  get a new token and run the command again with it (--token or MANTICORE_TOKEN)\n`,
        );
      }
      assert.deepEqual(requests.slice(streamsOpened), [], 'neither reconnected with the expired token');
    } finally {
      clock.restore();
    }
  });

  it('fails a watch or a log follow at once (exit 1) when the front end cannot be reached at all', async () => {
    const unreachable = `http://127.0.0.1:${await freePort()}`;
    for (const args of [['watch', 'somesession00000'], ['logs', 'somesession00000', '--follow']]) {
      const stderr = new PassThrough();
      let said = '';
      // Retrying (as for a stream that broke) says so at once: enough to tell, without waiting for it to give up.
      const retried = new Promise<string>((resolve) => stderr.on('data', (chunk: Buffer) => (said += chunk.toString()).includes('reconnecting') && resolve(said)));
      const stop = new AbortController();
      const code = runClientCommand('sessions', [...args, '--url', unreachable], { stdout: new PassThrough(), stderr, env: { MANTICORE_USER: 'alice' }, signal: stop.signal });
      const outcome = await Promise.race([
        code,
        retried.then((text) => {
          stop.abort();
          assert.fail(`sessions ${args.join(' ')} retried: ${text}`);
        }),
      ]);
      assert.equal(outcome, exitCodes.unavailable, `sessions ${args.join(' ')}`);
      assert.match(said, /^manticore: cannot reach the front end at http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED\n$/);
    }
  });

  it('exits 130 on Ctrl-C during a watch or create --wait, saying that the session keeps running and how to delete it', async () => {
    const created = run('sessions', ['create', '--template', 'demo', '--wait']);
    await waitFor('the first state printed', () => /Pending|Waiting/.test(created.output()));
    const id = /^session (\S+) created$/m.exec(created.output())?.[1] ?? assert.fail(created.output());
    created.interrupt();
    const stopped = `manticore: interrupted before session ${id} was Ready; it keeps running (delete it with: manticore sessions delete ${id})\n`;
    assert.deepEqual(await created, { code: exitCodes.interrupted, stdout: created.output(), stderr: stopped }, 'a script\'s "create --wait && run-tests" stops here');
    assert.equal(exitCodes.interrupted, 130, 'the shell convention for SIGINT');

    const watch = run('sessions', ['watch', id, '-o', 'json']);
    await waitFor('the first state printed', () => watch.output().length > 0);
    watch.interrupt();
    const watched = await watch;
    assert.equal(watched.code, exitCodes.interrupted);
    assert.equal(watched.stderr, stopped);
    assert.equal((await run('sessions', ['get', id])).code, exitCodes.ok, 'the session is still there');
  });

  it('ends a watch with 130, and a log follow quietly with 0, on Ctrl-C while it connects', async () => {
    const silent = await silentFrontend();
    try {
      for (const args of [['watch', 'somesession00000'], ['logs', 'somesession00000', '--follow']]) {
        const { code, stderr: said } = await silent.interruptWhenAsked('sessions', args);
        if (args[0] === 'watch') {
          assert.equal(code, exitCodes.interrupted, said);
          assert.match(said, /^manticore: interrupted before session somesession00000 was Ready; it keeps running/);
        } else {
          assert.equal(code, exitCodes.ok, `sessions ${args.join(' ')}: ${said}`);
          assert.equal(said, '', `sessions ${args.join(' ')}`);
        }
      }
    } finally {
      await silent.close();
    }
  });

  it('ends any other command with 130 on Ctrl-C while the front end has not answered, saying a change may have been made all the same', async () => {
    const silent = await silentFrontend();
    const commands: Array<[command: 'sessions' | 'templates' | 'limits' | 'status', args: string[], said: string]> = [
      ['sessions', ['list'], 'GET /api/v1/sessions'],
      ['sessions', ['get', 'somesession00000'], 'GET /api/v1/sessions/somesession00000'],
      ['sessions', ['create', '--template', 'demo', '--wait'], 'POST /api/v1/sessions, which it may have carried out all the same'],
      ['sessions', ['delete', 'somesession00000'], 'DELETE /api/v1/sessions/somesession00000, which it may have carried out all the same'],
      ['sessions', ['keepalive', 'somesession00000'], 'POST /api/v1/sessions/somesession00000/keepalive, which it may have carried out all the same'],
      ['templates', [], 'GET /api/v1/templates'],
      ['limits', [], 'GET /api/v1/limits'],
      ['status', [], 'GET /api/v1/cluster'],
    ];
    try {
      for (const [command, args, said] of commands) {
        const { code, stderr: written } = await silent.interruptWhenAsked(command, args);
        assert.equal(code, exitCodes.interrupted, `${command} ${args.join(' ')}: ${written}`);
        assert.equal(written, `manticore: interrupted before the front end answered ${said}\n`);
      }
    } finally {
      await silent.close();
    }
  });

  it('says, when a create is answered 503, that the session may exist all the same and to list before creating again', async () => {
    const failing = http.createServer((_request, response) =>
      response.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'the service could not complete the request; try again', details: [] })),
    );
    await new Promise<void>((resolve) => failing.listen(0, '127.0.0.1', resolve));
    try {
      const created = await run('sessions', ['create', '--template', 'demo'], {}, `http://127.0.0.1:${(failing.address() as net.AddressInfo).port}`);
      assert.deepEqual(created, {
        code: exitCodes.unavailable,
        stdout: '',
        stderr:
          'manticore: the service could not complete the request; try again (HTTP 503)\n' +
          '  the session may have been created all the same: run manticore sessions list before creating another\n',
      });
    } finally {
      await new Promise((resolve) => failing.close(resolve));
    }
  });

  it('fails (exit 1) on a success that is not the API\'s (a web page at a wrong --url), printing none of it', async () => {
    const page = http.createServer((_request, response) => response.writeHead(200, { 'content-type': 'text/html' }).end('<html>another site</html>'));
    await new Promise<void>((resolve) => page.listen(0, '127.0.0.1', resolve));
    const pageUrl = `http://127.0.0.1:${(page.address() as net.AddressInfo).port}`;
    try {
      for (const [args, path, expected] of [
        [['logs', 'somesession00000'], '/api/v1/sessions/somesession00000/logs', 'text/plain'],
        [['logs', 'somesession00000', '--follow'], '/api/v1/sessions/somesession00000/logs', 'text/event-stream'],
        [['watch', 'somesession00000'], '/api/v1/sessions/somesession00000/events', 'text/event-stream'],
        [['list'], '/api/v1/sessions', 'application/json'],
      ] as const) {
        const { code, stdout: printed, stderr: said } = await run('sessions', [...args], {}, pageUrl);
        assert.deepEqual(
          { code, printed, said },
          { code: exitCodes.unavailable, printed: '', said: `manticore: GET ${path}: the answer is text/html, not ${expected}; is ${pageUrl} a Manticore front end?\n` },
          `sessions ${args.join(' ')}`,
        );
      }
    } finally {
      await new Promise((resolve) => page.close(resolve));
    }
  });

  it('fails (exit 1) on JSON that is not the API\'s (another service at a wrong --url), its errors included, printing none of it', async () => {
    let answer: { status: number; body: string } = { status: 200, body: '{}' };
    const other = http.createServer((_request, response) => response.writeHead(answer.status, { 'content-type': 'application/json' }).end(answer.body));
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    const otherUrl = `http://127.0.0.1:${(other.address() as net.AddressInfo).port}`;
    const commands: Array<[command: 'sessions' | 'templates' | 'limits' | 'status', args: string[], request: string, what: string]> = [
      ['sessions', ['list'], 'GET /api/v1/sessions', 'a list of sessions'],
      ['sessions', ['get', 'somesession00000'], 'GET /api/v1/sessions/somesession00000', 'a session'],
      ['sessions', ['create', '--template', 'demo'], 'POST /api/v1/sessions', 'a session'],
      ['sessions', ['delete', 'somesession00000'], 'DELETE /api/v1/sessions/somesession00000', 'a session'],
      ['sessions', ['keepalive', 'somesession00000'], 'POST /api/v1/sessions/somesession00000/keepalive', 'a keepalive answer'],
      ['templates', [], 'GET /api/v1/templates', 'a list of templates'],
      ['templates', ['demo'], 'GET /api/v1/templates/demo', 'a template'],
      ['limits', [], 'GET /api/v1/limits', 'the limits'],
      ['status', [], 'GET /api/v1/cluster', 'the cluster status'],
    ];
    const runAgainst = async (command: (typeof commands)[number][0], args: string[]): Promise<Run> => run(command, args, {}, otherUrl);
    try {
      for (const body of ['{}', '[{}]', '{"items":[{}]}']) {
        answer = { status: 200, body };
        for (const [command, args, request, what] of commands) {
          assert.deepEqual(
            await runAgainst(command, args),
            { code: exitCodes.unavailable, stdout: '', stderr: `manticore: ${request}: the answer is not ${what}; is ${otherUrl} a Manticore front end?\n` },
            `${command} ${args.join(' ')} answered ${body}`,
          );
        }
      }
      // Another framework's 404 is not the API's (which always gives details): not "not found" (3), which a script takes for a missing session.
      answer = { status: 404, body: '{"statusCode":404,"error":"Not Found","message":"Route GET:/api/v1/sessions/x not found"}' };
      const missing = await runAgainst('sessions', ['get', 'x']);
      assert.equal(missing.code, exitCodes.unavailable, missing.stderr);
      assert.equal(missing.stderr, `manticore: HTTP 404 Not Found from ${otherUrl}/api/v1/sessions/x: ${answer.body}\n`);
    } finally {
      await new Promise((resolve) => other.close(resolve));
    }
  });

  it('follows no redirect (exit 1), naming where it pointed: a create redirected would be sent again as a GET, without its token', async () => {
    const redirected: string[] = [];
    const proxy = http.createServer((request, response) => {
      if (request.url!.startsWith('/elsewhere/')) {
        redirected.push(`${request.method} ${request.url}`);
        response.writeHead(200, { 'content-type': 'application/json' }).end('{"items":[]}');
      } else response.writeHead(301, { location: `/elsewhere${request.url}` }).end();
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const proxyUrl = `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`;
    try {
      for (const [args, request] of [
        [['create', '--template', 'demo'], 'POST /api/v1/sessions'],
        [['list'], 'GET /api/v1/sessions'],
        [['watch', 'somesession00000'], 'GET /api/v1/sessions/somesession00000/events'],
      ] as const) {
        const { code, stderr: said } = await run('sessions', [...args, '--token', 'a-token'], { MANTICORE_USER: undefined }, proxyUrl);
        const path = request.split(' ')[1]!;
        assert.deepEqual(
          { code, said },
          {
            code: exitCodes.unavailable,
            said: `manticore: ${request}: ${proxyUrl} answered 301, a redirect to ${proxyUrl}/elsewhere${path}, which is not followed: give the front end's own address (--url or MANTICORE_URL)\n`,
          },
          `sessions ${args.join(' ')}`,
        );
      }
      assert.deepEqual(redirected, []);
    } finally {
      await new Promise((resolve) => proxy.close(resolve));
    }
  });

  it('reconnects a watch and a log follow across a front end restart, and tells a session that ended meanwhile from one never found', async () => {
    const readyOne = await run('sessions', ['create', '--template', 'demo', '-o', 'json'], { MANTICORE_USER: 'first' });
    const readyId = (JSON.parse(readyOne.stdout) as { metadata: { id: string } }).metadata.id;
    const allocId = (await makeReady(h, readyId)).allocationId!;
    await taskOutput(allocId, 'core', 'stdout', 'one\n');
    const waiting = await run('sessions', ['create', '--template', 'demo', '-o', 'json']);
    const waitingId = (JSON.parse(waiting.stdout) as { metadata: { id: string } }).metadata.id;
    await statusWhen(h.store, waitingId, (status) => status.queuePosition === 1);

    const watch = run('sessions', ['watch', waitingId]);
    const asJson = run('sessions', ['watch', waitingId, '-o', 'json']);
    const following = run('sessions', ['logs', readyId, '--follow'], { MANTICORE_USER: 'first' });
    await waitFor('the watches and the log under way', () => /Waiting/.test(watch.output()) && /Waiting/.test(asJson.output()) && following.output() === 'one\n');
    // The front end stops (its streams end with `closing`); both sessions end before it is back on its port.
    const { port } = new URL(url);
    await frontend.stop();
    for (const id of [readyId, waitingId]) await requestDeletion(h.store, id);
    await waitFor('both sessions removed', async () => (await h.store.get(keys.session(readyId))) === undefined && (await h.store.get(keys.session(waitingId))) === undefined);
    frontend = newFrontend();
    await frontend.start('127.0.0.1', Number(port));

    for (const watched of [await watch, await asJson]) {
      assert.equal(watched.code, exitCodes.sessionEnded, watched.stderr);
      // On stderr, as a deletion seen coming is: JSON for a script has no line of its own for it.
      assert.match(watched.stderr, new RegExp(`^manticore: session ${waitingId} is gone: it was deleted before it was Ready$`, 'm'));
    }
    const followed = await following;
    assert.equal(followed.code, exitCodes.ok, followed.stderr);
    assert.match(followed.stderr, new RegExp(`^manticore: session ${readyId} has ended$`, 'm'));
    // A session the front end never showed is still not found.
    assert.equal((await run('sessions', ['watch', waitingId])).code, exitCodes.notFound);
  });

  it('reconnects a watch and a log follow that break after a quiet spell longer than 30 s, the keep-alive comments being word from the front end', async () => {
    const session = (phase: string): string =>
      JSON.stringify({ metadata: { id: 'quiet0000000000a', owner: 'alice', createdAt: '2026-01-01T00:00:00.000Z' }, spec: { template: 'demo', parameters: {} }, status: { phase, conditions: [], events: [], endpoints: {} } });
    // A front end whose first stream says something, is quiet for a minute but for its keep-alive comments, then
    // breaks (a replica dying, no `closing` event); the reconnection is answered with the end.
    const opened: Array<{ url: string; lastEventId: string | undefined }> = [];
    const first: http.ServerResponse[] = [];
    const server = http.createServer((request, response) => {
      opened.push({ url: request.url!, lastEventId: request.headers['last-event-id'] as string | undefined });
      response.writeHead(200, { 'content-type': 'text/event-stream' });
      const follow = request.url!.includes('/logs');
      if (opened.length % 2 === 1) {
        response.write(follow ? 'id: alloc:4\nevent: log\ndata: {"start":0,"end":4,"text":"one\\n"}\n\n' : `event: session\ndata: ${session('Waiting')}\n\n`);
        first.push(response);
      } else response.end(follow ? 'event: ended\ndata: {"reason":"the log has ended"}\n\n' : `event: session\ndata: ${session('Ready')}\n\n`);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const quietUrl = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    const clock = sinon.useFakeTimers({ now: Date.now(), toFake: ['Date', 'setTimeout', 'clearTimeout'], shouldClearNativeTimers: true });
    try {
      for (const [args, printed] of [
        [['watch', 'quiet0000000000a', '-o', 'json'], `${session('Waiting')}\n${session('Ready')}\n`],
        [['logs', 'quiet0000000000a', '--follow'], 'one\n'],
      ] as const) {
        const running = run('sessions', [...args], {}, quietUrl);
        let result: Run | undefined;
        void running.then((done) => (result = done));
        await turnsUntil(() => running.output().length > 0);
        clock.setSystemTime(Date.now() + 60_000);
        // The front end's last keep-alive comment, then the break.
        first.at(-1)!.end(': keepalive\n\n');
        for (let step = 0; result === undefined && step < 300; step++) await clock.tickAsync(100);
        assert.deepEqual({ code: result?.code, out: result?.stdout }, { code: exitCodes.ok, out: printed }, `sessions ${args.join(' ')}: ${result?.stderr ?? 'still running'}`);
      }
      assert.equal(opened.length, 4, 'each stream was opened again');
      assert.equal(opened[3]!.lastEventId, 'alloc:4', 'the log resumed after the last output printed');
    } finally {
      clock.restore();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('reconnects after a wait drawn at random, so that the watches of a front end that restarts do not all come back in the same instant', async () => {
    const session = JSON.stringify({ metadata: { id: 'jitter000000000a', owner: 'alice', createdAt: '2026-01-01T00:00:00.000Z' }, spec: { template: 'demo', parameters: {} }, status: { phase: 'Waiting', conditions: [], events: [], endpoints: {} } });
    // Each stream says where the session is, then breaks (a front end restarting); the time of each request is noted.
    const openedAt: number[] = [];
    const server = http.createServer((_request, response) => {
      openedAt.push(Date.now());
      response.writeHead(200, { 'content-type': 'text/event-stream' });
      response.end(`event: session\ndata: ${session}\n\n`);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const at = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    const clock = sinon.useFakeTimers({ now: Date.now(), toFake: ['Date', 'setTimeout', 'clearTimeout'], shouldClearNativeTimers: true });
    const draws = sinon.stub(Math, 'random').returns(0);
    const watching = run('sessions', ['watch', 'jitter000000000a', '-o', 'json'], {}, at);
    let result: Run | undefined;
    void watching.then((done) => (result = done));
    try {
      for (let step = 0; openedAt.length < 3 && step < 100; step++) await clock.tickAsync(10);
      assert.ok(openedAt.length >= 3, `reconnected ${openedAt.length - 1} time(s)`);
      // A stream that delivered breaks: the first step, 200 ms, drawn in [½, 1] of it; the lowest draw waits half.
      const waits = [openedAt[1]! - openedAt[0]!, openedAt[2]! - openedAt[1]!];
      assert.ok(waits.every((wait) => wait >= 100 && wait < 150), `waits ${waits.join(', ')} ms`);
    } finally {
      draws.restore();
      watching.interrupt();
      for (let step = 0; result === undefined && step < 100; step++) await clock.tickAsync(10);
      clock.restore();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
    assert.equal(result?.code, exitCodes.interrupted);
  });

  it('prints a task log as it is, its last lines or another stream, and follows it until the session ends', async () => {
    const created = await run('sessions', ['create', '--template', 'demo', '-o', 'json']);
    const id = (JSON.parse(created.stdout) as { metadata: { id: string } }).metadata.id;
    const allocId = (await makeReady(h, id)).allocationId!;
    await taskOutput(allocId, 'core', 'stdout', 'one\ntwo\n');
    await taskOutput(allocId, 'core', 'stderr', 'a warning\n');
    assert.deepEqual(await run('sessions', ['logs', id]), { code: exitCodes.ok, stdout: 'one\ntwo\n', stderr: '' });
    assert.equal((await run('sessions', ['logs', id, '--tail', '1'])).stdout, 'two\n');
    assert.equal((await run('sessions', ['logs', id, '--task', 'core', '--stream', 'stderr'])).stdout, 'a warning\n');

    const unknownTask = await run('sessions', ['logs', id, '--task', 'nope']);
    assert.equal(unknownTask.code, exitCodes.refused);
    assert.match(unknownTask.stderr, /unknown task "nope" \(HTTP 400\)\n {2}\/query\/task: must be one of core, hmi/);
    const notStarted = await run('sessions', ['logs', id, '--task', 'hmi']);
    assert.equal(notStarted.code, exitCodes.refused);
    assert.match(notStarted.stderr, /not available.*\(HTTP 409\)/);
    assert.equal((await run('sessions', ['logs', id], { MANTICORE_USER: 'bob' })).code, exitCodes.notFound, 'someone else\'s session');
    for (const args of [['logs', id, '--stream', 'stdin'], ['logs', id, '--tail', 'ten'], ['logs'], ['get', id, '--follow']]) {
      const usage = await run('sessions', args);
      assert.equal(usage.code, exitCodes.usage, `sessions ${args.join(' ')}: ${usage.stderr}`);
    }

    const following = run('sessions', ['logs', id, '--follow', '--tail', '1']);
    await waitFor('the last line', () => following.output() === 'two\n');
    await taskOutput(allocId, 'core', 'stdout', 'three\n');
    await waitFor('the new line', () => following.output() === 'two\nthree\n');
    await requestDeletion(h.store, id);
    const ended = await following;
    assert.equal(ended.code, exitCodes.ok);
    assert.equal(ended.stdout, 'two\nthree\n');
    assert.equal(ended.stderr, `manticore: session ${id} has ended\n`);
  });

  it('follows a task log to its end and exits 0 when the session fails, its workload stopped, saying so', async () => {
    const created = await run('sessions', ['create', '--template', 'demo', '-o', 'json']);
    const id = (JSON.parse(created.stdout) as { metadata: { id: string } }).metadata.id;
    await waitFor('job registration', () => h.scheduler.workload(id));
    // Placed, never healthy: the start timeout fails it.
    const allocId = h.scheduler.run(id, { http: '127.0.0.1:31000', broker: '127.0.0.1:31001', tcp: '127.0.0.1:31002' }, false).id;
    await taskOutput(allocId, 'core', 'stderr', 'starting\n');
    await waitFor('the allocation in the front end', () => frontend.sessions.statuses.cache.get(id)?.value?.allocationId === allocId);
    const following = run('sessions', ['logs', id, '--follow', '--stream', 'stderr']);
    await waitFor('the first line', () => following.output() === 'starting\n');
    await taskOutput(allocId, 'core', 'stderr', 'cannot open the config\n');
    h.tick(10 * 60_000);
    await statusWhen(h.store, id, 'Failed');
    const followed = await following;
    assert.equal(followed.code, exitCodes.ok, followed.stderr);
    assert.equal(followed.stdout, 'starting\ncannot open the config\n');
    assert.equal(followed.stderr, 'manticore: the session failed: its workload has stopped, so its log ends here\n');
  });

  it('lists the templates and their parameters, in lines that fit the terminal (100 columns when not one)', async () => {
    const all = await run('templates', []);
    assert.equal(all.code, exitCodes.ok);
    assert.match(all.stdout, /^NAME +AVAILABLE +PARAMETERS +DESCRIPTION\n/);
    assert.match(all.stdout, /^demo +yes +/m);
    assert.match(all.stdout, /^sdl +no: /m);
    const widest = (text: string): number => Math.max(...text.split('\n').map((line) => line.length));
    assert.ok(widest(all.stdout) <= 100, all.stdout);
    assert.match(all.stdout, /…$/m, 'what does not fit is cut, and says so');
    const terminal = Object.assign(new PassThrough(), { isTTY: true, columns: 72 });
    let shown = '';
    terminal.on('data', (chunk: Buffer) => (shown += chunk.toString()));
    assert.equal(await runClientCommand('templates', ['sdl', '--url', url], { stdout: terminal, stderr: new PassThrough(), env: { MANTICORE_USER: 'alice' } }), exitCodes.ok);
    assert.ok(widest(shown) <= 72, shown);
    // Why it is unavailable, whole: its lines wrapped to the terminal, never cut.
    const { unavailableReason } = JSON.parse((await run('templates', ['sdl', '-o', 'json'])).stdout) as { unavailableReason: string };
    assert.ok(shown.replace(/\n +/g, ' ').includes(`available    no: ${unavailableReason}\n`), shown);
    assert.match(shown, /^template +sdl\n/m);
    assert.match(shown, /^PARAMETER +VALUES +DEFAULT +DESCRIPTION\ncoreVersion +8\.2\.0-ubuntu-update +8\.2\.0-ubuntu-update +SDL Core/m, 'its parameters, values whole');
    assert.match(shown, /^SERVICE +PROTOCOL +DESCRIPTION\nbroker +ws +HMI-to-Core/m, 'and its services');
    const described = (JSON.parse((await run('templates', ['-o', 'json'])).stdout) as Array<{ description: string }>).map((template) => template.description);
    assert.ok(described.every((description) => !description.endsWith('…')), 'JSON has them whole');
    const one = JSON.parse((await run('templates', ['demo', '-o', 'json'])).stdout) as { name: string; parameters: unknown[] };
    assert.equal(one.name, 'demo');
    assert.ok(one.parameters.length > 0);
    assert.equal((await run('templates', ['nosuch'])).code, exitCodes.notFound);
  });

  it('tells a user the limits their creates are held to, for people and for scripts', async () => {
    const shown = await run('limits', []);
    assert.equal(shown.code, exitCodes.ok, shown.stderr);
    assert.equal(
      shown.stdout,
      [
        'sessions per user   1',
        'idle timeout        1800 s (30 min) for a session that asks for none',
        'may ask for         more than 300 s and at most 1800 s (sessions create --idle-timeout SECONDS)',
        'idle warning        300 s (5 min) before the idle end',
        'maximum lifetime    none',
        '',
      ].join('\n'),
    );
    const json = await run('limits', ['-o', 'json']);
    assert.deepEqual(JSON.parse(json.stdout), { sessionsPerUser: 1, idle: { defaultTimeoutSeconds: 1800, maxTimeoutSeconds: 1800, warningSeconds: 300 }, maxLifetimeSeconds: 0 });
    assert.equal((await run('limits', ['extra'])).code, exitCodes.usage);
  });

  it('shows operators the leader, the replicas, the routers and the sessions by phase', async () => {
    const heartbeat = new ReplicaHeartbeat({ store: h.store, keys, leadership: h.controller.leadership, intervalMs: 60_000, log: testLog });
    heartbeat.start();
    const { host, pid } = h.controller.leadership.identity;
    await waitFor('the replica heartbeat', () => h.store.get(keys.controller(host, pid)));
    const longAgo = new Date(Date.now() - 120_000).toISOString();
    await h.store.put(keys.controller('gone-host', 4242), JSON.stringify({ host: 'gone-host', pid: 4242, startedAt: longAgo, heartbeatAt: longAgo, leading: false }));
    const created = await run('sessions', ['create', '--template', 'demo', '-o', 'json']);
    const id = (JSON.parse(created.stdout) as { metadata: { id: string } }).metadata.id;
    await makeReady(h, id);
    // A router that went away before applying anything (this harness's controller never calls routers stale).
    await h.store.put(keys.router('edge-9'), JSON.stringify({ name: 'edge-9', appliedIndex: 0, heartbeatAt: longAgo }));

    const refused = await run('status', []);
    assert.equal(refused.code, exitCodes.refused, 'not for users');
    assert.match(refused.stderr, /for operators \(HTTP 403\)\n {2}Authorization: Bearer <auth\.adminToken> \(MANTICORE_ADMIN_TOKEN\)/, 'says how to be one');
    assert.match(refused.stderr, /\n {2}run it as an operator: --token \(or MANTICORE_TOKEN\) with the admin token or an operator's JWT\n$/, 'in the words of the command');
    const table = await run('status', [], { MANTICORE_TOKEN: adminToken });
    assert.equal(table.code, exitCodes.ok, table.stderr);
    assert.match(table.stdout, /^sessions +1 \(Ready 1\)$/m);
    // The embedded store has no leader key: its one replica leads, as its heartbeat says.
    assert.match(table.stdout, new RegExp(`^leader +${host.replace(/\./g, '\\.')} \\(pid ${pid}\\) since `, 'm'));
    assert.match(table.stdout, new RegExp(`^${host.replace(/\./g, '\\.')} +${pid} +leader +`, 'm'));
    assert.match(table.stdout, /^gone-host +4242 +stale +/m);
    assert.match(table.stdout, /^edge-1 +live +\d+ +up to date +/m);
    assert.match(table.stdout, /^edge-9 +stale +0 +1 route\(s\) +/m);

    const json = JSON.parse((await run('status', ['-o', 'json'], { MANTICORE_TOKEN: adminToken })).stdout) as ClusterStatus;
    assert.equal(json.routes, 1);
    assert.deepEqual(json.replicas.map((replica) => [replica.host, replica.live, replica.leading]), [[host, true, true], ['gone-host', false, false]].sort());
    await heartbeat.stop();
    assert.equal(await h.store.get(keys.controller(host, pid)), undefined, 'a stopped replica withdraws its record');
  });

  it('stops quietly when its reader stops reading (| head): what it printed stands, and a log follow ends with 0', async () => {
    const created = await run('sessions', ['create', '--template', 'demo', '-o', 'json'], { MANTICORE_USER: 'dave' });
    const id = (JSON.parse(created.stdout) as { metadata: { id: string } }).metadata.id;
    await taskOutput((await makeReady(h, id)).allocationId!, 'core', 'stdout', 'one\n');
    for (const args of [['sessions', 'list'], ['templates'], ['sessions', 'logs', id, '--follow']]) {
      const outcome = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, MANTICORE_URL: url, MANTICORE_USER: 'dave' } });
        // Closed before the command writes anything, so its first write meets a pipe nobody reads.
        child.stdout.destroy();
        let stderr = '';
        child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
        child.once('exit', (code) => resolve({ code, stderr }));
      });
      assert.deepEqual(outcome, { code: exitCodes.ok, stderr: '' }, args.join(' '));
    }
  });

  it('runs as the manticore binary with --help and the exit code of the outcome', async () => {
    const exec = (args: string[], whenPrinted?: (child: ChildProcess) => void): Promise<{ code: number | null; stdout: string; stderr: string }> =>
      new Promise((resolve) => {
        const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, MANTICORE_URL: url, MANTICORE_USER: 'carol' } });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
        if (whenPrinted) child.stdout.once('data', () => whenPrinted(child));
        child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
        child.once('exit', (code) => resolve({ code, stdout, stderr }));
      });
    const help = await exec(['sessions', '--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /sessions watch ID/);
    assert.match(help.stdout, /Exit codes: 0 success/);
    const missing = await exec(['sessions', 'get', 'nosuchsession0000']);
    assert.equal(missing.code, exitCodes.notFound, missing.stderr);
    const limits = await exec(['limits', '-o', 'json']);
    assert.equal(limits.code, 0, limits.stderr);
    assert.equal((JSON.parse(limits.stdout) as { sessionsPerUser: number }).sessionsPerUser, 1);
    const listed = await exec(['sessions', 'list', '-o', 'json']);
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual(JSON.parse(listed.stdout), []);
    // Ctrl-C once the wait is under way: the shell's 130, not the 0 that lets `create --wait && run-tests` carry on.
    const interrupted = await exec(['sessions', 'create', '--template', 'demo', '--wait'], (child) => child.kill('SIGINT'));
    assert.equal(interrupted.code, exitCodes.interrupted, interrupted.stderr);
    assert.match(interrupted.stderr, /^manticore: interrupted before session \S+ was Ready; it keeps running/);
  });
});
