import type {
  ActivityRecord,
  Endpoint,
  RouteRecord,
  RouterHeartbeat,
  SessionRecord,
  SessionStatus,
  SessionTemplate,
  TemplateService,
  WorkloadFailure,
} from '../api/types.js';
import { encodeRecord, type SchemaName } from '../api/schemas.js';
import { resolveParameters } from '../api/templates.js';
import type { Logger } from '../util/log.js';
import { StoreError, type KvEntryMeta, type TxnOperation } from '../store/store.js';
import type { StoreWriter } from './fenced-writer.js';
import { jobIdFor, RenderError, type Allocation, type RenderedJob, type Scheduler, type Workload } from '../scheduler/scheduler.js';
import { shownEstimate, type Admission } from './admission.js';
import type { PortAllocator } from './claims.js';
import { claimForTemplate, newClaim, publicEndpoints, type PublicAddressing, type PublicEndpoint } from './endpoints.js';
import type { Cache, CachedRecord, RecordCache } from './informer.js';
import type { Keys } from './keys.js';
import type { RouterLiveness } from './router-liveness.js';
import { Expectations } from './expectations.js';
import { expiryOf, formatSeconds, idleWarningCondition, recentFailures, restartDelayMs, sessionExpiryPolicy, type Expiry, type LifecyclePolicy } from './lifecycle.js';
import type { ListenerStates } from '../loadbalancer/exposer.js';
import { nextStatus, sameStatus, type ConditionInput, type StatusInput } from './status.js';

/** The observed world the reconciler reads: caches fed by watches, never the backends directly. */
export interface ObservedState {
  readonly sessions: RecordCache<SessionRecord>;
  readonly statuses: RecordCache<SessionStatus>;
  readonly routes: RecordCache<RouteRecord>;
  /** The routers alive, judged on this process's clock. */
  readonly routers: RouterLiveness;
  readonly activities: Cache<CachedRecord<ActivityRecord>>;
  readonly workloads: Cache<Workload>;
  /** Store index up to which the routes cache has seen every change. */
  routesIndex(): number;
}

export interface ReconcilerDeps {
  /** Every write goes through it: fenced to the lease when this process leads a cluster. */
  readonly writer: StoreWriter;
  readonly scheduler: Scheduler;
  readonly keys: Keys;
  readonly observed: ObservedState;
  readonly templates: ReadonlyMap<string, SessionTemplate>;
  readonly ports: PortAllocator;
  readonly admission: Admission;
  readonly addressing: PublicAddressing;
  readonly policy: LifecyclePolicy;
  readonly sessionsPerUser: number;
  readonly routerStaleMs: number;
  /** A running workload without a session is kept this long (0: removed at once), in case the store lost its state. */
  readonly orphanGracePeriodMs: number;
  readonly log: Logger;
  readonly now: () => number;
  /** How long to wait for the caches to show the reconciler's own writes before acting anyway. */
  readonly expectationTimeoutMs?: number;
  /** With AWS load balancers: whether each claimed port's listener is seen (the condition Exposed). */
  readonly listeners?: ListenerStates;
}

export interface ReconcileResult {
  /** Reconcile this session again after this long even if nothing changes (catching up, not a deadline). */
  readonly requeueAfterMs?: number;
  /** The session's next deadline on the controller's clock (warning, expiry, start timeout, restart, retention, orphan grace). */
  readonly wakeAt?: number;
  /** The session waits for routers to apply routes up to this store index. */
  readonly awaitingRoutersAt?: number;
  /** A step failed after the status was written to say so (a scheduler refusal): retried with backoff, as a thrown error is. */
  readonly retryAfterError?: unknown;
}

/** Raised when a write lost a compare-and-set: the cache was stale; the key is retried with backoff. */
export class ConflictError extends Error {
  constructor(key: string) {
    super(`compare-and-set on ${key} failed: the cached copy was stale`);
    this.name = 'ConflictError';
  }
}

/**
 * Raised when the leadership term ended before a scheduler call was sent or while it was on its way: the
 * reconcile is dropped, not retried or reported (the next leader looks at the session again).
 */
export class TermEndedError extends Error {
  constructor(what: string, options?: { cause?: unknown }) {
    super(`${what}: the leadership term ended`, options);
    this.name = 'TermEndedError';
  }
}

const done: ReconcileResult = {};

/** A step of a reconcile that ended it, with this result. */
interface Ended {
  readonly result: ReconcileResult;
}

interface ResolvedTemplate {
  readonly template: SessionTemplate;
  readonly parameters: Record<string, string>;
}

interface Placement {
  readonly claim: RouteRecord;
  /** The claim's store index; undefined while a claim written in this pass has not come back through the watch. */
  readonly claimIndex: number | undefined;
}

/** What every step of one reconcile of a placed session works from. */
interface Pass {
  readonly id: string;
  readonly session: SessionRecord;
  readonly generation: number;
  /** The status of the session's current run: none for a new session, nor for a new spec of a Failed one. */
  readonly previous: SessionStatus | undefined;
  readonly template: SessionTemplate;
  readonly claim: RouteRecord;
  readonly claimIndex: number | undefined;
  /** The template's tcp services without a public port in the claim. */
  readonly unaddressed: readonly TemplateService[];
  readonly endpoints: Record<string, PublicEndpoint>;
  readonly jobId: string;
  readonly now: number;
  readonly admittedAt: string;
}

/** The session's workload as this pass leaves it. */
interface Job {
  /** Undefined while the job registered in this pass has not shown up. */
  readonly workload: Workload | undefined;
  /** Whether the job registered in this pass replaces a running workload of an older spec. */
  readonly replacesRunning: boolean;
  /** The scheduler refused to register the job. */
  readonly refusal?: Refusal;
}

/** The workload's run as this pass leaves it: its recent failures, its health, and a failed allocation's replacement. */
interface Run {
  readonly failures: WorkloadFailure[];
  readonly healthy: ConditionInput;
  /** When a failed allocation's replacement is due, if it is not yet. */
  readonly replaceAt?: number;
  /** The scheduler refused to replace a failed allocation. */
  readonly refusal?: Refusal;
}

/** A failed allocation's replacement: Healthy saying when, and when it is due or the scheduler's refusal. */
type Replacement = Omit<Run, 'failures'>;

/** The session's routes as this pass leaves them. */
interface Routing {
  /** The claim with every route's load balancer and backend as they should be. */
  readonly wanted: RouteRecord;
  readonly routed: ConditionInput;
  /** When a router that has not applied the routes turns stale, if one is behind. */
  readonly behindStaleAt: number | undefined;
}

/** The conditions Ready stands on, in the order shown, and the first that does not hold. */
interface Readiness {
  readonly conditions: readonly ConditionInput[];
  readonly blocker: ConditionInput | undefined;
}

/** When a session not serving is given up, if it is not serving. */
interface StartDeadline {
  readonly deadline: number | undefined;
}

