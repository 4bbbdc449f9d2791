import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { registerWebPage, webDir } from '../../controller/frontend/web.js';

describe('front end (web page files)', () => {
  let app: FastifyInstance;

  before(async () => {
    app = Fastify();
    registerWebPage(app);
    await app.ready();
  });
  after(() => app.close());

  it('finds the page in the source tree from dist/', () => {
    assert.equal(webDir, path.resolve(__dirname, '../../../controller/frontend/web'));
  });

  it('serves each file with its content type, revalidation and a same-origin-only policy', async () => {
    const files: Array<[string, string, string]> = [
      ['/', 'index.html', 'text/html; charset=utf-8'],
      ['/web/app.js', 'app.js', 'text/javascript; charset=utf-8'],
      ['/web/style.css', 'style.css', 'text/css; charset=utf-8'],
      ['/web/icon.svg', 'icon.svg', 'image/svg+xml'],
    ];
    for (const [url, file, type] of files) {
      const response = await app.inject({ method: 'GET', url });
      assert.equal(response.statusCode, 200, url);
      assert.equal(response.body, fs.readFileSync(path.join(webDir, file), 'utf8'), url);
      assert.equal(response.headers['content-type'], type, url);
      assert.equal(response.headers['cache-control'], 'no-cache', url);
      assert.equal(response.headers['x-content-type-options'], 'nosniff', url);
      const policy = String(response.headers['content-security-policy']);
      assert.match(policy, /default-src 'none'/, url);
      assert.match(policy, /script-src 'self';/, url);
      assert.match(policy, /connect-src 'self';/, url);
      assert.match(policy, /frame-ancestors 'none'/, url);
      assert.doesNotMatch(policy, /unsafe|\*|data:/, url);
    }
  });

  it('answers a request for an unchanged file with 304 and no body', async () => {
    const first = await app.inject({ method: 'GET', url: '/web/app.js' });
    const etag = String(first.headers.etag);
    assert.match(etag, /^"[A-Za-z0-9_-]+"$/);
    const again = await app.inject({ method: 'GET', url: '/web/app.js', headers: { 'if-none-match': `"other", ${etag}` } });
    assert.equal(again.statusCode, 304);
    assert.equal(again.body, '');
    assert.equal(again.headers.etag, etag);
    const changed = await app.inject({ method: 'GET', url: '/web/app.js', headers: { 'if-none-match': '"other"' } });
    assert.equal(changed.statusCode, 200);
  });

  it('refers only to files it serves', () => {
    const html = fs.readFileSync(path.join(webDir, 'index.html'), 'utf8');
    const references = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((match) => match[1]!);
    assert.deepEqual(references.sort(), ['/web/app.js', '/web/icon.svg', '/web/style.css']);
  });
});
