import type { Observable } from 'rxjs';
import type { SessionTemplate } from '../api/types.js';
import type { LogEvent, LogReadRequest } from './task-logs.js';

/** What a session's workload must look like, independent of the backend that runs it. */
export interface WorkloadRequest {
  readonly jobId: string;
  readonly sessionId: string;
  readonly template: SessionTemplate;
  readonly parameters: Readonly<Record<string, string>>;
  /** Public URLs decided at admission, so tasks (the HMI) can be told Core's addresses up front. */
  readonly endpoints: Readonly<Record<string, { url: string; host: string; port: number }>>;
}

/** A job ready to register: the backend's own body plus a hash that identifies its content. */
export interface RenderedJob {
  readonly id: string;
  readonly sessionId: string;
  readonly specHash: string;
  readonly body: unknown;
}

export type ClientStatus = 'pending' | 'running' | 'complete' | 'failed' | 'lost';

export interface TaskState {
  readonly state: 'pending' | 'running' | 'dead';
  readonly failed: boolean;
  readonly restarts: number;
  /** The latest task event, for humans (e.g. "Exited with code 1", "Restarting in 1s"). */
  readonly lastEvent?: string;
}

export interface Allocation {
  readonly id: string;
  readonly clientStatus: ClientStatus;
  /** True once every checked port answers; false when a check or task failed; undefined before that. */
  readonly healthy: boolean | undefined;
  /** Port label → address a router can reach (`host:port`). */
  readonly ports: Readonly<Record<string, string>>;
  readonly tasks: Readonly<Record<string, TaskState>>;
  /**
   * While every task runs but not every check has passed: each check still failing, with why its last probe
   * failed ("http GET / on port http: connection refused"). Only the embedded scheduler probes, so knows.
   */
  readonly failingChecks?: readonly string[];
}

/** A job the scheduler runs for a session (identified by the marker it carries) and its current allocation. */
export interface Workload {
  readonly jobId: string;
  readonly sessionId: string;
  readonly specHash: string;
  readonly allocation?: Allocation;
  /** Set when the scheduler could not place the job, with the reason (e.g. exhausted memory). */
  readonly placementFailure?: string;
}

export type WorkloadStep =
  | { readonly kind: 'reset'; readonly workloads: Workload[] }
  | { readonly kind: 'upsert'; readonly workload: Workload }
  | { readonly kind: 'delete'; readonly jobId: string; readonly sessionId: string };

export interface Scheduler {
  /** The template backend section this scheduler runs (`spec.backends.<kind>`). */
  readonly kind: 'embedded' | 'nomad';
  /** Connects and loads what the scheduler needs before the first watch (state, leftovers of a previous run). */
  start(): Promise<void>;
  /** Renders the job for a request; throws a `RenderError` naming the problem when the template cannot run here. */
  render(request: WorkloadRequest): RenderedJob;
  /**
   * Registers or updates a job; registering the same content again is harmless. The calls that change the
   * cluster take the caller's `signal` (the controller's leadership term): once it has aborted the call is
   * not sent, and one on its way is abandoned, rejecting with the signal's reason.
   */
  register(job: RenderedJob, signal?: AbortSignal): Promise<void>;
  /** Stops and removes a job and its allocations; removing a missing job succeeds. */
  deregister(jobId: string, signal?: AbortSignal): Promise<void>;
  /**
   * Stops a job's tasks and takes it out of watch() as deregister() does, but keeps its last allocation, and
   * so that allocation's logs, readable until the backend collects it: a failed session's logs tell its user
   * why it failed. Nomad keeps a stopped job until its garbage collection; the embedded scheduler keeps the
   * most recently stopped allocations (`keptStoppedAllocations`) until it restarts. Stopping a missing job succeeds.
   */
  stop(jobId: string, signal?: AbortSignal): Promise<void>;
  /**
   * Replaces the job's failed allocation with a fresh one now (new allocation id, tasks started again
   * with their restart counts at 0), reported through watch() like any other change. The controller calls
   * it after its own restart backoff: backends never replace a failed allocation by themselves, so the
   * controller counts failures. A job whose allocation has not failed, or a missing job, is left alone.
   */
  reschedule(jobId: string, signal?: AbortSignal): Promise<void>;
  /**
   * Watches the jobs carrying Manticore's marker: first a reset with all of them, then changes.
   * Jobs without the marker are never reported.
   */
  watch(): Observable<WorkloadStep>;
  /**
   * Emits whenever the cluster may have gained room for more workloads: a node joined, became ready or
   * eligible again, or its resources grew. The controller retries its waiting list on it instead of
   * polling. Backends without a capacity limit never emit. Completes when the scheduler closes.
   */
  capacityChanges(): Observable<void>;
  /**
   * A task's stdout or stderr in one of this scheduler's allocations (task-logs.ts): the output from a
   * position, from the start, or from near the end, followed as it is written or not. The first event
   * says the log is there; a missing allocation, task or log throws LogNotFoundError. Logs stay readable
   * after the task ends, as long as the allocation is kept.
   */
  readLogs(request: LogReadRequest): AsyncIterable<LogEvent>;
  close(): Promise<void>;
}

export class RenderError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RenderError';
  }
}

export const jobIdFor = (sessionId: string): string => `manticore-${sessionId}`;

/** Meta key of the marker every job Manticore registers carries: the session it belongs to. */
export const SESSION_META_KEY = 'manticore_session_id';
