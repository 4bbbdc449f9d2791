import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { FastifyReply, FastifyRequest } from 'fastify';
import sinon from 'sinon';
import { ValidationError } from '../../controller/api/schemas.js';
import type { Session } from '../../controller/api/types.js';
import type { ManticoreConfig } from '../../controller/config/config.js';
import { createAuthenticator } from '../../controller/frontend/auth.js';
import { tokenExpiredReason } from '../../controller/frontend/events.js';
import type { Authenticator } from '../../controller/frontend/identity.js';
import { RateLimitedAuthenticator, RateLimiter, type RateLimit } from '../../controller/frontend/rate-limit.js';
import { Frontend } from '../../controller/frontend/server.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import { silentLogger } from '../../controller/util/log.js';
import { testFrontend } from '../support/frontend.js';
import { turnsUntil, waitFor } from '../support/wait.js';

const secret = 'a-shared-secret-of-at-least-32-characters';
const adminToken = 'an-admin-token-of-at-least-32-characters';
const issuer = 'https://portal.example';
const audience = 'manticore';

type AuthConfig = ManticoreConfig['auth'];
type Headers = Record<string, string>;

const encode = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

/** A compact JWS signed here with node:crypto, as an issuer would; `alg` may lie about the key used. */
function sign(alg: string, claims: Record<string, unknown>, key: crypto.KeyObject | string | undefined, header: Record<string, unknown> = {}): string {
  const signed = `${encode({ alg, typ: 'JWT', ...header })}.${encode(claims)}`;
  let signature = '';
  if (typeof key === 'string') signature = crypto.createHmac('sha256', key).update(signed).digest('base64url');
  else if (key?.asymmetricKeyType === 'rsa') signature = crypto.sign('sha256', Buffer.from(signed), key).toString('base64url');
  else if (key !== undefined) signature = crypto.sign('sha256', Buffer.from(signed), { key, dsaEncoding: 'ieee-p1363' }).toString('base64url');
  return `${signed}.${signature}`;
}

const bearer = (token: string): Headers => ({ authorization: `Bearer ${token}` });

