import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { httpRequests, httpSeconds, registry } from './metrics.js';

/**
 * Counts every request an HTTP server answers, by route pattern (not the raw URL, so session ids never
 * become label values) and status, and serves the process's metrics as `GET /metrics`.
 */
export function instrumentHttp(app: FastifyInstance, server: 'frontend' | 'controller' | 'router'): void {
  // The requests that reached a route; those the router refuses itself (a URL that does not decode, an
  // overlong path part) run no hook, so the answers are counted on the HTTP server, not in a hook.
  const routed = new WeakMap<IncomingMessage, FastifyRequest>();
  app.addHook('onRequest', async (request) => {
    routed.set(request.raw, request);
  });
  app.server.on('request', (raw: IncomingMessage, response: ServerResponse) => {
    const startedAt = performance.now();
    // The raw response's close covers hijacked answers (event streams) too, which skip Fastify's onResponse.
    response.once('close', () => {
      const route = routed.get(raw)?.routeOptions.url ?? 'unmatched';
      const labels = { server, method: raw.method ?? 'unknown', route };
      httpRequests.inc({ ...labels, status: String(response.statusCode) });
      httpSeconds.observe(labels, (performance.now() - startedAt) / 1000);
    });
  });
  app.get('/metrics', async (_request, reply) => reply.type(registry.contentType).send(await registry.metrics()));
}
