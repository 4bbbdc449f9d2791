import { setMaxListeners } from 'node:events';
import http from 'node:http';
import https from 'node:https';
import { Observable, Subject, type Subscriber } from 'rxjs';
import { KeyedSerializer } from '../util/keyed-serializer.js';
import { loadTlsMaterial, type TlsMaterial } from '../util/tls.js';
import { readBody } from '../util/http-body.js';
import { pacingDelayMs } from '../util/watch-pacing.js';
import { outcomeOfStatus, recordBackendCall } from '../metrics/metrics.js';
import type { Logger } from '../util/log.js';
import { canonicalJson } from './local-scheduler.js';
import { REPLACES_META_KEY, SPEC_HASH_META_KEY, nomadJobOptionsProblems, renderNomadJob, type NomadJob, type NomadJobOptions } from './nomad-job.js';
import {
  SESSION_META_KEY,
  type Allocation,
  type ClientStatus,
  type RenderedJob,
  type Scheduler,
  type TaskState,
  type Workload,
  type WorkloadRequest,
  type WorkloadStep,
} from './scheduler.js';

/**
 * The production scheduler: one Nomad job per session, over Nomad's HTTP API.
 *
 * Observation is three blocking queries (jobs with Manticore's prefix and their Meta, allocations,
 * evaluations), each following its own `X-Nomad-Index`, feeding caches from which every Manticore
 * workload is computed; only workloads whose computed value changed are emitted. A fourth one follows the
 * node list for capacityChanges(). Nothing polls and nothing loops over jobs: an unchanged cluster costs
 * one idle request per endpoint per wait period, and while a query is held, a probe of its index (a query
 * that lists nothing) every request timeout, so that an answer lost on the way is noticed (guardHeld).
 */

export interface NomadTlsOptions {
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  serverName?: string;
}

export interface NomadSchedulerOptions {
  /** `http(s)://host:port` of a Nomad agent. */
  address: string;
  /** ACL token (`X-Nomad-Token`). */
  token?: string;
  region?: string;
  namespace?: string;
  tls?: NomadTlsOptions;
  /** How jobs are shaped. */
  job: NomadJobOptions;
  /** A child logger that already names the component. */
  log: Logger;
  /** Bound on every non-blocking request, and the margin added to blocking ones. */
  requestTimeoutMs?: number;
  /** `wait` of the blocking queries (Nomad: default 5 minutes, at most 10). */
  watchWaitSeconds?: number;
}

// ---- the parts of Nomad's API responses Manticore reads ------------------------------------------------

export interface NomadJobStub {
  ID: string;
  JobModifyIndex: number;
  ModifyIndex: number;
  CreateIndex?: number;
  Status?: string;
  Stop?: boolean;
  /** Only with `?meta=true` (Nomad 1.6+). */
  Meta?: Record<string, string> | null;
}

export interface NomadTaskEvent {
  Type: string;
  /** Unix nanoseconds. */
  Time: number;
  DisplayMessage?: string;
  ExitCode?: number;
  Signal?: number;
}

export interface NomadTaskState {
  State: string;
  Failed?: boolean;
  Restarts?: number;
  Events?: NomadTaskEvent[] | null;
}

export interface NomadPortMapping {
  Label: string;
  Value: number;
  To?: number;
  HostIP?: string;
}

export interface NomadNetworkResource {
  IP?: string;
  DynamicPorts?: Array<{ Label: string; Value: number }> | null;
  ReservedPorts?: Array<{ Label: string; Value: number }> | null;
}

export interface NomadAllocStub {
  ID: string;
  JobID: string;
  JobVersion?: number;
  DesiredStatus: string;
  ClientStatus: string;
  TaskStates?: Record<string, NomadTaskState> | null;
  DeploymentStatus?: { Healthy?: boolean | null } | null;
  AllocatedResources?: { Shared?: { Ports?: NomadPortMapping[] | null; Networks?: NomadNetworkResource[] | null } | null } | null;
  CreateIndex: number;
  ModifyIndex: number;
}

/** Why a task group could not be placed (Nomad's AllocMetric). */
export interface NomadAllocMetric {
  NodesEvaluated?: number;
  NodesFiltered?: number;
  NodesAvailable?: Record<string, number> | null;
  ClassFiltered?: Record<string, number> | null;
  ConstraintFiltered?: Record<string, number> | null;
  NodesExhausted?: number;
  ClassExhausted?: Record<string, number> | null;
  DimensionExhausted?: Record<string, number> | null;
  QuotaExhausted?: string[] | null;
}

export interface NomadEvalStub {
  ID: string;
  JobID: string;
  Status: string;
  StatusDescription?: string;
  FailedTGAllocs?: Record<string, NomadAllocMetric> | null;
  CreateIndex: number;
  ModifyIndex: number;
}

/** The node list stub fields that tell whether a node can take work. */
export interface NomadNodeStub {
  ID: string;
  Name?: string;
  Status: string;
  SchedulingEligibility: string;
  ModifyIndex: number;
}

// ---- mapping Nomad's view to workloads (pure) ----------------------------------------------------------

const JOB_PREFIX = 'manticore-';
/** Resources Nomad schedules by that a user would call "enough" of. */
const CAPACITY_DIMENSIONS = new Set(['cpu', 'memory', 'disk', 'cores']);

/** The workload of a job carrying Manticore's marker, or undefined for anybody else's job. */
export function workloadOf(job: NomadJobStub, allocs: Iterable<NomadAllocStub>, evals: Iterable<NomadEvalStub>): Workload | undefined {
  const sessionId = job.Meta?.[SESSION_META_KEY];
  if (!sessionId) return undefined;
  const jobAllocs = [...allocs].filter((alloc) => alloc.JobID === job.ID);
  const current = currentAllocation(job, jobAllocs);
  const placementFailure = placementFailureOf(job, jobAllocs, [...evals].filter((evaluation) => evaluation.JobID === job.ID));
  return {
    jobId: job.ID,
    sessionId,
    specHash: job.Meta?.[SPEC_HASH_META_KEY] ?? '',
    ...(current ? { allocation: allocationOf(current) } : {}),
    ...(placementFailure !== undefined ? { placementFailure } : {}),
  };
}

/**
 * The allocation that runs the job's current content: among the allocations created since the current
 * version was registered (`CreateIndex >= JobModifyIndex`: every content change is a destructive update,
 * because the spec hash lives in the job's Meta, so older allocations run older content), those of the
 * highest version, preferring the newest that Nomad wants running, else the newest.
 */
