/**
 * The resource types Manticore stores and serves. Their JSON Schemas live in `crds/`; every record read
 * from or written to the store is validated against them (see `./schemas.ts`).
 */

export type Protocol = 'http' | 'ws' | 'tcp';

export interface SessionMetadata {
  id: string;
  owner: string;
  createdAt: string;
  generation: number;
  labels?: Record<string, string>;
  deletionRequestedAt?: string;
  /** Why deletion was requested: `Deleted` by the user, or the controller's `IdleTimeout`, `MaxLifetime`, `FailedRetentionEnded`. */
  deletionReason?: string;
}

export interface SessionSpec {
  template: string;
  /** Complete after defaulting: every template parameter has a value. */
  parameters: Record<string, string>;
  /** The session's own idle timeout (0: never), held to the operator's idle.maxTimeoutSeconds. */
  idle?: { timeoutSeconds: number };
}

/** What the front end (or any KV client) writes under `sessions/<id>`. */
export interface SessionRecord {
  metadata: SessionMetadata;
  spec: SessionSpec;
}

export type Phase = 'Pending' | 'Waiting' | 'Starting' | 'Ready' | 'Terminating' | 'Failed';

export type ConditionStatus = 'True' | 'False' | 'Unknown';

export interface Condition {
  type: string;
  status: ConditionStatus;
  reason: string;
  message: string;
  lastTransitionTime: string;
}

export interface Endpoint {
  /** The service's kind (the template's `expose`); whether it is encrypted is `tls`. */
  protocol: Protocol;
  /** `http(s)://`, `ws(s)://`, `tcp://host:port`, or `tls://host:port` for a TCP port that speaks TLS. */
  url: string;
  /** Present (true) when the connection is TLS: https, wss, or TLS on a TCP port. */
  tls?: true;
}

export interface SessionEvent {
  time: string;
  reason: string;
  message: string;
}

/** What the controller writes under `status/<id>`. */
export interface SessionStatus {
  phase: Phase;
  observedGeneration: number;
  conditions: Condition[];
  endpoints: Record<string, Endpoint>;
  queuePosition?: number;
  estimatedStartAt?: string;
  admittedAt?: string;
  readyAt?: string;
  expiresAt?: string;
  failedAt?: string;
  failures?: WorkloadFailure[];
  jobId?: string;
  allocationId?: string;
  events: SessionEvent[];
}

/** A crash, failed or lost allocation, counted against the restart limit. */
export interface WorkloadFailure {
  time: string;
  allocationId?: string;
  reason: string;
  message: string;
}

/** What the front end writes under `activity/<id>` when the user shows signs of life. */
export interface ActivityRecord {
  lastActivityAt: string;
}

/** The API view: the record and its status together. */
export interface Session extends SessionRecord {
  status: SessionStatus;
}

export interface TemplateParameter {
  name: string;
  description?: string;
  enum: string[];
  default: string;
}

export interface ServiceCheck {
  type: 'tcp' | 'http';
  path?: string;
}

export interface TemplateService {
  name: string;
  description?: string;
  /** Name of the port label (unique within the session's workload) that serves this service. */
  port: string;
  expose: Protocol;
  check?: ServiceCheck;
}

/** A task run as a local process by the embedded scheduler. Strings may use `${…}` references. */
export interface EmbeddedTask {
  name: string;
  command: string;
  args?: string[];
  env?: Record<string, string>;
  /** Port labels this task listens on; the scheduler allocates a loopback port for each. */
  ports: string[];
}

export interface NomadTask {
  name: string;
  driver: string;
  config: Record<string, unknown>;
  env?: Record<string, string>;
  /** Port label → port the task listens on inside the group's network namespace (bridge), or 0 (host mode). */
  ports: Record<string, number>;
  resources: { cpu: number; memoryMB: number };
}

export interface TemplateBackends {
  embedded?: { tasks: EmbeddedTask[] };
  nomad?: { networkMode?: 'bridge' | 'host'; tasks: NomadTask[] };
}

export interface SessionTemplate {
  apiVersion: 'manticore/v1';
  kind: 'SessionTemplate';
  metadata: { name: string; description?: string };
  spec: {
    parameters: TemplateParameter[];
    services: TemplateService[];
    backends: TemplateBackends;
  };
}

/** The routes of one session, written by the leader under `routes/<id>` and applied by every router. */
export interface RouteRecord {
  sessionId: string;
  /** Secret hostname label → backend address (`host:port`), for http and ws services. */
  hosts: HostRoute[];
  /** Public TCP port → backend address. */
  ports: PortRoute[];
}

export interface HostRoute {
  service: string;
  token: string;
  /** Absent until the workload is running and its address is known. */
  backend?: string;
}

export interface PortRoute {
  service: string;
  port: number;
  /** The load balancer of the pool that listens on this port (AWS), recorded with the claim. */
  loadBalancer?: string;
  backend?: string;
}

/** Heartbeat each router writes under `routers/<name>`. */
/** What each controller replica writes under `controllers/<host>-<pid>` while it runs. */
export interface ControllerHeartbeat {
  host: string;
  pid: number;
  startedAt: string;
  heartbeatAt: string;
  /** Whether it held the leader lock when it wrote this. */
  leading: boolean;
}

export interface RouterHeartbeat {
  name: string;
  /** Store index of the routes the router has applied (every route change at or below it is live). */
  appliedIndex: number;
  heartbeatAt: string;
}
