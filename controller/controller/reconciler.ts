import type {
  Endpoint,
  RouteRecord,
  RouterHeartbeat,
  SessionRecord,
  SessionStatus,
  SessionTemplate,
} from '../api/types.js';
import { encodeRecord } from '../api/schemas.js';
import { resolveParameters } from '../api/templates.js';
import type { Logger } from '../util/log.js';
import type { Store } from '../store/store.js';
import { jobIdFor, RenderError, type Allocation, type Scheduler, type Workload } from '../scheduler/scheduler.js';
import type { PortAllocator } from './claims.js';
import { newClaim, publicEndpoints, type PublicAddressing } from './endpoints.js';
import type { Cache, CachedRecord } from './informer.js';
import type { Keys } from './keys.js';
import { Expectations } from './expectations.js';
import { nextStatus, sameStatus, type ConditionInput } from './status.js';

/** The observed world the reconciler reads: caches fed by watches, never the backends directly. */
export interface ObservedState {
  readonly sessions: Cache<CachedRecord<SessionRecord>>;
  readonly statuses: Cache<CachedRecord<SessionStatus>>;
  readonly routes: Cache<CachedRecord<RouteRecord>>;
  readonly routers: Cache<CachedRecord<RouterHeartbeat>>;
  readonly workloads: Cache<Workload>;
  /** Store index up to which the routes cache has seen every change. */
  routesIndex(): number;
}

export interface ReconcilerDeps {
  readonly store: Store;
  readonly scheduler: Scheduler;
  readonly keys: Keys;
  readonly observed: ObservedState;
  readonly templates: ReadonlyMap<string, SessionTemplate>;
  readonly ports: PortAllocator;
  readonly addressing: PublicAddressing;
  readonly routerStaleMs: number;
  readonly log: Logger;
  readonly now?: () => number;
  /** How long to wait for the caches to show the reconciler's own writes before acting anyway. */
  readonly expectationTimeoutMs?: number;
}

export interface ReconcileResult {
  /** Reconcile this session again after this long even if nothing changes (a timer, not a retry). */
  readonly requeueAfterMs?: number;
  /** The session waits for routers to apply routes up to this store index. */
  readonly awaitingRoutersAt?: number;
  /** The session waits for a TCP port to be freed. */
  readonly awaitingPort?: boolean;
}

/** Raised when a write lost a compare-and-set: the cache was stale; the key is retried with backoff. */
export class ConflictError extends Error {
  constructor(key: string) {
    super(`compare-and-set on ${key} failed: the cached copy was stale`);
    this.name = 'ConflictError';
  }
}

const done: ReconcileResult = {};

/**
 * Drives one session's world toward its record. Level-triggered: each call reads the whole desired and
 * observed state for the session from the caches and does whatever is missing, so a missed event, a crash
 * half-way or a restart leaves no lasting damage. Writes are compare-and-set against the cached index.
 */
export class SessionReconciler {
  private readonly now: () => number;

  private readonly expectations: Expectations;

  constructor(private readonly deps: ReconcilerDeps) {
    this.now = deps.now ?? Date.now;
    this.expectations = new Expectations(deps.expectationTimeoutMs ?? 30_000, this.now);
  }

  async reconcile(id: string): Promise<ReconcileResult> {
    const catchingUp = this.expectations.waitFor(id);
    if (catchingUp !== undefined) return { requeueAfterMs: catchingUp };
    const record = this.deps.observed.sessions.get(id);
    if (record === undefined) return this.collectOrphans(id);
    if (record.value === undefined || record.value.metadata.id !== id) {
      const reason = record.error ?? `metadata.id "${record.value?.metadata.id}" does not match the key`;
      // An unreadable record says nothing about what should run, so nothing is started or torn down.
      await this.writeStatus(id, {
        phase: 'Failed',
        observedGeneration: 0,
        conditions: [{ type: 'Valid', status: 'False', reason: 'InvalidRecord', message: reason }],
        endpoints: {},
      });
      return done;
    }
    const session = record.value;
    if (session.metadata.deletionRequestedAt !== undefined) return this.finalize(id, record);
    return this.converge(id, session);
  }