export function currentAllocation(job: NomadJobStub, allocs: readonly NomadAllocStub[]): NomadAllocStub | undefined {
  const since = allocs.filter((alloc) => alloc.JobID === job.ID && alloc.CreateIndex >= job.JobModifyIndex);
  if (since.length === 0) return undefined;
  const version = Math.max(...since.map((alloc) => alloc.JobVersion ?? 0));
  const candidates = since.filter((alloc) => (alloc.JobVersion ?? 0) === version);
  const newest = (list: NomadAllocStub[]): NomadAllocStub | undefined =>
    list.reduce<NomadAllocStub | undefined>((best, alloc) => (best === undefined || alloc.CreateIndex > best.CreateIndex ? alloc : best), undefined);
  return newest(candidates.filter((alloc) => alloc.DesiredStatus === 'run')) ?? newest(candidates);
}

export function allocationOf(alloc: NomadAllocStub): Allocation {
  const clientStatus = clientStatusOf(alloc.ClientStatus);
  const tasks: Record<string, TaskState> = {};
  for (const name of Object.keys(alloc.TaskStates ?? {}).sort()) {
    const state = alloc.TaskStates?.[name];
    if (state) tasks[name] = taskStateOf(state);
  }
  let healthy: boolean | undefined = alloc.DeploymentStatus?.Healthy ?? undefined;
  const states = Object.values(tasks);
  if (states.some((task) => task.failed)) healthy = false;
  else if (clientStatus === 'failed' || clientStatus === 'lost' || clientStatus === 'complete') healthy = false;
  // Nomad sets deployment health once and keeps it: a task restarting later leaves Healthy true.
  else if (healthy === true && states.some((task) => task.state !== 'running')) healthy = false;
  return { id: alloc.ID, clientStatus, healthy, ports: portsOf(alloc), tasks };
}

function clientStatusOf(status: string): ClientStatus {
  if (status === 'pending' || status === 'running' || status === 'complete' || status === 'failed' || status === 'lost') return status;
  // "unknown": the client is disconnected but may come back (max_client_disconnect); not a verdict yet.
  return 'pending';
}

function taskStateOf(state: NomadTaskState): TaskState {
  const event = latestEvent(state.Events);
  return {
    state: state.State === 'running' || state.State === 'dead' ? state.State : 'pending',
    failed: state.Failed === true,
    restarts: state.Restarts ?? 0,
    ...(event ? { lastEvent: describeEvent(event) } : {}),
  };
}

function latestEvent(events: readonly NomadTaskEvent[] | null | undefined): NomadTaskEvent | undefined {
  return (events ?? []).reduce<NomadTaskEvent | undefined>((latest, event) => (latest === undefined || event.Time >= latest.Time ? event : latest), undefined);
}

/** Nomad's own text for the event, or its type and exit code when it has none. */
export function describeEvent(event: NomadTaskEvent): string {
  const message = event.DisplayMessage?.trim();
  if (message) return message;
  return event.ExitCode ? `${event.Type} (exit code ${event.ExitCode})` : event.Type;
}

function portsOf(alloc: NomadAllocStub): Record<string, string> {
  const ports: Record<string, string> = {};
  const shared = alloc.AllocatedResources?.Shared;
  for (const port of shared?.Ports ?? []) if (port.HostIP) ports[port.Label] = hostPort(port.HostIP, port.Value);
  if (Object.keys(ports).length > 0) return ports;
  // Before Nomad 1.0 the group's ports were only listed per network.
  for (const network of shared?.Networks ?? []) {
    for (const port of [...(network.ReservedPorts ?? []), ...(network.DynamicPorts ?? [])]) {
      if (network.IP) ports[port.Label] = hostPort(network.IP, port.Value);
    }
  }
  return ports;
}

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * Why the job's current content is not placed, when Nomad says so: its latest evaluation (since the
 * current version was registered) failed to place the group, or a blocked evaluation waits for capacity.
 * Nothing once an allocation of the current content runs or is about to.
 */
export function placementFailureOf(job: NomadJobStub, allocs: readonly NomadAllocStub[], evals: readonly NomadEvalStub[]): string | undefined {
  const current = currentAllocation(job, allocs);
  if (current && current.DesiredStatus === 'run' && (current.ClientStatus === 'pending' || current.ClientStatus === 'running')) return undefined;
  const relevant = evals.filter((evaluation) => evaluation.JobID === job.ID && evaluation.CreateIndex >= job.JobModifyIndex);
  const blocked = relevant.some((evaluation) => evaluation.Status === 'blocked');
  const latest = relevant
    .filter((evaluation) => evaluation.Status !== 'blocked' && evaluation.Status !== 'canceled')
    .reduce<NomadEvalStub | undefined>((best, evaluation) => (best === undefined || evaluation.CreateIndex > best.CreateIndex ? evaluation : best), undefined);
  const failing = relevant
    .filter(hasFailedAllocs)
    .reduce<NomadEvalStub | undefined>((best, evaluation) => (best === undefined || evaluation.ModifyIndex > best.ModifyIndex ? evaluation : best), undefined);
  if (blocked || (latest !== undefined && hasFailedAllocs(latest))) {
    return failing?.FailedTGAllocs ? describePlacementFailure(failing.FailedTGAllocs) : 'waiting for capacity (a blocked evaluation is outstanding)';
  }
  if (latest?.Status === 'failed') return `Nomad could not evaluate the job: ${latest.StatusDescription || 'evaluation failed'}`;
  return undefined;
}

function hasFailedAllocs(evaluation: NomadEvalStub): boolean {
  return evaluation.FailedTGAllocs !== undefined && evaluation.FailedTGAllocs !== null && Object.keys(evaluation.FailedTGAllocs).length > 0;
}

/** A readable reason from an evaluation's FailedTGAllocs (one entry per task group). */
export function describePlacementFailure(failed: Record<string, NomadAllocMetric>): string {
  const groups = Object.keys(failed).sort();
  return groups
    .map((group) => {
      const text = describeAllocMetric(failed[group] ?? {});
      return groups.length > 1 ? `group ${group}: ${text}` : text;
    })
    .join('; ');
}

export function describeAllocMetric(metric: NomadAllocMetric): string {
  const evaluated = metric.NodesEvaluated ?? 0;
  const reasons: string[] = [];
  const entries = (map: Record<string, number> | null | undefined): Array<[string, number]> =>
    Object.entries(map ?? {}).sort(([a], [b]) => a.localeCompare(b));
  if (evaluated === 0) {
    const empty = entries(metric.NodesAvailable).filter(([, count]) => count === 0).map(([dc]) => dc);
    reasons.push(empty.length > 0 ? `no node is available in datacenter ${empty.join(', ')}` : 'no node is eligible');
  }
  for (const [constraint, count] of entries(metric.ConstraintFiltered)) reasons.push(`constraint ${constraint} filtered ${nodes(count)}`);
  for (const [nodeClass, count] of entries(metric.ClassFiltered)) reasons.push(`node class ${nodeClass} filtered ${nodes(count)}`);
  const dimensions = entries(metric.DimensionExhausted);
  for (const [dimension, count] of dimensions) {
    reasons.push(CAPACITY_DIMENSIONS.has(dimension)
      ? `no node has enough ${dimension} (${count} of ${evaluated} exhausted)`
      : `${dimension} (${count} of ${evaluated} nodes)`);
  }
  if (dimensions.length === 0 && (metric.NodesExhausted ?? 0) > 0) reasons.push(`resources exhausted on ${metric.NodesExhausted} of ${evaluated} nodes`);
  for (const quota of metric.QuotaExhausted ?? []) reasons.push(`quota exhausted: ${quota}`);
  return reasons.length > 0 ? reasons.join('; ') : 'no node could run it';
}

