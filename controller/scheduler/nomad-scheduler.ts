import { setMaxListeners } from 'node:events';
import http from 'node:http';
import { isDeepStrictEqual } from 'node:util';
import { Observable, Subject, type Subscriber } from 'rxjs';
import { KeyedSerializer } from '../util/keyed-serializer.js';
import type { Logger } from '../util/log.js';
import { DEFAULT_HEARTBEAT_MS, followEvents, type EventTable, type NomadEvent } from './nomad-events.js';
import { NomadApiError, connectNomad, nomadBaseUrl, type NomadHttp } from './nomad-http.js';
import { NomadTaskLogs } from './nomad-logs.js';
import type { LogEvent, LogReadRequest } from './task-logs.js';
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
 * Observation follows Nomad's event stream (topics Job, Allocation, Evaluation and Node; see
 * nomad-events.ts) into caches filled from the lists once per subscription: Manticore's jobs, the
 * allocations and evaluations of their current versions (nothing older counts for a workload) and the
 * nodes, each cut down to the few fields used. Every Manticore workload is computed from the caches, and
 * only workloads whose computed value changed are emitted. Nothing polls and nothing is listed again
 * while the stream lives: an unchanged cluster costs one heartbeat line every 30 s.
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
  /** Bound on every request, and on the event stream's first heartbeat. */
  requestTimeoutMs?: number;
  /** Nomad's heartbeat interval on the event stream (30 s); a stream silent for three of them is started over. */
  eventHeartbeatMs?: number;
}


// ---- the parts of Nomad's API responses Manticore reads ------------------------------------------------

