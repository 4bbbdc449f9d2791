import assert from 'node:assert/strict';
import http from 'node:http';
import type { Session, SessionStatus } from '../../controller/api/types.js';
import { Frontend } from '../../controller/frontend/server.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import type { Store, WatchStep } from '../../controller/store/store.js';
import { concatMap, map } from 'rxjs';
import { frontendKeys as keys, removeSession, testFrontend } from '../support/frontend.js';
import { delegatingStore } from '../support/controller-harness.js';
import { waitFor } from '../support/wait.js';


interface ServerSentEvent {
  event: string;
  data: unknown;
}

/** An SSE client on a raw socket, so a test can stop reading (back-pressure) and see every event. */
class EventClient {
  readonly events: ServerSentEvent[] = [];
  status = 0;
  /** Everything the answer held, as text. */
  text = '';
  ended = false;
  private buffer = '';
  private response: http.IncomingMessage | undefined;
  private readonly request: http.ClientRequest;

  constructor(url: string, user: string) {
    const request = (this.request = http.get(url, { headers: { 'x-manticore-user': user, accept: 'text/event-stream' } }, (response) => {
      this.response = response;
      this.status = response.statusCode ?? 0;
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => {
        this.text += chunk;
        this.parse(chunk);
      });
      response.on('end', () => (this.ended = true));
    }));
    request.on('error', () => (this.ended = true));
  }

  pause(): void {
    this.response?.pause();
  }

  resume(): void {
    this.response?.resume();
  }

  /** Hangs up, whether or not the answer has begun. */
  close(): void {
    this.request.destroy();
  }

  sessions(): Session[] {
    return this.events.filter((event) => event.event === 'session').map((event) => event.data as Session);
  }

  private parse(chunk: string): void {
    this.buffer += chunk;
    for (let end = this.buffer.indexOf('\n\n'); end >= 0; end = this.buffer.indexOf('\n\n')) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const fields = Object.fromEntries(block.split('\n').filter((line) => !line.startsWith(':')).map((line) => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 2)]));
      if (fields.event !== undefined) this.events.push({ event: fields.event, data: JSON.parse(fields.data ?? 'null') });
    }
  }
}

/** A store that counts the watches opened on it. */
function watchCounting(inner: Store): Store & { watches: string[] } {
  const watches: string[] = [];
  return {
    ...delegatingStore(inner),
    watches,
    watch: (prefix: string, index?: number) => {
      watches.push(prefix);
      return inner.watch(prefix, index);
    },
  };
}

/**
 * A store whose sessions watch never shows the session `id` (as another replica's session before this
 * one's watch has caught up), and whose read of that session's record waits for `release()`.
 */
function slowToShow(inner: Store, id: string): { store: Store; reads: () => number; answered: () => boolean; release: () => void } {
  let reads = 0;
  let answered = false;
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const key = keys.session(id);
  const hidden = (step: WatchStep): WatchStep =>
    step.kind === 'reset'
      ? { ...step, entries: step.entries.filter((entry) => entry.key !== key) }
      : { ...step, changes: step.changes.filter((change) => (change.type === 'put' ? change.entry.key : change.key) !== key) };
  const store: Store = {
    ...delegatingStore(inner),
    get: async (wanted) => {
      if (wanted !== key) return inner.get(wanted);
      reads += 1;
      await released;
      const entry = await inner.get(wanted);
      answered = true;
      return entry;
    },
    watch: (prefix, index) => inner.watch(prefix, index).pipe(map(hidden)),
  };
  return { store, reads: () => reads, answered: () => answered, release };
}

const status = (phase: SessionStatus['phase'], extra: Partial<SessionStatus> = {}): string =>
  JSON.stringify({ phase, observedGeneration: 1, conditions: [], endpoints: {}, events: [], ...extra });