function nodes(count: number): string {
  return count === 1 ? '1 node' : `${count} nodes`;
}

// ---- capacity (pure) -----------------------------------------------------------------------------------

/**
 * Why the cluster may have more room in `after` than in `before` (empty: no reason): a node appeared, a
 * node became ready or eligible, or a ready and eligible node was modified (its resources may have grown;
 * Nomad does not list resources in the node stub).
 */
export function capacityGains(before: ReadonlyMap<string, NomadNodeStub>, after: ReadonlyMap<string, NomadNodeStub>): string[] {
  const gains: string[] = [];
  for (const node of after.values()) {
    const name = node.Name ? `${node.Name} (${node.ID})` : node.ID;
    const previous = before.get(node.ID);
    if (!previous) gains.push(`node ${name} joined`);
    else if (node.Status === 'ready' && previous.Status !== 'ready') gains.push(`node ${name} became ready`);
    else if (node.SchedulingEligibility === 'eligible' && previous.SchedulingEligibility !== 'eligible') gains.push(`node ${name} became eligible`);
    else if (node.Status === 'ready' && node.SchedulingEligibility === 'eligible' && node.ModifyIndex !== previous.ModifyIndex) gains.push(`node ${name} was updated`);
  }
  return gains;
}

// ---- watch timing (pure) -------------------------------------------------------------------------------

export const BACKOFF_BASE_MS = 100;
export const BACKOFF_MAX_MS = 10_000;

/** Delay before retry number `failures` (1-based): 100 ms doubling to 10 s, with jitter in [½, 1]×. */
export function backoffDelay(failures: number, random: () => number = Math.random): number {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.max(0, Math.min(failures - 1, 30)));
  return Math.round(base / 2 + (random() * base) / 2);
}

/**
 * The next `index` of a blocking query, given the one asked with and the one answered (Nomad's rules):
 * `reset` when the answer's index went backwards (the servers lost or replaced their state: start over
 * from 0 and take the next full answer), `unchanged` when nothing changed (the wait elapsed).
 */
export function nextIndex(asked: number, answered: number): { kind: 'reset' } | { kind: 'unchanged' } | { kind: 'changed'; index: number } {
  if (answered < asked) return { kind: 'reset' };
  if (answered === asked) return { kind: 'unchanged' };
  return { kind: 'changed', index: answered };
}

// ---- HTTP ----------------------------------------------------------------------------------------------

/** A Nomad API call that failed, with the HTTP status (0 when Nomad was not reached) and Nomad's message. */
export class NomadApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly nomadMessage: string,
    /** Set when an EnforceIndex check failed: the job changed since it was last seen; retry. */
    readonly conflict = false,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'NomadApiError';
  }
}

interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** Nomad prefixes every failed EnforceIndex check with this (as HTTP 500 in real Nomad; 400 in some versions). */
const ENFORCE_INDEX_ERROR = /Enforcing job modify index/i;
const MAX_MESSAGE_CHARS = 500;
const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
const DEFAULT_WATCH_WAIT_SECONDS = 300;
/** Lists nothing in any table (IDs are UUIDs, Manticore's jobs start with its prefix): a probe reads only the index. */
const PROBE_PREFIX = '~';


interface KnownJob {
  specHash: string;
  jobModifyIndex: number;
  stopped: boolean;
}

/** What a write of ours did, until the jobs watch has caught up with it (its index reached `index`). */
type WriteOverlay = { kind: 'registered'; known: KnownJob; index: number } | { kind: 'deregistered'; index: number };

interface Watcher {
  subscriber: Subscriber<WorkloadStep>;
  /** False until the watcher got its reset. */
  started: boolean;
}

/** The lists every workload is computed from: nothing is reported before all of them have answered. */
const WORKLOAD_TABLES = ['jobs', 'allocations', 'evaluations'] as const;
type Table = (typeof WORKLOAD_TABLES)[number] | 'nodes';

export class NomadScheduler implements Scheduler {
  readonly kind = 'nomad' as const;

  private readonly log: Logger;
  private readonly base: URL;
  private readonly requestTimeoutMs: number;
  private readonly waitSeconds: number;
  private agent: http.Agent | undefined;
  private tls: TlsMaterial = {};
  private readonly abort = new AbortController();
  private started = false;
  private closed = false;
  private loops: Promise<void>[] = [];
  /** Set while start() waits for the caches to fill. */
  private onReady: (() => void) | undefined;

  // Caches: Manticore's (marked) jobs; allocations and evaluations of jobs with Manticore's prefix.
  private jobs = new Map<string, NomadJobStub>();
  /** Jobs with Manticore's prefix but not its marker: never reported, never overwritten. */
  private foreign = new Set<string>();
  private readonly allocsByJob = new Map<string, Map<string, NomadAllocStub>>();
  private readonly evalsByJob = new Map<string, Map<string, NomadEvalStub>>();
  /** The node list, once answered (only compared with the next answer, for capacityChanges()). */
  private nodes: Map<string, NomadNodeStub> | undefined;
  private readonly capacity = new Subject<void>();
  private readonly answered = new Set<Table>();
  private jobsIndex = 0;
  private warnedNoMeta = false;
  /** The last value reported for each workload, and its canonical JSON for the change check. */
  private readonly reported = new Map<string, { workload: Workload; key: string }>();
  private readonly watchers = new Set<Watcher>();
  private readonly overlays = new Map<string, WriteOverlay>();
  /** Register, deregister and reschedule of one job never interleave. */
  private readonly perJob = new KeyedSerializer();

  constructor(private readonly options: NomadSchedulerOptions) {
    this.log = options.log;
    // Every request in flight listens on this one signal (so close() aborts them all); many at once is normal.
    setMaxListeners(0, this.abort.signal);
    try {
      this.base = new URL(options.address);
    } catch (error) {
      throw new Error(`Nomad address "${options.address}" is not a URL`, { cause: error });
    }
    if (this.base.protocol !== 'http:' && this.base.protocol !== 'https:') {
      throw new Error(`Nomad address "${options.address}" must start with http:// or https://`);
    }
    const problems = nomadJobOptionsProblems(options.job);
    if (problems.length > 0) throw new Error(`Nomad job options that Nomad would refuse: ${problems.join('; ')}`);
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.waitSeconds = Math.min(600, Math.max(1, options.watchWaitSeconds ?? DEFAULT_WATCH_WAIT_SECONDS));
  }