export interface NomadJobStub {
  ID: string;
  JobModifyIndex: number;
  ModifyIndex: number;
  CreateIndex?: number;
  Status?: string;
  Stop?: boolean;
  /** Only with `?meta=true`, and only when the job has some (JobListStub's Meta is omitempty). */
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
  /** The evaluation that placed the allocation, or last updated it in place. */
  EvalID?: string;
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
const NO_EVALS: ReadonlySet<string> = new Set();
const TERMINAL_CLIENT_STATUSES = new Set(['complete', 'failed', 'lost']);
/** Resources Nomad schedules by that a user would call "enough" of. */
const CAPACITY_DIMENSIONS = new Set(['cpu', 'memory', 'disk', 'cores']);

/**
 * The workload of a job carrying Manticore's marker, or undefined for anybody else's job and for a stopped
 * one (`nomad job stop` without -purge keeps it as a new version with Stop set): nothing runs or will be
 * placed for it, so it must not read as a job waiting for placement; as for a purged job, registering it
 * again is what brings its session back.
 */
export function workloadOf(job: NomadJobStub, allocs: Iterable<NomadAllocStub>, evals: Iterable<NomadEvalStub>): Workload | undefined {
  const sessionId = job.Meta?.[SESSION_META_KEY];
  if (!sessionId || job.Stop === true) return undefined;
  const jobAllocs = [...allocs].filter((alloc) => alloc.JobID === job.ID);
  const jobEvals = [...evals].filter((evaluation) => evaluation.JobID === job.ID);
  const current = currentAllocation(job, jobAllocs, jobEvals);
  const placementFailure = placementFailureOf(job, jobAllocs, jobEvals);
  return {
    jobId: job.ID,
    sessionId,
    specHash: job.Meta?.[SPEC_HASH_META_KEY] ?? '',
    ...(current ? { allocation: allocationOf(current) } : {}),
    ...(placementFailure !== undefined ? { placementFailure } : {}),
  };
}

/**
 * Whether an allocation runs the job's current version: placed since it was registered, or updated in place
 * for it (Nomad then sets the allocation's EvalID to the version's evaluation; one it stops or leaves as it
 * is keeps its own). `currentEvals`: the IDs of the evaluations created since the version was registered.
 */
function runsCurrentVersion(job: NomadJobStub, alloc: { CreateIndex: number; EvalID?: string }, currentEvals: { has(id: string): boolean }): boolean {
  return alloc.CreateIndex >= job.JobModifyIndex || (alloc.EvalID !== undefined && currentEvals.has(alloc.EvalID));
}

/**
 * The allocation that runs the job's current content: among the allocations of the current version (see
 * runsCurrentVersion, and a terminal one the version's evaluation left as it is, wanted running still:
 * Nomad updates no terminal allocation in place), those an evaluation of it placed or updated if any (one
 * merely created since may be a late plan of an older evaluation, and the event stream carries no
 * JobVersion to tell), preferring the newest that Nomad wants running, else the newest.
 */
export function currentAllocation(job: NomadJobStub, allocs: readonly NomadAllocStub[], evals: readonly NomadEvalStub[]): NomadAllocStub | undefined {
  const versionEvals = evals.filter((evaluation) => evaluation.JobID === job.ID && evaluation.CreateIndex >= job.JobModifyIndex);
  const currentEvals = new Set(versionEvals.map((evaluation) => evaluation.ID));
  const evaluated = versionEvals.some((evaluation) => evaluation.Status === 'complete');
  const leftAsItIs = (alloc: NomadAllocStub): boolean => evaluated && alloc.DesiredStatus === 'run' && TERMINAL_CLIENT_STATUSES.has(alloc.ClientStatus);
  const since = allocs.filter((alloc) => alloc.JobID === job.ID && (runsCurrentVersion(job, alloc, currentEvals) || leftAsItIs(alloc)));
  if (since.length === 0) return undefined;
  const byVersion = since.filter((alloc) => alloc.EvalID !== undefined && currentEvals.has(alloc.EvalID));
  const candidates = byVersion.length > 0 ? byVersion : since;
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
function describeEvent(event: NomadTaskEvent): string {
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
  const current = currentAllocation(job, allocs, evals);
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
function describePlacementFailure(failed: Record<string, NomadAllocMetric>): string {
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
 * Why the cluster may have more room with `node` than it had with `previous` (undefined: no reason): the
 * node appeared, became ready or eligible, or was modified while ready and eligible (its resources may
 * have grown).
 */
function capacityGain(previous: NomadNodeStub | undefined, node: NomadNodeStub): string | undefined {
  const name = node.Name ? `${node.Name} (${node.ID})` : node.ID;
  if (!previous) return `node ${name} joined`;
  if (node.Status === 'ready' && previous.Status !== 'ready') return `node ${name} became ready`;
  if (node.SchedulingEligibility === 'eligible' && previous.SchedulingEligibility !== 'eligible') return `node ${name} became eligible`;
  if (node.Status === 'ready' && node.SchedulingEligibility === 'eligible' && node.ModifyIndex !== previous.ModifyIndex) return `node ${name} was updated`;
  return undefined;
}

/** The gains (capacityGain) of every node in `after` over `before`. */
export function capacityGains(before: ReadonlyMap<string, NomadNodeStub>, after: ReadonlyMap<string, NomadNodeStub>): string[] {
  return [...after.values()].map((node) => capacityGain(before.get(node.ID), node)).filter((gain): gain is string => gain !== undefined);
}

// ---- the scheduler -------------------------------------------------------------------------------------

/** Nomad prefixes every failed EnforceIndex check with this (as HTTP 500 in real Nomad; 400 in some versions). */
const ENFORCE_INDEX_ERROR = /Enforcing job modify index/i;
const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;

interface KnownJob {
  specHash: string;
  jobModifyIndex: number;
  stopped: boolean;
}

/** What the caches hold of allocations and evaluations, as far as deciding what to keep. */
type CachedItem = { JobID: string; CreateIndex: number; EvalID?: string; DesiredStatus?: string };

/** What a write of ours did, until the event stream has caught up with it (its index reached `index`). */
type WriteOverlay = { kind: 'registered'; known: KnownJob; index: number } | { kind: 'deregistered'; index: number };

interface Watcher {
  subscriber: Subscriber<WorkloadStep>;
  /** False until the watcher got its reset. */
  started: boolean;
}

export class NomadScheduler implements Scheduler {
  readonly kind = 'nomad' as const;

  private readonly log: Logger;
  private readonly requestTimeoutMs: number;
  private http: NomadHttp | undefined;
  private logs: NomadTaskLogs | undefined;
  private agent: http.Agent | undefined;
  private readonly abort = new AbortController();
  private started = false;
  private closed = false;
  private following: Promise<void> | undefined;
  /** Set while start() waits for the caches to fill. */
  private onReady: (() => void) | undefined;
  private lastFailure: Error | undefined;

  // Caches: Manticore's (marked) jobs; the allocations and evaluations of their current versions; the nodes.
  private jobs = new Map<string, NomadJobStub>();
  /** Jobs with Manticore's prefix but not its marker: never reported, never overwritten. */
  private foreign = new Set<string>();
  private readonly allocsByJob = new Map<string, Map<string, NomadAllocStub>>();
  private readonly evalsByJob = new Map<string, Map<string, NomadEvalStub>>();
  /** The nodes, once listed (only compared with what comes next, for capacityChanges()). */
  private nodes: Map<string, NomadNodeStub> | undefined;
  private readonly capacity = new Subject<void>();
  /** True once the caches have been synced the first time: until then nothing is reported. */
  private synced = false;
  /** Between new lists and the end of their sync: the jobs whose workloads are recomputed at its end. */
  private catchingUp: Set<string> | undefined;
  /** The highest index up to which every change to a job is in the cache. */
  private jobsIndex = 0;
  /** Whether Nomad is known to list jobs with their Meta ('listed'), or to ignore meta=true ('ignored', said once). */
  private metaListing: 'unknown' | 'listed' | 'ignored' = 'unknown';
  /** The last value reported for each workload. */
  private readonly reported = new Map<string, Workload>();
  private readonly watchers = new Set<Watcher>();
  private readonly overlays = new Map<string, WriteOverlay>();
  /** Register, deregister and reschedule of one job never interleave. */
  private readonly perJob = new KeyedSerializer();

  constructor(private readonly options: NomadSchedulerOptions) {
    this.log = options.log;
    // Every request in flight listens on this one signal (so close() aborts them all); many at once is normal.
    setMaxListeners(0, this.abort.signal);
    nomadBaseUrl(options.address);
    const problems = nomadJobOptionsProblems(options.job);
    if (problems.length > 0) throw new Error(`Nomad job options that Nomad would refuse: ${problems.join('; ')}`);
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  }

  /** Checks that Nomad answers and has a leader, then follows its event stream until the caches are synced. */
  async start(): Promise<void> {
    if (this.started) throw new Error('NomadScheduler.start() was already called');
    if (this.closed) throw new Error('NomadScheduler is closed');
    const { address, token, region, namespace, tls } = this.options;
    const { http: api, agent } = connectNomad({ address, token, region, namespace, tls, requestTimeoutMs: this.requestTimeoutMs, signal: this.abort.signal });
    this.http = api;
    this.agent = agent;
    let leader: unknown;
    try {
      leader = await api.json('GET', '/v1/status/leader', {});
    } catch (error) {
      agent.destroy();
      throw new Error(`cannot reach Nomad at ${this.options.address}: ${(error as Error).message}`, { cause: error });
    }
    if (typeof leader !== 'string' || leader === '') {
      agent.destroy();
      throw new Error(`Nomad at ${this.options.address} has no leader (answered ${JSON.stringify(leader)})`);
    }
    this.started = true;
    this.logs = new NomadTaskLogs({ http: api, log: this.log });
    this.following = followEvents({
      http: api,
      log: this.log,
      heartbeatMs: this.options.eventHeartbeatMs ?? DEFAULT_HEARTBEAT_MS,
      openTimeoutMs: this.requestTimeoutMs,
      signal: this.abort.signal,
      sink: {
        resync: (signal) => this.resync(signal),
        apply: (index, events) => this.applyEvents(index, events),
        synced: () => this.markSynced(),
        failed: (error) => (this.lastFailure = error),
      },
    });
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
      if (this.synced) done(true);
    });
    this.onReady = undefined;
    if (this.closed) throw new Error('NomadScheduler was closed while starting');
    if (!filled) {
      const why = this.lastFailure ? `: ${this.lastFailure.message}` : '';
      await this.close();
      throw new Error(`Nomad at ${this.options.address} did not give its event stream and lists within ${timeoutMs} ms${why}`, { cause: this.lastFailure });
    }
    this.log.info({ address: this.options.address, leader, namespace: this.options.namespace, region: this.options.region, workloads: this.reported.size, cache: this.cacheSizes() }, 'nomad scheduler started');
  }

  render(request: WorkloadRequest): RenderedJob {
    const body = renderNomadJob(request, this.options.job);
    return { id: request.jobId, sessionId: request.sessionId, specHash: body.Job.Meta[SPEC_HASH_META_KEY] ?? '', body };
  }

  async register(job: RenderedJob, signal?: AbortSignal): Promise<void> {
    const api = this.assertUsable();
    const nomadJob = jobOf(job);
    await this.perJob.run(job.id, async () => {
      this.assertUsable();
      signal?.throwIfAborted();
      if (this.foreign.has(job.id)) {
        throw new Error(`registering job ${job.id}: a job with that id exists without Manticore's marker (Meta ${SESSION_META_KEY}); refusing to overwrite it`);
      }
      const known = await this.knownJob(job.id);
      if (known && known.specHash === job.specHash && !known.stopped) {
        this.log.debug({ session: job.sessionId, jobId: job.id }, 'job already registered with this content');
        return;
      }
      // EnforceIndex makes Nomad refuse the write if the job changed since we saw it (0: "only if new").
      const payload = { Job: nomadJob, EnforceIndex: true, JobModifyIndex: known?.jobModifyIndex ?? 0 };
      signal?.throwIfAborted();
      let response: unknown;
      try {
        response = await api.json('PUT', '/v1/jobs', {}, payload, signal);
      } catch (error) {
        throw this.describeWriteError(error, `registering job ${job.id}`);
      }
      const jobModifyIndex = numberField(response, 'JobModifyIndex') ?? 0;
      this.overlays.set(job.id, { kind: 'registered', known: { specHash: job.specHash, jobModifyIndex, stopped: false }, index: jobModifyIndex });
      const warnings = isRecord(response) && typeof response.Warnings === 'string' ? response.Warnings : '';
      if (warnings) this.log.warn({ session: job.sessionId, jobId: job.id, warnings }, 'Nomad accepted the job with warnings');
      this.log.info({ session: job.sessionId, jobId: job.id, specHash: job.specHash, jobModifyIndex, evalId: isRecord(response) ? response.EvalID : undefined }, known ? 'job updated' : 'job registered');
    });
  }

  async deregister(jobId: string, signal?: AbortSignal): Promise<void> {
    await this.remove(jobId, 'purge', signal);
  }

  /** `DELETE /v1/job/:id` without purge: the job stays, stopped, with its allocations, until Nomad's job GC. */
  async stop(jobId: string, signal?: AbortSignal): Promise<void> {
    await this.remove(jobId, 'stop', signal);
  }

  /**
   * Deregisters the job. A purge deletes it with its allocations (Nomad 1.5.x and later remove them with the
   * job, logs included); a stop keeps both, the job marked Stop, so the overlay remembers its new modify index
   * for the EnforceIndex of a later registration.
   */
  private async remove(jobId: string, how: 'purge' | 'stop', signal: AbortSignal | undefined): Promise<void> {
    const api = this.assertUsable();
    const what = how === 'purge' ? 'deregistering' : 'stopping';
    await this.perJob.run(jobId, async () => {
      this.assertUsable();
      signal?.throwIfAborted();
      // What the job was: our own register still on its way to the cache, else the cache.
      const overlay = this.overlays.get(jobId);
      const stub = this.jobs.get(jobId);
      const previous = overlay?.kind === 'registered' ? overlay.known : stub && knownOf(stub);
      const about = this.jobFields(jobId);
      let response: unknown;
      try {
        response = await api.json('DELETE', `/v1/job/${encodeURIComponent(jobId)}`, how === 'purge' ? { purge: 'true' } : {}, undefined, signal);
      } catch (error) {
        if (error instanceof NomadApiError && (error.status === 404 || /job not found/i.test(error.nomadMessage))) {
          this.log.debug(about, `job to ${how} was already gone`);
          this.overlays.set(jobId, { kind: 'deregistered', index: this.jobsIndex + 1 });
          return;
        }
        throw this.describeWriteError(error, `${what} job ${jobId}`);
      }
      // Nomad answers a job it does not have with an empty reply (no evaluation, every index 0), and a 404 is
      // taken the same way: either way the job is gone.
      const gone = isRecord(response) && response.EvalID === '';
      const jobModifyIndex = numberField(response, 'JobModifyIndex');
      const index = jobModifyIndex || this.jobsIndex + 1;
      if (how === 'stop' && !gone && previous !== undefined && jobModifyIndex !== undefined) {
        this.overlays.set(jobId, { kind: 'registered', known: { ...previous, jobModifyIndex, stopped: true }, index });
      } else {
        this.overlays.set(jobId, { kind: 'deregistered', index });
      }
      if (gone) this.log.debug(about, `job to ${how} was already gone`);
      else this.log.info(about, how === 'purge' ? 'job deregistered' : 'job stopped; its allocations are kept until Nomad collects them');
    });
  }

  /**
   * Rescheduling is off for Manticore's jobs, and Nomad refuses to force-reschedule allocations of a group
   * without rescheduling (`POST /v1/job/:id/evaluate` with ForceReschedule then changes nothing). What
   * replaces a failed allocation is a new version of the job: the same job, read back, with Meta naming the
   * allocation it replaces, registered only if it is still the version whose allocation failed.
   */
  async reschedule(jobId: string, signal?: AbortSignal): Promise<void> {
    const api = this.assertUsable();
    await this.perJob.run(jobId, async () => {
      this.assertUsable();
      signal?.throwIfAborted();
      const stub = this.jobs.get(jobId);
      const failed = this.reported.get(jobId)?.allocation;
      const about = this.jobFields(jobId);
      if (!stub || failed?.clientStatus !== 'failed') {
        this.log.debug({ ...about, clientStatus: failed?.clientStatus }, 'nothing to reschedule: no failed allocation');
        return;
      }
      let full: unknown;
      try {
        full = await api.json('GET', `/v1/job/${encodeURIComponent(jobId)}`, {}, undefined, signal);
      } catch (error) {
        if (error instanceof NomadApiError && error.status === 404) {
          this.log.debug(about, 'job to reschedule is gone');
          return;
        }
        throw this.describeWriteError(error, `rescheduling job ${jobId}: reading the job`);
      }
      if (!isRecord(full) || full.ID !== jobId || !isStringRecord(full.Meta)) throw new Error(`rescheduling job ${jobId}: Nomad's answer is not the job`);
      // A newer version (a content change, or a reschedule whose result the stream has not shown yet)
      // replaces the failed allocation already.
      if (numberField(full, 'JobModifyIndex') !== stub.JobModifyIndex) {
        this.log.debug({ ...about, allocId: failed.id }, 'the job changed since its allocation failed; not rescheduling');
        return;
      }
      const payload = { Job: { ...full, Meta: { ...full.Meta, [REPLACES_META_KEY]: failed.id } }, EnforceIndex: true, JobModifyIndex: stub.JobModifyIndex };
      let response: unknown;
      try {
        response = await api.json('PUT', '/v1/jobs', {}, payload, signal);
      } catch (error) {
        throw this.describeWriteError(error, `rescheduling job ${jobId}`);
      }
      const jobModifyIndex = numberField(response, 'JobModifyIndex') ?? 0;
      this.overlays.set(jobId, { kind: 'registered', known: { ...knownOf(stub), jobModifyIndex }, index: jobModifyIndex });
      this.log.info({ ...about, allocId: failed.id, jobModifyIndex, evalId: isRecord(response) ? response.EvalID : undefined }, 'job registered again to replace its failed allocation');
    });
  }

  /** The fields of a log line about a job: its session, when the job is known as a session's, and the job. */
  private jobFields(jobId: string): { session?: string; jobId: string } {
    const session = this.reported.get(jobId)?.sessionId;
    return session === undefined ? { jobId } : { session, jobId };
  }

  watch(): Observable<WorkloadStep> {
    return new Observable<WorkloadStep>((subscriber) => {
      if (this.closed) {
        subscriber.complete();
        return undefined;
      }
      const watcher: Watcher = { subscriber, started: false };
      this.watchers.add(watcher);
      // With the caches synced, the reset goes out now; before that, once they are.
      if (this.synced) this.startWatcher(watcher);
      return () => {
        this.watchers.delete(watcher);
      };
    });
  }

  /** Through the client fs logs API of the agent this scheduler talks to (nomad-logs.ts). */
  readLogs(request: LogReadRequest): AsyncIterable<LogEvent> {
    this.assertUsable();
    return this.logs!.read(request);
  }

  /** Follows the nodes; emits to every subscriber, completes on close(). */
  capacityChanges(): Observable<void> {
    return this.capacity.asObservable();
  }

  /** Ends the event stream and every request, and completes every watch and capacityChanges(). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    await this.following;
    await this.perJob.drain();
    for (const watcher of this.watchers) watcher.subscriber.complete();
    this.watchers.clear();
    this.capacity.complete();
    this.agent?.destroy();
    this.log.info('nomad scheduler closed');
  }

  /** How many objects the caches hold (logged with each sync). */
  cacheSizes(): { jobs: number; allocations: number; evaluations: number; nodes: number } {
    const count = (groups: Map<string, Map<string, unknown>>): number => [...groups.values()].reduce((sum, group) => sum + group.size, 0);
    return { jobs: this.jobs.size + this.foreign.size, allocations: count(this.allocsByJob), evaluations: count(this.evalsByJob), nodes: this.nodes?.size ?? 0 };
  }

  // ---- register helpers ------------------------------------------------------------------------------

  /** What Nomad holds for the job: our own recent write, else the cache, else a direct read. */
  private async knownJob(jobId: string): Promise<KnownJob | undefined> {
    const overlay = this.overlays.get(jobId);
    if (overlay && this.jobsIndex < overlay.index) return overlay.kind === 'registered' ? overlay.known : undefined;
    if (overlay) this.overlays.delete(jobId);
    if (this.synced) {
      const stub = this.jobs.get(jobId);
      return stub ? knownOf(stub) : undefined;
    }
    // Not synced yet (just started): ask Nomad for this one job.
    try {
      const full = await this.assertUsable().json('GET', `/v1/job/${encodeURIComponent(jobId)}`, {});
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

  // ---- the caches ------------------------------------------------------------------------------------

  /**
   * The lists, taken while the event stream holds its frames: allocations, evaluations and nodes, then the
   * jobs, so that the jobs are at least as new as the allocations and evaluations kept for them (those of
   * a job that is gone are dropped; a job registered after the jobs list comes as an event).
   */
  private async resync(signal: AbortSignal): Promise<Record<EventTable, number>> {
    const api = this.assertUsable();
    const [allocations, evaluations, nodes] = await Promise.all([
      api.list('/v1/allocations', { resources: 'true' }, parseAllocStub, signal),
      api.list('/v1/evaluations', {}, parseEvalStub, signal),
      api.list('/v1/nodes', {}, parseNodeStub, signal),
    ]);
    const jobs = await api.list('/v1/jobs', { prefix: JOB_PREFIX, meta: 'true' }, (item) => ({ stub: parseJobStub(item), listsMeta: isRecord(item) && 'Meta' in item }), signal);
    await this.checkMetaListing(jobs.items, signal);
    // The stream may have failed meanwhile: its next subscription lists again.
    if (signal.aborted) throw new Error('the event stream failed while listing');
    const touched = (this.catchingUp ??= new Set());
    this.replaceJobs(jobs.items.map((item) => item.stub), touched);
    // Evaluations first: an allocation updated in place counts by its evaluation.
    replaceGrouped(this.evalsByJob, this.kept(evaluations.items), touched);
    replaceGrouped(this.allocsByJob, this.kept(allocations.items), touched);
    this.replaceNodes(nodes.items);
    this.advanceJobsIndex(jobs.index, true);
    return { jobs: jobs.index, allocations: allocations.index, evaluations: evaluations.index, nodes: nodes.index };
  }

  /**
   * Nomad lists no Meta for a job that has none (the manticore-router job), so a job listed without it is
   * somebody else's, unless Nomad ignores meta=true: then every Manticore job looks foreign. Until a listed
   * job has shown its Meta, the full record of one listed without tells which.
   */
  private async checkMetaListing(items: ReadonlyArray<{ stub: NomadJobStub | undefined; listsMeta: boolean }>, signal: AbortSignal): Promise<void> {
    if (this.metaListing !== 'unknown') return;
    if (items.some((item) => item.listsMeta)) {
      this.metaListing = 'listed';
      return;
    }
    const jobId = items.find((item) => item.stub?.ID.startsWith(JOB_PREFIX))?.stub?.ID;
    if (jobId === undefined) return;
    let full: unknown;
    try {
      full = await this.assertUsable().json('GET', `/v1/job/${encodeURIComponent(jobId)}`, {}, undefined, signal);
    } catch (error) {
      this.log.debug({ err: error, jobId }, "reading a job listed without Meta failed; it is taken for somebody else's");
      return;
    }
    if (!isRecord(full) || !isStringRecord(full.Meta) || !full.Meta[SESSION_META_KEY]) return;
    this.metaListing = 'ignored';
    this.log.error({ jobId }, "Nomad lists jobs without their Meta though asked to (meta=true; Manticore needs Nomad 1.6 or later): no job can be recognised as Manticore's");
  }

  private replaceJobs(stubs: ReadonlyArray<NomadJobStub | undefined>, touched: Set<string>): void {
    const next = new Map<string, NomadJobStub>();
    const foreign = new Set<string>();
    for (const stub of stubs) {
      if (!stub || !stub.ID.startsWith(JOB_PREFIX)) continue;
      if (stub.Meta?.[SESSION_META_KEY]) next.set(stub.ID, stub);
      else foreign.add(stub.ID);
    }
    for (const [id, stub] of next) {
      const before = this.jobs.get(id);
      if (!before || !isDeepStrictEqual(before, stub)) touched.add(id);
    }
    for (const id of this.jobs.keys()) if (!next.has(id)) touched.add(id);
    this.jobs = next;
    this.foreign = foreign;
  }

  private replaceNodes(items: ReadonlyArray<NomadNodeStub | undefined>): void {
    const next = new Map<string, NomadNodeStub>();
    for (const node of items) if (node) next.set(node.ID, node);
    const previous = this.nodes;
    this.nodes = next;
    // The first list is the starting point, not a change.
    if (previous) this.gained(capacityGains(previous, next));
  }

  /** The items that can count for a workload (see worthKeeping). */
  private kept<T extends CachedItem>(items: ReadonlyArray<T | undefined>): T[] {
    return items.filter((item): item is T => item !== undefined && this.worthKeeping(item));
  }

  /**
   * Of a job in the cache: an evaluation created since its current version; an allocation of that version
   * (runsCurrentVersion, against the evaluations kept), or one still wanted running, which the version's
   * evaluation updates, stops or (terminal) leaves as it is.
   */
  private worthKeeping(item: CachedItem): boolean {
    const job = this.jobs.get(item.JobID);
    return job !== undefined && (runsCurrentVersion(job, item, this.evalsByJob.get(item.JobID) ?? NO_EVALS) || item.DesiredStatus === 'run');
  }

  /**
   * One frame's events. Jobs first: an evaluation that comes with its job finds it. Allocations and
   * evaluations of jobs that are not (or no longer) in the cache are not kept: Nomad sends nothing when it
   * collects them, so they would stay forever.
   */
  private applyEvents(index: number, events: readonly NomadEvent[]): void {
    const touched = new Set<string>();
    const gains: string[] = [];
    for (const event of events) if (event.topic === 'Job') this.applyJob(event, index, touched);
    for (const event of events) {
      if (event.topic === 'Allocation') this.keep(this.allocsByJob, parseAllocStub(event.payload.Allocation), touched);
      else if (event.topic === 'Evaluation') this.applyEvaluation(event, index, touched);
      else if (event.topic === 'Node') this.applyNode(event, gains);
    }
    this.advanceJobsIndex(index, false);
    this.gained(gains);
    this.recompute(touched);
  }

  /** A deleted job (purged, garbage-collected) comes as it was: last modified before the event. */
  private applyJob(event: NomadEvent, index: number, touched: Set<string>): void {
    const stub = parseJobStub(event.payload.Job);
    if (!stub || !stub.ID.startsWith(JOB_PREFIX)) return;
    touched.add(stub.ID);
    if (stub.ModifyIndex < index) return this.forget(stub.ID);
    if (!stub.Meta?.[SESSION_META_KEY]) {
      this.forget(stub.ID);
      this.foreign.add(stub.ID);
      return;
    }
    this.foreign.delete(stub.ID);
    this.jobs.set(stub.ID, stub);
    // A new version: what was evaluated for older ones never counts again, nor what ran for them unless still
    // wanted running (its evaluation updates, stops or leaves it). Evaluations first: an allocation counts by its evaluation.
    this.prune(this.evalsByJob, stub.ID);
    this.prune(this.allocsByJob, stub.ID);
  }

  private prune<T extends CachedItem>(groups: Map<string, Map<string, T>>, jobId: string): void {
    const group = groups.get(jobId);
    if (!group) return;
    for (const [id, item] of group) if (!this.worthKeeping(item)) group.delete(id);
    if (group.size === 0) groups.delete(jobId);
  }

  private applyEvaluation(event: NomadEvent, index: number, touched: Set<string>): void {
    const stub = parseEvalStub(event.payload.Evaluation);
    const job = stub ? this.jobs.get(stub.JobID) : undefined;
    // Nomad releases before hashicorp/nomad#19903 (early 2024) publish no Job event for a purge, only its
    // evaluation: a deregistration's evaluation at an index the job did not change at (a stop without purge
    // changes it, in an earlier frame of that index) means the job is gone.
    if (stub && job && event.type === 'JobDeregistered' && job.ModifyIndex < index) {
      touched.add(stub.JobID);
      return this.forget(stub.JobID);
    }
    this.keep(this.evalsByJob, stub, touched);
  }

  private keep<T extends CachedItem & { ID: string }>(groups: Map<string, Map<string, T>>, item: T | undefined, touched: Set<string>): void {
    if (!item) return;
    if (!this.worthKeeping(item)) {
      // An allocation of an older version kept while wanted running goes once stopped.
      if (groups.get(item.JobID)?.delete(item.ID)) touched.add(item.JobID);
      return;
    }
    let group = groups.get(item.JobID);
    if (!group) groups.set(item.JobID, (group = new Map()));
    group.set(item.ID, item);
    touched.add(item.JobID);
  }

  /**
   * Only a deregistration removes a node: a node event its client reports (NodeEvent: a driver's health
   * changed, …) publishes the node with its ModifyIndex unchanged, though it stays.
   */
  private applyNode(event: NomadEvent, gains: string[]): void {
    const node = parseNodeStub(event.payload.Node);
    if (!node || !this.nodes) return;
    if (event.type === 'NodeDeregistration') {
      this.nodes.delete(node.ID);
      return;
    }
    const gain = capacityGain(this.nodes.get(node.ID), node);
    if (gain) gains.push(gain);
    this.nodes.set(node.ID, node);
  }

  /** A job gone (purged, garbage-collected, or no longer marked): nothing of it stays. */
  private forget(jobId: string): void {
    this.jobs.delete(jobId);
    this.foreign.delete(jobId);
    this.allocsByJob.delete(jobId);
    this.evalsByJob.delete(jobId);
  }

  /** Every change to a job up to `index` is in the cache: our writes up to it are seen. */
  private advanceJobsIndex(index: number, listed: boolean): void {
    // New lists may be older than what was seen (Nomad lost its state): they are the truth now.
    this.jobsIndex = listed ? index : Math.max(this.jobsIndex, index);
    for (const [id, overlay] of this.overlays) if (this.jobsIndex >= overlay.index) this.overlays.delete(id);
  }

  private gained(gains: readonly string[]): void {
    if (gains.length === 0) return;
    this.log.debug({ gains }, 'the cluster may have gained capacity');
    this.capacity.next();
  }

  /** The lists and the frames held meanwhile are in: the workloads they touched are computed now. */
  private markSynced(): void {
    const touched = this.catchingUp ?? new Set<string>();
    this.catchingUp = undefined;
    this.lastFailure = undefined;
    if (this.synced) {
      this.log.info({ workloads: this.reported.size, cache: this.cacheSizes() }, "Nomad's event stream followed again, the caches synced with fresh lists");
      this.recompute(touched);
      return;
    }
    this.synced = true;
    this.recompute(new Set(this.jobs.keys()));
    for (const watcher of this.watchers) if (!watcher.started) this.startWatcher(watcher);
    this.onReady?.();
  }

  private startWatcher(watcher: Watcher): void {
    watcher.started = true;
    const workloads = [...this.reported.values()].sort((a, b) => a.jobId.localeCompare(b.jobId));
    watcher.subscriber.next({ kind: 'reset', workloads });
  }

  /** Recomputes the workloads of `jobIds` and reports those whose value changed; during a sync, at its end. */
  private recompute(jobIds: ReadonlySet<string>): void {
    if (this.catchingUp) {
      for (const jobId of jobIds) this.catchingUp.add(jobId);
      return;
    }
    // Until the first sync, a workload could be computed from half the picture.
    if (!this.synced) return;
    for (const jobId of [...jobIds].sort()) {
      const job = this.jobs.get(jobId);
      const workload = job
        ? workloadOf(job, this.allocsByJob.get(jobId)?.values() ?? [], this.evalsByJob.get(jobId)?.values() ?? [])
        : undefined;
      const previous = this.reported.get(jobId);
      if (!workload) {
        if (!previous) continue;
        this.reported.delete(jobId);
        this.emit({ kind: 'delete', jobId, sessionId: previous.sessionId });
        continue;
      }
      if (previous !== undefined && isDeepStrictEqual(previous, workload)) continue;
      this.reported.set(jobId, workload);
      this.emit({ kind: 'upsert', workload });
    }
  }

  private emit(step: WorkloadStep): void {
    for (const watcher of this.watchers) if (watcher.started) watcher.subscriber.next(step);
  }

  /** The HTTP client, once started and until closed. */
  private assertUsable(): NomadHttp {
    if (this.closed) throw new Error('NomadScheduler is closed');
    if (!this.started || !this.http) throw new Error('NomadScheduler.start() must be called before using it');
    return this.http;
  }
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
    ...(typeof value.EvalID === 'string' ? { EvalID: value.EvalID } : {}),
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
 * Replaces a job → (id → item) cache with a full list; adds to `touched` the jobs whose items were added,
 * removed or modified (by ModifyIndex), the only ones whose workloads can have changed.
 */
function replaceGrouped<T extends { ID: string; JobID: string; ModifyIndex: number }>(cache: Map<string, Map<string, T>>, items: readonly T[], touched: Set<string>): void {
  const next = new Map<string, Map<string, T>>();
  for (const item of items) {
    let group = next.get(item.JobID);
    if (!group) next.set(item.JobID, (group = new Map()));
    group.set(item.ID, item);
  }
  for (const [jobId, group] of next) {
    const before = cache.get(jobId);
    if (!before || before.size !== group.size || [...group].some(([id, item]) => before.get(id)?.ModifyIndex !== item.ModifyIndex)) touched.add(jobId);
  }
  for (const jobId of cache.keys()) if (!next.has(jobId)) touched.add(jobId);
  cache.clear();
  for (const [jobId, group] of next) cache.set(jobId, group);
}