/** The status of a session starting or serving, and its next deadline (idle warning or end). */
interface Progress {
  readonly status: StatusInput;
  readonly wakeAt: number | undefined;
}

const routesUpdating: ConditionInput = { type: 'Routed', status: 'False', reason: 'RoutesUpdating', message: 'routes are being updated to the workload address' };

/**
 * Drives one session's world toward its record. Level-triggered: each call reads the whole desired and
 * observed state for the session from the caches and does whatever is missing, so a missed event, a crash
 * half-way or a restart leaves no lasting damage. Every deadline is computed from stored times, so a
 * restarted or newly elected controller keeps the same clock. Writes are compare-and-set against the
 * cached index.
 */
export class SessionReconciler {
  private readonly now: () => number;

  private readonly expectations: Expectations;

  /**
   * When this process first saw each running workload without its session, in the current leadership term.
   * In memory only: a restart or a new term starts the grace period again, which can only keep a workload
   * longer, never remove it sooner.
   */
  private readonly orphanedSince = new Map<string, number>();

  /**
   * The spec hash of each session's job and the cached objects it was rendered from (compared by identity:
   * the caches hand out the same object until it changes). A session is reconciled several times while it
   * starts and rendering is most of a reconcile; a later reconcile renders the job again only to register it.
   */
  private readonly specHashes = new Map<string, { session: SessionRecord; template: SessionTemplate; claim: RouteRecord; specHash: string }>();

  /**
   * Ports of each claim written without an answer (the write may have applied): they, and the session's slot,
   * stay reserved until the routes cache shows whether the claim was written, so that they go to no other session.
   */
  private readonly unsettledClaims = new Map<string, readonly number[]>();

  /** Whether the current wave of orphans has been reported as a store loss (once per wave). */
  private storeLossReported = false;

  /** Aborted when this process stops leading; before the first term nothing is sent to the scheduler. */
  private term: AbortSignal = AbortSignal.abort();

  constructor(private readonly deps: ReconcilerDeps) {
    this.now = deps.now;
    this.expectations = new Expectations(deps.expectationTimeoutMs ?? 30_000, this.now);
  }

  /**
   * A leadership term begins: orphan clocks start again. One kept from an earlier term cannot be trusted:
   * while this process stood by, the record may have come back and vanished again unseen. Scheduler calls
   * are made within the term: like the store writes fenced to its lease, none is sent once `lost` aborts.
   */
  beginTerm(lost: AbortSignal): void {
    this.term = lost;
    this.orphanedSince.clear();
    this.storeLossReported = false;
  }

