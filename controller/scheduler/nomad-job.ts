import type { NomadTask, SessionTemplate } from '../api/types.js';
import { interpolate, type InterpolationOptions } from './interpolate.js';
import { specHashOf } from './local-scheduler.js';
import { RenderError, SESSION_META_KEY, type WorkloadRequest } from './scheduler.js';

/**
 * The Nomad job a session gets: one service job with one task group holding every task of the template's
 * `backends.nomad` section, rendered as the body of a job register request (`PUT /v1/jobs`). Field names
 * are Nomad's JSON API names exactly (https://developer.hashicorp.com/nomad/api-docs/json-jobs); durations
 * are integer nanoseconds, as the API wants them.
 */

/**
 * Meta key holding the hash of the job's content, so an unchanged job is never registered again. Every
 * task sets it too, to "": Nomad hands a task the job's Meta under its own (Job.CombinedTaskMeta, the
 * deepest scope winning), and a change of task meta replaces the allocation, so the hash alone must not
 * reach the tasks: a change Nomad applies in place (priority, update, migrate or restart strategy, checks)
 * then leaves the session running.
 */
export const SPEC_HASH_META_KEY = 'manticore_spec_hash';

/**
 * Meta key naming the failed allocation a re-registration replaces. Rescheduling is off (ReschedulePolicy
 * Attempts 0), and Nomad then replaces a failed allocation only for a new version of the job, never for a
 * forced evaluation; this key is that version's only change, outside the spec hash.
 */
export const REPLACES_META_KEY = 'manticore_replaces_allocation';

/** The only task group of a session's job. */
const TASK_GROUP = 'session';

/** Per task: Nomad keeps at most MaxFiles × MaxFileSizeMB of logs, which must fit in the ephemeral disk. */
export const LOG_CONFIG: NomadLogConfig = { MaxFiles: 3, MaxFileSizeMB: 10 };
/** Nomad's default is 300 MB; a session only needs room for its tasks' logs and a little scratch space. */
export const EPHEMERAL_DISK_MB = 150;

export interface NomadJobOptions {
  region?: string;
  namespace?: string;
  datacenters: string[];
  /** Node pool (Nomad 1.6+). */
  nodePool?: string;
  constraints?: Array<{ LTarget: string; RTarget: string; Operand: string }>;
  /** 1–100; Nomad's default is 50. */
  priority?: number;
  /** Mode "fail": at most `attempts` restarts per `intervalMs` (Nomad requires ≥ 5 s), `delayMs` apart. */
  restart: { attempts: number; intervalMs: number; delayMs: number };
  /** How long an allocation may take to become healthy (a first image pull can be slow). */
  healthyDeadlineMs: number;
  /** Service check interval and timeout; Nomad requires each to be ≥ 1 s. */
  checkIntervalMs: number;
  checkTimeoutMs: number;
}

export interface NomadConstraint {
  LTarget: string;
  RTarget: string;
  Operand: string;
}

export interface NomadPort {
  Label: string;
  /** The port inside the group's network namespace (bridge mode only). */
  To?: number;
}

export interface NomadNetwork {
  Mode: 'bridge' | 'host';
  DynamicPorts: NomadPort[];
}

export interface NomadServiceCheck {
  Name: string;
  Type: 'tcp' | 'http';
  /** http checks only. */
  Path?: string;
  Interval: number;
  Timeout: number;
}

export interface NomadService {
  Name: string;
  PortLabel: string;
  Provider: 'nomad';
  Checks?: NomadServiceCheck[];
}

export interface NomadRestartPolicy {
  Attempts: number;
  Interval: number;
  Delay: number;
  Mode: 'fail';
}

/**
 * How Nomad's client judges an allocation healthy outside a deployment: one placed once its version's
 * deployment has ended (the replacement of an allocation lost with its node) or moved off a draining node.
 */
export interface NomadMigrateStrategy {
  MaxParallel: number;
  HealthCheck: 'checks' | 'task_states';
  MinHealthyTime: number;
  HealthyDeadline: number;
}