  /** Checks that Nomad answers and has a leader, then starts following jobs, allocations, evaluations and nodes. */
  async start(): Promise<void> {
    if (this.started) throw new Error('NomadScheduler.start() was already called');
    if (this.closed) throw new Error('NomadScheduler is closed');
    this.tls = loadTlsMaterial(this.options.tls, 'Nomad');
    const secure = this.base.protocol === 'https:';
    this.agent = secure ? new https.Agent({ keepAlive: true, ...this.tls }) : new http.Agent({ keepAlive: true });
    let leader: unknown;
    try {
      leader = JSON.parse((await this.request('GET', '/v1/status/leader', {}, undefined, this.requestTimeoutMs)).body);
    } catch (error) {
      this.agent.destroy();
      throw new Error(`cannot reach Nomad at ${this.options.address}: ${(error as Error).message}`, { cause: error });
    }
    if (typeof leader !== 'string' || leader === '') {
      this.agent.destroy();
      throw new Error(`Nomad at ${this.options.address} has no leader (answered ${JSON.stringify(leader)})`);
    }
    this.started = true;
    this.loops = [
      this.follow('jobs', '/v1/jobs', { prefix: JOB_PREFIX, meta: 'true' }, (data, index) => this.applyJobs(data, index)),
      this.follow('allocations', '/v1/allocations', { resources: 'true' }, (data) => this.applyAllocations(data)),
      this.follow('evaluations', '/v1/evaluations', {}, (data) => this.applyEvaluations(data)),
      this.follow('nodes', '/v1/nodes', {}, (data) => this.applyNodes(data)),
    ];
    // The caches are filled before anything else happens, so a watch's reset never includes a job
    // registered after it subscribed, and registrations are decided from the cache.
    const timeoutMs = Math.max(3 * this.requestTimeoutMs, 1_000);
    const filled = await new Promise<boolean>((resolve) => {
      const done = (ready: boolean): void => {
        clearTimeout(timer);
        this.abort.signal.removeEventListener('abort', aborted);
        resolve(ready);
      };
      const aborted = (): void => done(false);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.abort.signal.addEventListener('abort', aborted);
      this.onReady = () => done(true);
      if (this.isReady()) done(true);
    });
    this.onReady = undefined;
    if (this.closed) throw new Error('NomadScheduler was closed while starting');
    if (!filled) {
      const missing = WORKLOAD_TABLES.filter((table) => !this.answered.has(table));
      await this.close();
      throw new Error(`Nomad at ${this.options.address} did not list ${missing.join(', ')} within ${timeoutMs} ms`);
    }
    this.log.info({ address: this.options.address, leader, namespace: this.options.namespace, region: this.options.region, workloads: this.reported.size }, 'nomad scheduler started');
  }

  render(request: WorkloadRequest): RenderedJob {
    const body = renderNomadJob(request, this.options.job);
    return { id: request.jobId, sessionId: request.sessionId, specHash: body.Job.Meta[SPEC_HASH_META_KEY] ?? '', body };
  }

  async register(job: RenderedJob): Promise<void> {
    this.assertUsable();
    const nomadJob = jobOf(job);
    await this.perJob.run(job.id, async () => {
      this.assertUsable();
      if (this.foreign.has(job.id)) {
        throw new Error(`registering job ${job.id}: a job with that id exists without Manticore's marker (Meta ${SESSION_META_KEY}); refusing to overwrite it`);
      }
      const known = await this.knownJob(job.id);
      if (known && known.specHash === job.specHash && !known.stopped) {
        this.log.debug({ jobId: job.id }, 'job already registered with this content');
        return;
      }
      // EnforceIndex makes Nomad refuse the write if the job changed since we saw it (0: "only if new").
      const payload = { Job: nomadJob, EnforceIndex: true, JobModifyIndex: known?.jobModifyIndex ?? 0 };
      let response: unknown;
      try {
        response = await this.json('PUT', '/v1/jobs', {}, payload);
      } catch (error) {
        throw this.describeWriteError(error, `registering job ${job.id}`);
      }
      const jobModifyIndex = numberField(response, 'JobModifyIndex') ?? 0;
      this.overlays.set(job.id, { kind: 'registered', known: { specHash: job.specHash, jobModifyIndex, stopped: false }, index: jobModifyIndex });
      const warnings = isRecord(response) && typeof response.Warnings === 'string' ? response.Warnings : '';
      if (warnings) this.log.warn({ jobId: job.id, warnings }, 'Nomad accepted the job with warnings');
      this.log.info({ jobId: job.id, specHash: job.specHash, jobModifyIndex, evalId: isRecord(response) ? response.EvalID : undefined }, known ? 'job updated' : 'job registered');
    });
  }

  async deregister(jobId: string): Promise<void> {
    this.assertUsable();
    await this.perJob.run(jobId, async () => {
      this.assertUsable();
      let response: unknown;
      try {
        response = await this.json('DELETE', `/v1/job/${encodeURIComponent(jobId)}`, { purge: 'true' });
      } catch (error) {
        if (error instanceof NomadApiError && (error.status === 404 || /job not found/i.test(error.nomadMessage))) {
          this.log.debug({ jobId }, 'job to deregister was already gone');
          this.overlays.set(jobId, { kind: 'deregistered', index: this.jobsIndex + 1 });
          return;
        }
        throw this.describeWriteError(error, `deregistering job ${jobId}`);
      }
      const index = numberField(response, 'JobModifyIndex') || numberField(response, 'Index') || this.jobsIndex + 1;
      this.overlays.set(jobId, { kind: 'deregistered', index });
      this.log.info({ jobId }, 'job deregistered');
    });
  }

