import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import type { InjectOptions } from 'fastify';
import type { ManticoreConfig } from '../../controller/config/config.js';
import { createAuthenticator } from '../../controller/frontend/auth.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import { testFrontend } from '../support/frontend.js';
import { seededRandom } from '../support/random.js';

const secret = 'a-shared-secret-of-at-least-32-characters';
const adminToken = 'an-admin-token-of-at-least-32-characters';

/** Random requests of every kind, good and bad, from one seed. */
class RequestGenerator {
  private readonly random: () => number;
  /** Ids of sessions created during the run, so reads, keepalives and deletes also hit real sessions. */
  readonly created: string[] = [];

  constructor(
    seed: number,
    private readonly tokens: readonly string[],
  ) {
    this.random = seededRandom(seed);
  }

  int(below: number): number {
    return Math.floor(this.random() * below);
  }

  chance(p: number): boolean {
    return this.random() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  /** Strings that break things: empty, traversal, percent signs, unicode, control characters, very long. */
  text(): string {
    const kind = this.int(9);
    const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789-._~!$&\'()*+,;=:@/?#[]%" <>\\^`{|}';
    switch (kind) {
      case 0:
        return '';
      case 1:
        return this.pick(['../', '..%2F..%2Fetc%2Fpasswd', '%2e%2e/%2e%2e/', '....//', '%00', '%', '%zz', '%E0%A4%A', 'null', 'undefined', '__proto__', 'constructor', 'toString', 'NaN', '-1', '1e309']);
      case 2:
        return Array.from({ length: 1 + this.int(40) }, () => this.pick(['é', 'ß', '日本', '🙂', '\u202e', '\u0000', '\ud800', 'Ω', '\t', '\n'])).join('');
      case 3:
        return 'x'.repeat(1_000 + this.int(20_000));
      case 4:
        return Array.from({ length: 1 + this.int(30) }, () => this.pick([...alphabet])).join('');
      case 5:
        return Array.from({ length: 8 + this.int(33) }, () => this.pick([...'abcdefghijklmnopqrstuvwxyz234567'])).join('');
      case 6:
        return this.pick(['demo', 'sdl', 'alice', 'bob', 'generic', '8.1.0']);
      default:
        return String(this.int(1_000_000) - 500);
    }
  }

  /**
   * A path segment or query part as a client might send it: fully percent-encoded, or raw with only the
   * bytes a request line cannot carry encoded (so `/`, `?`, `%`, `#` and `..` get through as they are).
   */
  segment(value: string): string {
    const raw = this.chance(0.5);
    return [...Buffer.from(value, 'utf8')]
      .map((byte) => (/[A-Za-z0-9_.~-]/.test(String.fromCharCode(byte)) || (raw && byte > 0x20 && byte < 0x7f) ? String.fromCharCode(byte) : `%${byte.toString(16).padStart(2, '0').toUpperCase()}`))
      .join('');
  }

  id(forEvents: boolean): string {
    // An owned session's event stream never ends; the fuzzer only opens streams that must be refused.
    if (!forEvents && this.created.length > 0 && this.chance(0.4)) return this.pick(this.created);
    return this.segment(this.text());
  }

  path(): string {
    const id = (forEvents = false): string => this.id(forEvents);
    switch (this.int(12)) {
      case 0:
        return '/api/v1/templates';
      case 1:
        return `/api/v1/templates/${this.chance(0.5) ? this.pick(['demo', 'sdl']) : this.segment(this.text())}`;
      case 2:
      case 3:
        return '/api/v1/sessions';
      case 4:
      case 5:
        return `/api/v1/sessions/${id()}`;
      case 6:
        return `/api/v1/sessions/${id()}/keepalive`;
      case 7:
        return `/api/v1/sessions/${id(true)}/events`;
      case 8:
        return this.pick(['/healthz', '/', '/api/v1/openapi.json', '/api/v2/job', '/api/v2/info', '/web/app.js', '/api', '/api/v1', '/api/v1/']);
      case 9:
        return `/api/v1/sessions/${id()}/${this.segment(this.text())}`;
      default:
        return `/${Array.from({ length: 1 + this.int(5) }, () => this.segment(this.text())).join('/')}`;
    }
  }

  query(): string {
    if (this.chance(0.5)) return '';
    const pairs = Array.from({ length: 1 + this.int(4) }, () => {
      const key = this.pick(['access_token', 'all', 'id', 'a[b]', '__proto__', this.segment(this.text())]);
      const value = key === 'access_token' && this.chance(0.6) ? this.pick(this.tokens) : this.segment(this.text());
      return this.chance(0.1) ? key : `${key}=${value}`;
    });
    return `?${pairs.join(this.chance(0.9) ? '&' : ';')}`;
  }

  /** A header value as bytes on the wire: non-Latin-1 text goes as its UTF-8 bytes. */
  headerValue(value: string): string {
    return Buffer.from(value.replace(/[\r\n\0]/g, ' '), 'utf8').toString('latin1');
  }

  headers(): Record<string, string> {
    const headers: Record<string, string> = {};
    if (this.chance(0.6)) {
      headers['content-type'] = this.pick([
        'application/json',
        'application/json; charset=utf-8',
        'application/json; charset=latin1',
        'application/json; charset=utf-16',
        'APPLICATION/JSON',
        'application/json;;',
        'text/plain',
        'application/x-www-form-urlencoded',
        'multipart/form-data; boundary=x',
        'application/octet-stream',
        '*/*',
        ';',
        this.headerValue(this.text()),
      ]);
    }
    if (this.chance(0.5)) {
      const token = this.pick(this.tokens);
      headers.authorization = this.headerValue(
        this.pick([
          `Bearer ${token}`,
          `bearer ${token}`,
          `Bearer  ${token}  `,
          `Bearer ${this.mutate(token)}`,
          `Bearer ${token}.${token}`,
          'Bearer',
          'Bearer ',
          `Basic ${Buffer.from('user:pass').toString('base64')}`,
          `Token ${token}`,
          this.text(),
        ]),
      );
    }
    if (this.chance(0.4)) {
      headers.cookie = this.headerValue(
        this.pick([
          `manticore_user=anon-${'abcdefghijklmnopqrstuvwxyz'}`,
          `manticore_user=${this.text()}`,
          `manticore_user=anon-${this.text()}`,
          `a=b; manticore_user=anon-${'q'.repeat(26)}; c`,
          ';;;==;',
          '=',
          'manticore_user',
          this.text(),
        ]),
      );
    }
    if (this.chance(0.4)) headers['x-manticore-user'] = this.headerValue(this.chance(0.5) ? this.pick(['alice', 'bob', 'carol', 'operator']) : this.text());
    if (this.chance(0.2)) headers[this.pick(['accept', 'origin', 'x-forwarded-for', 'accept-encoding', 'if-none-match', 'range'])] = this.headerValue(this.text());
    return headers;
  }

  /** The token with one character changed, dropped or added. */
  mutate(token: string): string {
    const at = this.int(token.length + 1);
    const replacement = this.pick(['', 'A', '.', '-', '_', '=', '+', '/', '%']);
    return token.slice(0, at) + replacement + token.slice(at + (this.chance(0.5) ? 1 : 0));
  }

  json(depth = 0): unknown {
    switch (this.int(depth > 3 ? 5 : 8)) {
      case 0:
        return null;
      case 1:
        return this.chance(0.5);
      case 2:
        return this.pick([0, -1, 1.5, 1e308, -0, Number.MAX_SAFE_INTEGER + 2]);
      case 3:
      case 4:
        return this.text();
      case 5:
        return Array.from({ length: this.int(5) }, () => this.json(depth + 1));
      default:
        return Object.fromEntries(Array.from({ length: this.int(6) }, () => [this.pick(['template', 'parameters', 'labels', 'id', 'coreVersion', 'hmiType', this.text()]), this.json(depth + 1)]));
    }
  }

  body(): string | Buffer | undefined {
    switch (this.int(10)) {
      case 0:
        return undefined;
      case 1:
        return '';
      case 2:
      case 3: {
        // A nearly valid create body, so the deeper checks (templates, parameters, labels, limits) run too.
        const body: Record<string, unknown> = { template: this.pick(['demo', 'demo', 'sdl', this.text()]) };
        if (this.chance(0.5)) body.parameters = this.pick([{ coreVersion: this.pick(['8.1.0', this.text()]) }, { hmiType: 'generic' }, { [this.text()]: this.text() }, this.json()]);
        if (this.chance(0.3)) body.labels = this.pick([{ team: 'qa' }, { [this.text()]: this.text() }, this.json()]);
        return JSON.stringify(body);
      }
      case 4:
        return JSON.stringify(this.json());
      case 5:
        return this.pick(['{', '{"template":', '{"template":"demo"', '[1,2', 'nul', '{"__proto__":{"admin":true},"template":"demo"}', '{"constructor":{"prototype":{"x":1}}}', '"\\ud800"', '{"template":"demo"}{"template":"demo"}', '\ufeff{"template":"demo"}']);
      case 6:
        return crypto.createHash('sha512').update(String(this.int(1e9))).digest();
      case 7:
        return JSON.stringify({ template: 'demo', padding: 'x'.repeat(this.int(10_000)) });
      default:
        return this.text();
    }
  }

  request(): InjectOptions {
    return this.chance(0.3) ? this.plausible() : this.anything();
  }

  /** Anything at all: any method on any path with any headers and body. */
  private anything(): InjectOptions {
    const method = this.pick(['GET', 'GET', 'POST', 'POST', 'DELETE', 'PUT', 'PATCH', 'HEAD', 'OPTIONS'] as const);
    const body = method === 'GET' || method === 'HEAD' ? (this.chance(0.1) ? this.body() : undefined) : this.body();
    // A path starting `//` would be read as a host by the injector's URL parser, not sent as a path.
    const url = (this.path() + this.query()).replace(/^\/[/\\]+/, '/');
    return { method, url, headers: this.headers(), ...(body === undefined ? {} : { payload: body }) };
  }

  /** A request a real client could send, give or take one thing, so the checks behind the front door run. */
  private plausible(): InjectOptions {
    const headers = this.headers();
    if (this.chance(0.8)) headers.authorization = `Bearer ${this.pick(this.tokens)}`;
    const id = this.created.length > 0 && this.chance(0.7) ? this.pick(this.created) : this.id(false);
    switch (this.int(5)) {
      case 0:
      case 1:
        return { method: 'POST', url: '/api/v1/sessions', headers: { ...headers, 'content-type': 'application/json' }, payload: this.chance(0.7) ? '{"template":"demo"}' : (this.body() ?? '') };
      case 2:
        return { method: this.pick(['GET', 'DELETE'] as const), url: `/api/v1/sessions/${id}`, headers };
      case 3:
        return { method: 'POST', url: `/api/v1/sessions/${id}/keepalive`, headers };
      default:
        return { method: 'GET', url: this.pick(['/api/v1/sessions', '/api/v1/templates', '/api/v1/templates/demo']), headers };
    }
  }
}

const describeRequest = (index: number, request: InjectOptions): string => {
  const clip = (value: unknown): string => JSON.stringify(value)?.slice(0, 300) ?? String(value);
  return `request #${index}: ${request.method} ${clip(request.url)} headers ${clip(request.headers)} body ${clip(Buffer.isBuffer(request.payload) ? '<bytes>' : request.payload)}`;
};

describe('front end fuzzing: no 5xx for anything a client sends', function () {
  this.timeout(120_000);
  let base: Omit<ManticoreConfig['auth'], 'mode'>;
  before(() => {
    // Public keys configured, so the RS256 and ES256 paths see the garbage too.
    const pem = ({ publicKey }: crypto.KeyPairKeyObjectResult): string => publicKey.export({ type: 'spki', format: 'pem' }) as string;
    const publicKeys = [pem(crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })), pem(crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }))];
    base = { jwt: { secret, publicKeys, userClaim: 'sub', operatorClaim: 'manticore_operator', audience: 'manticore' }, adminToken };
  });

  for (const [mode, seed] of [['none', 0x5eed1], ['jwt', 0x5eed2]] as const) {
    it(`answers 5,000 random requests below 500 with auth mode ${mode}, and still works afterwards`, async () => {
      let now = Date.parse('2026-03-01T12:00:00.000Z');
      const store = EmbeddedStore.open(':memory:');
      const frontend = testFrontend(store, {
        sessionsPerUser: 3,
        authenticator: createAuthenticator({ mode, ...base }, () => now),
        rateLimit: { requestsPerSecond: 5, burst: 10 },
        now: () => now,
      });
      await frontend.start('127.0.0.1', 0);
      try {
        const seconds = (): number => Math.floor(now / 1000);
        const signHs256 = (claims: object, alg = 'HS256'): string => {
          const signed = `${Buffer.from(JSON.stringify({ alg, typ: 'JWT' })).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
          return `${signed}.${crypto.createHmac('sha256', secret).update(signed).digest('base64url')}`;
        };
        const valid = (sub: unknown, extra: object = {}): string => signHs256({ sub, aud: 'manticore', exp: seconds() + 86_400, ...extra });
        const tokens = [
          valid('alice'),
          valid('bob'),
          valid(4711),
          valid('olga', { manticore_operator: true }),
          valid('x'.repeat(200)),
          valid({ nested: true }),
          valid('carol', { exp: seconds() - 3600 }),
          valid('dave', { aud: ['other'] }),
          valid('erin', { exp: 'tomorrow' }),
          signHs256({ sub: 'frank' }, 'none'),
          signHs256({ sub: 'gus' }, 'RS256'),
          adminToken,
          'a.b.c',
          '...',
          `${'A'.repeat(6000)}.${'B'.repeat(6000)}.${'C'.repeat(100)}`,
        ];
        const generator = new RequestGenerator(seed, tokens);
        const statuses = new Map<number, number>();
        for (let index = 0; index < 5_000; index++) {
          const request = generator.request();
          const response = await frontend.app.inject(request);
          assert.ok(response.statusCode < 500, `${describeRequest(index, request)} → ${response.statusCode} ${response.body.slice(0, 300)}`);
          statuses.set(response.statusCode, (statuses.get(response.statusCode) ?? 0) + 1);
          if (response.statusCode === 201 && request.url === '/api/v1/sessions' && request.method === 'POST') generator.created.push((JSON.parse(response.body) as { metadata: { id: string } }).metadata.id);
          now += generator.int(4);
        }
        // The run reached past the front door: sessions were created, read, refused and rate limited.
        for (const status of [200, 201, 400, 404, 429, ...(mode === 'jwt' ? [401] : [])]) assert.ok((statuses.get(status) ?? 0) > 0, `no ${status} in ${JSON.stringify([...statuses])}`);

        now += 60_000;
        const credentials = mode === 'jwt' ? { authorization: `Bearer ${valid('after-the-storm')}` } : { 'x-manticore-user': 'after-the-storm' };
        const created = await frontend.app.inject({ method: 'POST', url: '/api/v1/sessions', headers: { ...credentials, 'content-type': 'application/json' }, payload: { template: 'demo' } });
        assert.equal(created.statusCode, 201, created.body);
        const id = (JSON.parse(created.body) as { metadata: { id: string } }).metadata.id;
        const read = await frontend.app.inject({ method: 'GET', url: `/api/v1/sessions/${id}`, headers: credentials });
        assert.equal(read.statusCode, 200, read.body);
      } finally {
        await frontend.stop();
        await store.close();
      }
    });
  }
});