export interface NomadReschedulePolicy {
  Attempts: number;
  Unlimited: boolean;
}

export interface NomadEphemeralDisk {
  SizeMB: number;
}

export interface NomadLogConfig {
  MaxFiles: number;
  MaxFileSizeMB: number;
}

export interface NomadResources {
  CPU: number;
  MemoryMB: number;
}

export interface NomadTaskSpec {
  Name: string;
  Driver: string;
  Config: Record<string, unknown>;
  Env?: Record<string, string>;
  /** Shadows the job's spec hash (see SPEC_HASH_META_KEY). */
  Meta: Record<string, string>;
  Resources: NomadResources;
  LogConfig: NomadLogConfig;
}

export interface NomadTaskGroup {
  Name: string;
  Count: number;
  Networks: NomadNetwork[];
  Services: NomadService[];
  RestartPolicy: NomadRestartPolicy;
  ReschedulePolicy: NomadReschedulePolicy;
  Migrate: NomadMigrateStrategy;
  EphemeralDisk: NomadEphemeralDisk;
  Tasks: NomadTaskSpec[];
}

export interface NomadUpdateStrategy {
  HealthCheck: 'checks' | 'task_states';
  MinHealthyTime: number;
  HealthyDeadline: number;
  ProgressDeadline: number;
  AutoRevert: boolean;
  MaxParallel: number;
}

export interface NomadJob {
  ID: string;
  Name: string;
  Type: 'service';
  Namespace?: string;
  Region?: string;
  Datacenters: string[];
  NodePool?: string;
  Priority: number;
  Meta: Record<string, string>;
  Constraints?: NomadConstraint[];
  Update: NomadUpdateStrategy;
  TaskGroups: NomadTaskGroup[];
}

/** The body of `PUT /v1/jobs` without the register options (EnforceIndex, JobModifyIndex). */
export interface NomadJobRegistration {
  Job: NomadJob;
}

/** Nomad's RestartPolicyMinInterval: a shorter restart interval is refused at registration. */
const MIN_RESTART_INTERVAL_MS = 5_000;

/**
 * What real Nomad would refuse in these options at registration (nomad/structs RestartPolicy.Validate,
 * UpdateStrategy.Validate), found before any job is sent. Service check minimums (≥ 1 s) are left to the
 * configuration schema, so tests against the API double may use faster checks.
 */
export function nomadJobOptionsProblems(options: NomadJobOptions): string[] {
  const problems: string[] = [];
  const { attempts, intervalMs, delayMs } = options.restart;
  if (options.datacenters.length === 0) problems.push('datacenters is empty');
  if (!Number.isInteger(attempts) || attempts < 0) problems.push(`restart attempts must be a whole number ≥ 0, got ${attempts}`);
  if (intervalMs < MIN_RESTART_INTERVAL_MS) problems.push(`restart interval must be at least ${MIN_RESTART_INTERVAL_MS / 1000} s, got ${intervalMs} ms`);
  if (delayMs < 0) problems.push(`restart delay must not be negative, got ${delayMs} ms`);
  if (attempts * delayMs > intervalMs) {
    problems.push(`${attempts} restarts ${delayMs} ms apart do not fit in a restart interval of ${intervalMs} ms`);
  }
  if (options.priority !== undefined && (!Number.isInteger(options.priority) || options.priority < 1 || options.priority > 100)) {
    problems.push(`priority must be 1–100, got ${options.priority}`);
  }
  if (!(options.healthyDeadlineMs > 0)) problems.push(`healthy deadline must be positive, got ${options.healthyDeadlineMs} ms`);
  if (!(options.checkIntervalMs > 0) || !(options.checkTimeoutMs > 0)) problems.push('check interval and timeout must be positive');
  return problems;
}

const TASK_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]*$/;
/** Port labels become environment variable names (`NOMAD_PORT_<label>`). */
const PORT_LABEL = /^[A-Za-z0-9_]+$/;
/** Nomad service names are RFC 1123 labels. */
const SERVICE_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const NS_PER_MS = 1_000_000;