  /**
   * Rescheduling is off for Manticore's jobs, and Nomad refuses to force-reschedule allocations of a group
   * without rescheduling (`POST /v1/job/:id/evaluate` with ForceReschedule then changes nothing). What
   * replaces a failed allocation is a new version of the job: the same job, read back, with Meta naming the
   * allocation it replaces, registered only if it is still the version whose allocation failed.
   */
  async reschedule(jobId: string): Promise<void> {
    this.assertUsable();
    await this.perJob.run(jobId, async () => {
      this.assertUsable();
      const stub = this.jobs.get(jobId);
      const failed = this.reported.get(jobId)?.workload.allocation;
      if (!stub || failed?.clientStatus !== 'failed') {
        this.log.debug({ jobId, clientStatus: failed?.clientStatus }, 'nothing to reschedule: no failed allocation');
        return;
      }
      let full: unknown;
      try {
        full = await this.json('GET', `/v1/job/${encodeURIComponent(jobId)}`, {});
      } catch (error) {
        if (error instanceof NomadApiError && error.status === 404) {
          this.log.debug({ jobId }, 'job to reschedule is gone');
          return;
        }
        throw this.describeWriteError(error, `rescheduling job ${jobId}: reading the job`);
      }
      if (!isRecord(full) || full.ID !== jobId || !isStringRecord(full.Meta)) throw new Error(`rescheduling job ${jobId}: Nomad's answer is not the job`);
      // A newer version (a content change, or a reschedule whose result the watch has not shown yet)
      // replaces the failed allocation already.
      if (numberField(full, 'JobModifyIndex') !== stub.JobModifyIndex) {
        this.log.debug({ jobId, allocId: failed.id }, 'the job changed since its allocation failed; not rescheduling');
        return;
      }
      const payload = { Job: { ...full, Meta: { ...full.Meta, [REPLACES_META_KEY]: failed.id } }, EnforceIndex: true, JobModifyIndex: stub.JobModifyIndex };
      let response: unknown;
      try {
        response = await this.json('PUT', '/v1/jobs', {}, payload);
      } catch (error) {
        throw this.describeWriteError(error, `rescheduling job ${jobId}`);
      }
      const jobModifyIndex = numberField(response, 'JobModifyIndex') ?? 0;
      this.overlays.set(jobId, { kind: 'registered', known: { ...knownOf(stub), jobModifyIndex }, index: jobModifyIndex });
      this.log.info({ jobId, allocId: failed.id, jobModifyIndex, evalId: isRecord(response) ? response.EvalID : undefined }, 'job registered again to replace its failed allocation');
    });
  }

  watch(): Observable<WorkloadStep> {
    return new Observable<WorkloadStep>((subscriber) => {
      if (this.closed) {
        subscriber.complete();
        return undefined;
      }
      const watcher: Watcher = { subscriber, started: false };
      this.watchers.add(watcher);
      // With the caches filled, the reset goes out now; before that, once all three tables have answered.
      if (this.isReady()) this.startWatcher(watcher);
      return () => {
        this.watchers.delete(watcher);
      };
    });
  }

  /** Follows the node list; emits to every subscriber, completes on close(). */
  capacityChanges(): Observable<void> {
    return this.capacity.asObservable();
  }

  /** Aborts the blocking queries and completes every watch and capacityChanges(). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    await Promise.all(this.loops);
    await this.perJob.drain();
    for (const watcher of this.watchers) watcher.subscriber.complete();
    this.watchers.clear();
    this.capacity.complete();
    this.agent?.destroy();
    this.log.info('nomad scheduler closed');
  }

  // ---- register helpers ------------------------------------------------------------------------------

  /** What Nomad holds for the job: our own recent write, else the watched cache, else a direct read. */
  private async knownJob(jobId: string): Promise<KnownJob | undefined> {
    const overlay = this.overlays.get(jobId);
    if (overlay && this.jobsIndex < overlay.index) return overlay.kind === 'registered' ? overlay.known : undefined;
    if (overlay) this.overlays.delete(jobId);
    if (this.answered.has('jobs')) {
      const stub = this.jobs.get(jobId);
      return stub ? knownOf(stub) : undefined;
    }
    // Not watched yet (just started): ask Nomad for this one job.
    try {
      const full = await this.json('GET', `/v1/job/${encodeURIComponent(jobId)}`, {});
      if (!isRecord(full) || typeof full.ID !== 'string') throw new Error('the answer is not a job');
      const meta = isStringRecord(full.Meta) ? full.Meta : undefined;
      if (!meta?.[SESSION_META_KEY]) {
        throw new Error(`a job with that id exists without Manticore's marker (Meta ${SESSION_META_KEY}); refusing to overwrite it`);
      }
      return { specHash: meta[SPEC_HASH_META_KEY] ?? '', jobModifyIndex: numberField(full, 'JobModifyIndex') ?? 0, stopped: full.Stop === true };
    } catch (error) {
      if (error instanceof NomadApiError && error.status === 404) return undefined;
      throw new Error(`registering job ${jobId}: reading the current job: ${(error as Error).message}`, { cause: error });
    }
  }

  private describeWriteError(error: unknown, what: string): Error {
    if (!(error instanceof NomadApiError)) return new Error(`${what}: ${(error as Error).message}`, { cause: error });
    if (ENFORCE_INDEX_ERROR.test(error.nomadMessage)) {
      return new NomadApiError(
        `${what}: conflict: the job changed since Manticore last saw it; retry once the watch has caught up (Nomad ${error.status}: ${error.nomadMessage})`,
        error.status,
        error.nomadMessage,
        true,
        { cause: error },
      );
    }
    const reached = error.status === 0 ? 'Nomad not reached' : `Nomad ${error.status}`;
    return new NomadApiError(`${what}: ${reached}: ${error.nomadMessage}`, error.status, error.nomadMessage, false, { cause: error });
  }

  // ---- watch -------------------------------------------------------------------------------------------

  /** One blocking query, followed until close(): its own index, Nomad's index rules, backoff on errors. */
  private async follow(table: Table, path: string, query: Record<string, string>, apply: (data: unknown, index: number) => void): Promise<void> {
    let index = 0;
    let failures = 0;
    let idle = 0;
    const waitMs = this.waitSeconds * 1000;
    while (!this.closed) {
      const asked = index;
      const started = Date.now();
      const guard = asked > 0 ? this.guardHeld(table, path, query, asked) : undefined;
      try {
        const blocking: Record<string, string> = asked > 0 ? { index: String(asked), wait: `${this.waitSeconds}s` } : {};
        // Nomad may hold a blocking query up to wait + wait/16.
        const timeout = asked > 0 ? waitMs + waitMs / 16 + this.requestTimeoutMs : this.requestTimeoutMs;
        const result = await this.request('GET', path, { ...query, ...blocking }, undefined, timeout, guard?.signal);
        const answered = Number(result.headers['x-nomad-index']);
        if (!Number.isSafeInteger(answered) || answered < 0) throw new Error(`${path}: no valid X-Nomad-Index in the answer`);
        failures = 0;
        // The first answer (index 0 asked) is always taken: it is the whole list.
        if (asked > 0) {
          const next = nextIndex(asked, answered);
          if (next.kind === 'reset') {
            this.log.warn({ table, asked, answered }, 'Nomad index went backwards (state lost or replaced): starting this watch over');
            index = 0;
            continue;
          }
          if (next.kind === 'unchanged') {
            // Still take the body: after Nomad lost its state, the new index can climb back to exactly the one
            // asked for, and the list then differs although the index does not. The apply functions diff
            // item by item, so an unchanged list costs no events.
            apply(JSON.parse(result.body) as unknown, answered);
            // An unchanged answer well before the wait elapsed means the server does not block: slow down.
            if (Date.now() - started < waitMs / 2) {
              idle++;
              await this.sleep(backoffDelay(idle));
            }
            continue;
          }
        }
        idle = 0;
        const applying = performance.now();
        apply(JSON.parse(result.body) as unknown, answered);
        // Index 0 would make the next query return at once; Nomad's indexes start at 1.
        index = Math.max(1, answered);
        this.markAnswered(table);
        // A long list that keeps changing is re-read a few times a second, not back to back.
        const pause = pacingDelayMs(performance.now() - applying);
        if (asked > 0 && pause > 0) await this.sleep(pause);
      } catch (error) {
        if (this.closed) break;
        const overdue = guard?.overdue();
        if (overdue !== undefined) {
          // Nomad answers probes: ask again at once, from scratch if its index went backwards.
          this.log.warn({ table, asked, index: overdue }, `the answer to the blocking query on Nomad ${table} is overdue (its index moved on): asking again`);
          if (overdue < asked) index = 0;
          continue;
        }
        failures++;
        const delay = backoffDelay(failures);
        const log = failures === 1 || failures % 10 === 0 ? this.log.warn.bind(this.log) : this.log.debug.bind(this.log);
        log({ table, failures, retryInMs: delay, err: error }, `watching Nomad ${table} failed; retrying`);
        await this.sleep(delay);
      } finally {
        guard?.stop();
      }
    }
  }

