import crypto from 'node:crypto';
import { Observable, Subject } from 'rxjs';
import {
  RenderError,
  type Allocation,
  type RenderedJob,
  type Scheduler,
  type WorkloadRequest,
  type Workload,
  type WorkloadStep,
} from '../../controller/scheduler/scheduler.js';
import { LogNotFoundError, type LogEvent, type LogReadRequest } from '../../controller/scheduler/task-logs.js';

/**
 * An in-memory Scheduler for reconciler tests: it records every call and lets the test decide what the
 * "cluster" does (place, become healthy, crash, fail). Rendering keeps the whole request so tests can
 * check what the workload was told.
 */
export class FakeScheduler implements Scheduler {
  readonly kind = 'embedded' as const;
  readonly registrations: RenderedJob[] = [];
  readonly deregistrations: string[] = [];
  readonly stops: string[] = [];
  /** Every reschedule() call, whether or not it replaced anything. */
  readonly reschedules: string[] = [];
  /** What capacityChanges() emits: the test calls `capacity.next()` when the cluster gains room. */
  readonly capacity = new Subject<void>();
  /** While set, register() and reschedule() fail with it, as Nomad refuses a job (400: invalid; 403: ACL, quota). */
  refusal: Error | undefined;
  /** How many calls were refused. */
  refusals = 0;
  /** register() calls begun, and those that have returned or thrown (a slow one is begun, not yet settled). */
  registerCalls = { begun: 0, settled: 0 };
  /** While set, register() waits for it before acting, as a slow Nomad does; the caller's signal abandons the wait. */
  private registerGate: Promise<void> | undefined;
  private readonly workloads = new Map<string, Workload>();
  private readonly steps = new Subject<WorkloadStep>();
  private allocations = 0;

  /** Nothing to connect to: the fake cluster lives in this object. */
  async start(): Promise<void> {}

  /** How many jobs were rendered. */
  renders = 0;

  render(request: WorkloadRequest): RenderedJob {
    this.renders++;
    if (!request.template.spec.backends.embedded) throw new RenderError(`template ${request.template.metadata.name} has no embedded backend`);
    // What the tasks run is part of the job, as in the real schedulers: an edited template changes it.
    const body = { tasks: request.template.spec.backends.embedded.tasks, parameters: request.parameters, endpoints: request.endpoints };
    const specHash = crypto.createHash('sha256').update(JSON.stringify(body)).digest('hex');
    return { id: request.jobId, sessionId: request.sessionId, specHash, body };
  }

  async register(job: RenderedJob, signal?: AbortSignal): Promise<void> {
    this.registerCalls.begun++;
    try {
      signal?.throwIfAborted();
      if (this.registerGate) await abandonable(this.registerGate, signal);
      this.refuseIfAsked();
      this.registrations.push(job);
      this.set({ jobId: job.id, sessionId: job.sessionId, specHash: job.specHash });
    } finally {
      this.registerCalls.settled++;
    }
  }

  /** Holds every register() until the returned function is called. */
  slowRegistrations(): () => void {
    let release!: () => void;
    this.registerGate = new Promise((resolve) => (release = resolve));
    return () => {
      this.registerGate = undefined;
      release();
    };
  }

  async deregister(jobId: string, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    this.deregistrations.push(jobId);
    this.remove(jobId);
  }

  /** Recorded apart from deregistrations: a stopped job's allocation (its logs) stays. */
  async stop(jobId: string, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    this.stops.push(jobId);
    this.remove(jobId);
  }

  private remove(jobId: string): void {
    const workload = [...this.workloads.values()].find((w) => w.jobId === jobId);
    if (!workload) return;
    this.workloads.delete(workload.sessionId);
    this.steps.next({ kind: 'delete', jobId, sessionId: workload.sessionId });
  }

  /** A failed allocation gets a fresh, pending one (call run() to start it); anything else stays as it is. */
  async reschedule(jobId: string, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    this.refuseIfAsked();
    this.reschedules.push(jobId);
    const workload = [...this.workloads.values()].find((w) => w.jobId === jobId);
    if (workload?.allocation?.clientStatus !== 'failed') return;
    this.set({ ...workload, allocation: { id: `alloc-${++this.allocations}`, clientStatus: 'pending', healthy: undefined, ports: {}, tasks: {} } });
  }

  watch(): Observable<WorkloadStep> {
    return new Observable<WorkloadStep>((subscriber) => {
      subscriber.next({ kind: 'reset', workloads: [...this.workloads.values()] });
      return this.steps.subscribe(subscriber);
    });
  }

  capacityChanges(): Observable<void> {
    return this.capacity.asObservable();
  }

  /** The fake cluster runs nothing, so no task ever wrote a log. */
  async *readLogs(request: LogReadRequest): AsyncGenerator<LogEvent> {
    throw new LogNotFoundError(`the fake scheduler runs no processes: allocation ${request.allocId} has no logs`);
  }

  async close(): Promise<void> {
    this.steps.complete();
    this.capacity.complete();
  }

  workload(sessionId: string): Workload | undefined {
    return this.workloads.get(sessionId);
  }

  /** Gives the session's job a running allocation with an address for each port label. */
  /** Sessions that have a workload. */
  workloadIds(): string[] {
    return [...this.workloads.keys()];
  }

  run(sessionId: string, ports: Record<string, string>, healthy: boolean | undefined = true): Allocation {
    const workload = this.require(sessionId);
    const allocation: Allocation = {
      id: workload.allocation?.id ?? `alloc-${++this.allocations}`,
      clientStatus: 'running',
      healthy,
      ports,
      tasks: { core: { state: 'running', failed: false, restarts: 0 } },
    };
    this.set({ ...workload, allocation });
    return allocation;
  }

  /** Replaces the current allocation's state (crash, restart, failure). */
  update(sessionId: string, change: Partial<Allocation>): void {
    const workload = this.require(sessionId);
    if (!workload.allocation) throw new Error(`session ${sessionId} has no allocation`);
    this.set({ ...workload, allocation: { ...workload.allocation, ...change } });
  }

  /** Reports that the cluster has no room for the session's job (as Nomad's failed placement does). */
  place(sessionId: string, failure: string): void {
    const { allocation: _none, ...workload } = this.require(sessionId);
    this.set({ ...workload, placementFailure: failure });
  }

  /** Puts a job carrying our marker in place without any session (debris). */
  adopt(workload: Workload): void {
    this.set(workload);
  }

  private refuseIfAsked(): void {
    if (this.refusal === undefined) return;
    this.refusals++;
    throw this.refusal;
  }

  private require(sessionId: string): Workload {
    const workload = this.workloads.get(sessionId);
    if (!workload) throw new Error(`no job for session ${sessionId}`);
    return workload;
  }

  private set(workload: Workload): void {
    this.workloads.set(workload.sessionId, workload);
    this.steps.next({ kind: 'upsert', workload });
  }
}

/** `promise`, or the signal's reason once it aborts. */
function abandonable(promise: Promise<void>, signal: AbortSignal | undefined): Promise<void> {
  if (!signal) return promise;
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
