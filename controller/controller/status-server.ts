import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from '../util/log.js';
import type { Controller } from './controller.js';
import type { Identity, LeaderRecord } from './leader.js';

export interface ControllerStatus {
  readonly leader: LeaderRecord | null;
  readonly leading: boolean;
  readonly identity: Identity;
}

/**
 * The controller process's probes: `/healthz` (the process answers), `/readyz` (caches synced: a standby is
 * ready too, since it can take over at once) and `/status` (who leads).
 */
export class ControllerStatusServer {
  private readonly app: FastifyInstance;

  constructor(controller: Controller, log: Logger) {
    this.app = Fastify({ loggerInstance: log.child({ component: 'status-server' }) as FastifyBaseLogger, logController: new LogController({ disableRequestLogging: true }) });
    this.app.get('/healthz', async () => ({ ok: true }));
    this.app.get('/readyz', async (_request, reply) => reply.code(controller.ready ? 200 : 503).send({ ready: controller.ready }));
    this.app.get('/status', async (): Promise<ControllerStatus> => {
      const { leadership } = controller;
      return { leader: leadership.leader() ?? null, leading: leadership.leading, identity: leadership.identity };
    });
  }

  /** Listens; returns the address (the chosen port when `port` is 0). */
  async start(host: string, port: number): Promise<string> {
    return this.app.listen({ host, port });
  }

  async stop(): Promise<void> {
    await this.app.close();
  }
}
