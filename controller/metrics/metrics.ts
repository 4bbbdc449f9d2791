import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/**
 * The process's Prometheus metrics, served as `GET /metrics` by the front end, the controller's status
 * server and the router's status server. One registry per process, like controller-runtime's: every part
 * of the process (controller, front end, router, store and scheduler clients) records into it, and gauges
 * that describe a running component read it through a source the component adds while it runs.
 */
export const registry = new Registry();

/**
 * How often the event-loop delay histogram (`manticore_nodejs_eventloop_lag_*`) samples the loop. prom-client's
 * default, 10 ms, is a timer that wakes the process 100 times a second: 0.8 % of a core of a two-core virtual
 * machine with nothing else to do, most of an idle controller's CPU. At 100 ms it costs a tenth of that, and a
 * stall still shows in the histogram (in proportion to its length, and certainly from 100 ms).
 */
const EVENT_LOOP_SAMPLE_MS = 100;
collectDefaultMetrics({ register: registry, prefix: 'manticore_', eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });

/** Gauge values read at scrape time from whatever registered a source (several components in one process add up). */
class Sources<T> {
  private readonly sources = new Set<() => T>();

  add(source: () => T): () => void {
    this.sources.add(source);
    return () => this.sources.delete(source);
  }

  read(): T[] {
    return [...this.sources].map((source) => source());
  }
}

const seconds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

// ---- every reader of the store ------------------------------------------------------------------------

export const unreadableSources = new Sources<{ resource: string; records: number }>();
new Gauge({
  name: 'manticore_unreadable_records',
  help: 'Records under a store prefix that this process cannot decode (not JSON, or not its schema); each is logged once with its key.',
  labelNames: ['resource'],
  registers: [registry],
  collect() {
    this.reset();
    // The embedded default's parts each read some prefixes: a record is counted once, not once per reader.
    const most = new Map<string, number>();
    for (const { resource, records } of unreadableSources.read()) most.set(resource, Math.max(most.get(resource) ?? 0, records));
    for (const [resource, records] of most) this.set({ resource }, records);
  },
});

// ---- controller ---------------------------------------------------------------------------------------

export interface SessionCounts {
  byPhase: Readonly<Record<string, number>>;
  waiting: number;
  /** Seconds the first session in the waiting list has waited (0 when none waits). */
  oldestWaitSeconds: number;
}
export const sessionSources = new Sources<SessionCounts>();

new Gauge({
  name: 'manticore_sessions',
  help: 'Sessions by phase, as the leading controller sees them (standbys report 0).',
  labelNames: ['phase'],
  registers: [registry],
  collect() {
    this.reset();
    for (const counts of sessionSources.read()) for (const [phase, count] of Object.entries(counts.byPhase)) this.inc({ phase }, count);
  },
});
new Gauge({
  name: 'manticore_waiting_sessions',
  help: 'Length of the waiting list.',
  registers: [registry],
  collect() {
    this.set(sessionSources.read().reduce((sum, counts) => sum + counts.waiting, 0));
  },
});
new Gauge({
  name: 'manticore_waiting_oldest_seconds',
  help: 'How long the session at the head of the waiting list has waited.',
  registers: [registry],
  collect() {
    this.set(Math.max(0, ...sessionSources.read().map((counts) => counts.oldestWaitSeconds)));
  },
});

export const createToReadySeconds = new Histogram({
  name: 'manticore_session_create_to_ready_seconds',
  help: 'Time from a session record being created to the session first being Ready.',
  buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800],
  registers: [registry],
});
export const reconcileSeconds = new Histogram({ name: 'manticore_reconcile_duration_seconds', help: 'Duration of one reconcile of one session.', buckets: seconds, registers: [registry] });
export const reconcileErrors = new Counter({
  name: 'manticore_reconcile_errors_total',
  help: 'Reconciles that failed and were requeued with backoff (conflict: a compare-and-set lost to a newer write, routine).',
  labelNames: ['reason'],
  registers: [registry],
});

export const workQueueSources = new Sources<number>();
new Gauge({
  name: 'manticore_workqueue_depth',
  help: 'Sessions queued for a reconcile and not yet taken by a worker.',
  registers: [registry],
  collect() {
    this.set(workQueueSources.read().reduce((sum, depth) => sum + depth, 0));
  },
});
export const workQueueWaitSeconds = new Histogram({ name: 'manticore_workqueue_wait_seconds', help: 'Time a session waited in the work queue before a worker took it.', buckets: seconds, registers: [registry] });

export const watchLagSeconds = new Histogram({
  name: 'manticore_watch_lag_seconds',
  help: "Time from this process's own store write to its watch delivering the change.",
  labelNames: ['resource'],
  buckets: seconds,
  registers: [registry],
});
export const watchRestarts = new Counter({ name: 'manticore_watch_restarts_total', help: "Watches that failed and were resumed: a store prefix's, the scheduler's, and Nomad's event stream (resource nomad-events).", labelNames: ['resource'], registers: [registry] });

export const leadingSources = new Sources<boolean>();
new Gauge({
  name: 'manticore_leader',
  help: '1 while this process leads (holds the leader lock), else 0.',
  registers: [registry],
  collect() {
    this.set(leadingSources.read().some(Boolean) ? 1 : 0);
  },
});
export const leaderTransitions = new Counter({ name: 'manticore_leader_transitions_total', help: 'Times this process started or stopped leading.', registers: [registry] });