/**
 * Nomad's own runtime interpolation, resolved by the Nomad client when the task starts: left untouched.
 * https://developer.hashicorp.com/nomad/docs/runtime/interpolation
 */
const NOMAD_RUNTIME: InterpolationOptions = {
  passThrough: (reference) => /^(NOMAD_\w+|(meta|attr|node)\.\S+|env\s+\S.*)$/.test(reference),
};

/**
 * Renders the register body of a session's job. Deterministic: the same request gives the same JSON,
 * whatever the key order of its parameters and endpoints; `Meta.manticore_spec_hash` is the hash of
 * the canonical job without that hash.
 */
export function renderNomadJob(request: WorkloadRequest, options: NomadJobOptions): NomadJobRegistration {
  const template: SessionTemplate = request.template;
  const name = template.metadata.name;
  const nomad = template.spec.backends.nomad;
  if (!nomad) throw new RenderError(`template ${name} has no nomad backend; it runs only on the embedded backend`);
  if (nomad.tasks.length === 0) throw new RenderError(`template ${name}: the nomad backend has no tasks`);
  if (options.datacenters.length === 0) throw new RenderError('the Nomad job options name no datacenter');
  const mode = nomad.networkMode ?? 'bridge';

  const labels = new Set<string>();
  const taskNames = new Set<string>();
  const dynamicPorts: NomadPort[] = [];
  const tasks = nomad.tasks.map((task): NomadTaskSpec => {
    const where = `template ${name}: task ${task.name}`;
    if (!TASK_NAME.test(task.name)) throw new RenderError(`template ${name}: task name "${task.name}" must match ${TASK_NAME}`);
    if (taskNames.has(task.name)) throw new RenderError(`template ${name}: task "${task.name}" is defined twice`);
    taskNames.add(task.name);
    for (const [label, port] of Object.entries(task.ports)) {
      if (!PORT_LABEL.test(label)) throw new RenderError(`${where}: port label "${label}" must match ${PORT_LABEL}`);
      if (labels.has(label)) throw new RenderError(`template ${name}: port label "${label}" is used by two tasks`);
      labels.add(label);
      dynamicPorts.push(portFor(label, port, mode, where));
    }
    return renderTask(task, request, where);
  });

  const services = template.spec.services.map((service): NomadService => {
    if (!labels.has(service.port)) {
      throw new RenderError(`template ${name}: service ${service.name} uses port "${service.port}", which no nomad task provides`);
    }
    const serviceName = `${request.jobId}-${service.name}`.toLowerCase().replace(/_/g, '-');
    if (!SERVICE_NAME.test(serviceName)) {
      throw new RenderError(`template ${name}: service ${service.name} gives the Nomad service name "${serviceName}", which is not a DNS label of at most 63 characters`);
    }
    if (!service.check) return { Name: serviceName, PortLabel: service.port, Provider: 'nomad' };
    const check: NomadServiceCheck = {
      Name: `${service.name} ${service.check.type}`,
      Type: service.check.type,
      ...(service.check.type === 'http' ? { Path: service.check.path ?? '/' } : {}),
      Interval: nanoseconds(options.checkIntervalMs),
      Timeout: nanoseconds(options.checkTimeoutMs),
    };
    return { Name: serviceName, PortLabel: service.port, Provider: 'nomad', Checks: [check] };
  });

  // "checks" waits for every service check to pass; with no check, running tasks are all there is.
  const healthCheck = services.some((service) => service.Checks !== undefined) ? 'checks' : 'task_states';
  const job: NomadJob = {
    ID: request.jobId,
    Name: request.jobId,
    Type: 'service',
    ...(options.namespace !== undefined ? { Namespace: options.namespace } : {}),
    ...(options.region !== undefined ? { Region: options.region } : {}),
    Datacenters: [...options.datacenters],
    ...(options.nodePool !== undefined ? { NodePool: options.nodePool } : {}),
    Priority: options.priority ?? 50,
    Meta: { [SESSION_META_KEY]: request.sessionId },
    ...(options.constraints && options.constraints.length > 0
      ? { Constraints: options.constraints.map(({ LTarget, RTarget, Operand }) => ({ LTarget, RTarget, Operand })) }
      : {}),
    Update: {
      HealthCheck: healthCheck,
      MinHealthyTime: 0,
      HealthyDeadline: nanoseconds(options.healthyDeadlineMs),
      // 0 disables the progress deadline: Manticore, not Nomad, decides when a session took too long.
      ProgressDeadline: 0,
      AutoRevert: false,
      MaxParallel: 1,
    },
    TaskGroups: [
      {
        Name: TASK_GROUP,
        Count: 1,
        Networks: [{ Mode: mode, DynamicPorts: dynamicPorts }],
        Services: services,
        RestartPolicy: {
          Attempts: options.restart.attempts,
          Interval: nanoseconds(options.restart.intervalMs),
          Delay: nanoseconds(options.restart.delayMs),
          Mode: 'fail',
        },
        // A failed session is the controller's to report and retry; Nomad must not move it elsewhere.
        ReschedulePolicy: { Attempts: 0, Unlimited: false },
        // Judged as in a deployment; Nomad's defaults would hold a healthy replacement back 10 s and give up
        // on one still pulling its image after 5 min, for good (health is decided once).
        Migrate: { MaxParallel: 1, HealthCheck: healthCheck, MinHealthyTime: 0, HealthyDeadline: nanoseconds(options.healthyDeadlineMs) },
        EphemeralDisk: { SizeMB: EPHEMERAL_DISK_MB },
        Tasks: tasks,
      },
    ],
  };
  job.Meta[SPEC_HASH_META_KEY] = specHashOf(job);
  return { Job: job };
}

