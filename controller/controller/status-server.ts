import type { StatusProbes } from '../metrics/status-server.js';
import type { Controller } from './controller.js';
import type { Identity, LeaderRecord } from './leader.js';

export interface ControllerStatus {
  readonly leader: LeaderRecord | null;
  readonly leading: boolean;
  readonly identity: Identity;
}

/** The controller's probes: ready once its caches are synced (a standby too: it can take over at once); status names the leader. */
export function controllerProbes(controller: Controller): StatusProbes {
  return {
    ready: () => controller.ready,
    status: (): ControllerStatus => {
      const { leadership } = controller;
      return { leader: leadership.leader() ?? null, leading: leadership.leading, identity: leadership.identity };
    },
  };
}
