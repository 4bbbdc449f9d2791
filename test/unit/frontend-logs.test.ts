import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sinon from 'sinon';
import type { Session, SessionStatus } from '../../controller/api/types.js';
import { tokenExpiredReason } from '../../controller/frontend/events.js';
import type { Authenticator } from '../../controller/frontend/identity.js';
import { completeUtf8Length, parseLastEventId, parseLogQuery } from '../../controller/frontend/logs.js';
import type { Frontend } from '../../controller/frontend/server.js';
import { LogFiles, RotatingLogWriter, closeWriter } from '../../controller/scheduler/log-files.js';
import { logPosition, type LogEvent, type LogReadRequest, type TaskLogs } from '../../controller/scheduler/task-logs.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import { silentLogger } from '../../controller/util/log.js';
import { frontendKeys as keys, removeSession, testFrontend } from '../support/frontend.js';
import { LogClient } from '../support/log-client.js';
import { turnsUntil, waitFor } from '../support/wait.js';

/** A log that never ends, as fast as it is read: counts what it was asked for. */
class EndlessLogs implements TaskLogs {
  produced = 0;

  async *read(request: LogReadRequest): AsyncGenerator<LogEvent> {
    yield { kind: 'opened' };
    const piece = Buffer.alloc(64 * 1024, 'x\n');
    for (let at = 0; !request.signal?.aborted; at += piece.length) {
      this.produced += piece.length;
      yield { kind: 'data', start: at, end: at + piece.length, data: piece };
    }
  }
}

/**
 * A log whose opening waits for `open()`, as a Nomad agent's first answer takes a while; then its task is
 * quiet: a followed read waits for its abort, a plain one ends.
 */
class SlowOpeningLogs implements TaskLogs {
  reads = 0;
  open!: () => void;
  private readonly opened = new Promise<void>((resolve) => (this.open = resolve));

  async *read(request: LogReadRequest): AsyncGenerator<LogEvent> {
    this.reads += 1;
    await this.opened;
    yield { kind: 'opened' };
    if (!request.follow || request.signal === undefined || request.signal.aborted) return;
    const { signal } = request;
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
  }
}

const statusJson = (extra: Partial<SessionStatus> = {}): string => JSON.stringify({ phase: 'Ready', observedGeneration: 1, conditions: [], endpoints: {}, events: [], ...extra });