  /**
   * Watches over one held blocking query. Its answer can be lost on the way (a proxy, a struggling server),
   * and the watch would then wait for its own deadline, over 5 minutes at the default wait, blind to every
   * change meanwhile. So every request timeout the table's index is read with a non-blocking query that lists
   * nothing; once it differs from the index asked for, Nomad owes the answer, and if it has not come one
   * request timeout later the query is abandoned (`signal` aborts it; `overdue()` then gives the index seen).
   */
  private guardHeld(table: Table, path: string, query: Record<string, string>, asked: number): { signal: AbortSignal; overdue(): number | undefined; stop(): void } {
    // Both end with close() too: the held query and the probes are aborted by their own signal only.
    const abandon = linkedController(this.abort.signal);
    const settled = linkedController(this.abort.signal);
    let seen: number | undefined;
    let abandonedAt: number | undefined;
    void (async () => {
      while (!settled.signal.aborted) {
        await this.sleep(this.requestTimeoutMs, settled.signal);
        if (settled.signal.aborted) return;
        if (seen !== undefined && seen !== asked) {
          abandonedAt = seen;
          abandon.abort();
          return;
        }
        try {
          const probe = await this.request('GET', path, { ...query, prefix: PROBE_PREFIX }, undefined, this.requestTimeoutMs, settled.signal);
          const index = Number(probe.headers['x-nomad-index']);
          if (Number.isSafeInteger(index)) seen = index;
        } catch (error) {
          // A failed probe says nothing about the held query; the next one may.
          if (!settled.signal.aborted) this.log.debug({ table, err: error }, 'probing the index of a held blocking query failed');
        }
      }
    })();
    return {
      signal: abandon.signal,
      overdue: () => abandonedAt,
      stop: () => {
        settled.abort();
        abandon.unlink();
        settled.unlink();
      },
    };
  }

  private applyJobs(data: unknown, index: number): void {
    if (!Array.isArray(data)) throw new Error('/v1/jobs: the answer is not a list');
    const next = new Map<string, NomadJobStub>();
    const foreign = new Set<string>();
    for (const item of data) {
      const stub = parseJobStub(item);
      if (!stub || !stub.ID.startsWith(JOB_PREFIX)) continue;
      if (isRecord(item) && !('Meta' in item) && !this.warnedNoMeta) {
        this.warnedNoMeta = true;
        this.log.error('Nomad lists jobs without their Meta (the meta=true parameter needs Nomad 1.6 or later): no job can be recognised as Manticore\'s');
      }
      if (stub.Meta?.[SESSION_META_KEY]) next.set(stub.ID, stub);
      else foreign.add(stub.ID);
    }
    const touched = new Set<string>();
    for (const [id, stub] of next) {
      const before = this.jobs.get(id);
      if (!before || before.ModifyIndex !== stub.ModifyIndex || before.JobModifyIndex !== stub.JobModifyIndex || canonicalJson(before) !== canonicalJson(stub)) touched.add(id);
    }
    for (const id of this.jobs.keys()) if (!next.has(id)) touched.add(id);
    this.jobs = next;
    this.foreign = foreign;
    this.jobsIndex = index;
    for (const [id, overlay] of this.overlays) if (index >= overlay.index) this.overlays.delete(id);
    this.refresh(touched);
  }

  private applyAllocations(data: unknown): void {
    if (!Array.isArray(data)) throw new Error('/v1/allocations: the answer is not a list');
    this.refresh(replaceGrouped(this.allocsByJob, data.map(parseAllocStub)));
  }

  private applyEvaluations(data: unknown): void {
    if (!Array.isArray(data)) throw new Error('/v1/evaluations: the answer is not a list');
    this.refresh(replaceGrouped(this.evalsByJob, data.map(parseEvalStub)));
  }

  private applyNodes(data: unknown): void {
    if (!Array.isArray(data)) throw new Error('/v1/nodes: the answer is not a list');
    const next = new Map<string, NomadNodeStub>();
    for (const item of data) {
      const node = parseNodeStub(item);
      if (node) next.set(node.ID, node);
    }
    const previous = this.nodes;
    this.nodes = next;
    // The first answer is the starting point, not a change.
    if (!previous) return;
    const gains = capacityGains(previous, next);
    if (gains.length === 0) return;
    this.log.debug({ gains }, 'the cluster may have gained capacity');
    this.capacity.next();
  }

  private markAnswered(table: Table): void {
    if (this.answered.has(table)) return;
    this.answered.add(table);
    // Workloads never wait for the node list.
    if (table === 'nodes' || !this.isReady()) return;
    this.refresh(new Set(this.jobs.keys()));
    for (const watcher of this.watchers) if (!watcher.started) this.startWatcher(watcher);
    this.onReady?.();
  }

  private isReady(): boolean {
    return WORKLOAD_TABLES.every((table) => this.answered.has(table));
  }

  private startWatcher(watcher: Watcher): void {
    watcher.started = true;
    const workloads = [...this.reported.values()].map((entry) => entry.workload).sort((a, b) => a.jobId.localeCompare(b.jobId));
    watcher.subscriber.next({ kind: 'reset', workloads });
  }

  /** Recomputes the workloads of `jobIds` and reports those whose value changed. */
  private refresh(jobIds: ReadonlySet<string>): void {
    // Until every table has answered, a workload could be computed from half the picture.
    if (!this.isReady()) return;
    for (const jobId of [...jobIds].sort()) {
      const job = this.jobs.get(jobId);
      const workload = job
        ? workloadOf(job, this.allocsByJob.get(jobId)?.values() ?? [], this.evalsByJob.get(jobId)?.values() ?? [])
        : undefined;
      const previous = this.reported.get(jobId);
      if (!workload) {
        if (!previous) continue;
        this.reported.delete(jobId);
        this.emit({ kind: 'delete', jobId, sessionId: previous.workload.sessionId });
        continue;
      }
      const key = canonicalJson(workload);
      if (previous?.key === key) continue;
      this.reported.set(jobId, { workload, key });
      this.emit({ kind: 'upsert', workload });
    }
  }

