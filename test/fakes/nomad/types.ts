import { randomUUID } from 'node:crypto';

/**
 * Shared records of the Nomad double. Records hold Nomad's JSON field names where they are served as-is
 * (allocations, evaluations, task states) and parsed, typed views where the double acts on them (jobs).
 */

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

/** A node the double schedules on. */
export interface NodeSpec {
  name: string;
  /** MHz (Nomad's CpuShares). */
  cpu: number;
  memoryMB: number;
  /** Default 100 000. */
  diskMB?: number;
  /** Default "dc1". */
  datacenter?: string;
  /** Default "default". */
  nodePool?: string;
  nodeClass?: string;
  meta?: Record<string, string>;
  /** Merged over the built-in attributes (kernel.name, cpu.arch, unique.hostname, driver.*, …). */
  attributes?: Record<string, string>;
}

export interface NodeRecord {
  id: string;
  spec: Required<Omit<NodeSpec, 'nodeClass'>> & { nodeClass: string };
  status: 'ready' | 'down';
  /** The node's latest events (Nomad's NodeEvents, served as `Events`). */
  events: NodeEventRecord[];
  createIndex: number;
  modifyIndex: number;
}

/** Nomad's structs.NodeEvent as the API serves it. */
export interface NodeEventRecord {
  Message: string;
  Subsystem: string;
  Details: Record<string, string> | null;
  Timestamp: string;
  CreateIndex: number;
}

/** An error answered over HTTP with Nomad's plain-text body. */
export class HttpError extends Error {
  /** X-Nomad-Index to send with the error (Nomad sets it on a read that found nothing). */
  index: number | undefined;

  constructor(readonly status: number, message: string) {
    super(message);
    this.name = 'HttpError';
  }
}

// ---- the parsed job (what the double acts on) -----------------------------------------------------------

export interface ConstraintSpec {
  LTarget: string;
  RTarget: string;
  Operand: string;
}

export interface PortSpec {
  label: string;
  /** Fixed host port (ReservedPorts), else 0 for a dynamic one. */
  value: number;
  /** Port inside the group's network namespace (bridge); -1 means "same as the host port". */
  to: number;
}

export interface CheckSpec {
  name: string;
  type: string;
  path: string;
  portLabel: string;
  intervalMs: number;
  timeoutMs: number;
}

export interface ServiceSpec {
  name: string;
  portLabel: string;
  checks: CheckSpec[];
}

export interface RestartSpec {
  attempts: number;
  intervalMs: number;
  delayMs: number;
  mode: string;
}

export interface RescheduleSpec {
  attempts: number;
  intervalMs: number;
  delayMs: number;
  unlimited: boolean;
}

export interface TaskSpec {
  name: string;
  driver: string;
  config: JsonObject;
  env: Record<string, string>;
  meta: Record<string, string>;
  cpu: number;
  memoryMB: number;
  killTimeoutMs: number;
  killSignal: NodeJS.Signals;
  constraints: ConstraintSpec[];
  services: ServiceSpec[];
  restart: RestartSpec;
  /** LogConfig: how much of each output stream is kept. */
  logs: { maxFiles: number; maxFileBytes: number };
}

export interface GroupSpec {
  name: string;
  count: number;
  networkMode: 'host' | 'bridge';
  ports: PortSpec[];
  services: ServiceSpec[];
  restart: RestartSpec;
  reschedule: RescheduleSpec;
  diskMB: number;
  meta: Record<string, string>;
  constraints: ConstraintSpec[];
  tasks: TaskSpec[];
  /** How an allocation placed outside a deployment is judged healthy (service jobs only). */
  migrate: HealthSpec | undefined;
}

/** How a client judges an allocation healthy: by the Update strategy in a deployment, else by Migrate. */
export interface HealthSpec {
  healthCheck: string;
  minHealthyTimeMs: number;
  healthyDeadlineMs: number;
}

export interface JobSpec {
  id: string;
  name: string;
  namespace: string;
  region: string;
  type: string;
  priority: number;
  datacenters: string[];
  nodePool: string;
  constraints: ConstraintSpec[];
  meta: Record<string, string>;
  /** A non-empty update strategy (MaxParallel > 0): new versions roll out as deployments. */
  update: HealthSpec | undefined;
  groups: GroupSpec[];
}