describe('front end: live status stream (server-sent events)', () => {
  let store: EmbeddedStore;
  let counting: Store & { watches: string[] };
  let frontend: Frontend;
  let base: string;
  const clients: EventClient[] = [];

  beforeEach(async () => {
    store = EmbeddedStore.open(':memory:');
    counting = watchCounting(store);
    frontend = testFrontend(counting);
    base = await frontend.start('127.0.0.1', 0);
  });
  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await frontend.stop();
    await store.close();
  });

  const create = async (user: string): Promise<string> => {
    const response = await frontend.app.inject({ method: 'POST', url: '/api/v1/sessions', headers: { 'content-type': 'application/json', 'x-manticore-user': user }, payload: { template: 'demo' } });
    assert.equal(response.statusCode, 201, response.body);
    return (JSON.parse(response.body) as Session).metadata.id;
  };
  const open = (id: string, user: string): EventClient => {
    const client = new EventClient(`${base}/api/v1/sessions/${id}/events`, user);
    clients.push(client);
    return client;
  };

  it('sends the session at once and on every change, then `gone` when it is removed', async () => {
    const id = await create('ann');
    const client = open(id, 'ann');
    const first = await waitFor('the first event', () => client.sessions()[0]);
    assert.equal(client.status, 200);
    assert.equal(first.metadata.id, id);
    assert.equal(first.status.phase, 'Pending');

    await store.put(keys.status(id), status('Waiting', { queuePosition: 3, estimatedStartAt: '2026-01-01T00:10:00.000Z' }));
    const waiting = await waitFor('the waiting event', () => client.sessions().find((session) => session.status.phase === 'Waiting'));
    assert.equal(waiting.status.queuePosition, 3);
    assert.equal(waiting.status.estimatedStartAt, '2026-01-01T00:10:00.000Z');

    await removeSession(store, id);
    await waitFor('gone and ended', () => client.ended && client.events.at(-1)?.event === 'gone');
  });

  it('ends a removed session with `gone`, never showing it Pending again when its status goes first', async () => {
    // The controller removes status, activity and record in one transaction, but each prefix has its own
    // watch: here the record's removal reaches this front end after the status's, as it may on Consul.
    let release!: () => void;
    const recordRemoved = new Promise<void>((resolve) => (release = resolve));
    const held: Store = {
      ...delegatingStore(store),
      watch: (prefix, index) =>
        store.watch(prefix, index).pipe(concatMap(async (step) => (prefix === keys.sessions && step.kind === 'changes' && step.changes.some((change) => change.type === 'delete') ? recordRemoved.then(() => step) : step))),
    };
    const other = testFrontend(store, { store: held });
    const otherBase = await other.start('127.0.0.1', 0);
    try {
      const id = await create('ann');
      const client = new EventClient(`${otherBase}/api/v1/sessions/${id}/events`, 'ann');
      clients.push(client);
      await store.put(keys.status(id), status('Terminating'));
      await waitFor('the terminating event', () => client.sessions().some((session) => session.status.phase === 'Terminating'));
      await removeSession(store, id);
      await waitFor('the status removal seen', () => other.sessions.statuses.cache.get(id) === undefined);
      release();
      await waitFor('gone and ended', () => client.ended && client.events.at(-1)?.event === 'gone');
      const phases = client.sessions().map((session) => session.status.phase);
      assert.deepEqual(phases.slice(phases.indexOf('Terminating')), ['Terminating'], `phases sent: ${phases.join(', ')}`);
    } finally {
      await other.stop();
    }
  });

  it('answers 404 for someone else’s session and for a missing one, like every other route', async () => {
    const id = await create('ann');
    for (const [target, user] of [[id, 'bob'], ['nosuchsession', 'ann']] as const) {
      const response = await frontend.app.inject({ method: 'GET', url: `/api/v1/sessions/${target}/events`, headers: { 'x-manticore-user': user } });
      assert.equal(response.statusCode, 404);
      assert.match((JSON.parse(response.body) as { error: string }).error, /not found/);
    }
  });

  it('feeds every stream of the process from the same two watches', async () => {
    const watchesBefore = counting.watches.length;
    const id = await create('ann');
    const streams = Array.from({ length: 20 }, () => open(id, 'ann'));
    await waitFor('every stream got the session', () => streams.every((client) => client.sessions().length > 0));
    await store.put(keys.status(id), status('Starting'));
    await waitFor('every stream got the change', () => streams.every((client) => client.sessions().some((session) => session.status.phase === 'Starting')));
    assert.equal(counting.watches.length, watchesBefore, 'no watch per stream');
  });

  it('limits the status streams one user holds open, and counts each again once it ends', async () => {
    await frontend.stop();
    frontend = testFrontend(counting, { statusStreamsPerUser: 2 });
    base = await frontend.start('127.0.0.1', 0);
    const id = await create('ann');
    const held = [open(id, 'ann'), open(id, 'ann')];
    await waitFor('both streams open', () => held.every((client) => client.sessions().length > 0));
    const refused = open(id, 'ann');
    await waitFor('the third answered and ended', () => refused.ended);
    assert.equal(refused.status, 429);
    const answer = JSON.parse(refused.text) as { error: string; details: string[] };
    assert.match(answer.error, /user ann already has 2 status streams open, the most allowed; close one first/);
    assert.deepEqual(answer.details, ['at most 2 open status streams per user']);

    const bobs = await create('bob');
    const bob = open(bobs, 'bob');
    await waitFor('another user is not limited by ann', () => bob.sessions().length > 0);

    // A stream the client closes is counted no more.
    held[0]!.close();
    const again = await waitFor('a stream let in once one closed', async () => {
      const client = open(id, 'ann');
      await waitFor('answered', () => client.status !== 0);
      if (client.status === 200) return client;
      client.close();
      return undefined;
    });
    // Nor is a stream the server ends (`gone`).
    await removeSession(store, id);
    await waitFor('ann’s streams ended', () => held[1]!.ended && again.ended);
    const next = await create('ann');
    const fresh = [open(next, 'ann'), open(next, 'ann')];
    await waitFor('two streams again', () => fresh.every((client) => client.status === 200 && client.sessions().length > 0));
  });

  it('answers HEAD with the stream’s headers and ends at once, holding no stream', async () => {
    await frontend.stop();
    frontend = testFrontend(counting, { statusStreamsPerUser: 1 });
    base = await frontend.start('127.0.0.1', 0);
    const id = await create('ann');
    for (let n = 0; n < 2; n++) {
      const head = await new Promise<http.IncomingMessage>((resolve, reject) => {
        const request = http.request(`${base}/api/v1/sessions/${id}/events`, { method: 'HEAD', headers: { 'x-manticore-user': 'ann' } }, (response) => {
          response.resume();
          response.on('end', () => resolve(response));
        });
        request.on('error', reject);
        request.end();
      });
      assert.equal(head.statusCode, 200);
      assert.equal(head.headers['content-type'], 'text/event-stream; charset=utf-8');
    }
    const client = open(id, 'ann');
    await waitFor('a stream opens after the HEADs', () => client.sessions().length > 0);
  });

  it('keeps only the latest state for a client that does not read, and sends it when it drains', async () => {
    const id = await create('ann');
    const slow = open(id, 'ann');
    await waitFor('connected', () => slow.sessions().length > 0);
    slow.pause();
    // Statuses as big as the schema allows (a full event history, ~40 kB) fill the socket buffers (a few MB
    // on loopback) quickly; most of them must be skipped, not queued. Each write is delivered on its own.
    const events = Array.from({ length: 20 }, () => ({ time: '2026-01-01T00:00:00.000Z', reason: 'Queued', message: 'x'.repeat(2000) }));
    for (let n = 1; n <= 400; n++) {
      await store.put(keys.status(id), status('Waiting', { queuePosition: n, events }));
    }
    slow.resume();
    await waitFor('the latest state arrives', () => slow.sessions().at(-1)?.status.queuePosition === 400);
    assert.ok(slow.sessions().length < 400, `${slow.sessions().length} of 400 states were sent to a client that was not reading`);
  });

  it('follows nothing for a client that left while the session was being read', async () => {
    const id = 'otherreplica01';
    await store.put(keys.session(id), JSON.stringify({ metadata: { id, owner: 'ann', createdAt: '2026-01-01T00:00:00.000Z', generation: 1 }, spec: { template: 'demo', parameters: {} } }));
    const slow = slowToShow(store, id);
    const other = testFrontend(store, { store: slow.store });
    const otherBase = await other.start('127.0.0.1', 0);
    try {
      const client = new EventClient(`${otherBase}/api/v1/sessions/${id}/events`, 'ann');
      clients.push(client);
      await waitFor('the session being read', () => slow.reads() === 1);
      client.close();
      const connections = (): Promise<number> => new Promise((resolve, reject) => other.app.server.getConnections((error, count) => (error ? reject(error) : resolve(count))));
      await waitFor('the front end saw the client go', async () => (await connections()) === 0);
      slow.release();
      await waitFor('the read answered', () => slow.answered());
      // What the route does with the answer takes no I/O: done by the next turn of the event loop.
      await new Promise<void>((resolve) => setImmediate(resolve));
      // A stream begun for the gone client would follow the session (a subscription, a heartbeat) until it ends.
      const followers = (other.sessions as unknown as { listeners: Map<string, Set<unknown>> }).listeners;
      assert.equal(followers.get(id)?.size ?? 0, 0, 'a stream follows the session for a client that is gone');
    } finally {
      await other.stop();
    }
  });

  it('ends open streams with a reason when the front end stops', async () => {
    const id = await create('ann');
    const client = open(id, 'ann');
    await waitFor('connected', () => client.sessions().length > 0);
    await frontend.stop();
    await waitFor('ended', () => client.ended);
    assert.deepEqual(client.events.at(-1), { event: 'closing', data: { reason: 'the server is shutting down' } });
    frontend = testFrontend(store);
    await frontend.start('127.0.0.1', 0);
  });
});