  private emit(step: WorkloadStep): void {
    for (const watcher of this.watchers) if (watcher.started) watcher.subscriber.next(step);
  }

  // ---- plumbing --------------------------------------------------------------------------------------

  private async json(method: string, path: string, query: Record<string, string>, body?: unknown): Promise<unknown> {
    const result = await this.request(method, path, query, body, this.requestTimeoutMs);
    try {
      return result.body === '' ? undefined : (JSON.parse(result.body) as unknown);
    } catch (error) {
      throw new NomadApiError(`${method} ${path}: Nomad answered with invalid JSON`, result.status, result.body.slice(0, MAX_MESSAGE_CHARS), false, { cause: error });
    }
  }

  /** One HTTP request to Nomad; non-2xx answers become NomadApiError with Nomad's message. `signal` aborts it (by default close() does). */
  private request(method: string, path: string, query: Record<string, string>, body: unknown, timeoutMs: number, signal: AbortSignal = this.abort.signal): Promise<HttpResult> {
    const url = new URL(path, this.base);
    if (this.options.namespace !== undefined) url.searchParams.set('namespace', this.options.namespace);
    if (this.options.region !== undefined) url.searchParams.set('region', this.options.region);
    for (const [key, value] of Object.entries(query)) url.searchParams.set(key, value);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: http.OutgoingHttpHeaders = { accept: 'application/json' };
    if (this.options.token) headers['x-nomad-token'] = this.options.token;
    if (payload) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = payload.length;
    }
    const transport = url.protocol === 'https:' ? https : http;
    const startedAt = performance.now();
    const operation = `${method} ${url.pathname.replace(/^(\/v1\/(?:job|allocation|evaluation|node|client\/allocation))\/[^/]+/, '$1/:id')}${query.index === undefined ? '' : ' (blocking)'}`;
    const result = new Promise<HttpResult>((resolve, reject) => {
      const fail = (status: number, message: string, cause?: unknown): void =>
        reject(new NomadApiError(`${method} ${url.pathname}: ${message}`, status, message, false, { cause }));
      const req = transport.request(url, { method, headers, agent: this.agent, signal, ...this.tls }, (res) => {
        const body = readBody(res);
        res.on('error', (error) => fail(0, error.message, error));
        res.on('end', () => {
          clearTimeout(timer);
          const text = body();
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) resolve({ status, headers: res.headers, body: text });
          else fail(status, nomadMessage(text) || `HTTP ${status}`);
        });
      });
      const timer = setTimeout(() => req.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      req.on('error', (error) => {
        clearTimeout(timer);
        fail(0, error.message, error);
      });
      req.end(payload);
    });
    result.then(
      () => recordBackendCall('nomad', operation, 'ok', startedAt),
      (error: unknown) => {
        const status = error instanceof NomadApiError ? error.status : 0;
        recordBackendCall('nomad', operation, status === 0 ? (this.abort.signal.aborted ? 'aborted' : 'unreachable') : outcomeOfStatus(status), startedAt);
      },
    );
    return result;
  }

  private sleep(ms: number, signal: AbortSignal = this.abort.signal): Promise<void> {
    return new Promise((resolve) => {
      if (signal.aborted) return resolve();
      const done = (): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener('abort', done);
    });
  }

  private assertUsable(): void {
    if (this.closed) throw new Error('NomadScheduler is closed');
    if (!this.started) throw new Error('NomadScheduler.start() must be called before using it');
  }
}

/** An AbortController that `parent` aborts too, until unlink() (so that a long-lived parent keeps no listener). */
function linkedController(parent: AbortSignal): AbortController & { unlink(): void } {
  const controller = new AbortController();
  const abort = (): void => controller.abort();
  if (parent.aborted) controller.abort();
  else parent.addEventListener('abort', abort, { once: true });
  return Object.assign(controller, { unlink: () => parent.removeEventListener('abort', abort) });
}

// ---- parsing what Nomad sends (only the fields used, so the caches stay small) -------------------------

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isStringRecord(value: unknown): value is Record<string, string> {
  return isRecord(value) && Object.values(value).every((item) => typeof item === 'string');
}

function numberField(value: unknown, key: string): number | undefined {
  if (!isRecord(value)) return undefined;
  const field = value[key];
  return typeof field === 'number' && Number.isFinite(field) ? field : undefined;
}

function numberMap(value: unknown): Record<string, number> | undefined {
  if (!isRecord(value)) return undefined;
  const result: Record<string, number> = {};
  for (const [key, item] of Object.entries(value)) if (typeof item === 'number') result[key] = item;
  return result;
}

/** Nomad's HTTP errors are plain text; some proxies and versions send JSON with a message. */
function nomadMessage(text: string): string {
  const trimmed = text.trim();
  try {
    const parsed: unknown = JSON.parse(trimmed);
    if (isRecord(parsed) && typeof parsed.message === 'string') return parsed.message.slice(0, MAX_MESSAGE_CHARS);
  } catch {
    // Plain text, as Nomad sends it.
  }
  return trimmed.slice(0, MAX_MESSAGE_CHARS);
}

function jobOf(job: RenderedJob): NomadJob {
  const body = job.body;
  if (!isRecord(body) || !isRecord(body.Job)) throw new Error(`job ${job.id}: not a Nomad job register body ({ "Job": … })`);
  const nomadJob = body.Job as unknown as NomadJob;
  if (nomadJob.ID !== job.id) throw new Error(`job ${job.id}: the body's Job.ID is ${String(nomadJob.ID)}`);
  if (!isRecord(nomadJob.Meta) || nomadJob.Meta[SESSION_META_KEY] !== job.sessionId || nomadJob.Meta[SPEC_HASH_META_KEY] !== job.specHash) {
    throw new Error(`job ${job.id}: the body's Meta does not carry the session marker and spec hash of this job`);
  }
  return nomadJob;
}

function knownOf(stub: NomadJobStub): KnownJob {
  return { specHash: stub.Meta?.[SPEC_HASH_META_KEY] ?? '', jobModifyIndex: stub.JobModifyIndex, stopped: stub.Stop === true };
}

function parseJobStub(value: unknown): NomadJobStub | undefined {
  if (!isRecord(value) || typeof value.ID !== 'string') return undefined;
  const stub: NomadJobStub = {
    ID: value.ID,
    JobModifyIndex: numberField(value, 'JobModifyIndex') ?? 0,
    ModifyIndex: numberField(value, 'ModifyIndex') ?? 0,
  };
  if (typeof value.Status === 'string') stub.Status = value.Status;
  if (value.Stop === true) stub.Stop = true;
  if (isStringRecord(value.Meta)) stub.Meta = { ...value.Meta };
  return stub;
}