export interface JobRecord {
  /** The submitted job with Nomad's defaults filled in (without the server-side fields). */
  submitted: JsonObject;
  /** Canonical JSON of `submitted`: equal content means an identical re-register. */
  key: string;
  spec: JobSpec;
  stop: boolean;
  status: 'pending' | 'running' | 'dead';
  version: number;
  createIndex: number;
  modifyIndex: number;
  jobModifyIndex: number;
  submitTime: number;
  /** The deployment of this version, once its first placement made one (no deployments API). */
  deployment: { ID: string; status: 'running' | 'successful' | 'failed' } | undefined;
}

// ---- evaluations and allocations (served as they are) ---------------------------------------------------

export interface AllocMetric {
  NodesEvaluated: number;
  NodesFiltered: number;
  NodesInPool: number;
  NodesAvailable: Record<string, number>;
  ClassFiltered: Record<string, number> | null;
  ConstraintFiltered: Record<string, number> | null;
  NodesExhausted: number;
  ClassExhausted: Record<string, number> | null;
  DimensionExhausted: Record<string, number> | null;
  QuotaExhausted: string[] | null;
  AllocationTime: number;
  CoalescedFailures: number;
}

export interface EvalRecord {
  ID: string;
  Namespace: string;
  Priority: number;
  Type: string;
  TriggeredBy: string;
  JobID: string;
  JobModifyIndex: number;
  NodeID: string;
  Status: 'pending' | 'complete' | 'blocked' | 'failed' | 'canceled';
  StatusDescription: string;
  Wait: number;
  WaitUntil: string | null;
  NextEval: string;
  PreviousEval: string;
  BlockedEval: string;
  FailedTGAllocs: Record<string, AllocMetric> | null;
  ClassEligibility: Record<string, boolean> | null;
  EscapedComputedClass: boolean;
  QueuedAllocations: Record<string, number> | null;
  CreateIndex: number;
  ModifyIndex: number;
  CreateTime: number;
  ModifyTime: number;
}

export interface TaskEvent {
  Type: string;
  Time: number;
  DisplayMessage: string;
  Message: string;
  Details: Record<string, string>;
  ExitCode: number;
  Signal: number;
  KillTimeout: number;
  KillReason: string;
  StartDelay: number;
  RestartReason: string;
  DriverError: string;
  FailsTask: boolean;
}

export interface TaskStateRecord {
  State: 'pending' | 'running' | 'dead';
  Failed: boolean;
  Restarts: number;
  LastRestart: string | null;
  StartedAt: string | null;
  FinishedAt: string | null;
  Events: TaskEvent[];
}

export interface PortMapping {
  Label: string;
  Value: number;
  To: number;
  HostIP: string;
}

export interface AllocRecord {
  ID: string;
  Namespace: string;
  EvalID: string;
  Name: string;
  NodeID: string;
  NodeName: string;
  JobID: string;
  JobVersion: number;
  TaskGroup: string;
  DesiredStatus: 'run' | 'stop' | 'evict';
  DesiredDescription: string;
  /** What the servers want done with the allocation next; the double acts on ForceReschedule only. */
  DesiredTransition: { Migrate: boolean | null; Reschedule: boolean | null; ForceReschedule: boolean | null; NoShutdownDelay: boolean | null };
  ClientStatus: 'pending' | 'running' | 'complete' | 'failed' | 'lost';
  ClientDescription: string;
  TaskStates: Record<string, TaskStateRecord>;
  /** The deployment it was placed in; empty outside one (its health is then judged by the Migrate strategy). */
  DeploymentID: string;
  DeploymentStatus: { Healthy: boolean | null; Timestamp: string; Canary: boolean; ModifyIndex: number } | null;
  PreviousAllocation: string;
  NextAllocation: string;
  FollowupEvalID: string;
  CreateIndex: number;
  ModifyIndex: number;
  AllocModifyIndex: number;
  CreateTime: number;
  ModifyTime: number;
  /** Not served: the job this allocation runs, its group, the ports and the metric of its placement. */
  job: JobRecord;
  jobJson: JsonObject;
  group: GroupSpec;
  ports: PortMapping[];
  metric: AllocMetric;
  /** Index of the alloc in its group (the `[n]` in its name). */
  index: number;
}

// ---- small helpers --------------------------------------------------------------------------------------

export const newId = (): string => randomUUID();

let lastNs = 0;
/**
 * Unix time in nanoseconds, strictly increasing (events within one millisecond stay ordered). Values
 * this large are exact only to 256 ns in a double, so the step is 1 µs.
 */
export function nowNs(): number {
  lastNs = Math.max(lastNs + 1_000, Date.now() * 1_000_000);
  return lastNs;
}

export const isoNow = (): string => new Date().toISOString();

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export const NS_PER_MS = 1_000_000;
export const nsToMs = (ns: number): number => Math.round(ns / NS_PER_MS);
