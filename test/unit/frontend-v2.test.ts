import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import type { FastifyRequest } from 'fastify';
import sinon from 'sinon';
import WebSocket from 'ws';
import { loadTemplates } from '../../controller/api/templates.js';
import { loadConfig } from '../../controller/config/config.js';
import type { Condition, SessionRecord, SessionStatus, SessionTemplate } from '../../controller/api/types.js';
import { Keys } from '../../controller/controller/keys.js';
import { heartbeatMs } from '../../controller/frontend/events.js';
import { AnonymousOrHeaderAuthenticator } from '../../controller/frontend/auth.js';
import type { Authenticator, Identity } from '../../controller/frontend/identity.js';
import { Frontend, type FrontendOptions } from '../../controller/frontend/server.js';
import { CATCH_UP_TIMEOUT_MS } from '../../controller/frontend/sessions.js';
import { passcodeLabel, type ApiV2Options } from '../../controller/frontend/v2.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import type { Store } from '../../controller/store/store.js';
import { delayWhen, filter, firstValueFrom, from, lastValueFrom, of, Subject, take } from 'rxjs';
import { delegatingStore, laggingWatch } from '../support/controller-harness.js';
import { silentLogger } from '../../controller/util/log.js';
import { testExpiry } from '../support/frontend.js';
import { V2Socket } from '../support/v2-client.js';
import { waitFor } from '../support/wait.js';

const templates = loadTemplates(path.resolve(__dirname, '../../../manifests/templates'));
const keys = new Keys('manticore/');
const job = { core: { version: '8.2.0-ubuntu-update', build: 'default' }, hmi: { type: 'generic', version: 'minimal-0.13.0' } };
const v2: ApiV2Options = { address: { protocol: 'ws' } };

/** Says the caller is `portal-7`, proven, when the request carries `x-test-token: good`. */
class TestTokenAuthenticator implements Authenticator {
  identify(request: FastifyRequest): Identity {
    if (request.headers['x-test-token'] === 'good') return { user: 'portal-7', operator: false, verified: true };
    return { user: 'anonymous', operator: false };
  }
}