describe('front end: identity, isolation and rate limits', () => {
  let rsa: crypto.KeyPairKeyObjectResult;
  let ec: crypto.KeyPairKeyObjectResult;
  /** The RSA key as PEM text (the EC key is given as a file). */
  let rsaPem: string;
  let dir: string;
  let ecFile: string;
  /** The front end's clock, in ms. */
  let now: number;
  const nowSeconds = (): number => Math.floor(now / 1000);
  const opened: Array<{ frontend: Frontend; store: EmbeddedStore }> = [];

  before(() => {
    rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    rsaPem = rsa.publicKey.export({ type: 'spki', format: 'pem' }) as string;
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-auth-'));
    ecFile = path.join(dir, 'ec.pem');
    fs.writeFileSync(ecFile, ec.publicKey.export({ type: 'spki', format: 'pem' }));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  beforeEach(() => {
    now = Date.parse('2026-03-01T12:00:00.000Z');
  });
  afterEach(async () => {
    for (const { frontend, store } of opened.splice(0)) {
      await frontend.stop();
      await store.close();
    }
  });

  const jwtConfig = (jwt: Partial<AuthConfig['jwt']> = {}): AuthConfig => ({
    mode: 'jwt',
    jwt: { secret, publicKeys: [rsaPem, ecFile], userClaim: 'sub', operatorClaim: 'manticore_operator', issuer, audience, ...jwt },
    adminToken,
  });
  const noneConfig: AuthConfig = { mode: 'none', jwt: { userClaim: 'sub', operatorClaim: 'manticore_operator' }, adminToken };

  async function open(auth: AuthConfig, rateLimit?: RateLimit, trustedProxies?: readonly string[]) {
    const store = EmbeddedStore.open(':memory:');
    const frontend = testFrontend(store, {
      authenticator: createAuthenticator(auth, () => now),
      ...(rateLimit === undefined ? {} : { rateLimit }),
      ...(trustedProxies === undefined ? {} : { trustedProxies }),
      now: () => now,
    });
    await frontend.start('127.0.0.1', 0);
    opened.push({ frontend, store });
    const inject = async (method: 'GET' | 'POST' | 'DELETE', url: string, headers: Headers = {}, body?: unknown) => {
      const response = await frontend.app.inject({
        method,
        url,
        headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
        ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
      });
      return { status: response.statusCode, body: response.body ? JSON.parse(response.body) : undefined, headers: response.headers };
    };
    const create = async (headers: Headers): Promise<Session> => {
      const answer = await inject('POST', '/api/v1/sessions', headers, { template: 'demo' });
      assert.equal(answer.status, 201, JSON.stringify(answer.body));
      return answer.body as Session;
    };
    /** The ids the caller lists, once the list shows `expected` sessions (the list is fed by a watch). */
    const listed = async (headers: Headers, expected: number): Promise<string[]> =>
      waitFor(`${expected} session(s) listed`, async () => {
        const answer = await inject('GET', '/api/v1/sessions', headers);
        assert.equal(answer.status, 200, JSON.stringify(answer.body));
        const ids = (answer.body.items as Session[]).map((session) => session.metadata.id);
        return ids.length === expected ? ids : undefined;
      });
    return { frontend, inject, create, listed };
  }

  describe('mode none', () => {
    it('mints an anonymous id in a cookie and knows the caller by it afterwards', async () => {
      const { inject, create } = await open(noneConfig);
      const first = await inject('POST', '/api/v1/sessions', {}, { template: 'demo' });
      assert.equal(first.status, 201);
      const owner = (first.body as Session).metadata.owner;
      assert.match(owner, /^anon-[a-z2-7]{26}$/);
      assert.equal(first.headers['set-cookie'], `manticore_user=${owner}; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000`);

      const cookie = { cookie: `theme=dark; manticore_user=${owner}` };
      const again = await inject('GET', `/api/v1/sessions/${first.body.metadata.id}`, cookie);
      assert.equal(again.status, 200);
      assert.equal(again.headers['set-cookie'], undefined, 'a known id is not minted again');
      assert.equal((await create(cookie)).metadata.owner, owner);

      const stranger = await inject('GET', `/api/v1/sessions/${first.body.metadata.id}`);
      assert.equal(stranger.status, 404, 'without the cookie it is someone else');
      assert.notEqual(stranger.headers['set-cookie'], first.headers['set-cookie']);
    });

    it('marks the cookie Secure when a trusted proxy says the request came over HTTPS, and only then', async () => {
      const cookieOf = async (trustedProxies: readonly string[] | undefined, headers: Headers): Promise<string> => {
        const { inject } = await open(noneConfig, undefined, trustedProxies);
        return String((await inject('GET', '/api/v1/sessions', headers)).headers['set-cookie']);
      };
      // inject() comes from 127.0.0.1.
      assert.match(await cookieOf(['127.0.0.1'], { 'x-forwarded-proto': 'https' }), /; Secure$/);
      assert.match(await cookieOf(['loopback'], { 'x-forwarded-proto': 'https' }), /; Secure$/);
      assert.doesNotMatch(await cookieOf(['127.0.0.1'], { 'x-forwarded-proto': 'http' }), /Secure/);
      assert.doesNotMatch(await cookieOf(['127.0.0.1'], {}), /Secure/);
      assert.doesNotMatch(await cookieOf(undefined, { 'x-forwarded-proto': 'https' }), /Secure/, 'anyone may send the header: only a trusted proxy is believed');
      assert.doesNotMatch(await cookieOf(['10.0.0.0/8'], { 'x-forwarded-proto': 'https' }), /Secure/);
    });

    it('hands a new visitor their id with the page, so the page’s first requests, sent together, are one user', async () => {
      const { frontend, create } = await open(noneConfig);
      const page = await frontend.app.inject({ method: 'GET', url: '/' });
      assert.equal(page.statusCode, 200);
      const minted = /^manticore_user=(anon-[a-z2-7]{26});/.exec(String(page.headers['set-cookie']))?.[1] ?? assert.fail(`no id with the page: ${String(page.headers['set-cookie'])}`);
      assert.equal((await create({ cookie: `manticore_user=${minted}` })).metadata.owner, minted);
      for (const url of ['/', '/web/app.js']) {
        const again = await frontend.app.inject({ method: 'GET', url, headers: { cookie: `manticore_user=${minted}` } });
        assert.equal(again.headers['set-cookie'], undefined, `${url}: a known visitor keeps their id`);
      }
      const asset = await frontend.app.inject({ method: 'GET', url: '/web/app.js' });
      assert.equal(asset.headers['set-cookie'], undefined, 'only the page itself hands ids out');
    });

    it('ignores a cookie it did not mint and mints a new id', async () => {
      const { create, inject } = await open(noneConfig);
      for (const value of ['alice', 'anon-short', `anon-${'A'.repeat(26)}`, `anon-${'a'.repeat(27)}`, '']) {
        const answer = await inject('POST', '/api/v1/sessions', { cookie: `manticore_user=${value}` }, { template: 'demo' });
        assert.equal(answer.status, 201);
        assert.notEqual(answer.body.metadata.owner, value);
        assert.match(answer.body.metadata.owner, /^anon-[a-z2-7]{26}$/);
        assert.match(String(answer.headers['set-cookie']), new RegExp(`^manticore_user=${answer.body.metadata.owner};`));
      }
      assert.equal((await create({ cookie: `manticore_user=anon-${'b'.repeat(26)}` })).metadata.owner, `anon-${'b'.repeat(26)}`);
    });

    it('takes the X-Manticore-User header before the cookie, and refuses a malformed one', async () => {
      const { create, inject } = await open(noneConfig);
      const session = await create({ 'x-manticore-user': 'carol@example.com', cookie: `manticore_user=anon-${'c'.repeat(26)}` });
      assert.equal(session.metadata.owner, 'carol@example.com');
      const bad = await inject('GET', '/api/v1/sessions', { 'x-manticore-user': 'has space' });
      assert.equal(bad.status, 400);
      assert.match(bad.body.details.join(' '), /X-Manticore-User: 1 to 128 characters/);
    });

    it('lets the admin token see and delete everyone’s sessions', async () => {
      const { create, inject, listed } = await open(noneConfig);
      const alice = await create({ 'x-manticore-user': 'alice' });
      const bob = await create({ 'x-manticore-user': 'bob' });
      assert.deepEqual((await listed(bearer(adminToken), 2)).sort(), [alice.metadata.id, bob.metadata.id].sort());
      assert.equal((await inject('GET', `/api/v1/sessions/${alice.metadata.id}`, bearer(adminToken))).status, 200);
      assert.equal((await inject('DELETE', `/api/v1/sessions/${bob.metadata.id}`, bearer(adminToken))).status, 202);
      const notAdmin = await inject('GET', `/api/v1/sessions/${alice.metadata.id}`, bearer(`${adminToken}x`));
      assert.equal(notAdmin.status, 404, 'another bearer token is no one special in mode none');
    });
  });

  describe('mode jwt', () => {
    const claims = (user: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
      sub: user,
      iss: issuer,
      aud: audience,
      iat: nowSeconds(),
      exp: nowSeconds() + 3600,
      ...extra,
    });

    it('hands out no anonymous id with the page', async () => {
      const { frontend } = await open(jwtConfig());
      const page = await frontend.app.inject({ method: 'GET', url: '/' });
      assert.equal(page.statusCode, 200);
      assert.equal(page.headers['set-cookie'], undefined);
    });

    it('accepts HS256, RS256 and ES256 tokens, naming the user by the claim', async () => {
      const { create } = await open(jwtConfig());
      assert.equal((await create(bearer(sign('HS256', claims('hana'), secret)))).metadata.owner, 'hana');
      assert.equal((await create(bearer(sign('RS256', claims('rafa'), rsa.privateKey)))).metadata.owner, 'rafa');
      assert.equal((await create(bearer(sign('ES256', claims('emil', { aud: ['other', audience] }), ec.privateKey)))).metadata.owner, 'emil');
    });

    it('marks identities proven by a token as verified, and only those', () => {
      const request = (headers: Headers) => ({ headers, method: 'GET', query: {}, log: silentLogger(), routeOptions: {} }) as unknown as FastifyRequest;
      const reply = { header: () => reply } as unknown as FastifyReply;
      const jwt = createAuthenticator(jwtConfig(), () => now);
      // Accepted until its exp (in an hour) and the 30 s leeway: what a stream opened with it must not outlive.
      const expiresAt = (nowSeconds() + 3630) * 1000;
      assert.deepEqual(jwt.identify(request(bearer(sign('HS256', claims('vera'), secret))), reply), { user: 'vera', operator: false, verified: true, expiresAt });
      assert.deepEqual(jwt.identify(request(bearer(adminToken)), reply), { user: 'operator', operator: true, verified: true });
      const none = createAuthenticator(noneConfig);
      assert.deepEqual(none.identify(request({ 'x-manticore-user': 'vera' }), reply), { user: 'vera', operator: false });
      assert.equal(none.identify(request({}), reply).verified, undefined);
    });

    it('takes a numeric user id claim as a string (the SDL Developer Portal’s user_id)', async () => {
      const { create, inject } = await open(jwtConfig({ userClaim: 'user_id' }));
      assert.equal((await create(bearer(sign('HS256', claims('ignored', { user_id: 4711 }), secret)))).metadata.owner, '4711');
      const fractional = await inject('GET', '/api/v1/sessions', bearer(sign('HS256', claims('x', { user_id: 1e21 }), secret)));
      assert.equal(fractional.status, 401, '1e+21 is not a user id');
      const inherited = await (await open(jwtConfig({ userClaim: 'constructor' }))).inject('GET', '/api/v1/sessions', bearer(sign('HS256', claims('x'), secret)));
      assert.equal(inherited.status, 401, 'a claim is what the token carries, not what every object inherits');
    });

    it('accepts ?access_token= on GET requests only', async () => {
      const { create, inject } = await open(jwtConfig());
      const token = sign('HS256', claims('sam'), secret);
      const session = await create(bearer(token));
      assert.equal((await inject('GET', `/api/v1/sessions/${session.metadata.id}?access_token=${token}`)).status, 200);
      const post = await inject('POST', `/api/v1/sessions/${session.metadata.id}/keepalive?access_token=${token}`);
      assert.equal(post.status, 401);
      assert.equal(post.headers['www-authenticate'], 'Bearer');
    });

    it('asks for credentials before it reads a create’s body: a request without a token is 401 whatever it sends', async () => {
      const { inject, create, frontend } = await open(jwtConfig());
      for (const body of [{ template: 'demo', unknown: 1 }, [1, 2], { template: 'demo' }]) {
        const answer = await inject('POST', '/api/v1/sessions', {}, body);
        assert.deepEqual([answer.status, answer.headers['www-authenticate'], answer.body.error], [401, 'Bearer', 'authentication required'], JSON.stringify(body));
      }
      // Nor is its size or content type looked at first, on any route that may carry a body; with a token they are.
      const session = await create(bearer(sign('HS256', claims('kim'), secret)));
      const bodies: Array<[string, Headers, string, number]> = [
        ['over the limit', { 'content-type': 'application/json' }, JSON.stringify({ template: 'demo', padding: 'x'.repeat(5000) }), 413],
        ['not JSON', { 'content-type': 'text/plain' }, 'x', 415],
      ];
      for (const [method, url] of [['POST', '/api/v1/sessions'], ['POST', `/api/v1/sessions/${session.metadata.id}/keepalive`], ['DELETE', `/api/v1/sessions/${session.metadata.id}`]] as const) {
        for (const [what, headers, payload, refused] of bodies) {
          const anonymous = await frontend.app.inject({ method, url, headers, payload });
          assert.deepEqual([anonymous.statusCode, anonymous.headers['www-authenticate']], [401, 'Bearer'], `${method} ${url} ${what} without a token`);
          const known = await frontend.app.inject({ method, url, headers: { ...headers, ...bearer(sign('HS256', claims('kim'), secret)) }, payload });
          assert.equal(known.statusCode, refused, `${method} ${url} ${what} with a token`);
        }
      }
      // Refused bodies count against the sender's rate like any other request.
      const limited = await open(noneConfig, { requestsPerSecond: 1, burst: 1 });
      const statuses = [];
      for (let n = 0; n < 2; n++) statuses.push((await limited.inject('POST', '/api/v1/sessions', { 'x-manticore-user': 'rita' }, { unknown: 1 })).status);
      const wrongType = await limited.frontend.app.inject({ method: 'POST', url: '/api/v1/sessions', headers: { 'x-manticore-user': 'rita', 'content-type': 'text/plain' }, payload: 'x' });
      statuses.push(wrongType.statusCode);
      assert.deepEqual(statuses, [400, 429, 429]);
    });

    it('refuses missing, expired, early, foreign, unsigned, confused and garbled tokens with 401', async () => {
      const { inject } = await open(jwtConfig());
      const missing = await inject('GET', '/api/v1/templates');
      assert.equal(missing.status, 401);
      assert.equal(missing.headers['www-authenticate'], 'Bearer');
      assert.deepEqual(missing.body, { error: 'authentication required', details: ['Authorization: Bearer <token> (or ?access_token=<token> on GET requests)'] });

      const valid = sign('HS256', claims('zoe'), secret);
      const [header, payload] = valid.split('.');
      const cases: Array<[string, Headers, RegExp]> = [
        ['expired beyond the leeway', bearer(sign('HS256', claims('zoe', { exp: nowSeconds() - 31 }), secret)), /expired at 2026-03-01T11:59:29/],
        ['not yet valid', bearer(sign('HS256', claims('zoe', { nbf: nowSeconds() + 31 }), secret)), /not valid before/],
        ['wrong issuer', bearer(sign('HS256', claims('zoe', { iss: 'https://elsewhere.example' }), secret)), /issuer/],
        ['no issuer', bearer(sign('HS256', claims('zoe', { iss: undefined }), secret)), /issuer/],
        ['wrong audience', bearer(sign('HS256', claims('zoe', { aud: 'someone-else' }), secret)), /aud/],
        ['alg none', bearer(sign('none', claims('zoe'), undefined)), /algorithm "none" is not accepted \(accepted: HS256, RS256, ES256\)/],
        ['alg none without a signature part', bearer(`${encode({ alg: 'none' })}.${encode(claims('zoe'))}`), /three base64url parts/],
        ['HS256 without a signature', bearer(`${header}.${payload}.`), /signature does not verify/],
        ['an unknown alg', bearer(sign('HS512', claims('zoe'), secret)), /algorithm "HS512" is not accepted/],
        ['HS256 with the RSA public key as secret', bearer(sign('HS256', claims('zoe'), rsaPem)), /signature does not verify/],
        ['RS256 signed by another key', bearer(sign('RS256', claims('zoe'), crypto.generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey)), /signature/],
        ['ES256 with a DER signature', bearer(`${header}.${payload}.${crypto.sign('sha256', Buffer.from('x'), ec.privateKey).toString('base64url')}`), /signature/],
        ['a changed payload', bearer(`${header}.${encode(claims('admin'))}.${valid.split('.')[2]}`), /signature does not verify/],
        ['critical extensions', bearer(sign('HS256', claims('zoe'), secret, { crit: ['b64'] })), /critical/],
        ['garbled', bearer('not-a-token'), /three base64url parts/],
        ['garbled parts', bearer('a.b.c'), /header is not JSON/],
        ['a JSON array header', bearer(`${encode([1])}.${payload}.x`), /header is not a JSON object/],
        ['no user', bearer(sign('HS256', claims('zoe', { sub: undefined }), secret)), /sub claim must be a user id/],
        ['a bad user', bearer(sign('HS256', claims('zo e'), secret)), /sub claim must be a user id/],
        ['another scheme', { authorization: `Basic ${Buffer.from('zoe:pw').toString('base64')}` }, /must be "Bearer <token>"/],
        ['an empty bearer', { authorization: 'Bearer ' }, /must be "Bearer <token>"/],
      ];
      for (const [what, headers, reason] of cases) {
        const answer = await inject('GET', '/api/v1/sessions', headers);
        assert.equal(answer.status, 401, what);
        assert.equal(answer.body.error, 'invalid bearer token', what);
        assert.match(answer.body.details.join(' '), reason, what);
        assert.equal(answer.headers['www-authenticate'], 'Bearer error="invalid_token"', what);
      }
      const withinLeeway = await inject('GET', '/api/v1/sessions', bearer(sign('HS256', claims('zoe', { exp: nowSeconds() - 29, nbf: nowSeconds() + 29 }), secret)));
      assert.equal(withinLeeway.status, 200, 'clocks may differ by 30 s');
    });

    it('checks the times of a token it accepted before on every use: once expired it is refused', async () => {
      const { inject } = await open(jwtConfig());
      const token = sign('HS256', claims('zoe', { exp: nowSeconds() + 60 }), secret);
      assert.equal((await inject('GET', '/api/v1/sessions', bearer(token))).status, 200);
      assert.equal((await inject('GET', '/api/v1/sessions', bearer(token))).status, 200, 'accepted again');
      now += 91_000;
      const expired = await inject('GET', '/api/v1/sessions', bearer(token));
      assert.equal(expired.status, 401);
      assert.match(expired.body.details.join(' '), /expired/);
    });

    it('ends a status stream once its bearer token expires, saying so, so the client authenticates again', async () => {
      const { frontend, create } = await open(jwtConfig());
      const token = sign('HS256', claims('zoe', { exp: nowSeconds() + 60 }), secret);
      const id = (await create(bearer(token))).metadata.id;
      // Only timeouts are fake: the stream's expiry is one; the socket runs on real time.
      const clock = sinon.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'], shouldClearNativeTimers: true });
      try {
        const { port } = frontend.app.server.address() as AddressInfo;
        const stream = { text: '', ended: false, status: 0 };
        http.get({ host: '127.0.0.1', port, path: `/api/v1/sessions/${id}/events`, headers: bearer(token) }, (response) => {
          stream.status = response.statusCode ?? 0;
          response.setEncoding('utf8');
          response.on('data', (chunk: string) => (stream.text += chunk));
          response.on('end', () => (stream.ended = true));
        });
        await turnsUntil(() => stream.text.includes('event: session'));
        assert.equal(stream.status, 200);
        // Accepted until 30 s (the leeway for clocks that differ) after its exp.
        now += 89_999;
        await clock.tickAsync(89_999);
        assert.equal(stream.ended, false, 'ended before the token expired');
        now += 1;
        await clock.tickAsync(1);
        await turnsUntil(() => stream.ended);
        assert.ok(stream.text.endsWith(`event: closing\ndata: ${JSON.stringify({ reason: tokenExpiredReason })}\n\n`), stream.text);
        assert.match(tokenExpiredReason, /authenticate again/);
        // Named in the failure: a timer left here by anything else in the process would otherwise look like the stream's.
        const pending = Object.values((clock as unknown as { timers?: Record<string, { delay?: number; func: unknown }> }).timers ?? {}).map((timer) => `${String(timer.delay)} ms: ${String(timer.func).slice(0, 160)}`);
        assert.equal(clock.countTimers(), 0, `nothing left waiting for the expiry; pending: ${pending.join(' | ')}`);
      } finally {
        clock.restore();
      }
    });

    it('never checks an HS256 token against a public key, whatever the key bytes', async () => {
      const { inject } = await open(jwtConfig({ secret: undefined }));
      for (const key of [rsaPem, rsa.publicKey.export({ type: 'pkcs1', format: 'der' }).toString('base64'), '']) {
        const answer = await inject('GET', '/api/v1/sessions', bearer(sign('HS256', claims('mallory'), key)));
        assert.equal(answer.status, 401);
        assert.match(answer.body.details[0], /algorithm "HS256" is not accepted \(accepted: RS256, ES256\)/);
      }
      assert.equal((await inject('GET', '/api/v1/sessions', bearer(sign('RS256', claims('rafa'), rsa.privateKey)))).status, 200);
    });

    it('keeps users apart: someone else’s session answers exactly like a missing one', async () => {
      const { create, inject, listed } = await open(jwtConfig());
      const alice = bearer(sign('HS256', claims('alice'), secret));
      const bob = bearer(sign('RS256', claims('bob'), rsa.privateKey));
      const hers = await create(alice);
      const his = await create(bob);
      const id = hers.metadata.id;
      const missing = (await inject('GET', '/api/v1/sessions/aaaaaaaaaaaaaaaa', bob)).body;
      for (const [method, url] of [['GET', `/api/v1/sessions/${id}`], ['POST', `/api/v1/sessions/${id}/keepalive`], ['DELETE', `/api/v1/sessions/${id}`]] as const) {
        const answer = await inject(method, url, bob);
        assert.equal(answer.status, 404, `${method} ${url}`);
        assert.deepEqual(answer.body, { ...missing, error: missing.error.replace('aaaaaaaaaaaaaaaa', id) });
      }
      assert.deepEqual(await listed(bob, 1), [his.metadata.id]);
      assert.deepEqual(await listed(alice, 1), [id]);
      assert.equal((await inject('GET', `/api/v1/sessions/${id}`, alice)).body.metadata.deletionRequestedAt, undefined, 'bob’s delete did nothing');
    });

    it('lets operators (by claim or admin token) see and delete everyone’s sessions', async () => {
      const { create, inject, listed } = await open(jwtConfig());
      const alice = await create(bearer(sign('HS256', claims('alice'), secret)));
      const bob = await create(bearer(sign('HS256', claims('bob'), secret)));
      const operator = bearer(sign('ES256', claims('olga', { manticore_operator: true }), ec.privateKey));
      const notOperator = bearer(sign('ES256', claims('otto', { manticore_operator: 'true' }), ec.privateKey));
      const everyone = [alice.metadata.id, bob.metadata.id].sort();
      assert.deepEqual((await listed(operator, 2)).sort(), everyone);
      assert.deepEqual((await listed(bearer(adminToken), 2)).sort(), everyone);
      assert.deepEqual(await listed(notOperator, 0), [], 'only the JSON value true makes an operator');
      assert.equal((await inject('GET', `/api/v1/sessions/${alice.metadata.id}`, operator)).status, 200);
      assert.equal((await inject('DELETE', `/api/v1/sessions/${alice.metadata.id}`, operator)).status, 202);
      assert.equal((await inject('DELETE', `/api/v1/sessions/${bob.metadata.id}`, bearer(adminToken))).status, 202);
      const wrongAdmin = await inject('GET', '/api/v1/sessions', bearer(adminToken.replace(/.$/, '!')));
      assert.equal(wrongAdmin.status, 401, 'a near miss is just a garbled token');
    });

    it('asks a caller without credentials for them on the cluster status (401), and refuses an authenticated non-operator (403)', async () => {
      const { inject } = await open(jwtConfig());
      const status = async (headers: Headers) => {
        const answer = await inject('GET', '/api/v1/cluster', headers);
        return [answer.status, answer.headers['www-authenticate']];
      };
      assert.deepEqual(await status({}), [401, 'Bearer']);
      assert.deepEqual(await status(bearer('not-a-token')), [401, 'Bearer error="invalid_token"']);
      assert.deepEqual(await status(bearer(sign('HS256', claims('otto'), secret))), [403, undefined]);
      assert.deepEqual(await status(bearer(sign('HS256', claims('olga', { manticore_operator: true }), secret))), [200, undefined]);
    });
    it('asks a caller without credentials for them on the limits (401), and tells any authenticated user', async () => {
      const { inject } = await open(jwtConfig());
      const limits = async (headers: Headers) => {
        const answer = await inject('GET', '/api/v1/limits', headers);
        return [answer.status, answer.headers['www-authenticate']];
      };
      assert.deepEqual(await limits({}), [401, 'Bearer']);
      assert.deepEqual(await limits(bearer('not-a-token')), [401, 'Bearer error="invalid_token"']);
      assert.deepEqual(await limits(bearer(sign('HS256', claims('otto'), secret))), [200, undefined]);
      assert.deepEqual(await limits(bearer(adminToken)), [200, undefined]);
    });
  });

  describe('rate limit', () => {
    it('answers 429 with Retry-After beyond the burst, per user, and recovers as time passes', async () => {
      const { inject } = await open(noneConfig, { requestsPerSecond: 2, burst: 3 });
      const as = (user: string) => ({ 'x-manticore-user': user });
      for (let i = 0; i < 3; i++) assert.equal((await inject('GET', '/api/v1/sessions', as('ada'))).status, 200);
      const limited = await inject('GET', '/api/v1/templates', as('ada'));
      assert.equal(limited.status, 429);
      assert.equal(limited.headers['retry-after'], '1');
      assert.equal(limited.body.error, 'too many requests');
      assert.match(limited.body.details[0], /at most 2 requests per second per user \(bursts of 3\)/);
      assert.equal((await inject('GET', '/api/v1/sessions', as('bea'))).status, 200, 'other users are not affected');
      for (let i = 0; i < 5; i++) assert.equal((await inject('GET', '/healthz')).status, 200, '/healthz is not limited');

      now += 499;
      assert.equal((await inject('GET', '/api/v1/sessions', as('ada'))).status, 429);
      now += 1;
      assert.equal((await inject('GET', '/api/v1/sessions', as('ada'))).status, 200, 'one token back after 500 ms');
      assert.equal((await inject('GET', '/api/v1/sessions', as('ada'))).status, 429);
      now += 10_000;
      for (let i = 0; i < 3; i++) assert.equal((await inject('GET', '/api/v1/sessions', as('ada'))).status, 200, 'a full burst again');
    });

    it('says how many whole seconds to wait, at least 1', () => {
      let clock = 0;
      const limiter = new RateLimiter({ requestsPerSecond: 0.25, burst: 1 }, () => clock);
      assert.deepEqual(limiter.take('a'), { allowed: true });
      assert.deepEqual(limiter.take('a'), { allowed: false, retryAfterSeconds: 4 });
      clock += 1_500;
      assert.deepEqual(limiter.take('a'), { allowed: false, retryAfterSeconds: 3 });
      clock -= 60_000;
      assert.deepEqual(limiter.take('a'), { allowed: false, retryAfterSeconds: 3 }, 'a clock stepping back takes nothing away');
      const fast = new RateLimiter({ requestsPerSecond: 1000, burst: 1 }, () => clock);
      fast.take('b');
      assert.deepEqual(fast.take('b'), { allowed: false, retryAfterSeconds: 1 });
    });

    it('keeps bounded memory however many users come', () => {
      let clock = 0;
      const limiter = new RateLimiter({ requestsPerSecond: 1, burst: 2 }, () => clock, 1_000);
      for (let i = 0; i < 25_000; i++) {
        clock += 1;
        assert.equal(limiter.take(`user-${i}`).allowed, true);
      }
      assert.equal(limiter.size, 1_000);
      // The most recent users keep their buckets.
      limiter.take('user-24999');
      assert.equal(limiter.take('user-24999').allowed, false);
    });

    it('counts a request once however often its handler asks who the caller is', () => {
      const identities: Authenticator = { identify: () => ({ user: 'ida', operator: false }) };
      const auth = new RateLimitedAuthenticator(identities, new RateLimiter({ requestsPerSecond: 1, burst: 1 }, () => 0));
      const request = {} as FastifyRequest;
      const reply = {} as FastifyReply;
      auth.identify(request, reply);
      assert.deepEqual(auth.identify(request, reply), { user: 'ida', operator: false });
      assert.throws(() => auth.identify({} as FastifyRequest, reply), { statusCode: 429 });
    });
  });

  describe('start-up', () => {
    const refuses = (publicKeys: string[], message: RegExp): void => {
      assert.throws(
        () => createAuthenticator(jwtConfig({ publicKeys })),
        (error: unknown) => error instanceof ValidationError && message.test(error.message),
      );
    };

    it('refuses a public key that cannot be read or is not a supported PEM key, naming it', () => {
      refuses([rsaPem, path.join(dir, 'missing.pem')], /\/auth\/jwt\/publicKeys\/1: cannot read the key file .*missing\.pem: ENOENT/);
      refuses(['-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----\n'], /publicKeys\/0: the PEM text is not a PEM public key/);
      const garbage = path.join(dir, 'garbage.pem');
      fs.writeFileSync(garbage, 'not a key');
      refuses([garbage], /publicKeys\/0: the key file .*garbage\.pem is not a PEM public key/);
      const ed = crypto.generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }) as string;
      refuses([ed], /publicKeys\/0: a ed25519 key; RSA \(RS256\) or EC P-256 \(ES256\) keys are supported/);
      const p384 = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey.export({ type: 'spki', format: 'pem' }) as string;
      refuses([p384], /a ec secp384r1 key/);
    });
  });
});