function parseTaskState(value: unknown): NomadTaskState | undefined {
  if (!isRecord(value) || typeof value.State !== 'string') return undefined;
  const events = Array.isArray(value.Events) ? value.Events.filter(isRecord) : [];
  // Only the latest event is ever reported.
  const latest = latestEvent(
    events
      .filter((event) => typeof event.Type === 'string')
      .map((event): NomadTaskEvent => ({
        Type: event.Type as string,
        Time: typeof event.Time === 'number' ? event.Time : 0,
        ...(typeof event.DisplayMessage === 'string' ? { DisplayMessage: event.DisplayMessage } : {}),
        ...(typeof event.ExitCode === 'number' ? { ExitCode: event.ExitCode } : {}),
      })),
  );
  return {
    State: value.State,
    Failed: value.Failed === true,
    Restarts: typeof value.Restarts === 'number' ? value.Restarts : 0,
    Events: latest ? [latest] : [],
  };
}

function parsePorts(value: unknown): NomadPortMapping[] {
  if (!Array.isArray(value)) return [];
  return value
    .filter(isRecord)
    .filter((port) => typeof port.Label === 'string' && typeof port.Value === 'number')
    .map((port) => ({ Label: port.Label as string, Value: port.Value as number, ...(typeof port.HostIP === 'string' ? { HostIP: port.HostIP } : {}) }));
}

function parseAllocStub(value: unknown): NomadAllocStub | undefined {
  if (!isRecord(value) || typeof value.ID !== 'string' || typeof value.JobID !== 'string' || !value.JobID.startsWith(JOB_PREFIX)) return undefined;
  const taskStates: Record<string, NomadTaskState> = {};
  if (isRecord(value.TaskStates)) {
    for (const [name, state] of Object.entries(value.TaskStates)) {
      const parsed = parseTaskState(state);
      if (parsed) taskStates[name] = parsed;
    }
  }
  const shared = isRecord(value.AllocatedResources) && isRecord(value.AllocatedResources.Shared) ? value.AllocatedResources.Shared : undefined;
  const networks: NomadNetworkResource[] = Array.isArray(shared?.Networks)
    ? shared.Networks.filter(isRecord).map((network) => ({
        ...(typeof network.IP === 'string' ? { IP: network.IP } : {}),
        DynamicPorts: parsePorts(network.DynamicPorts),
        ReservedPorts: parsePorts(network.ReservedPorts),
      }))
    : [];
  const deployment = isRecord(value.DeploymentStatus) ? value.DeploymentStatus : undefined;
  return {
    ID: value.ID,
    JobID: value.JobID,
    JobVersion: numberField(value, 'JobVersion') ?? 0,
    DesiredStatus: typeof value.DesiredStatus === 'string' ? value.DesiredStatus : '',
    ClientStatus: typeof value.ClientStatus === 'string' ? value.ClientStatus : '',
    TaskStates: taskStates,
    DeploymentStatus: deployment ? { Healthy: typeof deployment.Healthy === 'boolean' ? deployment.Healthy : null } : null,
    AllocatedResources: { Shared: { Ports: parsePorts(shared?.Ports), Networks: networks } },
    CreateIndex: numberField(value, 'CreateIndex') ?? 0,
    ModifyIndex: numberField(value, 'ModifyIndex') ?? 0,
  };
}

function parseNodeStub(value: unknown): NomadNodeStub | undefined {
  if (!isRecord(value) || typeof value.ID !== 'string') return undefined;
  return {
    ID: value.ID,
    ...(typeof value.Name === 'string' ? { Name: value.Name } : {}),
    Status: typeof value.Status === 'string' ? value.Status : '',
    SchedulingEligibility: typeof value.SchedulingEligibility === 'string' ? value.SchedulingEligibility : '',
    ModifyIndex: numberField(value, 'ModifyIndex') ?? 0,
  };
}

function parseMetric(value: unknown): NomadAllocMetric {
  if (!isRecord(value)) return {};
  const metric: NomadAllocMetric = {};
  for (const key of ['NodesEvaluated', 'NodesFiltered', 'NodesExhausted'] as const) {
    const field = numberField(value, key);
    if (field !== undefined) metric[key] = field;
  }
  for (const key of ['NodesAvailable', 'ClassFiltered', 'ConstraintFiltered', 'ClassExhausted', 'DimensionExhausted'] as const) {
    const field = numberMap(value[key]);
    if (field) metric[key] = field;
  }
  if (Array.isArray(value.QuotaExhausted)) metric.QuotaExhausted = value.QuotaExhausted.filter((item): item is string => typeof item === 'string');
  return metric;
}

function parseEvalStub(value: unknown): NomadEvalStub | undefined {
  if (!isRecord(value) || typeof value.ID !== 'string' || typeof value.JobID !== 'string' || !value.JobID.startsWith(JOB_PREFIX)) return undefined;
  let failed: Record<string, NomadAllocMetric> | null = null;
  if (isRecord(value.FailedTGAllocs)) {
    failed = {};
    for (const [group, metric] of Object.entries(value.FailedTGAllocs)) failed[group] = parseMetric(metric);
  }
  return {
    ID: value.ID,
    JobID: value.JobID,
    Status: typeof value.Status === 'string' ? value.Status : '',
    ...(typeof value.StatusDescription === 'string' && value.StatusDescription ? { StatusDescription: value.StatusDescription } : {}),
    FailedTGAllocs: failed,
    CreateIndex: numberField(value, 'CreateIndex') ?? 0,
    ModifyIndex: numberField(value, 'ModifyIndex') ?? 0,
  };
}

/**
 * Replaces a job → (id → item) cache with a full list answer; returns the jobs whose items were added,
 * removed or modified (by ModifyIndex), the only ones whose workloads can have changed.
 */
function replaceGrouped<T extends { ID: string; JobID: string; ModifyIndex: number }>(
  cache: Map<string, Map<string, T>>,
  items: ReadonlyArray<T | undefined>,
): Set<string> {
  const next = new Map<string, Map<string, T>>();
  for (const item of items) {
    if (!item) continue;
    let group = next.get(item.JobID);
    if (!group) next.set(item.JobID, (group = new Map()));
    group.set(item.ID, item);
  }
  const touched = new Set<string>();
  for (const [jobId, group] of next) {
    const before = cache.get(jobId);
    if (!before || before.size !== group.size) {
      touched.add(jobId);
      continue;
    }
    for (const [id, item] of group) {
      if (before.get(id)?.ModifyIndex !== item.ModifyIndex) {
        touched.add(jobId);
        break;
      }
    }
  }
  for (const jobId of cache.keys()) if (!next.has(jobId)) touched.add(jobId);
  cache.clear();
  for (const [jobId, group] of next) cache.set(jobId, group);
  return touched;
}