  /** Everything a session should have while it is wanted: claim, workload, routes, and a status that says so. */
  private async converge(id: string, session: SessionRecord): Promise<ReconcileResult> {
    const { observed } = this.deps;
    const generation = session.metadata.generation;
    const previous = observed.statuses.get(id)?.value;

    const template = this.deps.templates.get(session.spec.template);
    if (template === undefined) {
      return this.fail(id, generation, 'TemplateNotFound', `template "${session.spec.template}" does not exist`);
    }
    let parameters: Record<string, string>;
    try {
      parameters = resolveParameters(template, session.spec.parameters);
    } catch (error) {
      return this.fail(id, generation, 'InvalidParameters', (error as Error).message);
    }
    // Failed is final for a generation: the reason stays readable and nothing is restarted behind the user's back.
    if (previous?.phase === 'Failed' && previous.observedGeneration === generation) {
      await this.release(id);
      return done;
    }

    const routesRecord = observed.routes.get(id);
    const claim = routesRecord?.value;
    if (claim === undefined) {
      if (routesRecord !== undefined) {
        return this.fail(id, generation, 'InvalidRoutes', `routes record is unreadable: ${routesRecord.error}`);
      }
      return this.admit(id, generation, template);
    }

    const endpoints = publicEndpoints(template, claim, this.deps.addressing);
    let job;
    try {
      job = this.deps.scheduler.render({ jobId: jobIdFor(id), sessionId: id, template, parameters, endpoints });
    } catch (error) {
      if (error instanceof RenderError) return this.fail(id, generation, 'Unschedulable', error.message);
      throw error;
    }
    const workload = observed.workloads.get(id);
    if (workload === undefined || workload.specHash !== job.specHash) {
      await this.deps.scheduler.register(job);
      this.expectations.expect(id, () => observed.workloads.get(id)?.specHash === job.specHash);
      this.deps.log.info({ session: id, job: job.id }, workload ? 'job updated' : 'job registered');
    }

    const allocation = workload?.specHash === job.specHash ? workload.allocation : undefined;
    if (allocation?.clientStatus === 'failed' || allocation?.clientStatus === 'lost') {
      return this.fail(id, generation, 'WorkloadFailed', describeTasks(allocation) || `allocation ${allocation.clientStatus}`);
    }

    const wanted = withBackends(claim, template, allocation);
    const routesChanged = JSON.stringify(wanted) !== JSON.stringify(claim);
    if (routesChanged) await this.put(id, observed.routes, this.deps.keys.route(id), encodeRecord('route', wanted));
    const routed: ConditionInput = routesChanged
      ? { type: 'Routed', status: 'False', reason: 'RoutesUpdating', message: 'routes are being updated to the workload address' }
      : this.routedCondition(claim, routesRecord!.entry.modifyIndex);

    const scheduled = scheduledCondition(workload?.specHash === job.specHash ? workload : undefined);
    const healthy = healthyCondition(allocation);
    // Ready is every other condition holding; otherwise it carries the first one that does not, as its reason.
    const blocker = [scheduled, healthy, routed].find((condition) => condition.status !== 'True');
    const ready = blocker === undefined;
    const conditions: ConditionInput[] = [
      { type: 'Admitted', status: 'True', reason: 'Claimed', message: 'hostnames and ports reserved' },
      scheduled,
      healthy,
      routed,
      blocker === undefined
        ? { type: 'Ready', status: 'True', reason: 'Ready', message: 'the session is serving' }
        : { type: 'Ready', status: 'False', reason: blocker.reason, message: blocker.message },
    ];
    // Addresses are shown once the session first serves, and stay shown while it lives (they never change).
    const published: Record<string, Endpoint> = {};
    if (ready || Object.keys(previous?.endpoints ?? {}).length > 0) {
      for (const [service, endpoint] of Object.entries(endpoints)) published[service] = { protocol: endpoint.protocol, url: endpoint.url };
    }
    await this.writeStatus(id, {
      phase: ready ? 'Ready' : 'Starting',
      observedGeneration: generation,
      conditions,
      endpoints: published,
      jobId: job.id,
      ...(allocation ? { allocationId: allocation.id } : {}),
    });
    const waitingForRouters = routed.reason === 'WaitingForRouters' || routed.reason === 'NoRouters';
    return waitingForRouters ? { awaitingRoutersAt: routesRecord!.entry.modifyIndex, requeueAfterMs: this.deps.routerStaleMs } : done;
  }

  /** Reserves the session's secret hostnames and TCP ports by writing its routes record (no backends yet). */
  private async admit(id: string, generation: number, template: SessionTemplate): Promise<ReconcileResult> {
    const reserved: number[] = [];
    const record = newClaim(id, template, () => {
      const port = this.deps.ports.reserve(id);
      if (port !== undefined) reserved.push(port);
      return port;
    });
    if (record === undefined) {
      for (const port of reserved) this.deps.ports.release(id, port);
      await this.writeStatus(id, {
        phase: 'Waiting',
        observedGeneration: generation,
        conditions: [
          { type: 'Admitted', status: 'False', reason: 'NoFreePort', message: `all ${this.deps.ports.capacity} public TCP ports are in use` },
          { type: 'Ready', status: 'False', reason: 'NoFreePort', message: 'waiting for a public TCP port' },
        ],
        endpoints: {},
      });
      return { awaitingPort: true };
    }
    try {
      await this.put(id, this.deps.observed.routes, this.deps.keys.route(id), encodeRecord('route', record));
    } catch (error) {
      for (const port of reserved) this.deps.ports.release(id, port);
      throw error;
    }
    this.deps.log.info({ session: id }, 'session admitted');
    // The routes watch brings the claim back into the cache and requeues the session.
    return done;
  }