// ---- backends -----------------------------------------------------------------------------------------

/** `throttled`: AWS refused the call for the request rate (after the SDK's own retries). */
export type BackendOutcome = 'ok' | 'client_error' | 'server_error' | 'throttled' | 'unreachable' | 'aborted';

const backendRequests = new Counter({
  name: 'manticore_backend_requests_total',
  help: 'Calls to Consul, Nomad and AWS by operation and outcome.',
  labelNames: ['backend', 'operation', 'outcome'],
  registers: [registry],
});
const backendSeconds = new Histogram({
  name: 'manticore_backend_request_duration_seconds',
  help: 'Duration of calls to Consul, Nomad and AWS (blocking queries are their own operations).',
  labelNames: ['backend', 'operation'],
  buckets: [...seconds, 60, 300, 600],
  registers: [registry],
});

/** Records one backend call. */
export function recordBackendCall(backend: 'consul' | 'nomad' | 'aws', operation: string, outcome: BackendOutcome, startedAt: number): void {
  backendRequests.inc({ backend, operation, outcome });
  backendSeconds.observe({ backend, operation }, (performance.now() - startedAt) / 1000);
}

/** The outcome of an HTTP answer's status code. */
export function outcomeOfStatus(status: number): BackendOutcome {
  if (status >= 200 && status < 400) return 'ok';
  return status >= 500 ? 'server_error' : 'client_error';
}

// ---- router -------------------------------------------------------------------------------------------

export interface RouterProgress {
  router: string;
  appliedIndex: number;
  /** The routes index the router has seen minus the one it has applied. */
  lag: number;
  /** Sessions with routes, as the router has seen them. */
  routes: number;
}
export const routerSources = new Sources<RouterProgress>();

new Gauge({
  name: 'manticore_router_applied_index',
  help: 'Store index of the routes this router has applied to HAProxy.',
  labelNames: ['router'],
  registers: [registry],
  collect() {
    this.reset();
    for (const progress of routerSources.read()) this.set({ router: progress.router }, progress.appliedIndex);
  },
});
new Gauge({
  name: 'manticore_router_applied_index_lag',
  help: 'Routes index seen by the router minus the index it has applied (0: every route it knows is live).',
  labelNames: ['router'],
  registers: [registry],
  collect() {
    this.reset();
    for (const progress of routerSources.read()) this.set({ router: progress.router }, progress.lag);
  },
});
/** Whether a router is ready (its /readyz): its agent applies the routes and its HAProxy answers. */
export interface RouterReadiness {
  router: string;
  ready: boolean;
}
export const routerReadySources = new Sources<RouterReadiness>();

new Gauge({
  name: 'manticore_router_ready',
  help: 'Whether this router serves sessions (1) or not (0): its agent applies the routes and its HAProxy answers, as its /readyz says.',
  labelNames: ['router'],
  registers: [registry],
  collect() {
    this.reset();
    for (const readiness of routerReadySources.read()) this.set({ router: readiness.router }, readiness.ready ? 1 : 0);
  },
});
export const routerApplySeconds = new Histogram({ name: 'manticore_router_apply_duration_seconds', help: 'Duration of applying the route table to HAProxy.', buckets: seconds, registers: [registry] });

/** The certificate a router's HAProxy serves at the edge (router.tls). */
export interface EdgeCertificateExpiry {
  router: string;
  /** The certificate's notAfter, in Unix seconds. */
  notAfterSeconds: number;
  /** Seconds from now until notAfter (negative once expired). */
  remainingSeconds: number;
}
export const edgeCertificateSources = new Sources<EdgeCertificateExpiry>();

new Gauge({
  name: 'manticore_router_tls_certificate_not_after_seconds',
  help: 'When the edge certificate HAProxy serves expires (its notAfter), in Unix seconds.',
  labelNames: ['router'],
  registers: [registry],
  collect() {
    this.reset();
    for (const expiry of edgeCertificateSources.read()) this.set({ router: expiry.router }, expiry.notAfterSeconds);
  },
});
new Gauge({
  name: 'manticore_router_tls_certificate_expires_in_seconds',
  help: 'Seconds until the edge certificate HAProxy serves expires (negative once it has).',
  labelNames: ['router'],
  registers: [registry],
  collect() {
    this.reset();
    for (const expiry of edgeCertificateSources.read()) this.set({ router: expiry.router }, expiry.remainingSeconds);
  },
});
export const edgeCertificateChanges = new Counter({
  name: 'manticore_router_tls_certificate_changes_total',
  help: 'Changed certificate files: loaded into HAProxy (runtime: through the Runtime API; reload: by a validated reload), refused (invalid: the old one stays), or failed (HAProxy did not take it; retried).',
  labelNames: ['outcome'],
  registers: [registry],
});

// ---- HTTP servers -------------------------------------------------------------------------------------

export const httpRequests = new Counter({
  name: 'manticore_http_requests_total',
  help: 'Requests answered, by server, method, route pattern and status.',
  labelNames: ['server', 'method', 'route', 'status'],
  registers: [registry],
});
export const httpSeconds = new Histogram({
  name: 'manticore_http_request_duration_seconds',
  help: 'Time to answer a request (event streams: until they closed).',
  labelNames: ['server', 'method', 'route'],
  buckets: seconds,
  registers: [registry],
});
