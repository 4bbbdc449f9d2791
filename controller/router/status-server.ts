import { routerReadySources } from '../metrics/metrics.js';
import type { StatusProbes } from '../metrics/status-server.js';
import type { RouterAgent } from './agent.js';
import type { EdgeTls } from './edge-tls.js';
import type { HaproxyProcess } from './haproxy-process.js';

/**
 * The router's probes. Ready while this edge serves sessions: its agent applies the routes and its HAProxy
 * answers on its sockets, not merely runs (the AWS load balancers' health check asks /readyz, so a dead or
 * still starting HAProxy must show even while no route changes). Status is what it has applied, and the edge certificate's state.
 */
export function routerProbes(router: Pick<RouterAgent, 'serving' | 'progress'>, haproxy: Pick<HaproxyProcess, 'serving'>, edgeTls?: Pick<EdgeTls, 'status'>): StatusProbes {
  return {
    ready: () => router.serving && haproxy.serving,
    status: () => ({ ...router.progress, ...(edgeTls === undefined ? {} : { tls: edgeTls.status() }) }),
  };
}

/**
 * Exports the router's readiness as `manticore_router_ready`, so an alert sees an edge that stopped serving
 * even while no route changes (the applied-index lag only moves with changes). Returns the undo.
 */
export function exportRouterReadiness(name: string, probes: Pick<StatusProbes, 'ready'>): () => void {
  return routerReadySources.add(() => ({ router: name, ready: probes.ready() }));
}
