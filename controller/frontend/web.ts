import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Authenticator } from './identity.js';

/** The page's files, served from the source tree (no build step), found from here both in the source tree and in dist/. */
export const webDir: string = path.join(packageRoot(__dirname), 'controller/frontend/web');

const pageUrl = '/';

/** URL → file in `webDir`. The page is `/`; its assets live under `/web/`. */
const routes: ReadonlyArray<readonly [url: string, file: string]> = [
  [pageUrl, 'index.html'],
  ['/web/app.js', 'app.js'],
  ['/web/style.css', 'style.css'],
  ['/web/icon.svg', 'icon.svg'],
];

const contentTypes: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};

/**
 * The page may load and talk to nothing but this origin: no inline script or style, no plugins, no
 * framing (clickjacking), and forms and `<base>` cannot send anything elsewhere.
 */
const contentSecurityPolicy = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

/**
 * The web page for people (`/`): pick a template, start a session, follow it live, copy its addresses, keep
 * it alive, end it. The files are read once at start-up (a missing one stops the front end at once) and
 * served with a strong ETag and `no-cache`: a browser revalidates on every load (a 304 costs nothing) and so
 * never runs a stale script against a newer API after an upgrade. The page itself comes with what the
 * authenticator hands a new visitor (`welcome`).
 */
export function registerWebPage(app: FastifyInstance, authenticator?: Pick<Authenticator, 'welcome'>): void {
  for (const [url, file] of routes) {
    const body = fs.readFileSync(path.join(webDir, file));
    const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
    const headers = {
      'content-type': contentTypes[path.extname(file)]!,
      'cache-control': 'no-cache',
      etag,
      'content-security-policy': contentSecurityPolicy,
      'x-content-type-options': 'nosniff',
      // The page links to sessions' secret hostnames; nothing about it needs to travel in a Referer.
      'referrer-policy': 'no-referrer',
    };
    const welcome = url === pageUrl ? authenticator?.welcome?.bind(authenticator) : undefined;
    app.get(url, async (request, reply) => {
      void reply.headers(headers);
      welcome?.(request, reply);
      if (request.headers['if-none-match']?.split(/\s*,\s*/).includes(etag)) return reply.code(304).send();
      return reply.send(body);
    });
  }
}

/** The directory holding package.json, at or above `from`. */
function packageRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`cannot find package.json above ${from}`);
  }
}
