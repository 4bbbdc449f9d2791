import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from '../util/log.js';
import { instrumentHttp } from './http.js';

/** What a process's status server reports. */
export interface StatusProbes {
  /** Ready to do its work (caches synced, routes applied); `/readyz` answers 503 until then. */
  ready(): boolean;
  /** The body of `/status`. */
  status(): unknown;
}

/**
 * A process's operational endpoints on their own port, apart from user traffic: `/healthz` (the process
 * answers), `/readyz`, `/status` and `/metrics` (Prometheus text).
 */
export class StatusServer {
  private readonly app: FastifyInstance;

  constructor(server: 'controller' | 'router', probes: StatusProbes, log: Logger) {
    this.app = Fastify({ loggerInstance: log.child({ component: 'status-server' }) as FastifyBaseLogger, logController: new LogController({ disableRequestLogging: true }) });
    instrumentHttp(this.app, server);
    this.app.get('/healthz', async () => ({ ok: true }));
    this.app.get('/readyz', async (_request, reply) => {
      const ready = probes.ready();
      return reply.code(ready ? 200 : 503).send({ ready });
    });
    this.app.get('/status', async () => probes.status());
  }

  /** Listens; returns the address (the chosen port when `port` is 0). */
  async start(host: string, port: number): Promise<string> {
    return this.app.listen({ host, port });
  }

  async stop(): Promise<void> {
    await this.app.close();
  }
}
