import type { FastifyInstance } from 'fastify';
import { parseRecord } from '../api/schemas.js';
import type { ControllerHeartbeat, Phase, RouterHeartbeat } from '../api/types.js';
import type { Keys } from '../controller/keys.js';
import { parseLeaderRecord, type LeaderRecord } from '../controller/leader.js';
import type { KvEntry, Store } from '../store/store.js';
import { ApiError } from './errors.js';
import type { Authenticator } from './identity.js';
import type { SessionService } from './sessions.js';

export interface ClusterOptions {
  /** A controller replica whose heartbeat is older than this is reported stale (three heartbeat intervals). */
  readonly replicaStaleMs: number;
  /** A router whose heartbeat is older than this is not live (the controller's `routerStaleSeconds`). */
  readonly routerStaleMs: number;
}

export interface ClusterStatus {
  leader: LeaderRecord | null;
  replicas: Array<ControllerHeartbeat & { live: boolean }>;
  /** `unappliedRoutes`: route records changed after the index the router has applied (0: up to date). */
  routers: Array<RouterHeartbeat & { live: boolean; unappliedRoutes: number }>;
  /** How many sessions have routes. */
  routes: number;
  sessions: { total: number; byPhase: Record<Phase, number>; oldestWaitingSince: string | null };
  /**
   * Records that cannot be read, named with the problem: heartbeats (left out of `replicas` and `routers`),
   * the leader key (then `leader` is null), and session records, which no one can be shown otherwise.
   */
  unreadable: UnreadableRecord[];
}

export interface UnreadableRecord {
  key: string;
  problem: string;
}

const phases: readonly Phase[] = ['Pending', 'Waiting', 'Starting', 'Ready', 'Terminating', 'Failed'];

/**
 * `GET /api/v1/cluster` for operators (`manticore status`): who leads, which controller replicas and
 * routers are alive and how far each router is behind the routes, and how many sessions are in each phase.
 * Read from the store on each request: a handful of small keys, asked for rarely.
 */
export function registerCluster(app: FastifyInstance, store: Store, keys: Keys, sessions: SessionService, auth: Authenticator, options: ClusterOptions, now: () => number): void {
  app.get('/api/v1/cluster', async (request, reply): Promise<ClusterStatus> => {
    if (!auth.identify(request, reply).operator) {
      throw new ApiError(403, 'the cluster status is for operators', ['Authorization: Bearer <auth.adminToken> (MANTICORE_ADMIN_TOKEN), or a JWT whose operator claim is true']);
    }
    const [leaderEntry, controllers, routers, routes] = await Promise.all([store.get(keys.leader), store.list(keys.controllers), store.list(keys.routers), store.list(keys.routes)]);
    const time = now();
    const fresh = (heartbeatAt: string, staleMs: number): boolean => time - Date.parse(heartbeatAt) <= staleMs;
    const unreadable: UnreadableRecord[] = [];
    return {
      leader: leaderOf(leaderEntry, unreadable),
      replicas: readable<ControllerHeartbeat>(controllers.entries, 'controller-heartbeat', unreadable)
        .map((replica) => ({ ...replica, live: fresh(replica.heartbeatAt, options.replicaStaleMs) }))
        .sort((a, b) => a.host.localeCompare(b.host) || a.pid - b.pid),
      routers: readable<RouterHeartbeat>(routers.entries, 'router-heartbeat', unreadable)
        .map((router) => ({
          ...router,
          live: fresh(router.heartbeatAt, options.routerStaleMs),
          unappliedRoutes: routes.entries.filter((route) => route.modifyIndex > router.appliedIndex).length,
        }))
        .sort((a, b) => a.name.localeCompare(b.name)),
      routes: routes.entries.length,
      sessions: sessionSummary(sessions),
      unreadable: [...unreadable, ...unreadableSessions(sessions, keys)],
    };
  });
}

/** The leader as its key names it, while the key is locked (an unlocked key's value is history). */
function leaderOf(entry: KvEntry | undefined, unreadable: UnreadableRecord[]): LeaderRecord | null {
  if (entry?.session === undefined) return null;
  try {
    return parseLeaderRecord(entry.value);
  } catch (error) {
    unreadable.push({ key: entry.key, problem: (error as Error).message });
    return null;
  }
}

/** Session records the front end cannot read: it lists them to no one, and their owners cannot be told. */
function unreadableSessions(sessions: SessionService, keys: Keys): UnreadableRecord[] {
  return [...sessions.sessions.cache.values()].flatMap((cached) => (cached.error === undefined ? [] : [{ key: keys.session(cached.id), problem: cached.error }]));
}

/** The records that parse; a malformed one is added to `unreadable` rather than failing the whole answer. */
function readable<T>(entries: readonly KvEntry[], schema: 'controller-heartbeat' | 'router-heartbeat', unreadable: UnreadableRecord[]): T[] {
  return entries.flatMap((entry) => {
    try {
      return [parseRecord<T>(schema, entry.value)];
    } catch (error) {
      unreadable.push({ key: entry.key, problem: (error as Error).message });
      return [];
    }
  });
}

function sessionSummary(sessions: SessionService): ClusterStatus['sessions'] {
  const byPhase = Object.fromEntries(phases.map((phase) => [phase, 0])) as Record<Phase, number>;
  let total = 0;
  let oldestWaitingSince: string | null = null;
  for (const cached of sessions.sessions.cache.values()) {
    if (cached.value === undefined) continue;
    const phase = sessions.statuses.cache.get(cached.id)?.value?.phase ?? 'Pending';
    total += 1;
    byPhase[phase] += 1;
    const { createdAt } = cached.value.metadata;
    if (phase === 'Waiting' && (oldestWaitingSince === null || createdAt < oldestWaitingSince)) oldestWaitingSince = createdAt;
  }
  return { total, byPhase, oldestWaitingSince };
}