  async reconcile(id: string): Promise<ReconcileResult> {
    const catchingUp = this.expectations.waitFor(id);
    if (catchingUp !== undefined) return { requeueAfterMs: catchingUp };
    this.settleClaim(id);
    const record = this.deps.observed.sessions.get(id);
    if (record === undefined) {
      this.specHashes.delete(id);
      return this.collectOrphans(id);
    }
    if (this.orphanedSince.delete(id)) this.deps.log.warn({ session: id }, 'the session record is back; adopting its workload');
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

  /** Everything a session should have while it is wanted: a place, a claim, a workload, routes, and a status that says so. */
  private async converge(id: string, session: SessionRecord): Promise<ReconcileResult> {
    const generation = session.metadata.generation;
    const shown = this.deps.observed.statuses.get(id)?.value;

    // Failed is final for a generation: the reason stays readable for a while and nothing is restarted.
    if (shown?.phase === 'Failed' && shown.observedGeneration === generation) return this.retainFailed(id, shown);
    // A new spec starts a Failed session afresh: the failures that ended the old one are not held against it.
    const previous = shown?.phase === 'Failed' ? undefined : shown;
    // A session whose end has come (its deadline passed while no controller ran, or while its workload was
    // down) ends as due: its job is not registered or replaced again first, nor is it failed for being down.
    const due = this.expiryFor(session, previous?.readyAt);
    if (due !== undefined && this.now() >= due.at) return this.requestDeletion(id, due.reason);
    const resolved = await this.resolveTemplate(id, session);
    if ('result' in resolved) return resolved.result;
    const { template, parameters } = resolved;
    const placement = await this.place(id, session, template, previous);
    if ('result' in placement) return placement.result;
    const { claim, claimIndex } = placement;

    // Tcp services the template gained while no public port was free: owed the next port freed.
    const unaddressed = template.spec.services.filter((service) => service.expose === 'tcp' && !claim.ports.some((route) => route.service === service.name));
    this.deps.ports.owe(id, unaddressed.length);
    const endpoints = publicEndpoints(template, claim, this.deps.addressing);
    const jobId = jobIdFor(id);
    const now = this.now();
    const admittedAt = previous?.admittedAt ?? new Date(now).toISOString();
    const pass: Pass = { id, session, generation, previous, template, claim, claimIndex, unaddressed, endpoints, jobId, now, admittedAt };
    const job = await this.keepOrRegister(pass, parameters);
    if ('result' in job) return job.result;
    const allocation = job.workload?.allocation;
    const run = await this.followFailures(pass, job);
    if ('result' in run) return run.result;
    const refusal = job.refusal ?? run.refusal;
    const scheduled = refusal?.scheduled ?? scheduledCondition(job.workload);
    const routes = await this.route(pass, allocation);
    const exposed = this.deps.listeners === undefined ? undefined : exposedCondition(routes.wanted, this.deps.listeners);
    const readiness = readinessOf([scheduled, run.healthy, routes.routed, ...(exposed ? [exposed] : [])]);
    const start = await this.startTimeout(pass, scheduled, run, readiness.blocker);
    if ('result' in start) return start.result;
    const progress = this.progressStatus(pass, readiness, run.failures, allocation);
    await this.writeStatus(id, progress.status);

    const wakeAts = [run.replaceAt, routes.behindStaleAt, start.deadline, progress.wakeAt].filter((at): at is number => at !== undefined);
    const waitingForRouters = claimIndex !== undefined && (routes.routed.reason === 'WaitingForRouters' || routes.routed.reason === 'NoRouters');
    return {
      ...(wakeAts.length > 0 ? { wakeAt: Math.min(...wakeAts) } : {}),
      ...(waitingForRouters ? { awaitingRoutersAt: claimIndex, requeueAfterMs: this.deps.routerStaleMs } : {}),
      ...(refusal ? { retryAfterError: refusal.error } : {}),
    };
  }

  /**
   * Not serving since admission (for any reason), or since its workload stopped serving: given up after
   * the start timeout. A session that has served is not failed for the routers' troubles.
   */
  private async startTimeout(pass: Pass, scheduled: ConditionInput, run: Run, blocker: ConditionInput | undefined): Promise<Ended | StartDeadline> {
    const { id, generation, previous, now, admittedAt } = pass;
    const { policy } = this.deps;
    const stalled = previous?.readyAt === undefined ? blocker : [scheduled, run.healthy].find((condition) => condition.status !== 'True');
    if (stalled === undefined) return { deadline: undefined };
    const since = previous?.readyAt === undefined ? Date.parse(admittedAt) : workloadDownSince(previous, now);
    const deadline = since + policy.startTimeoutMs;
    if (now >= deadline) {
      return { result: await this.fail(id, generation, 'StartTimeout', `not ready within ${formatSeconds(policy.startTimeoutMs)}: ${stalled.message}`, run.failures) };
    }
    return { deadline };
  }

  /** The status of a session starting or serving, and when its idle warning or its end comes once it has served. */
  private progressStatus(pass: Pass, readiness: Readiness, failures: WorkloadFailure[], allocation: Allocation | undefined): Progress {
    const { session, generation, previous, endpoints, jobId, now, admittedAt } = pass;
    const { blocker } = readiness;
    const ready = blocker === undefined;
    const readyAt = previous?.readyAt ?? (ready ? new Date(now).toISOString() : undefined);

    const conditions: ConditionInput[] = [
      { type: 'Admitted', status: 'True', reason: 'Claimed', message: 'hostnames and ports reserved' },
      ...readiness.conditions,
      blocker === undefined
        ? { type: 'Ready', status: 'True', reason: 'Ready', message: 'the session is serving' }
        : { type: 'Ready', status: 'False', reason: blocker.reason, message: blocker.message },
    ];
    let expiresAt: string | undefined;
    let wakeAt: number | undefined;
    // An end that came during this reconcile is due at once: the deadline's wake-up deletes the session.
    const expiry = this.expiryFor(session, readyAt);
    if (expiry !== undefined) {
      conditions.push(idleWarningCondition(expiry, now));
      expiresAt = new Date(expiry.at).toISOString();
      wakeAt = now < expiry.warnAt ? expiry.warnAt : expiry.at;
    }
    // Addresses are shown once the session first serves, and stay shown while it lives (they never change).
    const published: Record<string, Endpoint> = {};
    if (readyAt !== undefined) {
      for (const [service, { protocol, url, tls }] of Object.entries(endpoints)) published[service] = { protocol, url, ...(tls ? { tls } : {}) };
    }
    const status: StatusInput = {
      phase: ready ? 'Ready' : 'Starting',
      observedGeneration: generation,
      conditions,
      endpoints: published,
      admittedAt,
      ...(readyAt === undefined ? {} : { readyAt }),
      ...(expiresAt === undefined ? {} : { expiresAt }),
      failures,
      jobId,
      ...(allocation ? { allocationId: allocation.id } : {}),
    };
    return { status, wakeAt };
  }

  /** The session's template, and its parameters resolved against it: a template missing or parameters it refuses fail the session. */
  private async resolveTemplate(id: string, session: SessionRecord): Promise<Ended | ResolvedTemplate> {
    const generation = session.metadata.generation;
    const template = this.deps.templates.get(session.spec.template);
    if (template === undefined) {
      return { result: await this.fail(id, generation, 'TemplateNotFound', `template "${session.spec.template}" does not exist`) };
    }
    try {
      return { template, parameters: resolveParameters(template, session.spec.parameters) };
    } catch (error) {
      return { result: await this.fail(id, generation, 'InvalidParameters', (error as Error).message) };
    }
  }

  /**
   * The session's place: its claim on hostnames and ports, admitted from the waiting list when it has none, or
   * brought in line with its template when it has one (then the claim's echo brings the session back).
   */
  private async place(id: string, session: SessionRecord, template: SessionTemplate, previous: SessionStatus | undefined): Promise<Ended | Placement> {
    const generation = session.metadata.generation;
    const routesRecord = this.deps.observed.routes.get(id);
    const claim = routesRecord?.value;
    const claimIndex = routesRecord?.entry.modifyIndex;
    if (claim === undefined) {
      if (routesRecord !== undefined) {
        return { result: await this.fail(id, generation, 'InvalidRoutes', `routes record is unreadable: ${routesRecord.error}`) };
      }
      // Another front end may have let a second create through; admitted sessions, then the oldest, win.
      const rank = this.deps.admission.ownerRank(id) ?? 1;
      if (rank > this.deps.sessionsPerUser) {
        return { result: await this.fail(id, generation, 'SessionLimit', `${session.metadata.owner} already has ${this.deps.sessionsPerUser} session(s)`) };
      }
      const admission = await this.admitOrWait(id, generation, template, previous);
      if ('result' in admission) return admission;
      // Admitted: the job is registered in this same pass, and the claim's echo brings the session back for the rest.
      return { claim: admission.claim, claimIndex };
    }
    if (claimIndex !== undefined && (await this.claimFollowedTemplate(id, template, claim))) {
      // Its echo brings the session back with the new addresses (and its job updated to them).
      return { result: done };
    }
    return { claim, claimIndex };
  }

  /**
   * The session's workload: the running one while its job's spec is unchanged, else its job rendered and
   * registered in this pass (the workload then shows up through the watch).
   */
  private async keepOrRegister(pass: Pass, parameters: Record<string, string>): Promise<Ended | Job> {
    const { id, session, generation, previous, template, claim, unaddressed, endpoints, jobId } = pass;
    const { observed } = this.deps;
    // The job rendered by this reconcile, if it had to render it for its hash (then registering reuses it).
    let rendered: RenderedJob | undefined;
    const render = (): RenderedJob => (rendered ??= this.deps.scheduler.render({ jobId, sessionId: id, template, parameters, endpoints }));
    const cachedWorkload = observed.workloads.get(id);
    // A job without a service's address would be replaced again once the address comes, and fails to render
    // if a task refers to it: the running job is kept until every service has its address.
    let workload = unaddressed.length > 0 ? cachedWorkload : undefined;
    if (workload === undefined) {
      let specHash: string;
      try {
        specHash = this.specHashOf(id, session, template, claim, render);
      } catch (error) {
        if (error instanceof RenderError) return { result: await this.fail(id, generation, 'Unschedulable', error.message) };
        throw error;
      }
      workload = cachedWorkload?.specHash === specHash ? cachedWorkload : undefined;
    }
    // The scheduler has no room: give the claim back and wait at the head of the list (a session that has
    // served keeps its place and addresses and is handled as a failure instead).
    if (workload?.placementFailure !== undefined && previous?.readyAt === undefined) {
      return { result: await this.waitForCapacity(id, generation, workload.placementFailure) };
    }
    const replacesRunning = cachedWorkload !== undefined && workload === undefined;
    if (workload !== undefined) return { workload, replacesRunning };
    // A call the scheduler refuses in this pass is reported (Scheduled=False) and retried with backoff; the
    // status is still written, so the start timeout runs from admission and ends a refusal that lasts.
    const job = render();
    const refusal = await refusalOf('RegisterFailed', async () => {
      await this.withinTerm(`registering job ${jobId}`, (signal) => this.deps.scheduler.register(job, signal));
      this.expectations.expect(id, () => observed.workloads.get(id)?.specHash === job.specHash);
      this.deps.log.info({ session: id, job: jobId }, cachedWorkload ? 'job updated' : 'job registered');
    });
    return { workload, replacesRunning, refusal };
  }

  /** Failures after the first Ready: each counts against the restart limit; a failed allocation is replaced after a backoff. */
  private async followFailures(pass: Pass, job: Job): Promise<Ended | Run> {
    const { id, generation, previous, now } = pass;
    const { policy } = this.deps;
    const allocation = job.workload?.allocation;
    const healthy = healthyCondition(allocation);
    // A workload replaced for a new spec (a new generation, an edited template) stops serving because it was told to.
    const replacing = previous?.observedGeneration !== generation || job.replacesRunning;
    const failures = this.failuresAfter(previous, replacing, allocation, healthy, now);
    // Only a new failure ends the session: one serving with more failures than a maxRestarts lowered since allows keeps serving.
    const failedNow = failures.length > recentFailures(policy, previous?.failures ?? [], now).length;
    if (failedNow && failures.length > policy.maxRestarts) {
      const last = failures[failures.length - 1]!;
      return { result: await this.fail(id, generation, 'CrashLoop', `failed ${failures.length} times within ${formatSeconds(policy.restartWindowMs)}; last: ${last.message}`, failures) };
    }
    if (allocation?.clientStatus !== 'failed') return { failures, healthy };
    return { failures, ...(await this.replaceFailed(pass, allocation, failures)) };
  }

  /** A failed allocation, replaced once the backoff after its failure has passed; Healthy says when. */
  private async replaceFailed(pass: Pass, allocation: Allocation, failures: readonly WorkloadFailure[]): Promise<Replacement> {
    const { id, jobId, now, admittedAt } = pass;
    const { observed } = this.deps;
    const replaceAt = Date.parse(failures[failures.length - 1]?.time ?? admittedAt) + restartDelayMs(this.deps.policy, failures.length);
    const due = now >= replaceAt;
    const refusal = due
      ? await refusalOf('RescheduleFailed', async () => {
          await this.withinTerm(`rescheduling job ${jobId}`, (signal) => this.deps.scheduler.reschedule(jobId, signal));
          this.expectations.expect(id, () => observed.workloads.get(id)?.allocation?.id !== allocation.id);
          this.deps.log.info({ session: id, job: jobId, failures: failures.length }, 'replacing the failed workload');
        })
      : undefined;
    // No clock time once due: a replacement the scheduler refuses is retried without rewriting the status each time.
    const when = due ? 'now' : `at ${new Date(replaceAt).toISOString()}`;
    return {
      healthy: { type: 'Healthy', status: 'False', reason: 'Restarting', message: `${describeTasks(allocation) || 'the workload failed'}; replacing it ${when}` },
      ...(due ? { refusal } : { replaceAt }),
    };
  }

  /** The claim's routes pointed at the workload (written when that changes them), and how far they are served. */
  private async route(pass: Pass, allocation: Allocation | undefined): Promise<Routing> {
    const { id, previous, template, claim, claimIndex, unaddressed } = pass;
    const wanted = withBackends(this.withLoadBalancers(id, claim), template, allocation);
    // A claim not yet cached cannot be compared-and-set; it is updated once the watch has brought it back.
    const routesChanged = claimIndex !== undefined && JSON.stringify(wanted) !== JSON.stringify(claim);
    if (routesChanged) await this.put(id, this.deps.observed.routes, this.deps.keys.route(id), 'route', wanted);
    const routedBefore = previous?.conditions.find((condition) => condition.type === 'Routed');
    const routed: ConditionInput =
      unaddressed.length > 0
        ? this.unaddressedCondition(unaddressed.map((service) => service.name))
        : routesChanged
          ? routesUpdating
          : routedBefore?.status === 'True'
            ? // Routes once applied stay served (routers keep them and reload them from their map files): routers whose
              // heartbeats fall silent, as they all do while the store is unreachable, do not make a serving session unready.
              { type: 'Routed', status: 'True', reason: routedBefore.reason, message: routedBefore.message }
            : this.routedCondition(claim, claimIndex);
    const behindStaleAt = routed.reason === 'WaitingForRouters' && claimIndex !== undefined ? this.behindStaleAt(claimIndex) : undefined;
    return { wanted, routed, behindStaleAt };
  }

  /**
   * When a session Ready since `readyAt` ends, by its idle deadline (its own timeout or the operator's, moved by
   * its stored activity) or its lifetime cap.
   */
  private expiryFor(session: SessionRecord, readyAt: string | undefined): Expiry | undefined {
    if (readyAt === undefined) return undefined;
    const activity = this.deps.observed.activities.get(session.metadata.id)?.value;
    return expiryOf(sessionExpiryPolicy(this.deps.policy, session.spec), Date.parse(readyAt), activity ? Date.parse(activity.lastActivityAt) : undefined);
  }

  /** The job's spec hash, rendered only when the session, its template or its claim changed since the last one. */
  private specHashOf(id: string, session: SessionRecord, template: SessionTemplate, claim: RouteRecord, render: () => RenderedJob): string {
    const memo = this.specHashes.get(id);
    if (memo !== undefined && memo.session === session && memo.template === template && memo.claim === claim) return memo.specHash;
    const { specHash } = render();
    this.specHashes.set(id, { session, template, claim, specHash });
    return specHash;
  }

  /** Not routed while a service has no public port: the reason is the port room's (no free port, or no listener slot). */
  private unaddressedCondition(services: readonly string[]): ConditionInput {
    const room = this.deps.ports.room();
    return {
      type: 'Routed',
      status: 'False',
      reason: room.reason,
      message: `no public TCP port for ${services.join(', ')} yet (${room.message}); the next one freed goes to it`,
    };
  }

  /**
   * The recent failures with any new one added: the allocation that served stopped serving (unless it is
   * being replaced for a new spec), or an allocation failed or was lost (once per allocation). A new
   * allocation still starting is no failure of its own: the embedded scheduler starts one for each job when
   * Manticore restarts, and one replacing a failed or lost allocation was counted with that one.
   */
  private failuresAfter(
    previous: SessionStatus | undefined,
    replacing: boolean,
    allocation: Allocation | undefined,
    healthy: ConditionInput,
    now: number,
  ): WorkloadFailure[] {
    const failures = recentFailures(this.deps.policy, previous?.failures ?? [], now);
    const allocationEnded = allocation?.clientStatus === 'failed' || allocation?.clientStatus === 'lost';
    const newAllocation = allocation !== undefined && previous?.allocationId !== undefined && allocation.id !== previous.allocationId;
    const stoppedServing = previous?.phase === 'Ready' && !replacing && !newAllocation && healthy.status === 'False';
    const alreadyCounted = allocation !== undefined && previous?.failures?.at(-1)?.allocationId === allocation.id && !stoppedServing;
    if ((stoppedServing || allocationEnded) && !alreadyCounted) {
      const message = allocationEnded ? describeTasks(allocation!) || `allocation ${allocation!.clientStatus}` : healthy.message;
      const reason = allocationEnded ? (allocation!.clientStatus === 'lost' ? 'AllocationLost' : 'AllocationFailed') : healthy.reason;
      failures.push({ time: new Date(now).toISOString(), ...(allocation ? { allocationId: allocation.id } : {}), reason, message });
    }
    return failures;
  }

  /**
   * A waiting session: admitted when its place in the list comes (its claim, written, is returned), else it
   * shows its position and why it waits.
   */
  private async admitOrWait(
    id: string,
    generation: number,
    template: SessionTemplate,
    previous: SessionStatus | undefined,
  ): Promise<Ended | { readonly claim: RouteRecord }> {
    const { admission } = this.deps;
    const decision = admission.decide(id);
    if (!decision.admit) {
      const estimate = shownEstimate(previous?.estimatedStartAt, decision.estimatedStartAt, this.now());
      // The session the scheduler turned away keeps the scheduler's own words for why.
      const shown = previous?.conditions.find((condition) => condition.type === 'Admitted');
      const message = shown?.reason === decision.reason && decision.reason === 'InsufficientCapacity' ? shown.message : decision.message;
      await this.writeStatus(id, {
        phase: 'Waiting',
        observedGeneration: generation,
        conditions: waitingConditions(decision.reason, message),
        endpoints: {},
        queuePosition: decision.position,
        ...(estimate === undefined ? {} : { estimatedStartAt: estimate }),
      });
      return { result: decision.retryAt === undefined ? done : { wakeAt: decision.retryAt } };
    }
    const portsNeeded = template.spec.services.filter((service) => service.expose === 'tcp').length;
    const room = this.deps.ports.room();
    if (room.free < portsNeeded) {
      await this.writeStatus(id, {
        phase: 'Waiting',
        observedGeneration: generation,
        conditions: waitingConditions(room.reason, room.message),
        endpoints: {},
        queuePosition: 1,
      });
      // A claim going away frees ports and room alike, which requeues the head of the list.
      return { result: done };
    }
    admission.reserve(id);
    const reserved: number[] = [];
    const record = newClaim(id, template, () => {
      const assignment = this.deps.ports.reserve(id);
      if (assignment !== undefined) reserved.push(assignment.port);
      return assignment;
    });
    const giveBack = (): void => {
      for (const port of reserved) this.deps.ports.release(id, port);
      admission.cancel(id);
    };
    try {
      if (record === undefined) throw new Error(`no free public TCP port for session ${id}`);
      await this.put(id, this.deps.observed.routes, this.deps.keys.route(id), 'route', record);
    } catch (error) {
      if (mayHaveApplied(error)) this.holdUnsettled(id, reserved);
      else giveBack();
      throw error;
    }
    this.deps.log.info({ session: id }, 'session admitted');
    return { claim: record };
  }

  /**
   * The claim with every port on a load balancer of the pool: a port claimed before the pool was configured,
   * or on a load balancer since retired or removed from it, gets one with room (its address changes, and the job with it).
   */
  private withLoadBalancers(id: string, claim: RouteRecord): RouteRecord {
    const { ports, log } = this.deps;
    const members = new Set(ports.pool.map((member) => member.name));
    if (members.size === 0 || claim.ports.every((route) => route.loadBalancer !== undefined && members.has(route.loadBalancer))) return claim;
    return {
      ...claim,
      ports: claim.ports.map((route) => {
        if (route.loadBalancer !== undefined && members.has(route.loadBalancer)) return route;
        const loadBalancer = ports.reassign(id, route.port);
        if (loadBalancer !== undefined) log.info({ session: id, port: route.port, loadBalancer, was: route.loadBalancer }, 'port assigned to a load balancer of the pool');
        return loadBalancer === undefined ? route : { ...route, loadBalancer };
      }),
    };
  }

  /**
   * Brings the claim in line with the template and the port range, and writes it; false when it already
   * was. A template edited to add a service gets it an address; one edited to remove a service frees its
   * address (its route would otherwise wait forever for a backend, and the session never be Ready again);
   * a port outside the configured range (claimed before the range was changed) gets one in it, as HAProxy
   * listens only on the range and the old address would stay dark while the session showed it as Ready.
   */
  private async claimFollowedTemplate(id: string, template: SessionTemplate, claim: RouteRecord): Promise<boolean> {
    const { ports, log } = this.deps;
    const reserved: number[] = [];
    const record = claimForTemplate(
      claim,
      template,
      () => {
        const assignment = ports.reserve(id);
        if (assignment !== undefined) reserved.push(assignment.port);
        return assignment;
      },
      (port) => ports.covers(port),
    );
    if (record === claim) return false;
    const services = (routes: RouteRecord): string[] => [...routes.hosts.map((route) => route.service), ...routes.ports.map((route) => `${route.service}:${route.port}`)];
    log.info({ session: id, was: services(claim), now: services(record) }, 'claim brought in line with the template and the port range');
    try {
      await this.put(id, this.deps.observed.routes, this.deps.keys.route(id), 'route', record);
    } catch (error) {
      if (mayHaveApplied(error)) this.holdUnsettled(id, reserved);
      else for (const port of reserved) ports.release(id, port);
      throw error;
    }
    return true;
  }

  /** A claim was written without an answer: its ports stay reserved, and the session waits for the routes cache to show the outcome. */
  private holdUnsettled(id: string, ports: readonly number[]): void {
    const routes = this.deps.observed.routes;
    const before = routes.get(id)?.entry.modifyIndex;
    this.unsettledClaims.set(id, ports);
    this.expectations.expect(id, () => routes.get(id)?.entry.modifyIndex !== before);
  }

  /** Once the routes cache shows (or has had time to show) a claim written without an answer: gives back what it did not get. */
  private settleClaim(id: string): void {
    const ports = this.unsettledClaims.get(id);
    if (ports === undefined) return;
    this.unsettledClaims.delete(id);
    const cached = this.deps.observed.routes.get(id);
    const claimed = cached?.value?.ports ?? [];
    for (const port of ports) if (!claimed.some((route) => route.port === port)) this.deps.ports.release(id, port);
    if (cached === undefined) this.deps.admission.cancel(id);
  }

  /** The scheduler could not place the workload: back to the head of the waiting list with nothing held. */
  private async waitForCapacity(id: string, generation: number, placementFailure: string): Promise<ReconcileResult> {
    this.deps.log.info({ session: id, placementFailure }, 'no room in the cluster; the session waits at the head of the list');
    this.deps.admission.turnedAway(id);
    // The status goes first: once the claim is gone, the waiting list must already see why.
    await this.writeStatus(id, {
      phase: 'Waiting',
      observedGeneration: generation,
      conditions: waitingConditions('InsufficientCapacity', `the scheduler has no room: ${placementFailure}`),
      endpoints: {},
      queuePosition: 1,
    });
    await this.release(id);
    return done;
  }

  /** A Failed session keeps its status readable for the retention time, its routes and job released, then is deleted. */
  private async retainFailed(id: string, status: SessionStatus): Promise<ReconcileResult> {
    await this.release(id, true);
    const failedAt = Date.parse(status.failedAt ?? status.conditions.find((condition) => condition.type === 'Ready')?.lastTransitionTime ?? new Date(this.now()).toISOString());
    const removeAt = failedAt + this.deps.policy.failedRetentionMs;
    if (this.now() >= removeAt) return this.requestDeletion(id, 'FailedRetentionEnded');
    return { wakeAt: removeAt };
  }

  /**
   * Marks the record for deletion (as a user's delete does); the finalizer then tears everything down. An end
   * for idleness holds only while the activity is as cached: a keepalive the cache has not shown yet (answered
   * to the user with a later expiry) fails the write, and the next pass sees it.
   */
  private async requestDeletion(id: string, reason: string): Promise<ReconcileResult> {
    const { observed, keys } = this.deps;
    const cached = observed.sessions.get(id)!;
    const record: SessionRecord = {
      metadata: { ...cached.value!.metadata, deletionRequestedAt: new Date(this.now()).toISOString(), deletionReason: reason },
      spec: cached.value!.spec,
    };
    const activityAsCached: TxnOperation = { verb: 'check-index', key: keys.activity(id), index: observed.activities.get(id)?.entry.modifyIndex ?? 0 };
    await this.put(id, observed.sessions, keys.session(id), 'session', record, reason === 'IdleTimeout' ? [activityAsCached] : []);
    this.deps.log.info({ session: id, reason }, 'session expired; deleting it');
    return done;
  }

  /** Finalizer: Terminating until the routes are removed from every router, then the job is gone, then the records. */
  private async finalize(id: string, record: CachedRecord<SessionRecord>): Promise<ReconcileResult> {
    const { observed, keys } = this.deps;
    const previous = observed.statuses.get(id)?.value;
    const reason = record.value!.metadata.deletionReason ?? 'Deleted';
    await this.writeStatus(id, {
      phase: 'Terminating',
      observedGeneration: record.value!.metadata.generation,
      conditions: [{ type: 'Ready', status: 'False', reason, message: `the session is being torn down: ${describeDeletion(reason)}` }],
      endpoints: {},
      ...(previous?.jobId !== undefined ? { jobId: previous.jobId } : {}),
      // Whether it was ever Ready: one that was not holds its start slot until its job is purged.
      ...(previous?.readyAt !== undefined ? { readyAt: previous.readyAt } : {}),
      ...(previous?.failures !== undefined ? { failures: previous.failures } : {}),
    });
    // The routes go first, and the job only once every live router has dropped them: no user is sent to a
    // workload that is stopping. Removed routes need no router to serve them: with none alive there is nothing to wait for.
    if (observed.routes.get(id) !== undefined) {
      await this.delete(id, observed.routes, keys.route(id));
      return done;
    }
    const routesIndex = observed.routesIndex();
    if (!appliedBy(observed.routers.live(), routesIndex)) {
      const wakeAt = this.behindStaleAt(routesIndex);
      return { awaitingRoutersAt: routesIndex, requeueAfterMs: this.deps.routerStaleMs, ...(wakeAt === undefined ? {} : { wakeAt }) };
    }
    if (!(await this.release(id))) return done;
    // Status, activity and record go together, so no one ever sees a session without its status or the reverse.
    const removed = await this.deps.writer.transaction([
      ...this.deleteOperation(observed.statuses, id, keys.status(id)),
      ...this.deleteOperation(observed.activities, id, keys.activity(id)),
      { verb: 'delete', key: keys.session(id), cas: record.entry.modifyIndex },
    ]);
    if (!removed) throw new ConflictError(keys.session(id));
    this.expectations.forget(id);
    // The watches show the deletions one by one: one of the status's would otherwise find the deleted
    // record still cached and start the teardown over, again and again until the record's own arrives.
    this.expectations.expect(id, () => observed.sessions.get(id)?.entry.modifyIndex !== record.entry.modifyIndex);
    this.deps.log.info({ session: id, reason }, 'session deleted');
    return done;
  }

  /**
   * Removes whatever still exists for a session that has no record (debris of a crash or a hand-deleted
   * key). A running workload is kept, with its records, for the grace period first: a store that lost its
   * state makes every session look gone, and restoring it in time must find the users' workloads running.
   */
  private async collectOrphans(id: string): Promise<ReconcileResult> {
    const { observed, keys, orphanGracePeriodMs } = this.deps;
    const workload = observed.workloads.get(id);
    if (workload?.allocation?.clientStatus === 'running' && orphanGracePeriodMs > 0) {
      const now = this.now();
      const since = this.orphanedSince.get(id);
      const removeAt = (since ?? this.startGrace(id, workload, now)) + orphanGracePeriodMs;
      if (now < removeAt) {
        if (since !== undefined) this.deps.log.debug({ session: id, removeAt: new Date(removeAt).toISOString() }, 'still orphaned; kept until the grace period ends');
        return { wakeAt: removeAt };
      }
      this.deps.log.warn({ session: id, job: workload.jobId }, 'grace period over: removing the running workload of a session that no longer exists');
    } else if (workload || observed.routes.get(id)) {
      this.deps.log.info({ session: id }, 'removing resources of a session that no longer exists');
    }
    this.orphanedSince.delete(id);
    await this.release(id);
    const removals = [...this.deleteOperation(observed.statuses, id, keys.status(id)), ...this.deleteOperation(observed.activities, id, keys.activity(id))];
    if (removals.length === 0) return done;
    // The front end writes activity for a record it has seen, which this controller's sessions watch may not
    // show yet: the records go only while the session's key is really absent, else the watch brings it soon.
    if (!(await this.deps.writer.transaction([{ verb: 'check-index', key: keys.session(id), index: 0 }, ...removals]))) throw new ConflictError(keys.session(id));
    this.expectations.expect(id, () => observed.statuses.get(id) === undefined && observed.activities.get(id) === undefined);
    return done;
  }

  /** A running workload has just lost its session: said loudly, and once per wave as a likely store loss. */
  private startGrace(id: string, workload: Workload, now: number): number {
    const { observed, keys, log } = this.deps;
    if (this.orphanedSince.size === 0) this.storeLossReported = false;
    this.orphanedSince.set(id, now);
    const removeAtIso = new Date(now + this.deps.orphanGracePeriodMs).toISOString();
    log.warn({ session: id, job: workload.jobId, removeAt: removeAtIso }, 'running workload has no session record; keeping it for the grace period');
    if (this.storeLossReported) return now;
    const workloads = [...observed.workloads.ids()];
    const orphaned = workloads.filter((workloadId) => observed.sessions.get(workloadId) === undefined).length;
    // Sessions end one at a time; most of them vanishing together means the store lost its state.
    if (orphaned * 2 <= workloads.length) return now;
    this.storeLossReported = true;
    log.error(
      { orphaned, workloads: workloads.length, sessions: observed.sessions.size, removeAt: removeAtIso, prefix: keys.prefix },
      `the store looks lost: ${orphaned} of ${workloads.length} workloads have no session record; they keep running until about ${removeAtIso} ` +
        `and are removed then. Restore the key prefix ${keys.prefix} from a backup before that (see "Recovering from a store loss" in docs/lifecycle.md)`,
    );
    return now;
  }

  /**
   * Removes the routes (freeing the port), then stops the job, so that the routes never outlive it. A failed
   * session's job is only stopped (`keepLogs`): its allocation, and the logs that tell why it failed, stay
   * readable while its status is. Returns true once both are gone from the caches; until then the watches
   * will bring the session back.
   */
  private async release(id: string, keepLogs = false): Promise<boolean> {
    const { observed, scheduler, keys } = this.deps;
    const routes = observed.routes.get(id);
    if (routes) await this.delete(id, observed.routes, keys.route(id));
    const workload = observed.workloads.get(id);
    if (workload) {
      if (keepLogs) await this.withinTerm(`stopping job ${workload.jobId}`, (signal) => scheduler.stop(workload.jobId, signal));
      else await this.withinTerm(`deregistering job ${workload.jobId}`, (signal) => scheduler.deregister(workload.jobId, signal));
      this.expectations.expect(id, () => observed.workloads.get(id) === undefined);
    }
    return workload === undefined && routes === undefined;
  }

  /**
   * A scheduler call made within the current term: not sent once the term has ended, and abandoned when it
   * ends on the way. A deposed leader's call would otherwise reach the scheduler beside the new leader's.
   */
  private async withinTerm(what: string, call: (signal: AbortSignal) => Promise<void>): Promise<void> {
    const term = this.term;
    if (term.aborted) throw new TermEndedError(what);
    try {
      await call(term);
    } catch (error) {
      if (term.aborted) throw new TermEndedError(what, { cause: error });
      throw error;
    }
  }

  private async fail(id: string, generation: number, reason: string, message: string, failures?: WorkloadFailure[]): Promise<ReconcileResult> {
    this.deps.log.warn({ session: id, reason, message }, 'session failed');
    const now = this.now();
    const shown = this.deps.observed.statuses.get(id)?.value;
    // Whether this run was ever Ready (an earlier Failed run's does not count): one that was not holds its
    // start slot until its job has stopped.
    const run = shown?.phase === 'Failed' ? undefined : shown;
    const readyAt = run?.readyAt;
    // The workload that failed stays named: its logs are kept (release) for its user to read.
    const workload = this.deps.observed.workloads.get(id);
    const jobId = workload?.jobId ?? run?.jobId;
    const allocationId = workload?.allocation?.id ?? run?.allocationId;
    await this.writeStatus(id, {
      phase: 'Failed',
      observedGeneration: generation,
      conditions: [{ type: 'Ready', status: 'False', reason, message }],
      endpoints: {},
      failedAt: new Date(now).toISOString(),
      ...(jobId === undefined ? {} : { jobId }),
      ...(allocationId === undefined ? {} : { allocationId }),
      ...(readyAt === undefined ? {} : { readyAt }),
      ...(failures === undefined ? {} : { failures }),
    });
    await this.release(id, true);
    return { wakeAt: now + this.deps.policy.failedRetentionMs };
  }

  /** Whether the session's last reconcile was put off until the caches show its own writes. */
  awaitsOwnWrites(id: string): boolean {
    return this.expectations.isDeferred(id);
  }

  /** Whether a session waiting for routers at `index` may go on: a router is alive, and every live one has applied it. */
  routersCaughtUp(index: number): boolean {
    const live = this.deps.observed.routers.live();
    return live.length > 0 && appliedBy(live, index);
  }

  /**
   * When the first live router that has not applied `index` turns stale unless it heartbeats again: a router
   * that falls silent is left out from then on, and a session waiting for it looks again at that moment, not
   * routerStaleMs after its own pass (the router may have heartbeated just before going quiet, doubling the wait).
   */
  private behindStaleAt(index: number): number | undefined {
    const behind = this.deps.observed.routers.live().filter((router) => router.appliedIndex < index);
    if (behind.length === 0) return undefined;
    return Math.min(...behind.map((router) => router.staleAt));
  }

  /** Routed once the routes carry every backend and every live router has applied them (`modifyIndex`: the routes' store index, if cached yet). */
  private routedCondition(routes: RouteRecord, modifyIndex: number | undefined): ConditionInput {
    const complete = routes.hosts.every((route) => route.backend) && routes.ports.every((route) => route.backend);
    if (!complete) {
      return { type: 'Routed', status: 'False', reason: 'WaitingForWorkload', message: 'routes wait for the workload address' };
    }
    if (modifyIndex === undefined) return routesUpdating;
    const live = this.deps.observed.routers.live();
    if (live.length === 0) {
      return { type: 'Routed', status: 'False', reason: 'NoRouters', message: 'no router is alive to serve the routes' };
    }
    const behind = live.filter((router) => router.appliedIndex < modifyIndex).map((router) => router.name);
    if (behind.length > 0) {
      return { type: 'Routed', status: 'False', reason: 'WaitingForRouters', message: `not yet applied by ${behind.sort().join(', ')}` };
    }
    return { type: 'Routed', status: 'True', reason: 'RoutesApplied', message: `applied by ${live.length} router(s)` };
  }

  private async writeStatus(id: string, input: StatusInput): Promise<void> {
    const cached = this.deps.observed.statuses.get(id);
    const status = nextStatus(cached?.value, input, new Date(this.now()).toISOString());
    if (sameStatus(cached?.value, status)) return;
    await this.put(id, this.deps.observed.statuses, this.deps.keys.status(id), 'session-status', status);
    if (cached?.value?.phase !== status.phase) this.deps.log.info({ session: id, phase: status.phase }, 'session phase changed');
  }

  /**
   * Compare-and-set write of one of the session's records (validated first), expecting its cache to show
   * the new version. The cache is told: it shows the write as soon as the store answers with its entry, and
   * its echo is not decoded again. `checks` must hold too.
   */
  private async put<T>(id: string, cache: RecordCache<T>, key: string, schema: SchemaName, value: T, checks: readonly TxnOperation[] = []): Promise<void> {
    const json = encodeRecord(schema, value);
    const before = cache.get(id)?.entry.modifyIndex;
    cache.writing(id, json, value);
    let puts: readonly KvEntryMeta[] | undefined;
    try {
      puts = await this.deps.writer.commit([...checks, { verb: 'put', key, value: json, cas: before ?? 0 }]);
    } finally {
      if (puts === undefined) cache.writeFailed(id, json);
    }
    if (puts === undefined) throw new ConflictError(key);
    const entry = puts.find((put) => put.key === key);
    if (entry !== undefined) cache.committed(id, entry, json, value);
    this.expectations.expect(id, () => cache.get(id)?.entry.modifyIndex !== before);
  }

  private async delete<T>(id: string, cache: Cache<CachedRecord<T>>, key: string): Promise<void> {
    const before = cache.get(id)?.entry.modifyIndex;
    if (before === undefined) return;
    if (!(await this.deps.writer.delete(key, { cas: before }))) throw new ConflictError(key);
    this.expectations.expect(id, () => cache.get(id) === undefined);
  }

  private deleteOperation<T>(cache: Cache<CachedRecord<T>>, id: string, key: string): TxnOperation[] {
    const cached = cache.get(id);
    return cached ? [{ verb: 'delete', key, cas: cached.entry.modifyIndex }] : [];
  }
}

/** Whether a failed write may have applied all the same (the store did not answer): compare-and-set failures and refusals did not. */
function mayHaveApplied(error: unknown): boolean {
  return error instanceof StoreError && error.kind === 'unavailable';
}

/** A scheduler call that failed, and the Scheduled condition that reports it. */
interface Refusal {
  readonly error: unknown;
  readonly scheduled: ConditionInput;
}

/**
 * Runs a scheduler call; its failure (a job Nomad finds invalid, an ACL or quota denial, Nomad unreachable) is
 * returned, not thrown. The end of the term is thrown: nothing is reported for a call this leader may not make.
 */
async function refusalOf(reason: 'RegisterFailed' | 'RescheduleFailed', call: () => Promise<void>): Promise<Refusal | undefined> {
  try {
    await call();
    return undefined;
  } catch (error) {
    if (error instanceof TermEndedError) throw error;
    return { error, scheduled: { type: 'Scheduled', status: 'False', reason, message: error instanceof Error ? error.message : String(error) } };
  }
}

/** Ready is every other condition holding; otherwise it carries the first one that does not, as its reason. */
function readinessOf(conditions: readonly ConditionInput[]): Readiness {
  return { conditions, blocker: conditions.find((condition) => condition.status !== 'True') };
}

function waitingConditions(reason: string, message: string): ConditionInput[] {
  return [
    { type: 'Admitted', status: 'False', reason, message },
    { type: 'Ready', status: 'False', reason, message },
  ];
}

function appliedBy(routers: readonly RouterHeartbeat[], index: number): boolean {
  return routers.every((router) => router.appliedIndex >= index);
}

/**
 * When the served workload stopped serving: the earliest turn of its Scheduled or Healthy condition to False,
 * or now if it has just stopped. Not Ready's own turn: a session not Ready for another reason before (a
 * service without its public port, a listener not yet seen) would be failed at once by a task's restart.
 */
function workloadDownSince(previous: SessionStatus, now: number): number {
  const down = previous.conditions.filter((condition) => (condition.type === 'Scheduled' || condition.type === 'Healthy') && condition.status === 'False');
  return Math.min(now, ...down.map((condition) => Date.parse(condition.lastTransitionTime)));
}

function describeDeletion(reason: string): string {
  switch (reason) {
    case 'IdleTimeout':
      return 'it was idle for too long';
    case 'MaxLifetime':
      return 'it reached its maximum lifetime';
    case 'FailedRetentionEnded':
      return 'it failed and its retention time is over';
    default:
      return 'deletion was requested';
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
    ports: claim.ports.map(({ service, port, loadBalancer }) => ({ service, port, ...optional('loadBalancer', loadBalancer), ...optional('backend', backendOf(service)) })),
  };
}

function optional<K extends string>(key: K, value: string | undefined): { [P in K]?: string } {
  return value === undefined ? {} : ({ [key]: value } as { [P in K]?: string });
}

/** Exposed once every port's listener is seen on its load balancer. */
function exposedCondition(routes: RouteRecord, listeners: ListenerStates): ConditionInput {
  const waiting: string[] = [];
  let reason = 'CreatingListener';
  for (const route of routes.ports) {
    if (route.loadBalancer === undefined) {
      return { type: 'Exposed', status: 'False', reason: 'NoListenerCapacity', message: `port ${route.port} waits for a load balancer with a free listener` };
    }
    const state = listeners.listenerState(route.loadBalancer, route.port);
    if (state.exposed) continue;
    waiting.push(`${route.loadBalancer}:${route.port} (${state.message})`);
    reason = state.reason;
  }
  if (waiting.length > 0) return { type: 'Exposed', status: 'False', reason, message: `listener not yet seen: ${waiting.join(', ')}` };
  const where = routes.ports.map((route) => `${route.loadBalancer}:${route.port}`).join(', ');
  return { type: 'Exposed', status: 'True', reason: 'ListenerReady', message: routes.ports.length === 0 ? 'no public TCP port' : `listening on ${where}` };
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
  if (allocation.clientStatus === 'lost') {
    return { type: 'Healthy', status: 'False', reason: 'AllocationLost', message: `allocation ${allocation.id} was lost (its node went away); waiting for its replacement` };
  }
  if (allocation.clientStatus === 'failed' || allocation.clientStatus === 'complete') {
    return { type: 'Healthy', status: 'False', reason: 'AllocationFailed', message: describeTasks(allocation) || `allocation ${allocation.clientStatus}` };
  }
  if (allocation.healthy === true) {
    return { type: 'Healthy', status: 'True', reason: 'Healthy', message: 'every task runs and every check passes' };
  }
  const restarting = Object.values(allocation.tasks).some((task) => task.restarts > 0 && task.state !== 'running');
  if (allocation.healthy === false || restarting) {
    return { type: 'Healthy', status: 'False', reason: 'TaskRestarting', message: describeTasks(allocation) || 'a task is not running' };
  }
  const failing = allocation.failingChecks ?? [];
  const message = failing.length === 0 ? 'waiting for the health checks to pass' : `waiting for the health checks to pass: ${failing.join('; ')}`;
  return { type: 'Healthy', status: 'False', reason: 'CheckingHealth', message };
}

function describeTasks(allocation: Allocation): string {
  return Object.entries(allocation.tasks)
    .filter(([, task]) => task.state !== 'running' || task.failed)
    .map(([name, task]) => `${name}: ${task.lastEvent ?? task.state}`)
    .sort()
    .join('; ');
}

