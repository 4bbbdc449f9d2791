import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { loadTemplates } from '../../controller/api/templates.js';
import type { Session, SessionRecord } from '../../controller/api/types.js';
import { Keys } from '../../controller/controller/keys.js';
import { Frontend, REQUEST_TIMEOUT_MS } from '../../controller/frontend/server.js';
import { registry } from '../../controller/metrics/metrics.js';
import type { Counter } from 'prom-client';
import { defer, filter, finalize } from 'rxjs';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import type { Store } from '../../controller/store/store.js';
import { silentLogger } from '../../controller/util/log.js';
import { capturingLogger, delegatingStore } from '../support/controller-harness.js';
import { testExpiry, testFrontend } from '../support/frontend.js';
import { waitFor } from '../support/wait.js';

const templates = loadTemplates(path.resolve(__dirname, '../../../manifests/templates'));
const keys = new Keys('manticore/');

describe('front end (API)', () => {
  let store: EmbeddedStore;
  let frontend: Frontend;
  /** The front end's clock, moved by the tests that need time to pass. */
  let now: number;

  beforeEach(async () => {
    store = EmbeddedStore.open(':memory:');
    now = Date.parse('2026-03-01T12:00:00.000Z');
    frontend = new Frontend({
      store,
      keys,
      templates,
      backend: 'embedded',
      bodyLimitBytes: 4096,
      sessionsPerUser: 2,
      activityWriteIntervalMs: 30_000,
      expiry: { idleTimeoutMs: 1_800_000, idleMaxTimeoutMs: 1_800_000, idleWarningMs: 300_000, maxLifetimeMs: 3_600_000 },
      log: silentLogger(),
      now: () => now,
    });
    await frontend.start('127.0.0.1', 0);
  });
  afterEach(async () => {
    await frontend.stop();
    await store.close();
  });

  const inject = async (method: 'GET' | 'POST' | 'DELETE', url: string, body?: unknown, headers: Record<string, string> = {}) => {
    const response = await frontend.app.inject({
      method,
      url,
      headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
      payload: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    return { status: response.statusCode, body: response.body ? JSON.parse(response.body) : undefined, headers: response.headers };
  };

  it('creates a session record with defaults, the caller as owner, and a Pending status', async () => {
    const { status, body, headers } = await inject('POST', '/api/v1/sessions', { template: 'demo', parameters: { coreVersion: '8.1.0' } }, { 'x-manticore-user': 'carol' });
    assert.equal(status, 201);
    const session = body as Session;
    assert.equal(headers.location, `/api/v1/sessions/${session.metadata.id}`);
    assert.equal(session.metadata.owner, 'carol');
    assert.equal(session.metadata.generation, 1);
    assert.deepEqual(session.spec, { template: 'demo', parameters: { coreVersion: '8.1.0', hmiType: 'generic' } });
    assert.equal(session.status.phase, 'Pending');
    const stored = JSON.parse((await store.get(keys.session(session.metadata.id)))!.value) as SessionRecord;
    assert.deepEqual(stored, { metadata: session.metadata, spec: session.spec });
  });

  it('gives a client a bounded time to send its whole request, so a body trickled a byte at a time cannot hold a connection', () => {
    // Node enforces it (408, then the connection closes); 0 would turn it off, as Fastify's default does.
    assert.ok(REQUEST_TIMEOUT_MS > 0 && REQUEST_TIMEOUT_MS <= 60_000);
    assert.equal(frontend.app.server.requestTimeout, REQUEST_TIMEOUT_MS);
    assert.ok(frontend.app.server.headersTimeout > 0);
  });

  it('names a caller without the header by an anonymous id', async () => {
    const { body } = await inject('POST', '/api/v1/sessions', { template: 'demo' });
    assert.match((body as Session).metadata.owner, /^anon-[a-z2-7]{26}$/);
  });

  it('answers bad input with 4xx and { error, details } and stores nothing', async () => {
    const cases: Array<[unknown, Record<string, string>, number, RegExp]> = [
      [{ template: 'nope' }, {}, 400, /\/template: must be one of demo, sdl/],
      [{ template: 'demo', parameters: { coreVersion: 7 } }, {}, 400, /\/body\/parameters\/coreVersion: must be string/],
      [{ template: 'demo', parameters: { hmiType: 'ford' } }, {}, 400, /\/parameters\/hmiType: "ford" is not one of generic/],
      [{ template: 'sdl' }, {}, 400, /runs only on the nomad backend/],
      [{ template: 'demo', labels: { 'bad key!': 'x' } }, {}, 400, /\/metadata\/labels/],
      [{ template: 'demo', labels: { 'v2-passcode': 'AAAAAAAAAAAAAAAA' } }, {}, 400, /reserved for the v2 API/],
      [[1, 2], {}, 400, /must be object/],
      ['not json', {}, 400, /JSON/i],
      [{ template: 'demo', padding: 'x'.repeat(5000) }, {}, 413, /too large/i],
      [{ template: 'demo' }, { 'x-manticore-user': 'has space' }, 400, /X-Manticore-User/],
    ];
    for (const [body, headers, expected, message] of cases) {
      const answer = await inject('POST', '/api/v1/sessions', body, headers);
      assert.equal(answer.status, expected, `${JSON.stringify(body).slice(0, 80)} → ${JSON.stringify(answer.body)}`);
      assert.equal(typeof answer.body.error, 'string');
      assert.ok(Array.isArray(answer.body.details));
      assert.match(`${answer.body.error} ${answer.body.details.join(' ')}`, message);
    }
    const wrongType = await frontend.app.inject({ method: 'POST', url: '/api/v1/sessions', headers: { 'content-type': 'text/plain' }, payload: 'x' });
    assert.equal(wrongType.statusCode, 415);
    assert.equal((await store.list(keys.sessions)).entries.length, 0);
  });

  it('refuses a body with a __proto__ or constructor.prototype key, saying so and where, while malformed JSON keeps its own message', async () => {
    const refused = 'the body may not contain a __proto__ or constructor.prototype key';
    const cases: Array<[string, string]> = [
      ['{"template":"demo","__proto__":{"x":1}}', '/body/__proto__'],
      ['{"template":"demo","labels":{"a":"b","constructor":{"prototype":{"x":1}}}}', '/body/labels/constructor/prototype'],
      ['[{"template":"demo"},{"__proto__":null}]', '/body/1/__proto__'],
    ];
    for (const [body, where] of cases) {
      const answer = await inject('POST', '/api/v1/sessions', body);
      assert.deepEqual([answer.status, answer.body], [400, { error: refused, details: [`${where}: not allowed`] }], body);
    }
    const malformed = await inject('POST', '/api/v1/sessions', '{"template":"demo",');
    assert.deepEqual([malformed.status, malformed.body.error], [400, "Body is not valid JSON but content-type is set to 'application/json'"]);
    assert.equal((await store.list(keys.sessions)).entries.length, 0);
    // A key merely named constructor is data like any other.
    const plain = await inject('POST', '/api/v1/sessions', { template: 'demo', labels: { constructor: 'x' } });
    assert.equal(plain.status, 201, JSON.stringify(plain.body));
  });

  it('shows, lists and deletes only the caller’s own sessions', async () => {
    const mine = (await inject('POST', '/api/v1/sessions', { template: 'demo' }, { 'x-manticore-user': 'dave' })).body as Session;
    const theirs = (await inject('POST', '/api/v1/sessions', { template: 'demo' }, { 'x-manticore-user': 'erin' })).body as Session;
    assert.equal((await inject('GET', `/api/v1/sessions/${mine.metadata.id}`, undefined, { 'x-manticore-user': 'dave' })).status, 200);
    const hidden = await inject('GET', `/api/v1/sessions/${theirs.metadata.id}`, undefined, { 'x-manticore-user': 'dave' });
    assert.equal(hidden.status, 404);
    assert.equal(hidden.body.error, `session "${theirs.metadata.id}" not found`);
    assert.equal((await inject('DELETE', `/api/v1/sessions/${theirs.metadata.id}`, undefined, { 'x-manticore-user': 'dave' })).status, 404);

    const listed = await waitFor('list shows the session', async () => {
      const { body } = await inject('GET', '/api/v1/sessions', undefined, { 'x-manticore-user': 'dave' });
      return body.items.length > 0 ? (body.items as Session[]) : undefined;
    });
    assert.deepEqual(listed.map((s) => s.metadata.id), [mine.metadata.id]);

    const deleted = await inject('DELETE', `/api/v1/sessions/${mine.metadata.id}`, undefined, { 'x-manticore-user': 'dave' });
    assert.equal(deleted.status, 202);
    assert.ok((deleted.body as Session).metadata.deletionRequestedAt);
    const again = await inject('DELETE', `/api/v1/sessions/${mine.metadata.id}`, undefined, { 'x-manticore-user': 'dave' });
    assert.equal(again.status, 202, 'deleting twice is harmless');
    assert.equal(again.body.metadata.deletionRequestedAt, deleted.body.metadata.deletionRequestedAt);
    const untouched = JSON.parse((await store.get(keys.session(theirs.metadata.id)))!.value) as SessionRecord;
    assert.equal(untouched.metadata.deletionRequestedAt, undefined);
  });

  it('answers 404 for malformed ids and unknown routes, and the API’s shape for paths the router refuses', async () => {
    assert.equal((await inject('GET', '/api/v1/sessions/..%2F..%2Fetc')).status, 404);
    assert.equal((await inject('GET', '/api/v1/sessions/UPPERCASE1')).status, 404);
    const overlong = await inject('GET', `/api/v1/sessions/${'a'.repeat(101)}`);
    assert.deepEqual([overlong.status, overlong.body], [414, { error: 'a part of the path is longer than 100 characters', details: [] }]);
    const undecodable = await inject('GET', '/api/v1/sessions/%E0%A4%A');
    assert.deepEqual([undecodable.status, undecodable.body], [400, { error: 'the URL is malformed', details: [] }]);
    const unknown = await inject('GET', '/api/v1/nothing');
    assert.equal(unknown.status, 404);
    assert.match(unknown.body.error, /no route GET \/api\/v1\/nothing/);
  });

  it('answers a method a known path does not take with 405 and Allow, and an unknown path (or a trailing slash) with 404', async () => {
    const cases: Array<[string, string, string]> = [
      ['PUT', '/api/v1/sessions', 'GET, HEAD, POST'],
      ['PATCH', '/api/v1/sessions/abcdefgh12', 'DELETE, GET, HEAD'],
      ['GET', '/api/v1/sessions/abcdefgh12/keepalive', 'POST'],
      ['DELETE', '/api/v1/templates', 'GET, HEAD'],
      ['POST', '/api/v1/limits', 'GET, HEAD'],
      ['POST', '/healthz', 'GET, HEAD'],
    ];
    for (const [method, url, allow] of cases) {
      const answer = await frontend.app.inject({ method: method as 'PUT', url: `${url}?access_token=secret`, headers: { 'x-manticore-user': 'ann' } });
      assert.equal(answer.statusCode, 405, `${method} ${url}`);
      assert.equal(answer.headers.allow, allow, `${method} ${url}`);
      assert.deepEqual(answer.json(), { error: `${url} does not take ${method}; it takes ${allow}`, details: [] });
    }
    for (const url of ['/api/v1/sessions/', '/api/v1/nothing']) {
      const answer = await frontend.app.inject({ method: 'PUT', url });
      assert.equal(answer.statusCode, 404, url);
      assert.equal(answer.headers.allow, undefined);
    }
    // Trailing slashes are not ignored: an empty path part is no session id, but no route at all.
    for (const [method, url] of [['GET', '/api/v1/sessions/'], ['DELETE', '/api/v1/sessions/'], ['GET', '/api/v1/sessions//logs']] as const) {
      const answer = await frontend.app.inject({ method, url, headers: { 'x-manticore-user': 'ann' } });
      assert.deepEqual([answer.statusCode, answer.json()], [404, { error: `no route ${method} ${url}`, details: [] }], `${method} ${url}`);
    }
  });

  it('counts every answer in its metrics, those of paths the router refuses too', async () => {
    const base = `http://127.0.0.1:${(frontend.app.server.address() as AddressInfo).port}`;
    const answered = async (route: string, status: number): Promise<number> => {
      const { values } = await (registry.getSingleMetric('manticore_http_requests_total') as Counter).get();
      return values.find(({ labels }) => labels.server === 'frontend' && labels.route === route && labels.status === String(status))?.value ?? 0;
    };
    const cases = [
      { path: `/api/v1/sessions/${'a'.repeat(101)}`, route: 'unmatched', status: 414 },
      { path: '/api/v1/sessions/%E0%A4%A', route: 'unmatched', status: 400 },
      { path: '/api/v1/nothing', route: 'unmatched', status: 404 },
      { path: '/api/v1/sessions/nosuchsession00', route: '/api/v1/sessions/:id', status: 404 },
    ];
    const before = await Promise.all(cases.map(({ route, status }) => answered(route, status)));
    for (const { path: url, status } of cases) assert.equal((await fetch(`${base}${url}`)).status, status, url);
    await waitFor('every answer counted', async () => (await Promise.all(cases.map(({ route, status }) => answered(route, status)))).every((count, i) => count === before[i]! + 1));
  });

  it('describes templates, marking those this backend cannot run', async () => {
    const { body } = await inject('GET', '/api/v1/templates/sdl');
    assert.equal(body.available, false);
    assert.equal(body.parameters.length, 4);
    assert.deepEqual(body.services.find((s: { name: string }) => s.name === 'tcp'), { name: 'tcp', description: "Core's TCP transport for SDL apps.", protocol: 'tcp' });
    assert.equal((await inject('GET', '/api/v1/templates/nope')).status, 404);
  });

  it("tells a caller the limits its creates are held to: sessions per user, the idle timeout it gets or may ask for, the lifetime cap", async () => {
    const answer = await inject('GET', '/api/v1/limits', undefined, { 'x-manticore-user': 'lee' });
    assert.equal(answer.status, 200);
    assert.deepEqual(answer.body, { sessionsPerUser: 2, idle: { defaultTimeoutSeconds: 1800, maxTimeoutSeconds: 1800, warningSeconds: 300 }, maxLifetimeSeconds: 3600 });
    // An operator who lets sessions ask for any timeout, never included, and turns idle expiry off by default.
    const open = new Frontend({
      store,
      keys,
      templates,
      backend: 'embedded',
      bodyLimitBytes: 4096,
      sessionsPerUser: 3,
      activityWriteIntervalMs: 30_000,
      expiry: { idleTimeoutMs: 0, idleMaxTimeoutMs: 0, idleWarningMs: 120_000, maxLifetimeMs: 0 },
      log: silentLogger(),
    });
    try {
      const unlimited = await open.app.inject({ method: 'GET', url: '/api/v1/limits' });
      assert.deepEqual(unlimited.json(), { sessionsPerUser: 3, idle: { defaultTimeoutSeconds: 0, maxTimeoutSeconds: 0, warningSeconds: 120 }, maxLifetimeSeconds: 0 });
    } finally {
      await open.stop();
    }
  });

  it('refuses sessions beyond the per-user limit with 409 and the existing ids, even when created at once', async () => {
    const answers = await Promise.all([1, 2, 3].map(() => inject('POST', '/api/v1/sessions', { template: 'demo' }, { 'x-manticore-user': 'fay' })));
    assert.deepEqual(answers.map((answer) => answer.status).sort(), [201, 201, 409]);
    const created = answers.filter((answer) => answer.status === 201).map((answer) => (answer.body as Session).metadata.id);
    const refused = answers.find((answer) => answer.status === 409)!.body as { error: string; existing: string[] };
    assert.match(refused.error, /already has 2 session\(s\)/);
    assert.deepEqual([...refused.existing].sort(), [...created].sort());
    assert.equal((await inject('POST', '/api/v1/sessions', { template: 'demo' }, { 'x-manticore-user': 'gus' })).status, 201, 'other users are not affected');

    // A Failed session (kept only to be read) and one being deleted do not count.
    await store.put(keys.status(created[0]!), JSON.stringify({ phase: 'Failed', observedGeneration: 1, conditions: [], endpoints: {}, events: [] }));
    await waitFor('the front end sees the failure', async () => (await inject('POST', '/api/v1/sessions', { template: 'demo' }, { 'x-manticore-user': 'fay' })).status === 201);
    assert.equal((await inject('POST', '/api/v1/sessions', { template: 'demo' }, { 'x-manticore-user': 'fay' })).status, 409);
    assert.equal((await inject('DELETE', `/api/v1/sessions/${created[1]!}`, undefined, { 'x-manticore-user': 'fay' })).status, 202);
    await waitFor('the deletion frees a place', async () => (await inject('POST', '/api/v1/sessions', { template: 'demo' }, { 'x-manticore-user': 'fay' })).status === 201);
  });

  it('records keepalives as activity, throttled, but always while the session is being warned', async () => {
    const session = (await inject('POST', '/api/v1/sessions', { template: 'demo' }, { 'x-manticore-user': 'hal' })).body as Session;
    const id = session.metadata.id;
    const keepalive = (user = 'hal') => inject('POST', `/api/v1/sessions/${id}/keepalive`, undefined, { 'x-manticore-user': user });
    const stored = async () => (await store.get(keys.activity(id)))?.modifyIndex;

    assert.equal((await keepalive('ivy')).status, 404, 'someone else’s session looks missing');
    assert.equal(await stored(), undefined);
    const first = await keepalive();
    assert.equal(first.status, 200);
    assert.deepEqual(first.body, { id, lastActivityAt: '2026-03-01T12:00:00.000Z' });
    const index = await stored();

    now += 10_000;
    assert.equal((await keepalive()).body.lastActivityAt, '2026-03-01T12:00:00.000Z', 'within the interval nothing is written');
    assert.equal(await stored(), index);
    now += 25_000;
    assert.equal((await keepalive()).body.lastActivityAt, '2026-03-01T12:00:35.000Z');
    const later = await stored();
    assert.ok(later! > index!);

    // The controller warned the session: the answer to the warning is written at once.
    const warned = { phase: 'Ready', observedGeneration: 1, endpoints: {}, events: [], conditions: [{ type: 'IdleWarning', status: 'True', reason: 'Idle', message: 'idle', lastTransitionTime: '2026-03-01T12:00:35.000Z' }] };
    await store.put(keys.status(id), JSON.stringify(warned));
    now += 1_000;
    assert.equal((await keepalive()).body.lastActivityAt, '2026-03-01T12:00:36.000Z');

    await inject('DELETE', `/api/v1/sessions/${id}`, undefined, { 'x-manticore-user': 'hal' });
    const late = await keepalive();
    assert.equal(late.status, 409);
    assert.match(late.body.error, /being deleted/);
  });

  it('answers a keepalive with the expiry the activity it recorded gives, not the one the status showed before', async () => {
    const id = ((await inject('POST', '/api/v1/sessions', { template: 'demo' }, { 'x-manticore-user': 'hal' })).body as Session).metadata.id;
    const keepalive = async () => (await inject('POST', `/api/v1/sessions/${id}/keepalive`, undefined, { 'x-manticore-user': 'hal' })).body;
    assert.equal((await keepalive()).expiresAt, undefined, 'no expiry before the session first serves');

    // As the controller wrote it at first Ready: idle for 30 min from then.
    const ready = { phase: 'Ready', observedGeneration: 1, endpoints: {}, events: [], conditions: [], readyAt: '2026-03-01T12:00:00.000Z', expiresAt: '2026-03-01T12:30:00.000Z' };
    await store.put(keys.status(id), JSON.stringify(ready));
    now = Date.parse('2026-03-01T12:10:00.000Z');
    assert.deepEqual(await keepalive(), { id, lastActivityAt: '2026-03-01T12:10:00.000Z', expiresAt: '2026-03-01T12:40:00.000Z' });
    now += 10_000;
    assert.deepEqual(await keepalive(), { id, lastActivityAt: '2026-03-01T12:10:00.000Z', expiresAt: '2026-03-01T12:40:00.000Z' }, 'within the write interval the stored activity counts');
    // The lifetime cap (1 h from first Ready) comes before the idle deadline now.
    now = Date.parse('2026-03-01T12:50:00.000Z');
    assert.deepEqual(await keepalive(), { id, lastActivityAt: '2026-03-01T12:50:00.000Z', expiresAt: '2026-03-01T13:00:00.000Z' });
    // A Failed session still says when it was Ready, but activity does not keep it: it goes when its retention ends.
    const failed = { phase: 'Failed', observedGeneration: 1, endpoints: {}, events: [], conditions: [], readyAt: '2026-03-01T12:00:00.000Z', failedAt: '2026-03-01T12:50:00.000Z' };
    await store.put(keys.status(id), JSON.stringify(failed));
    assert.equal((await keepalive()).expiresAt, undefined);
  });

  it("creates a session with its own idle timeout within the operator's limits, and refuses one outside them, naming the field and the limit", async () => {
    const create = async (idle: unknown) => inject('POST', '/api/v1/sessions', { template: 'demo', idle }, { 'x-manticore-user': 'ida' });
    const limits = 'must be above 300 (idle.warningSeconds) and at most 1800 (idle.maxTimeoutSeconds)';
    for (const [idle, detail] of [
      [{ timeoutSeconds: 1801 }, `/idle/timeoutSeconds: ${limits}`],
      [{ timeoutSeconds: 300 }, `/idle/timeoutSeconds: ${limits}`],
      [{ timeoutSeconds: 0 }, `/idle/timeoutSeconds: ${limits}`],
      [{ timeoutSeconds: 1.5 }, '/body/idle/timeoutSeconds: must be integer'],
      [{ timeoutSeconds: -1 }, '/body/idle/timeoutSeconds: must be >= 0'],
      [{}, "/body/idle: must have required property 'timeoutSeconds'"],
      [{ timeoutSeconds: 600, warningSeconds: 60 }, '/body/idle: unknown field "warningSeconds"'],
    ] as const) {
      const answer = await create(idle);
      assert.equal(answer.status, 400, JSON.stringify(idle));
      assert.deepEqual(answer.body.details, [detail], JSON.stringify(idle));
    }
    assert.match((await create({ timeoutSeconds: 1801 })).body.error, /^idle\.timeoutSeconds 1801 is outside this Manticore's limits: it must be above 300 \(idle\.warningSeconds\) and at most 1800 \(idle\.maxTimeoutSeconds\)$/);
    assert.equal((await store.list(keys.sessions)).entries.length, 0, 'nothing is written');

    const created = await create({ timeoutSeconds: 600 });
    assert.equal(created.status, 201);
    const session = created.body as Session;
    assert.deepEqual(session.spec.idle, { timeoutSeconds: 600 });
    assert.deepEqual((JSON.parse((await store.get(keys.session(session.metadata.id)))!.value) as SessionRecord).spec.idle, { timeoutSeconds: 600 });
  });

  it("answers a keepalive with the expiry the session's own idle timeout gives", async () => {
    const id = ((await inject('POST', '/api/v1/sessions', { template: 'demo', idle: { timeoutSeconds: 600 } }, { 'x-manticore-user': 'hal' })).body as Session).metadata.id;
    const ready = { phase: 'Ready', observedGeneration: 1, endpoints: {}, events: [], conditions: [], readyAt: '2026-03-01T12:00:00.000Z', expiresAt: '2026-03-01T12:10:00.000Z' };
    await store.put(keys.status(id), JSON.stringify(ready));
    now = Date.parse('2026-03-01T12:05:00.000Z');
    const answer = await inject('POST', `/api/v1/sessions/${id}/keepalive`, undefined, { 'x-manticore-user': 'hal' });
    assert.deepEqual(answer.body, { id, lastActivityAt: '2026-03-01T12:05:00.000Z', expiresAt: '2026-03-01T12:15:00.000Z' });
  });

  it('counts a session it created and its cache never showed for as long as the store holds it', async () => {
    // A watch that sees the store only in listings misses a session created and removed between two of them.
    const blind: Store = { ...delegatingStore(store), watch: (prefix, index) => store.watch(prefix, index).pipe(filter((step) => step.kind === 'reset')) };
    const other = new Frontend({ store: blind, keys, templates, backend: 'embedded', bodyLimitBytes: 4096, sessionsPerUser: 1, activityWriteIntervalMs: 30_000, expiry: testExpiry, log: silentLogger() });
    await other.start('127.0.0.1', 0);
    try {
      const create = () => other.app.inject({ method: 'POST', url: '/api/v1/sessions', headers: { 'content-type': 'application/json', 'x-manticore-user': 'lee' }, payload: { template: 'demo' } });
      const first = await create();
      assert.equal(first.statusCode, 201, first.body);
      const id = (JSON.parse(first.body) as Session).metadata.id;
      const refused = await create();
      assert.equal(refused.statusCode, 409, 'the session is still in the store');
      assert.deepEqual((JSON.parse(refused.body) as { existing: string[] }).existing, [id]);
      await store.transaction([{ verb: 'delete', key: keys.session(id) }]);
      const second = await create();
      assert.equal(second.statusCode, 201, `a session that is gone still counted: ${second.body}`);
    } finally {
      await other.stop();
    }
  });

  it('shows a session its cache has not seen yet from the store, to its owner only', async () => {
    // The watches bring the state as it was at start, then nothing: a session written later is known only to the store.
    const blind: Store = { ...delegatingStore(store), watch: (prefix, index) => store.watch(prefix, index).pipe(filter((step) => step.kind === 'reset')) };
    const other = new Frontend({ store: blind, keys, templates, backend: 'embedded', bodyLimitBytes: 4096, sessionsPerUser: 2, activityWriteIntervalMs: 30_000, expiry: testExpiry, log: silentLogger() });
    await other.start('127.0.0.1', 0);
    try {
      const { body } = await inject('POST', '/api/v1/sessions', { template: 'demo' }, { 'x-manticore-user': 'jo' });
      const id = (body as Session).metadata.id;
      const get = (user: string) => other.app.inject({ method: 'GET', url: `/api/v1/sessions/${id}`, headers: { 'x-manticore-user': user } });
      const answer = await get('jo');
      assert.equal(answer.statusCode, 200);
      assert.deepEqual((JSON.parse(answer.body) as Session).metadata, (body as Session).metadata);
      assert.equal((await get('kim')).statusCode, 404, 'someone else’s session looks missing');
      assert.equal(other.sessions.sessions.cache.get(id), undefined, 'answered without the cache');
    } finally {
      await other.stop();
    }
  });

  it('stops its watches again when it cannot listen, so a failed start leaves nothing running', async () => {
    let openWatches = 0;
    const counted: Store = {
      ...delegatingStore(store),
      watch: (prefix, index) =>
        defer(() => {
          openWatches += 1;
          return store.watch(prefix, index).pipe(finalize(() => (openWatches -= 1)));
        }),
    };
    const other = new Frontend({ store: counted, keys, templates, backend: 'embedded', bodyLimitBytes: 4096, sessionsPerUser: 2, activityWriteIntervalMs: 30_000, expiry: testExpiry, log: silentLogger() });
    const { port } = frontend.app.server.address() as AddressInfo;
    await assert.rejects(other.start('127.0.0.1', port), /EADDRINUSE/);
    assert.equal(openWatches, 0);
  });
});

describe('front end: records it cannot read', () => {
  it('logs an unreadable session or status record once, with its key and the problem, and goes on serving the others', async () => {
    const store = EmbeddedStore.open(':memory:');
    const captured = capturingLogger();
    const frontend = testFrontend(store, { log: captured.log });
    await frontend.start('127.0.0.1', 0);
    try {
      const list = async (): Promise<Session[]> => (JSON.parse((await frontend.app.inject({ method: 'GET', url: '/api/v1/sessions', headers: { 'x-manticore-user': 'alice' } })).body) as { items: Session[] }).items;
      const created = await frontend.app.inject({ method: 'POST', url: '/api/v1/sessions', headers: { 'content-type': 'application/json', 'x-manticore-user': 'alice' }, payload: { template: 'demo', parameters: {} } });
      const id = (JSON.parse(created.body) as Session).metadata.id;
      const unreadable: Record<string, string> = { [keys.session('brokenrecord1')]: '{"metadata": nope', [keys.status(id)]: '{"phase": "Ready"}' };
      for (const [key, value] of Object.entries(unreadable)) await store.put(key, value);
      const reports = (): typeof captured.lines => captured.lines.filter((line) => line.level === 40 && typeof line.key === 'string' && line.key in unreadable);
      await waitFor('each unreadable record reported', () => new Set(reports().map((line) => line.key)).size === 2);
      for (let read = 0; read < 3; read++) assert.deepEqual((await list()).map((session) => [session.metadata.id, session.status.phase]), [[id, 'Pending']]);
      assert.equal(reports().length, 2, 'each said once, not at every read');
      const byKey = new Map(reports().map((line) => [line.key, String(line.problem)]));
      assert.match(byKey.get(keys.session('brokenrecord1'))!, /not valid JSON/);
      assert.match(byKey.get(keys.status(id))!, /must have required property 'conditions'/);
    } finally {
      await frontend.stop();
      await store.close();
    }
  });
});
