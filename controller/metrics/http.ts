import type { FastifyInstance } from 'fastify';
import { httpRequests, httpSeconds, registry } from './metrics.js';

/**
 * Counts every request an HTTP server answers, by route pattern (not the raw URL, so session ids never
 * become label values) and status, and serves the process's metrics as `GET /metrics`.
 */
export function instrumentHttp(app: FastifyInstance, server: 'frontend' | 'controller' | 'router'): void {
  app.addHook('onRequest', async (request, reply) => {
    const startedAt = performance.now();
    // The raw response's close covers hijacked answers (event streams) too, which skip Fastify's onResponse.
    reply.raw.once('close', () => {
      const route = request.routeOptions.url ?? 'unmatched';
      const labels = { server, method: request.method, route };
      httpRequests.inc({ ...labels, status: String(reply.raw.statusCode) });
      httpSeconds.observe(labels, (performance.now() - startedAt) / 1000);
    });
  });
  app.get('/metrics', async (_request, reply) => reply.type(registry.contentType).send(await registry.metrics()));
}