function portFor(label: string, port: number, mode: 'bridge' | 'host', where: string): NomadPort {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RenderError(`${where}: port ${label} must be 0–65535, got ${port}`);
  if (mode === 'host') {
    // In host mode the task listens on the dynamic port itself (NOMAD_PORT_<label>); a fixed port would be a lie.
    if (port !== 0) throw new RenderError(`${where}: port ${label} must be 0 in host network mode (the task listens on NOMAD_PORT_${label}), got ${port}`);
    return { Label: label };
  }
  return port === 0 ? { Label: label } : { Label: label, To: port };
}

function renderTask(task: NomadTask, request: WorkloadRequest, where: string): NomadTaskSpec {
  const config = interpolateValue(task.config, request, `${where} config`);
  if (!isRecord(config)) throw new RenderError(`${where}: config must be an object`);
  const labels = Object.keys(task.ports);
  // Docker maps only the ports its config lists (in bridge mode it shares the group's namespace and
  // ignores them, but Nomad still checks that each label exists).
  if (task.driver === 'docker' && labels.length > 0) config.ports = labels;
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(task.env ?? {})) env[key] = interpolate(value, request, `${where} env ${key}`, NOMAD_RUNTIME);
  return {
    Name: task.name,
    Driver: task.driver,
    Config: config,
    ...(Object.keys(env).length > 0 ? { Env: env } : {}),
    Meta: { [SPEC_HASH_META_KEY]: '' },
    Resources: { CPU: task.resources.cpu, MemoryMB: task.resources.memoryMB },
    LogConfig: { ...LOG_CONFIG },
  };
}

/** Interpolates every string inside a task's driver config (objects and arrays, at any depth). */
function interpolateValue(value: unknown, request: WorkloadRequest, where: string): unknown {
  if (typeof value === 'string') return interpolate(value, request, where, NOMAD_RUNTIME);
  if (Array.isArray(value)) return value.map((item, index) => interpolateValue(item, request, `${where}[${index}]`));
  if (isRecord(value)) {
    const result: Record<string, unknown> = {};
    for (const [key, item] of Object.entries(value)) result[key] = interpolateValue(item, request, `${where}.${key}`);
    return result;
  }
  return value;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function nanoseconds(ms: number): number {
  return Math.round(ms * NS_PER_MS);
}