describe('front end: task logs (GET /api/v1/sessions/{id}/logs)', () => {
  let root: string;
  let store: EmbeddedStore;
  let frontend: Frontend;
  let base: string;
  let writers: RotatingLogWriter[];
  const clients: LogClient[] = [];

  const start = async (source: TaskLogs, streamsPerUser = 3): Promise<void> => {
    frontend = testFrontend(store, { logs: { source, streamsPerUser } });
    base = await frontend.start('127.0.0.1', 0);
  };

  beforeEach(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-frontend-logs-'));
    writers = [];
    store = EmbeddedStore.open(':memory:');
    await start(new LogFiles({ dirOf: (allocId) => path.join(root, allocId, 'logs'), log: silentLogger() }));
  });

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await frontend.stop();
    await store.close();
    await Promise.all(writers.map(closeWriter));
    fs.rmSync(root, { recursive: true, force: true });
  });

  const create = async (user: string): Promise<string> => {
    const response = await frontend.app.inject({ method: 'POST', url: '/api/v1/sessions', headers: { 'content-type': 'application/json', 'x-manticore-user': user }, payload: { template: 'demo' } });
    assert.equal(response.statusCode, 201, response.body);
    return (JSON.parse(response.body) as Session).metadata.id;
  };
  /** The session placed on allocation `allocId`, seen by the front end's cache. */
  const placed = async (id: string, allocId: string): Promise<void> => {
    await store.put(keys.status(id), statusJson({ allocationId: allocId }));
    await waitFor('the status in the cache', () => frontend.sessions.statuses.cache.get(id)?.value?.allocationId === allocId);
  };
  const output = (allocId: string, task = 'core', stream = 'stdout', maxFileBytes = 1_000_000): RotatingLogWriter => {
    const writer = new RotatingLogWriter(path.join(root, allocId, 'logs'), `${task}.${stream}`, { maxFileBytes, maxFiles: 100 });
    writers.push(writer);
    return writer;
  };
  const connections = (): Promise<number> =>
    new Promise((resolve, reject) => frontend.app.server.getConnections((error, count) => (error ? reject(error) : resolve(count))));
  const write = (writer: RotatingLogWriter, text: string): Promise<void> => new Promise((resolve, reject) => writer.write(text, (error) => (error ? reject(error) : resolve())));
  const get = (url: string, user: string, headers: Record<string, string> = {}) => frontend.app.inject({ method: 'GET', url, headers: { 'x-manticore-user': user, ...headers } });
  /** Ann's session on `allocId`, whose Core wrote `text`, followed until that text arrived. */
  const followedSession = async (allocId: string, text: string): Promise<{ id: string; client: LogClient }> => {
    const id = await create('ann');
    await placed(id, allocId);
    await write(output(allocId), text);
    const client = follow(id, 'ann');
    await waitFor('the existing output', () => client.text === text);
    return { id, client };
  };
  const follow = (id: string, user: string, query = '', headers: Record<string, string> = {}, paused = false): LogClient => {
    const client = new LogClient(`${base}/api/v1/sessions/${id}/logs?follow=true${query}`, { 'x-manticore-user': user, ...headers }, { paused });
    clients.push(client);
    return client;
  };

  describe('parsing', () => {
    it('checks the query: the task among the template’s, the stream, follow, tail and offset', () => {
      const tasks = ['core', 'hmi'];
      assert.deepEqual(parseLogQuery({}, tasks), { task: 'core', stream: 'stdout', follow: false });
      assert.deepEqual(parseLogQuery({ task: 'hmi', stream: 'stderr', follow: 'true', tail: '20' }, tasks), { task: 'hmi', stream: 'stderr', follow: true, tail: 20 });
      assert.deepEqual(parseLogQuery({ offset: '4294967296', access_token: 't' }, tasks), { task: 'core', stream: 'stdout', follow: false, offset: 4294967296 });
      const refused: Array<[Record<string, unknown>, RegExp]> = [
        [{ task: 'broker' }, /must be one of core, hmi/],
        [{ stream: 'stdin' }, /stdout or stderr/],
        [{ follow: 'yes' }, /true or false/],
        [{ tail: '-1' }, /0 to 10000/],
        [{ tail: '10001' }, /0 to 10000/],
        [{ tail: '1.5' }, /0 to 10000/],
        [{ offset: 'end' }, /non-negative integer/],
        [{ tail: '1', offset: '2' }, /the last lines/],
        [{ task: ['core', 'hmi'] }, /once/],
        [{ since: '1h' }, /not one of task, stream, follow, tail, offset/],
      ];
      for (const [query, detail] of refused) {
        assert.throws(() => parseLogQuery(query, tasks), (error: { statusCode?: number; details?: string[] }) => error.statusCode === 400 && detail.test(error.details?.join(' ') ?? ''), JSON.stringify(query));
      }
    });

    it('reads the Last-Event-ID of a log event, and cuts text only between whole UTF-8 characters', () => {
      assert.deepEqual(parseLastEventId('9f8e-77:4294967301'), { allocationId: '9f8e-77', position: 4294967301 });
      for (const bad of ['4294967301', 'a:b', 'a:-1', 'x y:1']) assert.throws(() => parseLastEventId(bad), /Last-Event-ID/);
      const text = Buffer.from('aé€😀');
      for (let cut = 0; cut <= text.length; cut++) {
        const length = completeUtf8Length(text.subarray(0, cut));
        assert.ok(length <= cut && text.subarray(0, length).toString('utf8').length === text.subarray(0, length).toString('utf8').replace(/\ufffd/g, '').length, `cut at ${cut}`);
        assert.ok(cut - length < 4);
      }
      assert.equal(completeUtf8Length(text), text.length);
    });
  });

  it('answers 404 for someone else’s session or a missing one, 409 before the session is placed or its task has a log, 400 naming the tasks', async () => {
    const id = await create('ann');
    assert.equal((await get(`/api/v1/sessions/${id}/logs`, 'bob')).statusCode, 404);
    assert.equal((await get('/api/v1/sessions/nosuchsession1/logs', 'ann')).statusCode, 404);
    const unplaced = await get(`/api/v1/sessions/${id}/logs`, 'ann');
    assert.equal(unplaced.statusCode, 409);
    assert.match(unplaced.json<{ error: string }>().error, /no workload placed yet \(phase Pending\)/);
    await placed(id, 'alloc-1');
    const notStarted = await get(`/api/v1/sessions/${id}/logs?task=hmi`, 'ann');
    assert.equal(notStarted.statusCode, 409);
    assert.match(notStarted.json<{ error: string }>().error, /stdout log of task hmi is not available/);
    const unknown = await get(`/api/v1/sessions/${id}/logs?task=broker`, 'ann');
    assert.equal(unknown.statusCode, 400);
    assert.deepEqual(unknown.json<{ details: string[] }>().details, ['/query/task: must be one of core, hmi']);
    // Another user's stream is refused before anything is read: no log streams count against anyone.
    assert.equal((await get(`/api/v1/sessions/${id}/logs?follow=true`, 'bob')).statusCode, 404);
  });

  it("says, for a Failed session whose workload's logs are gone, that the embedded default keeps them only until a restart", async () => {
    const id = await create('ann');
    await placed(id, 'alloc-gone');
    const ready = await get(`/api/v1/sessions/${id}/logs`, 'ann');
    assert.deepEqual([ready.statusCode, ready.json<{ error: string }>().error], [409, 'the stdout log of task core is not available: allocation alloc-gone is not on this machine (unknown, or removed)']);
    await store.put(keys.status(id), statusJson({ phase: 'Failed', allocationId: 'alloc-gone' }));
    await waitFor('the failure in the cache', () => frontend.sessions.statuses.cache.get(id)?.value?.phase === 'Failed');
    const failed = await get(`/api/v1/sessions/${id}/logs`, 'ann');
    assert.equal(failed.statusCode, 409);
    assert.equal(
      failed.json<{ error: string }>().error,
      'the stdout log of task core is not available: allocation alloc-gone is not on this machine (unknown, or removed); ' +
        'on the embedded default the logs of stopped workloads are kept only until Manticore restarts, and only for the most recently stopped ones',
    );
    // A task that never started is not put down to that.
    await write(output('alloc-gone', 'core', 'stderr'), 'x\n');
    assert.match((await get(`/api/v1/sessions/${id}/logs?task=hmi`, 'ann')).json<{ error: string }>().error, /has no stdout log \(not started\)$/);
  });

  it('serves the log as text: all of it, the last lines, or from a position, across rotated files', async () => {
    const id = await create('ann');
    await placed(id, 'alloc-2');
    const out = output('alloc-2', 'core', 'stdout', 16);
    await write(out, 'one\ntwo\nthree\nfour\nfive\n');
    const all = await get(`/api/v1/sessions/${id}/logs`, 'ann');
    assert.equal(all.statusCode, 200);
    assert.equal(all.headers['content-type'], 'text/plain; charset=utf-8');
    assert.equal(all.body, 'one\ntwo\nthree\nfour\nfive\n');
    assert.equal((await get(`/api/v1/sessions/${id}/logs?tail=2`, 'ann')).body, 'four\nfive\n');
    assert.equal((await get(`/api/v1/sessions/${id}/logs?tail=0`, 'ann')).body, '');
    // "one\ntwo\nthree\nfo" fills file 0; file 1 holds "ur\nfive\n".
    assert.equal((await get(`/api/v1/sessions/${id}/logs?offset=${logPosition(1, 3)}`, 'ann')).body, 'five\n');
    output('alloc-2', 'core', 'stderr');
    assert.equal((await get(`/api/v1/sessions/${id}/logs?stream=stderr`, 'ann')).body, '');
  });

  it('follows as server-sent events, and resumes exactly after the last event on a reconnection', async () => {
    const id = await create('ann');
    await placed(id, 'alloc-3');
    const out = output('alloc-3');
    await write(out, 'hello\n');
    // Each stream's reconnection wait is drawn, between 2 and 4 s: the pages of a restarting front end spread out.
    const draws = sinon.stub(Math, 'random').returns(1);
    const first = follow(id, 'ann', '&tail=10');
    try {
      await waitFor('the existing line', () => first.text === 'hello\n');
    } finally {
      draws.restore();
    }
    assert.equal(first.status, 200);
    assert.deepEqual(first.events[0], { event: 'start', data: { allocationId: 'alloc-3', task: 'core', stream: 'stdout' } });
    assert.match(first.body, /^retry: 4000\n/, 'the highest draw');
    await write(out, 'world\n');
    await waitFor('the new line', () => first.text === 'hello\nworld\n');
    const log = first.events.filter((event) => event.event === 'log').at(-1)!;
    assert.deepEqual([log.id, log.data.end], [`alloc-3:${'hello\nworld\n'.length}`, 12]);
    // The connection breaks; lines are written meanwhile; the client comes back with the last id it saw.
    const lastId = first.lastId!;
    first.close();
    await write(out, 'while away\n');
    const again = follow(id, 'ann', '&tail=10', { 'last-event-id': lastId });
    await write(out, 'back\n');
    await waitFor('exactly what came after', () => again.text === 'while away\nback\n');
    // A multi-byte character cut between two writes arrives whole, its bytes never split between events.
    const euro = Buffer.from('€\n');
    await new Promise<void>((resolve) => out.write(euro.subarray(0, 1), () => resolve()));
    await waitFor('nothing of a partial character', () => again.text === 'while away\nback\n');
    await new Promise<void>((resolve) => out.write(euro.subarray(1), () => resolve()));
    await waitFor('the whole character', () => again.text === 'while away\nback\n€\n');
  });

  it('keeps a character cut by a rotation whole, and every position valid', async () => {
    const id = await create('ann');
    await placed(id, 'alloc-9');
    // Files of 5 bytes: "abcd" and the first byte of "€" in file 0, its other two bytes and "\n" in file 1.
    await write(output('alloc-9', 'core', 'stdout', 5), 'abcd€\n');
    const client = follow(id, 'ann');
    await waitFor('the whole text', () => client.text === 'abcd€\n');
    const logEvents = client.events.filter((event) => event.event === 'log');
    assert.deepEqual(logEvents.map((event) => [event.data.start, event.data.end, event.id]), [
      [logPosition(0, 0), logPosition(0, 4), `alloc-9:${logPosition(0, 4)}`],
      [logPosition(0, 4), logPosition(1, 3), `alloc-9:${logPosition(1, 3)}`],
    ]);
    const resumed = follow(id, 'ann', '', { 'last-event-id': logEvents[0]!.id! });
    await waitFor('the character again from where it began', () => resumed.text === '€\n');
  });

  it('starts over at a replacing workload’s beginning, says so when a workload is replaced, and that the session is gone', async () => {
    const { id, client } = await followedSession('alloc-4', 'old workload\n');
    await write(output('alloc-5'), 'new workload\n');
    await placed(id, 'alloc-5');
    await waitFor('closing', () => client.ended);
    assert.match(String(client.events.at(-1)?.data.reason), /workload was replaced \(allocation alloc-5\)/);
    const reconnected = follow(id, 'ann', '', { 'last-event-id': client.lastId! });
    await waitFor('the new workload from its start', () => reconnected.text === 'new workload\n');
    await removeSession(store, id);
    await waitFor('gone', () => reconnected.ended && reconnected.events.at(-1)?.event === 'gone');
  });

  it('ends a failed session’s followed log where its stopped workload stopped writing, saying so', async () => {
    const { id, client } = await followedSession('alloc-11', 'starting\n');
    // The session fails while followed: the stream closes, and the reconnection reads the rest, then ends.
    await write(output('alloc-11'), 'cannot open the config\n');
    await store.put(keys.status(id), statusJson({ phase: 'Failed', allocationId: 'alloc-11' }));
    await waitFor('closing', () => client.ended);
    assert.match(String(client.events.at(-1)?.data.reason), /^the session failed; reconnect for the rest of its log$/);
    const rest = follow(id, 'ann', '', { 'last-event-id': client.lastId! });
    await waitFor('the end of the log', () => rest.ended);
    assert.equal(client.text + rest.text, 'starting\ncannot open the config\n');
    assert.deepEqual(rest.events.at(-1), { event: 'ended', data: { reason: 'the session failed: its workload has stopped, so its log ends here' } });
    // Opened afterwards, from its last lines, it ends the same way.
    const late = follow(id, 'ann', '&tail=1');
    await waitFor('the end of the log', () => late.ended);
    assert.equal(late.text, 'cannot open the config\n');
    assert.equal(late.events.at(-1)?.event, 'ended');
  });

  it('limits the log streams one user holds open, and counts them again once closed', async () => {
    const id = await create('ann');
    await placed(id, 'alloc-6');
    await write(output('alloc-6'), 'x\n');
    const open = [follow(id, 'ann'), follow(id, 'ann'), follow(id, 'ann')];
    await waitFor('three streams', () => open.every((client) => client.text === 'x\n'));
    const refused = await get(`/api/v1/sessions/${id}/logs?follow=true`, 'ann');
    assert.equal(refused.statusCode, 429);
    assert.match(refused.json<{ error: string }>().error, /already has 3 log streams open, the most allowed; close one first/);
    const other = await create('bob');
    await placed(other, 'alloc-6');
    const bobs = follow(other, 'bob');
    await waitFor('another user is not counted against it', () => bobs.text === 'x\n');
    open[0]!.close();
    await waitFor('a stream free again', async () => (await get(`/api/v1/sessions/${id}/logs`, 'ann')).statusCode === 200);
  });

  it('answers HEAD with the headers alone and ends at once, holding no stream', async () => {
    await frontend.stop();
    await start(new LogFiles({ dirOf: (allocId) => path.join(root, allocId, 'logs'), log: silentLogger() }), 1);
    const id = await create('ann');
    await placed(id, 'alloc-7');
    await write(output('alloc-7'), 'x\n');
    for (const query of ['follow=true', 'follow=true', 'tail=1']) {
      const head = await frontend.app.inject({ method: 'HEAD', url: `/api/v1/sessions/${id}/logs?${query}`, headers: { 'x-manticore-user': 'ann' } });
      assert.deepEqual([head.statusCode, head.body], [200, ''], query);
    }
    const client = follow(id, 'ann');
    await waitFor('a stream opens after the HEADs', () => client.text === 'x\n');
  });

  it('gives a stream back when its client left while the log was opening', async () => {
    const slow = new SlowOpeningLogs();
    await frontend.stop();
    await start(slow, 1);
    const id = await create('ann');
    await placed(id, 'alloc-9');
    const leaving = follow(id, 'ann');
    await waitFor('the log opening', () => slow.reads === 1);
    leaving.close();
    await waitFor('the front end saw the client go', async () => (await connections()) === 0);
    slow.open();
    // Holding its one stream for a quiet task, a lost client would keep ann at 429 for good.
    await waitFor('the stream given back', async () => (await get(`/api/v1/sessions/${id}/logs`, 'ann')).statusCode === 200);
  });

  it('reads no faster than a client takes it: a client that stops reading stops the reading, with memory bounded', async () => {
    const endless = new EndlessLogs();
    await frontend.stop();
    await start(endless);
    const id = await create('ann');
    await placed(id, 'alloc-7');
    const slow = follow(id, 'ann', '', {}, true);
    // The socket buffers fill (a few MB on loopback), then nothing more is read from the log.
    let last = -1;
    await waitFor('the reading to stall', async () => {
      const now = endless.produced;
      const stalled = now > 0 && now === last;
      last = now;
      return stalled;
    }, 20_000, 250);
    assert.ok(endless.produced < 32 * 1024 * 1024, `${endless.produced} bytes read for a client that read nothing`);
    const before = endless.produced;
    slow.resume();
    await waitFor('reading on once the client reads', () => endless.produced > before + 4 * 1024 * 1024);
    slow.close();
  });

  it('ends a followed log once the credentials it was opened with expire, saying so', async () => {
    let now = Date.parse('2026-03-01T12:00:00.000Z');
    // The caller named by X-Manticore-User, with credentials that expire at X-Expires-At (ms), as a bearer token's do.
    const expiring: Authenticator = {
      identify: (request) => {
        const expiresAt = request.headers['x-expires-at'];
        return { user: String(request.headers['x-manticore-user']), operator: false, ...(typeof expiresAt === 'string' ? { verified: true, expiresAt: Number(expiresAt) } : {}) };
      },
    };
    const quiet = new SlowOpeningLogs();
    quiet.open();
    await frontend.stop();
    frontend = testFrontend(store, { logs: { source: quiet, streamsPerUser: 3 }, authenticator: expiring, now: () => now });
    base = await frontend.start('127.0.0.1', 0);
    const id = await create('ann');
    await placed(id, 'alloc-9');
    // Only timeouts are fake: the expiry is one; the socket and the log run on real time.
    const clock = sinon.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'], shouldClearNativeTimers: true });
    try {
      const client = follow(id, 'ann', '', { 'x-expires-at': String(now + 60_000) });
      await turnsUntil(() => client.events.some((event) => event.event === 'start'));
      now += 59_999;
      await clock.tickAsync(59_999);
      assert.equal(client.ended, false, 'ended before the credentials expired');
      now += 1;
      await clock.tickAsync(1);
      await turnsUntil(() => client.ended);
      assert.deepEqual(client.events.at(-1), { event: 'closing', data: { reason: tokenExpiredReason } });
      assert.equal(clock.countTimers(), 0, 'nothing left waiting for the expiry');
    } finally {
      clock.restore();
    }
  });

  it('ends open log streams with a reason when the front end stops', async () => {
    const { client } = await followedSession('alloc-8', 'x\n');
    await frontend.stop();
    await waitFor('ended', () => client.ended);
    assert.deepEqual(client.events.at(-1), { event: 'closing', data: { reason: 'the server is shutting down' } });
    await start(new LogFiles({ dirOf: (allocId) => path.join(root, allocId, 'logs'), log: silentLogger() }));
  });
});