describe('front end: the v2 compatibility API', () => {
  let store: EmbeddedStore;
  const frontends: Frontend[] = [];
  let frontend: Frontend;
  let url: string;
  const now = Date.parse('2026-03-01T12:00:00.000Z');

  async function startFrontend(options: Partial<FrontendOptions> = {}): Promise<{ frontend: Frontend; url: string }> {
    const started = new Frontend({
      store,
      keys,
      templates,
      backend: 'nomad',
      bodyLimitBytes: 4096,
      sessionsPerUser: 2,
      activityWriteIntervalMs: 30_000,
      expiry: testExpiry,
      log: silentLogger(),
      now: () => now,
      v2,
      ...options,
    });
    frontends.push(started);
    return { frontend: started, url: await started.start('127.0.0.1', 0) };
  }

  beforeEach(async () => {
    store = EmbeddedStore.open(':memory:');
    ({ frontend, url } = await startFrontend());
  });
  afterEach(async () => {
    for (const started of frontends.splice(0)) await started.stop();
    await store.close();
  });

  const inject = async (method: 'GET' | 'POST' | 'DELETE' | 'OPTIONS', route: string, body?: unknown, headers: Record<string, string> = {}, on = frontend) => {
    const response = await on.app.inject({
      method,
      url: route,
      headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
      payload: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    return { status: response.statusCode, text: response.body, body: response.body ? JSON.parse(response.body) : undefined, headers: response.headers };
  };

  const storedSessions = async (): Promise<SessionRecord[]> => (await store.list(keys.sessions)).entries.map((entry) => JSON.parse(entry.value) as SessionRecord);
  const sessionOf = async (owner: string): Promise<SessionRecord> =>
    waitFor(`${owner}'s session`, async () => (await storedSessions()).find((record) => record.metadata.owner === owner));
  /** Waits until the front end's cache shows the session (a repeated POST or /info reads it from there). */
  const cached = (id: string, on = frontend) => waitFor(`the front end caches ${id}`, () => on.sessions.sessions.cache.get(id)?.value);

  it('GET /api/v2/job answers the job options from the sdl template', async () => {
    const { status, body } = await inject('GET', '/api/v2/job');
    assert.equal(status, 200);
    assert.deepEqual(body, { core: { versions: ['8.2.0-ubuntu-update'], builds: ['default'] }, hmis: [{ type: 'generic', versions: ['minimal-0.13.0'] }] });
  });

  it('POST /api/v2/job checks the body in v2’s order and answers 400 with v2’s messages', async () => {
    const cases: Array<[body: unknown, error: string]> = [
      [undefined, 'Invalid or missing id'],
      ['', 'Invalid or missing id'],
      [{ ...job }, 'Invalid or missing id'],
      [{ id: 3.5, ...job }, 'Invalid or missing id'],
      [{ id: 2 ** 60, ...job }, 'Invalid or missing id'],
      [{ id: '', ...job }, 'Invalid or missing id'],
      [{ id: 'has space', ...job }, 'Invalid or missing id'],
      [{ id: 'x'.repeat(257), ...job }, 'Invalid or missing id'],
      [{ id: 'bad/id' }, 'Invalid or missing id'],
      [['u1'], 'Invalid or missing id'],
      [{ id: 'u1' }, 'Request body is invalid'],
      [{ id: 'u1', core: job.core }, 'Request body is invalid'],
      [{ id: 'u1', core: null, hmi: job.hmi }, 'Request body is invalid'],
      [{ id: 'u1', core: 5, hmi: job.hmi }, 'Not a valid core version: undefined'],
      [{ id: 'u1', core: { version: '1.0', build: 'debug' }, hmi: { type: 'ford' } }, 'Not a valid core version: 1.0'],
      [{ id: 'u1', core: { version: 8.2, build: 'default' }, hmi: job.hmi }, 'Not a valid core version: 8.2'],
      [{ id: 'u1', core: { ...job.core, build: 'debug' }, hmi: { type: 'ford' } }, 'Not a valid core build option: debug'],
      [{ id: 'u1', core: job.core, hmi: { type: 'ford', version: 'x' } }, 'Not a valid hmi type: ford'],
      [{ id: 'u1', core: job.core, hmi: { type: ['generic'], version: 'x' } }, 'Not a valid hmi type: generic'],
      // Values JavaScript cannot turn into a string are shown as JSON, not answered 503.
      [{ id: 'u1', core: { version: { toString: 1 }, build: 'default' }, hmi: job.hmi }, 'Not a valid core version: {"toString":1}'],
      [{ id: 'u1', core: job.core, hmi: { type: [{ toString: 'x' }], version: 'x' } }, 'Not a valid hmi type: [{"toString":"x"}]'],
      [{ id: 'u1', core: job.core, hmi: { type: 'generic' } }, 'Not a valid hmi version: undefined'],
      [{ id: 'u1', core: job.core, hmi: { type: 'generic', version: 'minimal-0.5.1' } }, 'Not a valid hmi version: minimal-0.5.1'],
    ];
    for (const [body, error] of cases) {
      const answer = await inject('POST', '/api/v2/job', body);
      assert.equal(answer.status, 400, `${JSON.stringify(body)?.slice(0, 60)} → ${answer.text}`);
      assert.deepEqual(answer.body, { error }, JSON.stringify(body)?.slice(0, 60));
    }
    assert.deepEqual(await storedSessions(), []);
  });

  it('refuses a JSON body with a __proto__ or constructor.prototype key as v1 does, saying so', async () => {
    for (const body of ['{"id":"u1","__proto__":{"x":1}}', '{"id":"u1","core":{"constructor":{"prototype":{}}}}']) {
      const answer = await inject('POST', '/api/v2/job', body);
      assert.equal(answer.status, 400, answer.text);
      assert.equal(answer.body.error, 'the body may not contain a __proto__ or constructor.prototype key', answer.text);
      assert.equal(answer.body.details.length, 1, answer.text);
    }
    assert.deepEqual(await storedSessions(), []);
  });

  it('reads form-encoded bodies with bracketed names, as v2’s body parser did', async () => {
    const form = async (method: 'POST' | 'DELETE', route: string, body: string) => {
      const response = await frontend.app.inject({ method, url: route, headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: body });
      return { status: response.statusCode, body: response.body ? JSON.parse(response.body) : undefined };
    };
    const fields = 'core%5Bversion%5D=8.2.0-ubuntu-update&core[build]=default&hmi[type]=generic&hmi[version]=minimal-0.13.0';
    const created = await form('POST', '/api/v2/job', `id=dev-1&${fields}`);
    assert.equal(created.status, 200, JSON.stringify(created.body));
    assert.deepEqual((await sessionOf('dev-1')).spec.parameters, { coreVersion: '8.2.0-ubuntu-update', coreBuild: 'default', hmiType: 'generic', hmiVersion: 'minimal-0.13.0' });
    assert.deepEqual((await form('POST', '/api/v2/info', 'id=dev-1')).body, created.body);
    assert.deepEqual((await form('POST', '/api/v2/job', `id=dev-2&__proto__[core]=1&hmi[version]=x`)).body, { error: 'Request body is invalid' });
    assert.deepEqual((await form('POST', '/api/v2/job', 'id=has space')).body, { error: 'Invalid or missing id' });
    assert.equal((await form('DELETE', '/api/v2/job', 'id=dev-1')).status, 200);
    assert.ok((await sessionOf('dev-1')).metadata.deletionRequestedAt);
  });

  it('POST /api/v2/job creates one sdl session per user, labelled with its passcode; a repeated POST answers the same passcode', async () => {
    const answers = await Promise.all([1, 2, 3].map(() => inject('POST', '/api/v2/job', { id: 'dev-1', ...job, extra: 'ignored' })));
    for (const answer of answers) assert.equal(answer.status, 200, answer.text);
    const first = answers[0]!.body;
    assert.deepEqual(Object.keys(first).sort(), ['passcode', 'path', 'protocol'], 'no domain or port unless configured');
    assert.equal(first.path, '/api/v2/job/');
    assert.equal(first.protocol, 'ws');
    assert.match(first.passcode, /^[A-Za-z0-9]{16}$/);
    for (const answer of answers) assert.deepEqual(answer.body, first);

    const records = await storedSessions();
    assert.equal(records.length, 1);
    const record = records[0]!;
    assert.equal(record.metadata.owner, 'dev-1');
    assert.deepEqual(record.metadata.labels, { [passcodeLabel]: first.passcode });
    assert.deepEqual(record.spec, { template: 'sdl', parameters: { coreVersion: '8.2.0-ubuntu-update', coreBuild: 'default', hmiType: 'generic', hmiVersion: 'minimal-0.13.0' } });

    await cached(record.metadata.id);
    assert.deepEqual((await inject('POST', '/api/v2/job', { id: 'dev-1', ...job })).body, first);
    const other = await inject('POST', '/api/v2/job', { id: 'dev-2', ...job });
    assert.notEqual(other.body.passcode, first.passcode);
    assert.equal((await storedSessions()).length, 2);
  });

  it('answers a POST right after a DELETE with a new session, even before the watch shows the deletion; /info then answers 400', async () => {
    const lagging = laggingWatch(store, keys.sessions);
    const reads = new Subject<string>();
    const { frontend: lagged } = await startFrontend({ store: { ...lagging.store, get: (key) => (reads.next(key), lagging.store.get(key)) }, sessionsPerUser: 1 });
    const first = (await inject('POST', '/api/v2/job', { id: 'dev-1', ...job }, {}, lagged)).body.passcode as string;
    const deleted = await sessionOf('dev-1');
    await cached(deleted.metadata.id, lagged);

    // The deletion is in the store, but this front end's cache still shows the session live.
    lagging.hold();
    assert.equal((await inject('DELETE', '/api/v2/job', { id: 'dev-1' }, {}, lagged)).status, 200);
    const storeRead = firstValueFrom(reads.pipe(filter((key) => key === keys.session(deleted.metadata.id))));
    const info = inject('POST', '/api/v2/info', { id: 'dev-1' }, {}, lagged);
    const again = inject('POST', '/api/v2/job', { id: 'dev-1', ...job }, {}, lagged);
    // Answers given from the stale cache come before any read of the store; they must not.
    await Promise.race([storeRead, info, again]);
    lagging.release();

    assert.deepEqual((await info).body, { error: 'Invalid or missing id' });
    const answer = await again;
    assert.equal(answer.status, 200, answer.text);
    assert.notEqual(answer.body.passcode, first, 'not the passcode of the session being deleted');
    const live = (await storedSessions()).filter((record) => record.metadata.deletionRequestedAt === undefined);
    assert.deepEqual(live.map((record) => record.metadata.labels?.[passcodeLabel]), [answer.body.passcode]);
  });

  it('answers 503 rather than a passcode it cannot vouch for when its cache does not catch up with the store', async () => {
    const lagging = laggingWatch(store, keys.sessions);
    const { frontend: lagged } = await startFrontend({ store: lagging.store });
    await inject('POST', '/api/v2/job', { id: 'dev-1', ...job }, {}, lagged);
    await cached((await sessionOf('dev-1')).metadata.id, lagged);
    lagging.hold();
    assert.equal((await inject('DELETE', '/api/v2/job', { id: 'dev-1' }, {}, lagged)).status, 200);
    // Only the intervals are fake (rxjs times out with one): the store and the requests run on real time.
    const clock = sinon.useFakeTimers({ toFake: ['setInterval', 'clearInterval'], shouldClearNativeTimers: true });
    try {
      const again = inject('POST', '/api/v2/job', { id: 'dev-1', ...job }, {}, lagged);
      await waitFor('the wait for the cache to begin', () => clock.countTimers() === 1);
      clock.tick(CATCH_UP_TIMEOUT_MS);
      const answer = await again;
      assert.equal(answer.status, 503, answer.text);
      assert.match(answer.body.error, /has not yet seen the latest change to session "[a-z0-9]+"; try again/);
    } finally {
      clock.restore();
      lagging.release();
    }
  });

  it('takes an integer id, as v2’s wiki and job examples send it, as the same user as its decimal string', async () => {
    const created = await inject('POST', '/api/v2/job', { id: 3, ...job });
    assert.equal(created.status, 200, created.text);
    const record = await sessionOf('3');
    await cached(record.metadata.id);
    assert.deepEqual((await inject('POST', '/api/v2/job', { id: '3', ...job })).body, created.body);
    assert.deepEqual((await inject('POST', '/api/v2/info', { id: 3 })).body, created.body);
    assert.equal((await inject('DELETE', '/api/v2/job', { id: 3 })).status, 200);
    assert.ok((await sessionOf('3')).metadata.deletionRequestedAt);
  });

  it('handles a DELETE or /info sent while the user’s POST is still storing its session after that POST, as v2 applied them in order', async () => {
    let storing!: () => void;
    const stored = new Promise<void>((resolve) => (storing = resolve));
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    // The store takes the new session's record only when released.
    const slow: Store = { ...delegatingStore(store), put: async (key, value, options) => (options?.cas === 0 && key.startsWith(keys.sessions) ? (storing(), await released) : undefined, store.put(key, value, options)) };
    const asked = new Subject<string>();
    const anonymous = new AnonymousOrHeaderAuthenticator();
    const { frontend: slowed } = await startFrontend({ store: slow, authenticator: { identify: (request, reply) => (asked.next(`${request.method} ${request.url}`), anonymous.identify(request, reply)) } });

    const created = inject('POST', '/api/v2/job', { id: 'dev-1', ...job }, {}, slowed);
    await stored;
    const askedBoth = lastValueFrom(asked.pipe(filter((call) => call === 'POST /api/v2/info' || call === 'DELETE /api/v2/job'), take(2)));
    const info = inject('POST', '/api/v2/info', { id: 'dev-1' }, {}, slowed);
    const deleted = inject('DELETE', '/api/v2/job', { id: 'dev-1' }, {}, slowed);
    // Both have been read and know their user; only then may the record be stored.
    await askedBoth;
    release();

    const answer = await created;
    assert.equal(answer.status, 200, answer.text);
    assert.deepEqual((await info).body, answer.body);
    assert.equal((await deleted).status, 200);
    assert.ok((await sessionOf('dev-1')).metadata.deletionRequestedAt, 'the DELETE ended the session the POST made');
  });

  it('serves the websocket, /info, DELETE and a repeated POST on a replica whose cache has not yet shown a session created through another', async () => {
    const lagging = laggingWatch(store, keys.sessions);
    const indexReads = new Subject<void>();
    const { frontend: replica, url: replicaUrl } = await startFrontend({ store: { ...lagging.store, prefixIndex: (prefix) => (indexReads.next(), lagging.store.prefixIndex(prefix)) } });
    /** Created through the first front end while the replica's sessions watch is held back. */
    const createElsewhere = async (user: string): Promise<{ answer: { passcode: string }; id: string }> => {
      lagging.hold();
      const answer = (await inject('POST', '/api/v2/job', { id: user, ...job })).body;
      return { answer, id: (await sessionOf(user)).metadata.id };
    };

    const first = await createElsewhere('dev-1');
    // Refused from the stale cache at once, or checked against the store first.
    const checked = firstValueFrom(indexReads);
    const socket = await V2Socket.open(`${replicaUrl.replace(/^http/, 'ws')}/api/v2/job/${first.answer.passcode}`);
    await Promise.race([checked, socket.whenClosed()]);
    lagging.release();
    await store.put(keys.status(first.id), JSON.stringify({ phase: 'Waiting', queuePosition: 1, observedGeneration: 1, conditions: [], endpoints: {}, events: [] }));
    assert.deepEqual((await socket.nth(1)).data, { position: 0, wait: true }, JSON.stringify(socket.closed));
    socket.close();

    const second = await createElsewhere('dev-2');
    const infoChecked = firstValueFrom(indexReads);
    const info = inject('POST', '/api/v2/info', { id: 'dev-2' }, {}, replica);
    await Promise.race([infoChecked, info]);
    lagging.release();
    assert.deepEqual((await info).body, second.answer);

    await createElsewhere('dev-3');
    const deletedChecked = firstValueFrom(indexReads);
    const deleted = inject('DELETE', '/api/v2/job', { id: 'dev-3' }, {}, replica);
    await Promise.race([deletedChecked, deleted]);
    lagging.release();
    assert.equal((await deleted).status, 200);
    assert.ok((await sessionOf('dev-3')).metadata.deletionRequestedAt, 'the DELETE ended the session');

    const fourth = await createElsewhere('dev-4');
    const repeatChecked = firstValueFrom(indexReads);
    const repeated = inject('POST', '/api/v2/job', { id: 'dev-4', ...job }, {}, replica);
    await Promise.race([repeatChecked, repeated]);
    lagging.release();
    assert.deepEqual((await repeated).body, fourth.answer);
    assert.equal((await storedSessions()).filter((record) => record.metadata.owner === 'dev-4').length, 1, 'not created twice');
  });

  it('reads the store’s index once for the lookups that arrive together, however many', async () => {
    let reads = 0;
    const { frontend: counted } = await startFrontend({ store: { ...delegatingStore(store), prefixIndex: (prefix) => ((reads += 1), store.prefixIndex(prefix)) } });
    await Promise.all(Array.from({ length: 10 }, () => counted.sessions.catchUpAll()));
    assert.equal(reads, 1);
    await Promise.all(Array.from({ length: 10 }, () => counted.sessions.catchUpAll()));
    assert.equal(reads, 2, 'a lookup after a round has read the index needs a read of its own');
  });

  it('answers with the configured domain, port and protocol', async () => {
    const { frontend: configured } = await startFrontend({ v2: { ...v2, address: { domain: 'manticore.example.com', port: 443, protocol: 'wss' } } });
    const { status, body } = await inject('POST', '/api/v2/job', { id: 'dev-1', ...job }, {}, configured);
    assert.equal(status, 200);
    assert.deepEqual(body, { path: '/api/v2/job/', protocol: 'wss', passcode: body.passcode, port: 443, domain: 'manticore.example.com' });
  });

  it('answers wss when the edge has TLS (router.tls), as v2 did in its encrypted mode', async () => {
    const { frontend: encrypted } = await startFrontend({ v2: { ...v2, address: loadConfig(undefined, { MANTICORE_TLS_CERT_FILE: '/tls/cert.pem' }).frontend.v2 } });
    const { status, body } = await inject('POST', '/api/v2/job', { id: 'dev-1', ...job }, {}, encrypted);
    assert.equal(status, 200);
    assert.deepEqual(body, { path: '/api/v2/job/', protocol: 'wss', passcode: body.passcode });
  });

  it('acts for a verified identity whatever the body says, and for the body’s id otherwise', async () => {
    const { frontend: withTokens } = await startFrontend({ authenticator: new TestTokenAuthenticator() });
    const token = { 'x-test-token': 'good' };
    const created = await inject('POST', '/api/v2/job', { id: 'someone-else', ...job }, token, withTokens);
    assert.equal(created.status, 200, created.text);
    const record = await sessionOf('portal-7');
    assert.equal((await storedSessions()).length, 1, 'nothing for someone-else');
    await cached(record.metadata.id, withTokens);
    // The body's id is not even needed.
    assert.deepEqual((await inject('POST', '/api/v2/info', {}, token, withTokens)).body, created.body);
    assert.deepEqual((await inject('POST', '/api/v2/job', job, token, withTokens)).body, created.body);
    assert.equal((await inject('DELETE', '/api/v2/job', {}, token, withTokens)).status, 200);
    await waitFor('the deletion', async () => (await sessionOf('portal-7')).metadata.deletionRequestedAt);

    // Merely naming oneself (the X-Manticore-User header) does not override v2's id.
    await inject('POST', '/api/v2/job', { id: 'dev-3', ...job }, { 'x-manticore-user': 'mallory' });
    assert.equal((await sessionOf('dev-3')).spec.template, 'sdl');
    assert.equal((await storedSessions()).some((stored) => stored.metadata.owner === 'mallory'), false);
  });

  it('POST /api/v2/info answers like POST /job for the user’s live session, else 400', async () => {
    assert.deepEqual((await inject('POST', '/api/v2/info', { id: 3 })).body, { error: 'Invalid or missing id' });
    const nobody = await inject('POST', '/api/v2/info', { id: 'nobody' });
    assert.equal(nobody.status, 400);
    assert.deepEqual(nobody.body, { error: 'Invalid or missing id' });

    const created = (await inject('POST', '/api/v2/job', { id: 'dev-1', ...job })).body;
    const info = await inject('POST', '/api/v2/info', { id: 'dev-1' });
    assert.equal(info.status, 200, 'known at once in the process that created it');
    assert.deepEqual(info.body, created);

    // Another replica knows it as soon as its cache shows the record.
    const { frontend: replica } = await startFrontend();
    await cached((await sessionOf('dev-1')).metadata.id, replica);
    assert.deepEqual((await inject('POST', '/api/v2/info', { id: 'dev-1' }, {}, replica)).body, created);

    await inject('DELETE', '/api/v2/job', { id: 'dev-1' });
    await waitFor('a deleted job is no longer live', async () => (await inject('POST', '/api/v2/info', { id: 'dev-1' })).status === 400);
  });

  it('DELETE /api/v2/job ends the user’s v2 sessions, answers 200 with an empty body even when there is none, 400 for a bad id', async () => {
    assert.deepEqual((await inject('DELETE', '/api/v2/job', { id: 'no way' })).body, { error: 'Invalid or missing id' });
    assert.equal((await inject('DELETE', '/api/v2/job')).status, 400);
    const none = await inject('DELETE', '/api/v2/job', { id: 'nobody' });
    assert.equal(none.status, 200);
    assert.equal(none.text, '');

    const v1 = await inject('POST', '/api/v1/sessions', { template: 'demo' }, { 'x-manticore-user': 'dev-1' });
    assert.equal(v1.status, 201);
    await inject('POST', '/api/v2/job', { id: 'dev-1', ...job });
    const deleted = await inject('DELETE', '/api/v2/job', { id: 'dev-1' });
    assert.equal(deleted.status, 200);
    assert.equal(deleted.text, '');
    const records = await storedSessions();
    assert.ok(records.find((record) => record.spec.template === 'sdl')!.metadata.deletionRequestedAt);
    assert.equal(records.find((record) => record.spec.template === 'demo')!.metadata.deletionRequestedAt, undefined, 'a session the v2 API did not hand out is not its to end');
    assert.equal((await inject('DELETE', '/api/v2/job', { id: 'dev-1' })).status, 200, 'deleting twice is harmless');
  });

  it('answers 404 with the reason on every v2 route when the sdl template cannot run here, does not exist or lacks a parameter', async () => {
    const { frontend: embedded } = await startFrontend({ backend: 'embedded' });
    const demoOnly = new Map<string, SessionTemplate>([['demo', templates.get('demo')!]]);
    const { frontend: withoutSdl } = await startFrontend({ templates: demoOnly });
    const sdl = templates.get('sdl')!;
    const withoutHmiVersion: SessionTemplate = { ...sdl, spec: { ...sdl.spec, parameters: sdl.spec.parameters.filter((parameter) => parameter.name !== 'hmiVersion') } };
    const { frontend: incomplete } = await startFrontend({ templates: new Map([['sdl', withoutHmiVersion]]) });
    const routes: Array<['GET' | 'POST' | 'DELETE', string, unknown]> = [
      ['GET', '/api/v2/job', undefined],
      ['POST', '/api/v2/job', { id: 'dev-1', ...job }],
      ['DELETE', '/api/v2/job', { id: 'dev-1' }],
      ['POST', '/api/v2/info', { id: 'dev-1' }],
    ];
    for (const [on, reason] of [
      [embedded, /runs only on the nomad backend/],
      [withoutSdl, /no "sdl" template/],
      [incomplete, /template "sdl" has no parameter "hmiVersion"/],
    ] as const) {
      for (const [method, route, body] of routes) {
        const answer = await inject(method, route, body, {}, on);
        assert.equal(answer.status, 404, `${method} ${route}`);
        assert.deepEqual(Object.keys(answer.body), ['error'], 'v2’s error shape');
        assert.match(answer.body.error, reason);
      }
    }
    assert.deepEqual(await storedSessions(), []);
  });

  it('leaves other refusals to the front end: the per-user limit answers 409 as in v1', async () => {
    const { frontend: onePerUser } = await startFrontend({ sessionsPerUser: 1 });
    assert.equal((await inject('POST', '/api/v1/sessions', { template: 'demo' }, { 'x-manticore-user': 'dev-9' }, onePerUser)).status, 201);
    const refused = await inject('POST', '/api/v2/job', { id: 'dev-9', ...job }, { origin: 'https://portal.example.com' }, onePerUser);
    assert.equal(refused.status, 409);
    assert.match(refused.body.error, /user dev-9 already has 1 session/);
    assert.equal(refused.body.existing.length, 1);
    assert.equal(refused.headers['access-control-allow-origin'], 'https://portal.example.com');
  });

  it('limits each v2 id’s request rate like a v1 user’s, though a v2 client sends no cookie or user header', async () => {
    const { frontend: limited } = await startFrontend({ rateLimit: { requestsPerSecond: 1, burst: 2 } });
    for (let n = 0; n < 2; n += 1) assert.equal((await inject('POST', '/api/v2/job', { id: 'dev-1', ...job }, {}, limited)).status, 200);
    const refused = await inject('POST', '/api/v2/info', { id: 'dev-1' }, {}, limited);
    assert.equal(refused.status, 429, refused.text);
    assert.ok(refused.headers['retry-after']);
    assert.equal((await inject('DELETE', '/api/v2/job', { id: 'dev-1' }, {}, limited)).status, 429);
    assert.equal((await inject('POST', '/api/v2/info', { id: 'dev-2' }, {}, limited)).status, 400, 'another id has its own bucket');
  });

  it('allows cross-origin calls on /api/v2 only: reflects the Origin and answers preflights with 204', async () => {
    const origin = { origin: 'https://portal.example.com' };
    const preflight = await inject('OPTIONS', '/api/v2/job', undefined, { ...origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type, authorization' });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers['access-control-allow-origin'], 'https://portal.example.com');
    assert.equal(preflight.headers['access-control-allow-headers'], 'content-type, authorization');
    assert.match(String(preflight.headers['access-control-allow-methods']), /POST/);
    assert.match(String(preflight.headers['access-control-allow-methods']), /DELETE/);
    // Whatever headers a page asks to send, as v2's koa-cors allowed them (a portal may add its own, e.g. a CSRF token).
    const ownHeaders = await inject('OPTIONS', '/api/v2/job', undefined, { ...origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type,x-csrf-token' });
    assert.equal(ownHeaders.headers['access-control-allow-headers'], 'content-type,x-csrf-token');

    const created = await inject('POST', '/api/v2/job', { id: 'dev-1', ...job }, origin);
    assert.equal(created.headers['access-control-allow-origin'], 'https://portal.example.com');
    assert.equal(created.headers.vary, 'Origin');
    const refused = await inject('POST', '/api/v2/job', { id: 'dev-1' }, origin);
    assert.equal(refused.status, 400);
    assert.equal(refused.headers['access-control-allow-origin'], 'https://portal.example.com', 'errors can be read cross-origin too');
    assert.equal((await inject('GET', '/api/v2/job')).headers['access-control-allow-origin'], undefined, 'nothing without an Origin');
    // A wrong path or method is told so, readably cross-origin: not a CORS failure that hides the status.
    const unknown = await inject('GET', '/api/v2/jobs', undefined, origin);
    assert.deepEqual([unknown.status, unknown.body.error, unknown.headers['access-control-allow-origin']], [404, 'no route GET /api/v2/jobs', 'https://portal.example.com']);
    const wrongMethod = await inject('DELETE', '/api/v2/info', undefined, origin);
    assert.deepEqual([wrongMethod.status, wrongMethod.headers.allow, wrongMethod.headers['access-control-allow-origin']], [405, 'OPTIONS, POST', 'https://portal.example.com']);

    assert.equal((await inject('GET', '/api/v1/templates', undefined, origin)).headers['access-control-allow-origin'], undefined);
    const v1Preflight = await inject('OPTIONS', '/api/v1/sessions', undefined, { ...origin, 'access-control-request-method': 'POST' });
    assert.deepEqual([v1Preflight.status, v1Preflight.headers.allow, v1Preflight.headers['access-control-allow-origin']], [405, 'GET, HEAD, POST', undefined]);
  });

  describe('the job websocket', () => {
    let passcode: string;
    let id: string;
    let conditionTime = Date.parse('2026-03-01T12:00:00.000Z');

    beforeEach(async () => {
      passcode = (await inject('POST', '/api/v2/job', { id: 'dev-1', ...job })).body.passcode;
      id = (await sessionOf('dev-1')).metadata.id;
    });

    const socketUrl = (code: string) => `${url.replace(/^http/, 'ws')}/api/v2/job/${code}`;
    /** Writes the session's status as the controller would. */
    const writeStatus = async (status: Partial<SessionStatus>) => {
      const full: SessionStatus = { phase: 'Pending', observedGeneration: 1, conditions: [], endpoints: {}, events: [], ...status };
      await store.put(keys.status(id), JSON.stringify(full));
    };
    const warning = (reason: 'Idle' | 'MaxLifetime' | 'Active', at = conditionTime): Condition => ({
      type: 'IdleWarning',
      status: reason === 'Active' ? 'False' : 'True',
      reason,
      message: 'm',
      lastTransitionTime: new Date(at).toISOString(),
    });
    const endpoints: SessionStatus['endpoints'] = {
      broker: { protocol: 'ws', url: 'ws://b.example.com/' },
      tcp: { protocol: 'tcp', url: 'tcp://apps.example.com:20017' },
      file: { protocol: 'http', url: 'http://f.example.com/' },
      log: { protocol: 'ws', url: 'ws://l.example.com/' },
      policy: { protocol: 'http', url: 'http://p.example.com/' },
      'ws-server': { protocol: 'ws', url: 'ws://w.example.com/' },
      store: { protocol: 'http', url: 'http://s.example.com/' },
      python: { protocol: 'ws', url: 'ws://py.example.com/' },
      hmi: { protocol: 'http', url: 'http://h.example.com/' },
    };

    it('gives the addresses of a session behind TLS as they are, as origins without a trailing slash as v2 gave them, and core-tcp as host:port', async () => {
      const client = await V2Socket.open(socketUrl(passcode));
      await writeStatus({
        phase: 'Ready',
        endpoints: {
          broker: { protocol: 'ws', url: 'wss://b.example.com/', tls: true },
          tcp: { protocol: 'tcp', url: 'tls://apps.example.com:20017', tls: true },
          hmi: { protocol: 'http', url: 'https://h.example.com/', tls: true },
        },
      });
      assert.deepEqual((await client.next('services', 0)).data, { 'core-broker': 'wss://b.example.com', 'core-tcp': 'apps.example.com:20017', 'hmi-user': 'https://h.example.com' });
      client.close();
    });

    it('follows a session created a moment ago that the watch has not shown yet, instead of telling `dead`', async () => {
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      // After its first listing, this front end's sessions watch lags until released, as a Consul watch can.
      const lagging: Store = {
        ...delegatingStore(store),
        watch: (prefix, index) => (prefix === keys.sessions ? store.watch(prefix, index).pipe(delayWhen((_step, n) => (n === 0 ? of(0) : from(released)))) : store.watch(prefix, index)),
      };
      const { frontend: lagged, url: laggedUrl } = await startFrontend({ store: lagging });
      const fresh = (await inject('POST', '/api/v2/job', { id: 'dev-2', ...job }, {}, lagged)).body.passcode as string;
      const client = await V2Socket.open(`${laggedUrl.replace(/^http/, 'ws')}/api/v2/job/${fresh}`);
      release();
      id = (await sessionOf('dev-2')).metadata.id;
      await writeStatus({ phase: 'Waiting', queuePosition: 1 });
      await client.nth(1);
      assert.deepEqual(client.messages, [{ type: 'position', data: { position: 0, wait: true } }]);
      client.close();
    });

    it('closes at once for an unknown passcode, and refuses upgrades elsewhere', async () => {
      const unknown = await V2Socket.open(socketUrl('AAAAAAAAAAAAAAAA'));
      assert.deepEqual(await unknown.whenClosed(), { code: 1008, reason: 'unknown passcode' });
      assert.deepEqual(unknown.messages, []);
      await assert.rejects(V2Socket.open(`${url.replace(/^http/, 'ws')}/api/v1/sessions`), /HTTP 404/);
    });

    it('survives a connection that fails after its upgrade was refused (a client that resets it)', async () => {
      for (const route of ['/api/v1/sessions', '/api/v2/jobs/x']) {
        const socket = new PassThrough();
        frontend.app.server.emit('upgrade', { url: route, headers: {} }, socket, Buffer.alloc(0));
        // Node's HTTP server leaves an upgraded connection without an 'error' listener: one missing throws (and would crash the process).
        assert.doesNotThrow(() => socket.emit('error', Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' })), route);
      }
    });

    it('survives a client that breaks the protocol on a socket it is refusing for an unknown passcode', async () => {
      const port = new URL(url).port;
      const raw = net.connect(Number(port), '127.0.0.1');
      const closed = new Promise<void>((resolve) => raw.on('close', () => resolve()));
      raw.on('error', () => undefined).resume();
      const upgrade = ['GET /api/v2/job/AAAAAAAAAAAAAAAA HTTP/1.1', 'Host: 127.0.0.1', 'Connection: Upgrade', 'Upgrade: websocket', 'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', '', ''];
      // Right behind the handshake, a text frame without the mask every client frame must have.
      raw.end(Buffer.concat([Buffer.from(upgrade.join('\r\n')), Buffer.from([0x81, 0x01, 0x41])]));
      await closed;
      // The front end still answers (an unhandled 'error' would have thrown, failing this test).
      assert.equal((await inject('GET', '/api/v2/job')).status, 200);
    });

    it('sends position while waiting and once admitted, services once Ready, one activity per idle warning, and dead at the end', async () => {
      const client = await V2Socket.open(socketUrl(passcode));
      await writeStatus({ phase: 'Waiting', queuePosition: 3 });
      assert.deepEqual((await client.nth(1)).data, { position: 2, wait: true });
      await writeStatus({ phase: 'Waiting', queuePosition: 3, events: [{ time: new Date(now).toISOString(), reason: 'Queued', message: 'm' }] });
      await writeStatus({ phase: 'Waiting', queuePosition: 1 });
      await writeStatus({ phase: 'Starting' });
      await writeStatus({ phase: 'Ready', endpoints });
      await client.nth(4);
      assert.deepEqual(client.messages.slice(0, 4), [
        { type: 'position', data: { position: 2, wait: true } },
        { type: 'position', data: { position: 0, wait: true } },
        { type: 'position', data: { position: 0, wait: false } },
        {
          type: 'services',
          data: {
            'core-broker': 'ws://b.example.com',
            'core-tcp': 'apps.example.com:20017',
            'core-file': 'http://f.example.com',
            'core-log': 'ws://l.example.com',
            'core-policy': 'http://p.example.com',
            'core-ws-server': 'ws://w.example.com',
            'core-store': 'http://s.example.com',
            'core-python': 'ws://py.example.com',
            'hmi-user': 'http://h.example.com',
          },
        },
      ]);

      // A warning is announced once, however often the status is rewritten while it lasts.
      await writeStatus({ phase: 'Ready', endpoints, conditions: [warning('Idle')] });
      await writeStatus({ phase: 'Ready', endpoints, conditions: [{ ...warning('Idle'), message: 'rewritten' }] });
      // Activity answers it: stored at once, even within the write interval.
      await client.next('activity', 4);
      client.send({ type: 'activity' });
      await waitFor('the activity record', () => store.get(keys.activity(id)));
      // A lifetime warning cannot be answered, so v2 clients are not asked to; the next idle warning is announced.
      await writeStatus({ phase: 'Ready', endpoints, conditions: [warning('Active')] });
      await writeStatus({ phase: 'Ready', endpoints, conditions: [warning('MaxLifetime', (conditionTime += 60_000))] });
      await writeStatus({ phase: 'Ready', endpoints, conditions: [warning('Idle', (conditionTime += 60_000))] });
      await client.nth(6);
      assert.deepEqual(client.messages.slice(4), [
        { type: 'activity', data: { inactivityTime: 1500, remainingTime: 300 } },
        { type: 'activity', data: { inactivityTime: 1500, remainingTime: 300 } },
      ]);

      // A second connection (here, or on any replica) starts with the current state.
      const again = await V2Socket.open(socketUrl(passcode));
      await again.nth(3);
      assert.deepEqual(again.types, ['position', 'services', 'activity']);
      assert.deepEqual(again.messages[0]!.data, { position: 0, wait: false });

      assert.equal((await inject('DELETE', '/api/v2/job', { id: 'dev-1' })).status, 200);
      for (const socket of [client, again]) {
        assert.deepEqual(await socket.whenClosed(), { code: 1000, reason: 'the session has ended' });
        assert.equal(socket.types.at(-1), 'dead');
        assert.deepEqual(socket.messages.at(-1)!.data, {});
      }
      assert.deepEqual(client.types, ['position', 'position', 'position', 'services', 'activity', 'activity', 'dead']);

      // A passcode of a session that is ending answers dead at once.
      const late = await V2Socket.open(socketUrl(passcode));
      assert.equal((await late.whenClosed()).code, 1000);
      assert.deepEqual(late.types, ['dead']);
    });

    it('tells a client that connects during an idle warning the time that is left, not the whole warning', async () => {
      await writeStatus({ phase: 'Ready', endpoints, expiresAt: new Date(now + 42_000).toISOString(), conditions: [warning('Idle')] });
      const client = await V2Socket.open(socketUrl(passcode));
      assert.deepEqual((await client.next('activity', 0)).data, { inactivityTime: 1758, remainingTime: 42 });
      client.close();
    });

    it("tells a client the idle time so far from the session's own idle timeout", async () => {
      // v2 clients cannot ask for one, but the record may hold one (written by an operator, say).
      const entry = (await store.get(keys.session(id)))!;
      const record = JSON.parse(entry.value) as SessionRecord;
      record.spec.idle = { timeoutSeconds: 600 };
      assert.equal(await store.put(keys.session(id), JSON.stringify(record), { cas: entry.modifyIndex }), true);
      await waitFor('the front end caches its idle timeout', () => frontend.sessions.sessions.cache.get(id)?.value?.spec.idle);
      await writeStatus({ phase: 'Ready', endpoints, expiresAt: new Date(now + 42_000).toISOString(), conditions: [warning('Idle')] });
      const client = await V2Socket.open(socketUrl(passcode));
      assert.deepEqual((await client.next('activity', 0)).data, { inactivityTime: 558, remainingTime: 42 });
      client.close();
    });

    it('pings every socket so proxies keep a quiet one open, and cuts a client that stops answering', async () => {
      // Only the intervals are fake: the sockets, the store and waitFor run on real time.
      const clock = sinon.useFakeTimers({ toFake: ['setInterval', 'clearInterval'], shouldClearNativeTimers: true });
      try {
        const open = async (autoPong: boolean) => {
          const socket = new WebSocket(socketUrl(passcode), { autoPong });
          const seen = { pings: 0, messages: 0, closed: undefined as number | undefined };
          socket.on('ping', () => (seen.pings += 1));
          socket.on('message', () => (seen.messages += 1));
          socket.on('close', (code) => (seen.closed = code));
          await new Promise((resolve, reject) => socket.once('open', resolve).once('error', reject));
          return { socket, seen };
        };
        const answering = await open(true);
        const silent = await open(false);
        await writeStatus({ phase: 'Waiting', queuePosition: 2 });
        await waitFor('the position on both sockets', () => answering.seen.messages === 1 && silent.seen.messages === 1);

        clock.tick(heartbeatMs);
        await waitFor('a ping on both sockets', () => answering.seen.pings === 1 && silent.seen.pings === 1, 2000);
        // Frames arrive in order: once this message is handled, so is the pong sent before it.
        answering.socket.send(JSON.stringify({ type: 'activity' }));
        await waitFor('the activity record', () => store.get(keys.activity(id)));

        clock.tick(heartbeatMs);
        assert.equal(await waitFor('the silent client cut', () => silent.seen.closed, 2000), 1006);
        await waitFor('another ping for the client that answered', () => answering.seen.pings === 2, 2000);
        assert.equal(answering.seen.closed, undefined);

        answering.socket.close();
        await waitFor('every ping stopped with its socket', () => clock.countTimers() === 0);
      } finally {
        clock.restore();
      }
    });

    it('records activity for {"type":"activity"} only, ignoring anything else the client sends', async () => {
      const keepalives: string[] = [];
      const keepalive = frontend.sessions.keepalive.bind(frontend.sessions);
      frontend.sessions.keepalive = (identity, sessionId) => {
        keepalives.push(`${identity.user} ${sessionId}`);
        return keepalive(identity, sessionId);
      };
      await writeStatus({ phase: 'Ready', endpoints });
      const client = await V2Socket.open(socketUrl(passcode));
      await client.nth(2);
      client.send({ type: 'other' });
      client.send('not json');
      client.send([{ type: 'activity' }]);
      client.send({ type: 'activity' });
      // Messages are handled in order: once the last is recorded, the others were ignored.
      await waitFor('the activity record', () => store.get(keys.activity(id)));
      assert.deepEqual(keepalives, [`dev-1 ${id}`]);
      assert.equal(client.closed, undefined);
    });

    it('tells dead when the session is Failed or gone', async () => {
      const client = await V2Socket.open(socketUrl(passcode));
      await writeStatus({ phase: 'Failed' });
      assert.equal((await client.whenClosed()).code, 1000);
      assert.deepEqual(client.types, ['dead']);

      const gone = await V2Socket.open(socketUrl(passcode));
      await gone.whenClosed();
      await store.delete(keys.session(id));
      await waitFor('the passcode is forgotten with its session', async () => {
        const socket = await V2Socket.open(socketUrl(passcode));
        return (await socket.whenClosed()).code === 1008;
      });
    });

    it('counts job sockets among the owner’s status streams: one beyond the limit is closed with 1008 saying why', async () => {
      const { url: limitedUrl } = await startFrontend({ statusStreamsPerUser: 1 });
      const jobUrl = `${limitedUrl.replace(/^http/, 'ws')}/api/v2/job/${passcode}`;
      await writeStatus({ phase: 'Waiting', queuePosition: 1 });
      /** The socket once it has its first message, or undefined once it was closed without one. */
      const admitted = async (): Promise<V2Socket | undefined> => {
        const socket = await V2Socket.open(jobUrl);
        await waitFor('a message or the close', () => socket.messages.length > 0 || socket.closed !== undefined);
        return socket.messages.length > 0 ? socket : undefined;
      };
      const first = await admitted();
      assert.ok(first !== undefined);
      const second = await V2Socket.open(jobUrl);
      assert.deepEqual(await second.whenClosed(), { code: 1008, reason: 'too many status streams open for this user (at most 1); close one first' });
      assert.deepEqual(second.messages, []);
      // The owner's v1 event stream counts against the same limit.
      const v1Status = await new Promise<number>((resolve, reject) => {
        const request = http.get(`${limitedUrl}/api/v1/sessions/${id}/events`, { headers: { 'x-manticore-user': 'dev-1' } }, (response) => {
          resolve(response.statusCode ?? 0);
          request.destroy();
        });
        request.on('error', reject);
      });
      assert.equal(v1Status, 429);

      first.close();
      const again = await waitFor('a socket let in once the first closed', admitted);
      again.close();
    });

    it('closes every job socket with a reason when the front end stops', async () => {
      const client = await V2Socket.open(socketUrl(passcode));
      await frontend.stop();
      frontends.splice(frontends.indexOf(frontend), 1);
      assert.deepEqual(await client.whenClosed(), { code: 1001, reason: 'the server is shutting down' });
    });
  });
});