  /** Finalizer: Terminating until the job is gone, the routes are removed from every router, then the records. */
  private async finalize(id: string, record: CachedRecord<SessionRecord>): Promise<ReconcileResult> {
    const { observed, keys } = this.deps;
    const previous = observed.statuses.get(id)?.value;
    await this.writeStatus(id, {
      phase: 'Terminating',
      observedGeneration: record.value!.metadata.generation,
      conditions: [{ type: 'Ready', status: 'False', reason: 'Terminating', message: 'the session is being torn down' }],
      endpoints: {},
      ...(previous?.jobId !== undefined ? { jobId: previous.jobId } : {}),
    });
    if (!(await this.release(id))) return done;
    const routesIndex = observed.routesIndex();
    if (!this.routersCaughtUp(routesIndex)) return { awaitingRoutersAt: routesIndex, requeueAfterMs: this.deps.routerStaleMs };
    // Status and record go together, so no one ever sees a session without its status or the reverse.
    const status = observed.statuses.get(id);
    const removed = await this.deps.store.transaction([
      ...(status ? [{ verb: 'delete' as const, key: keys.status(id), cas: status.entry.modifyIndex }] : []),
      { verb: 'delete', key: keys.session(id), cas: record.entry.modifyIndex },
    ]);
    if (!removed) throw new ConflictError(keys.session(id));
    this.expectations.forget(id);
    this.deps.log.info({ session: id }, 'session deleted');
    return done;
  }

  /** Removes whatever still exists for a session that has no record (debris of a crash or a hand-deleted key). */
  private async collectOrphans(id: string): Promise<ReconcileResult> {
    const { observed, keys } = this.deps;
    if (observed.workloads.get(id) || observed.routes.get(id)) {
      this.deps.log.info({ session: id }, 'removing resources of a session that no longer exists');
    }
    await this.release(id);
    await this.delete(id, observed.statuses, keys.status(id));
    return done;
  }

  /**
   * Stops the job and removes the routes (freeing the port). Returns true once both are gone from the
   * caches; until then the watches will bring the session back.
   */
  private async release(id: string): Promise<boolean> {
    const { observed, scheduler, keys } = this.deps;
    const workload = observed.workloads.get(id);
    if (workload) {
      await scheduler.deregister(workload.jobId);
      this.expectations.expect(id, () => observed.workloads.get(id) === undefined);
    }
    const routes = observed.routes.get(id);
    if (routes) await this.delete(id, observed.routes, keys.route(id));
    return workload === undefined && routes === undefined;
  }

  private async fail(id: string, generation: number, reason: string, message: string): Promise<ReconcileResult> {
    this.deps.log.warn({ session: id, reason, message }, 'session failed');
    await this.writeStatus(id, {
      phase: 'Failed',
      observedGeneration: generation,
      conditions: [{ type: 'Ready', status: 'False', reason, message }],
      endpoints: {},
    });
    await this.release(id);
    return done;
  }

  /** Whether every live router has applied routes up to `index`. */
  routersCaughtUp(index: number): boolean {
    const live = this.liveRouters();
    return live.length > 0 && live.every((router) => router.appliedIndex >= index);
  }

  private liveRouters(): RouterHeartbeat[] {
    const cutoff = this.now() - this.deps.routerStaleMs;
    const live: RouterHeartbeat[] = [];
    for (const record of this.deps.observed.routers.values()) {
      if (record.value && Date.parse(record.value.heartbeatAt) >= cutoff) live.push(record.value);
    }
    return live;
  }

  /** Routed once the routes carry every backend and every live router has applied them. */
  private routedCondition(routes: RouteRecord, modifyIndex: number): ConditionInput {
    const complete = routes.hosts.every((route) => route.backend) && routes.ports.every((route) => route.backend);
    if (!complete) {
      return { type: 'Routed', status: 'False', reason: 'WaitingForWorkload', message: 'routes wait for the workload address' };
    }
    const live = this.liveRouters();
    if (live.length === 0) {
      return { type: 'Routed', status: 'False', reason: 'NoRouters', message: 'no router is alive to serve the routes' };
    }
    const behind = live.filter((router) => router.appliedIndex < modifyIndex).map((router) => router.name);
    if (behind.length > 0) {
      return { type: 'Routed', status: 'False', reason: 'WaitingForRouters', message: `not yet applied by ${behind.sort().join(', ')}` };
    }
    return { type: 'Routed', status: 'True', reason: 'RoutesApplied', message: `applied by ${live.length} router(s)` };
  }

  private async writeStatus(id: string, input: Parameters<typeof nextStatus>[1]): Promise<void> {
    const cached = this.deps.observed.statuses.get(id);
    const status = nextStatus(cached?.value, input, new Date(this.now()).toISOString());
    if (sameStatus(cached?.value, status)) return;
    await this.put(id, this.deps.observed.statuses, this.deps.keys.status(id), encodeRecord('session-status', status));
    if (cached?.value?.phase !== status.phase) this.deps.log.info({ session: id, phase: status.phase }, 'session phase changed');
  }

  /** Compare-and-set write of one of the session's records, expecting its cache to show the new version. */
  private async put<T>(id: string, cache: Cache<CachedRecord<T>>, key: string, value: string): Promise<void> {
    const before = cache.get(id)?.entry.modifyIndex;
    if (!(await this.deps.store.put(key, value, { cas: before ?? 0 }))) throw new ConflictError(key);
    this.expectations.expect(id, () => cache.get(id)?.entry.modifyIndex !== before);
  }

  private async delete<T>(id: string, cache: Cache<CachedRecord<T>>, key: string): Promise<void> {
    const before = cache.get(id)?.entry.modifyIndex;
    if (before === undefined) return;
    if (!(await this.deps.store.delete(key, { cas: before }))) throw new ConflictError(key);
    this.expectations.expect(id, () => cache.get(id) === undefined);
  }
}

/** The claim with each route pointed at the running allocation's address for the service's port (or none yet). */
function withBackends(claim: RouteRecord, template: SessionTemplate, allocation: Allocation | undefined): RouteRecord {
  const running = allocation?.clientStatus === 'running' ? allocation : undefined;
  const backendOf = (service: string): string | undefined => {
    const label = template.spec.services.find((candidate) => candidate.name === service)?.port;
    return label === undefined ? undefined : running?.ports[label];
  };
  return {
    sessionId: claim.sessionId,
    hosts: claim.hosts.map(({ service, token }) => ({ service, token, ...optional('backend', backendOf(service)) })),
    ports: claim.ports.map(({ service, port }) => ({ service, port, ...optional('backend', backendOf(service)) })),
  };
}

function optional<K extends string>(key: K, value: string | undefined): { [P in K]?: string } {
  return value === undefined ? {} : ({ [key]: value } as { [P in K]?: string });
}

function scheduledCondition(workload: Workload | undefined): ConditionInput {
  if (workload === undefined) return { type: 'Scheduled', status: 'False', reason: 'Registering', message: 'the job is being registered' };
  if (workload.placementFailure !== undefined) {
    return { type: 'Scheduled', status: 'False', reason: 'Unplaceable', message: workload.placementFailure };
  }
  if (workload.allocation === undefined) return { type: 'Scheduled', status: 'False', reason: 'Placing', message: 'waiting for placement' };
  return { type: 'Scheduled', status: 'True', reason: 'Placed', message: `allocation ${workload.allocation.id}` };
}

function healthyCondition(allocation: Allocation | undefined): ConditionInput {
  if (allocation === undefined || allocation.clientStatus === 'pending') {
    return { type: 'Healthy', status: 'False', reason: 'Starting', message: 'the workload is starting' };
  }
  if (allocation.healthy === true && allocation.clientStatus === 'running') {
    return { type: 'Healthy', status: 'True', reason: 'Healthy', message: 'every task runs and every check passes' };
  }
  const restarting = Object.values(allocation.tasks).some((task) => task.restarts > 0 && task.state !== 'running');
  if (allocation.healthy === false || restarting) {
    return { type: 'Healthy', status: 'False', reason: 'TaskRestarting', message: describeTasks(allocation) || 'a task is not running' };
  }
  return { type: 'Healthy', status: 'False', reason: 'CheckingHealth', message: 'waiting for the health checks to pass' };
}

function describeTasks(allocation: Allocation): string {
  return Object.entries(allocation.tasks)
    .filter(([, task]) => task.state !== 'running' || task.failed)
    .map(([name, task]) => `${name}: ${task.lastEvent ?? task.state}`)
    .sort()
    .join('; ');
}

