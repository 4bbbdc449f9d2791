import {
  HttpError,
  isObject,
  nsToMs,
  type CheckSpec,
  type ConstraintSpec,
  type GroupSpec,
  type JobSpec,
  type Json,
  type JsonObject,
  type PortSpec,
  type HealthSpec,
  type RescheduleSpec,
  type RestartSpec,
  type ServiceSpec,
  type TaskSpec,
} from './types.js';

/**
 * Decoding and validation of a job register body, as Nomad's `api.Job` decoding, `Canonicalize` and
 * `Job.Validate` do for the parts the double understands. Unlike Nomad (whose JSON decoder ignores
 * unknown names) an unknown field name is refused, so a misspelt field in a rendered job fails loudly.
 */

type Kind = 'any' | 'string' | 'number' | 'bool' | 'strings' | 'stringMap' | { obj: string } | { list: string };

const A = 'any' as const;
const S = 'string' as const;
const N = 'number' as const;
const B = 'bool' as const;
const obj = (name: string): Kind => ({ obj: name });
const list = (name: string): Kind => ({ list: name });

/** Nomad's api package field names (Nomad 1.9), with the decoding of the parts the double acts on. */
const SCHEMAS: Record<string, Record<string, Kind>> = {
  Job: {
    Region: S, Namespace: S, ID: S, ParentID: S, Name: S, Type: S, Priority: N, AllAtOnce: B, Datacenters: 'strings',
    NodePool: S, Constraints: list('Constraint'), Affinities: A, TaskGroups: list('TaskGroup'), Update: obj('Update'),
    Multiregion: A, Spreads: A, Periodic: A, ParameterizedJob: A, Dispatched: B, DispatchIdempotencyToken: S, Payload: A,
    Reschedule: obj('Reschedule'), Migrate: obj('Migrate'), Meta: 'stringMap', ConsulToken: S, VaultToken: S, VaultNamespace: S,
    NomadTokenID: S, Status: S, StatusDescription: S, Stable: B, Version: N, SubmitTime: N, CreateIndex: N,
    ModifyIndex: N, JobModifyIndex: N, ConsulNamespace: S, UI: A, Stop: B, VersionTag: A,
  },
  TaskGroup: {
    Name: S, Count: N, Constraints: list('Constraint'), Affinities: A, Tasks: list('Task'), Spreads: A, Volumes: A,
    RestartPolicy: obj('RestartPolicy'), ReschedulePolicy: obj('Reschedule'), EphemeralDisk: obj('EphemeralDisk'),
    Update: obj('Update'), Migrate: obj('Migrate'), Networks: list('Network'), Meta: 'stringMap', Services: list('Service'),
    ShutdownDelay: N, StopAfterClientDisconnect: N, MaxClientDisconnect: N, Scaling: A, Consul: A,
    PreventRescheduleOnLost: B, Disconnect: A,
  },
  Task: {
    Name: S, Driver: S, User: S, Lifecycle: A, Config: A, Constraints: list('Constraint'), Affinities: A, Env: 'stringMap',
    Services: list('Service'), Resources: obj('Resources'), RestartPolicy: obj('RestartPolicy'), Meta: 'stringMap',
    KillTimeout: N, LogConfig: obj('LogConfig'), Artifacts: A, Vault: A, Consul: A, Templates: A, DispatchPayload: A,
    VolumeMounts: A, CSIPluginConfig: A, Leader: B, ShutdownDelay: N, KillSignal: S, Kind: S, ScalingPolicies: A,
    Identity: A, Identities: A, Actions: A, Schedule: A,
  },
  Constraint: { LTarget: S, RTarget: S, Operand: S },
  Update: {
    Stagger: N, MaxParallel: N, HealthCheck: S, MinHealthyTime: N, HealthyDeadline: N, ProgressDeadline: N, Canary: N,
    AutoRevert: B, AutoPromote: B,
  },
  Migrate: { MaxParallel: N, HealthCheck: S, MinHealthyTime: N, HealthyDeadline: N },
  Reschedule: { Attempts: N, Interval: N, Delay: N, DelayFunction: S, MaxDelay: N, Unlimited: B },
  RestartPolicy: { Interval: N, Attempts: N, Delay: N, Mode: S, RenderTemplates: B },
  EphemeralDisk: { Sticky: B, Migrate: B, SizeMB: N },
  LogConfig: { MaxFiles: N, MaxFileSizeMB: N, Disabled: B, Enabled: B },
  Resources: {
    CPU: N, Cores: N, MemoryMB: N, MemoryMaxMB: N, DiskMB: N, Networks: list('Network'), Devices: A, IOPS: N, NUMA: A,
    SecretsMB: N,
  },
  Network: {
    Mode: S, Device: S, CIDR: S, IP: S, Hostname: S, DNS: A, ReservedPorts: list('Port'), DynamicPorts: list('Port'),
    MBits: N, CNI: A,
  },
  Port: { Label: S, Value: N, To: N, HostNetwork: S, IgnoreCollision: B },
  Service: {
    Id: S, Name: S, Tags: 'strings', CanaryTags: 'strings', EnableTagOverride: B, PortLabel: S, AddressMode: S, Address: S,
    Checks: list('Check'), CheckRestart: A, Connect: A, Meta: 'stringMap', CanaryMeta: 'stringMap', TaggedAddresses: A,
    TaskName: S, OnUpdate: S, Identity: A, Provider: S, Cluster: S, Weights: A, Kind: S,
  },
  Check: {
    Id: S, Name: S, Type: S, Command: S, Args: 'strings', Path: S, Protocol: S, PortLabel: S, Expose: B, AddressMode: S,
    Advertise: S, Interval: N, Timeout: N, InitialStatus: S, Notes: S, TLSServerName: S, TLSSkipVerify: B, Header: A,
    Method: S, CheckRestart: A, GRPCService: S, GRPCUseTLS: B, TaskName: S, SuccessBeforePassing: N,
    FailuresBeforeCritical: N, FailuresBeforeWarning: N, Body: S, OnUpdate: S,
  },
};

/** Go's decoding errors, with the path inside the job added. */
function checkShape(value: unknown, schema: string, path: string): void {
  if (value === null || value === undefined) return;
  if (!isObject(value)) throw new HttpError(400, `json: cannot unmarshal ${jsonType(value)} into Go value of type api.${schema} (at ${path})`);
  const fields = SCHEMAS[schema] ?? {};
  for (const [key, field] of Object.entries(value)) {
    const kind = fields[key];
    if (kind === undefined) throw new HttpError(400, `json: unknown field "${key}" (at ${path})`);
    checkKind(field, kind, `${path}.${key}`);
  }
}

function checkKind(value: unknown, kind: Kind, path: string): void {
  if (value === null || value === undefined || kind === 'any') return;
  const wrong = (go: string): HttpError => new HttpError(400, `json: cannot unmarshal ${jsonType(value)} into Go struct field ${path} of type ${go}`);
  if (kind === 'string') {
    if (typeof value !== 'string') throw wrong('string');
  } else if (kind === 'number') {
    if (typeof value !== 'number' || !Number.isFinite(value)) throw wrong('int');
  } else if (kind === 'bool') {
    if (typeof value !== 'boolean') throw wrong('bool');
  } else if (kind === 'strings') {
    if (!Array.isArray(value) || !value.every((item) => typeof item === 'string')) throw wrong('[]string');
  } else if (kind === 'stringMap') {
    if (!isObject(value) || !Object.values(value).every((item) => typeof item === 'string')) throw wrong('map[string]string');
  } else if ('obj' in kind) {
    checkShape(value, kind.obj, path);
  } else {
    if (!Array.isArray(value)) throw wrong(`[]*api.${kind.list}`);
    value.forEach((item, index) => checkShape(item, kind.list, `${path}[${index}]`));
  }
}

function jsonType(value: unknown): string {
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'object') return 'object';
  return typeof value;
}

/** hashicorp/go-multierror's format, as Nomad's validation errors read. */
export function multiError(errors: readonly string[]): string {
  const lines = errors.map((error) => `\t* ${error.replace(/\n/g, '\n\t')}`).join('\n');
  return `${errors.length} error${errors.length === 1 ? '' : 's'} occurred:\n${lines}\n\n`;
}

// ---- accessors over a shape-checked object ---------------------------------------------------------------

type Obj = Record<string, unknown>;
const str = (o: Obj, key: string, fallback = ''): string => (typeof o[key] === 'string' ? (o[key] as string) : fallback);
const num = (o: Obj, key: string, fallback: number): number => (typeof o[key] === 'number' ? (o[key] as number) : fallback);
const bool = (o: Obj, key: string, fallback = false): boolean => (typeof o[key] === 'boolean' ? (o[key] as boolean) : fallback);
const objs = (o: Obj, key: string): Obj[] => (Array.isArray(o[key]) ? (o[key] as unknown[]).filter(isObject) : []);
const sub = (o: Obj, key: string): Obj | undefined => (isObject(o[key]) ? o[key] : undefined);
const strMap = (o: Obj, key: string): Record<string, string> => (isObject(o[key]) ? { ...(o[key] as Record<string, string>) } : {});

const SECOND_NS = 1_000_000_000;
/** Nomad's defaults for a service job (api/tasks.go, structs.DefaultServiceJobRestartPolicy and friends). */
const DEFAULT_RESTART = { Attempts: 2, Interval: 30 * 60 * SECOND_NS, Delay: 15 * SECOND_NS, Mode: 'fail' };
const DEFAULT_RESCHEDULE = { Attempts: 0, Interval: 0, Delay: 30 * SECOND_NS, DelayFunction: 'exponential', MaxDelay: 3600 * SECOND_NS, Unlimited: true };
/** structs.DefaultMigrateStrategy: how a service job's allocation placed outside a deployment is judged healthy. */
const DEFAULT_MIGRATE = { MaxParallel: 1, HealthCheck: 'checks', MinHealthyTime: 10 * SECOND_NS, HealthyDeadline: 300 * SECOND_NS };
const DEFAULT_UPDATE = { Stagger: 30 * SECOND_NS, MaxParallel: 1, HealthCheck: 'checks', MinHealthyTime: 10 * SECOND_NS, HealthyDeadline: 300 * SECOND_NS, ProgressDeadline: 600 * SECOND_NS, Canary: 0, AutoRevert: false, AutoPromote: false };
const KILL_SIGNALS = new Set(['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGKILL']);

export interface ParsedJob {
  /** The job with Nomad's defaults filled in, as `GET /v1/job/:id` shows it (before the server fields). */
  submitted: JsonObject;
  spec: JobSpec;
}

/**
 * Decodes, canonicalizes and validates `value` as Nomad's register endpoint does. Throws HttpError 400
 * with Nomad's messages.
 */
export function parseJob(value: unknown, namespace: string): ParsedJob {
  if (value === undefined || value === null) throw new HttpError(400, 'Job must be specified');
  checkShape(value, 'Job', 'Job');
  const job = structuredClone(value) as Obj;
  canonicalize(job, namespace);
  const errors = validateJob(job);
  if (errors.length > 0) throw new HttpError(400, multiError(errors));
  return { submitted: job as JsonObject, spec: specOf(job) };
}

function canonicalize(job: Obj, namespace: string): void {
  job.Region = str(job, 'Region') || 'global';
  job.Namespace = str(job, 'Namespace') || namespace;
  job.Name = str(job, 'Name') || str(job, 'ID');
  job.Type = str(job, 'Type') || 'service';
  job.Priority = num(job, 'Priority', 50);
  job.NodePool = str(job, 'NodePool') || 'default';
  job.AllAtOnce = bool(job, 'AllAtOnce');
  const datacenters = Array.isArray(job.Datacenters) ? job.Datacenters : [];
  job.Datacenters = datacenters.length > 0 ? datacenters : ['*'];
  job.Meta = strMap(job, 'Meta');
  delete job.Stop;
  for (const server of ['Status', 'StatusDescription', 'Stable', 'Version', 'SubmitTime', 'CreateIndex', 'ModifyIndex', 'JobModifyIndex']) delete job[server];
  const jobUpdate = sub(job, 'Update');
  if (jobUpdate) job.Update = { ...DEFAULT_UPDATE, ...jobUpdate };
  for (const group of objs(job, 'TaskGroups')) {
    group.Count = num(group, 'Count', 1);
    group.RestartPolicy = { ...DEFAULT_RESTART, ...(sub(group, 'RestartPolicy') ?? {}) };
    group.ReschedulePolicy = { ...DEFAULT_RESCHEDULE, ...(sub(job, 'Reschedule') ?? {}), ...(sub(group, 'ReschedulePolicy') ?? {}) };
    group.EphemeralDisk = { Sticky: false, Migrate: false, SizeMB: 300, ...(sub(group, 'EphemeralDisk') ?? {}) };
    const groupUpdate = sub(group, 'Update');
    if (jobUpdate || groupUpdate) group.Update = { ...DEFAULT_UPDATE, ...(jobUpdate ?? {}), ...(groupUpdate ?? {}) };
    // Only service jobs migrate; the api drops the strategy of any other type.
    if (job.Type === 'service') group.Migrate = { ...DEFAULT_MIGRATE, ...(sub(job, 'Migrate') ?? {}), ...(sub(group, 'Migrate') ?? {}) };
    else delete group.Migrate;
    for (const task of objs(group, 'Tasks')) {
      task.KillTimeout = num(task, 'KillTimeout', 5 * SECOND_NS);
      task.LogConfig = { MaxFiles: 10, MaxFileSizeMB: 10, Disabled: false, ...(sub(task, 'LogConfig') ?? {}) };
      task.Resources = { CPU: 100, MemoryMB: 300, ...(sub(task, 'Resources') ?? {}) };
      task.RestartPolicy = { ...(group.RestartPolicy as Obj), ...(sub(task, 'RestartPolicy') ?? {}) };
    }
  }
}

function validateJob(job: Obj): string[] {
  const errors: string[] = [];
  const id = str(job, 'ID');
  if (id === '') errors.push('Missing job ID');
  else if (/\s/.test(id)) errors.push('Job ID contains a space');
  else if (id.includes('\0')) errors.push('Job ID contains a null character');
  const type = str(job, 'Type');
  if (!['service', 'batch', 'system', 'sysbatch'].includes(type)) errors.push(`Invalid job type: "${type}"`);
  const priority = num(job, 'Priority', 50);
  if (priority < 1 || priority > 100) errors.push('Job priority must be between [1, 100]');
  for (const dc of job.Datacenters as string[]) if (dc === '') errors.push('Job datacenter must be non-empty string');
  const groups = objs(job, 'TaskGroups');
  if (groups.length === 0) errors.push('Missing job task groups');
  errors.push(...constraintErrors(objs(job, 'Constraints')));
  const seen = new Map<string, number>();
  groups.forEach((group, index) => {
    const name = str(group, 'Name');
    if (name === '') errors.push(`Job task group ${index + 1} missing name`);
    else if (seen.has(name)) errors.push(`Job task group ${index + 1} redefines '${name}' from group ${(seen.get(name) ?? 0) + 1}`);
    else seen.set(name, index);
    const groupErrors = validateGroup(group);
    if (groupErrors.length > 0) errors.push(`Task group ${name} validation failed: ${multiError(groupErrors)}`);
  });
  return errors;
}

function validateGroup(group: Obj): string[] {
  const errors: string[] = [];
  if (num(group, 'Count', 1) < 0) errors.push("Task group count can't be negative");
  const restart = sub(group, 'RestartPolicy') ?? {};
  errors.push(...restartErrors(restart));
  const migrate = sub(group, 'Migrate');
  if (migrate) errors.push(...migrateErrors(migrate));
  const disk = sub(group, 'EphemeralDisk') ?? {};
  if (num(disk, 'SizeMB', 300) < 10) errors.push(`minimum DiskMB value is 10; got ${num(disk, 'SizeMB', 300)}`);
  errors.push(...constraintErrors(objs(group, 'Constraints')));
  const networks = objs(group, 'Networks');
  if (networks.length > 1) errors.push('Only one network resource is allowed in a group');
  const labels = new Set<string>();
  for (const network of networks) {
    const mode = str(network, 'Mode') || 'host';
    if (!['host', 'bridge', 'none'].includes(mode) && !mode.startsWith('cni/')) errors.push(`invalid network mode "${mode}"`);
    for (const port of [...objs(network, 'ReservedPorts'), ...objs(network, 'DynamicPorts')]) {
      const label = str(port, 'Label');
      if (label === '') errors.push('Port label must be specified');
      else if (labels.has(label)) errors.push(`Port label ${label} already in use`);
      labels.add(label);
      const value = num(port, 'Value', 0);
      if (value < 0 || value > 65535) errors.push(`Port ${label} has an invalid port value ${value}`);
    }
  }
  const tasks = objs(group, 'Tasks');
  if (tasks.length === 0) errors.push('Missing tasks for task group');
  for (const service of objs(group, 'Services')) errors.push(...serviceErrors(service, labels));
  const seen = new Map<string, number>();
  tasks.forEach((task, index) => {
    const name = str(task, 'Name');
    if (name === '') errors.push(`Task ${index + 1} missing name`);
    else if (seen.has(name)) errors.push(`Task ${index + 1} redefines '${name}' from task ${(seen.get(name) ?? 0) + 1}`);
    else seen.set(name, index);
    const taskErrors = validateTask(task, labels);
    if (taskErrors.length > 0) errors.push(`Task ${name} validation failed: ${multiError(taskErrors)}`);
  });
  return errors;
}

function validateTask(task: Obj, labels: ReadonlySet<string>): string[] {
  const errors: string[] = [];
  const name = str(task, 'Name');
  if (name === '') errors.push('Missing task name');
  if (/[/\0]/.test(name)) errors.push('Task name cannot include slashes or null characters');
  if (str(task, 'Driver') === '') errors.push('Missing task driver');
  if (task.Config !== undefined && task.Config !== null && !isObject(task.Config)) errors.push('Task config must be an object');
  if (num(task, 'KillTimeout', 0) < 0) errors.push('KillTimeout must be a positive value');
  const signal = str(task, 'KillSignal');
  if (signal !== '' && !KILL_SIGNALS.has(signal)) errors.push(`KillSignal ${signal} is not a supported signal`);
  const resources = sub(task, 'Resources') ?? {};
  const cpu = num(resources, 'CPU', 100);
  const memory = num(resources, 'MemoryMB', 300);
  if (cpu < 1) errors.push(`Resources validation failed: minimum CPU value is 1; got ${cpu}`);
  if (memory < 10) errors.push(`Resources validation failed: minimum MemoryMB value is 10; got ${memory}`);
  if (num(resources, 'MemoryMaxMB', 0) < 0) errors.push(`Resources validation failed: MemoryMaxMB value (${num(resources, 'MemoryMaxMB', 0)}) cannot be negative`);
  const log = sub(task, 'LogConfig') ?? {};
  if (num(log, 'MaxFiles', 10) < 1) errors.push(`minimum number of files is 1; got ${num(log, 'MaxFiles', 10)}`);
  if (num(log, 'MaxFileSizeMB', 10) < 1) errors.push(`minimum file size is 1MB; got ${num(log, 'MaxFileSizeMB', 10)}`);
  errors.push(...restartErrors(sub(task, 'RestartPolicy') ?? {}));
  errors.push(...constraintErrors(objs(task, 'Constraints')));
  for (const service of objs(task, 'Services')) errors.push(...serviceErrors(service, labels));
  return errors;
}

/** structs.MigrateStrategy.Validate. */
function migrateErrors(migrate: Obj): string[] {
  const errors: string[] = [];
  const healthCheck = str(migrate, 'HealthCheck');
  if (healthCheck !== 'checks' && healthCheck !== 'task_states') errors.push(`Invalid HealthCheck: ${JSON.stringify(healthCheck)}`);
  const min = num(migrate, 'MinHealthyTime', 0);
  const deadline = num(migrate, 'HealthyDeadline', 0);
  if (min < 0) errors.push(`MinHealthyTime must be >= 0 but found ${min}`);
  if (deadline < 0) errors.push(`HealthyDeadline must be >= 0 but found ${deadline}`);
  if (min > deadline) errors.push(`MinHealthyTime must be less than HealthyDeadline: ${min} > ${deadline}`);
  return errors;
}

function restartErrors(restart: Obj): string[] {
  const errors: string[] = [];
  const mode = str(restart, 'Mode', 'fail');
  if (mode !== 'fail' && mode !== 'delay') errors.push(`Unsupported restart mode: "${mode}"`);
  if (num(restart, 'Attempts', 0) < 0) errors.push(`Restart policy attempts must be non-negative: ${num(restart, 'Attempts', 0)}`);
  if (num(restart, 'Delay', 0) < 0) errors.push('Delay cannot be negative');
  if (num(restart, 'Interval', 0) < 0) errors.push('Interval cannot be negative');
  return errors;
}

const OPERANDS = new Set(['', '=', '==', 'is', '!=', 'not', '<', '<=', '>', '>=', 'regexp', 'version', 'semver', 'set_contains', 'set_contains_all', 'set_contains_any', 'is_set', 'is_not_set', 'distinct_hosts', 'distinct_property']);

function constraintErrors(constraints: readonly Obj[]): string[] {
  const errors: string[] = [];
  for (const constraint of constraints) {
    const operand = str(constraint, 'Operand');
    if (!OPERANDS.has(operand)) errors.push(`Unknown constraint type "${operand}"`);
    if (operand === 'regexp') {
      try {
        new RegExp(str(constraint, 'RTarget'));
      } catch (error) {
        errors.push(`Regular expression failed to compile: ${(error as Error).message}`);
      }
    }
  }
  return errors;
}

function serviceErrors(service: Obj, labels: ReadonlySet<string>): string[] {
  const errors: string[] = [];
  const name = str(service, 'Name');
  if (name === '') errors.push('Service name must be specified');
  const provider = str(service, 'Provider') || 'consul';
  if (provider !== 'consul' && provider !== 'nomad') errors.push(`Service ${name} has invalid provider "${provider}"`);
  const portLabel = str(service, 'PortLabel');
  if (portLabel !== '' && !/^\d+$/.test(portLabel) && !labels.has(portLabel)) {
    errors.push(`Port label "${portLabel}" referenced by services ${name} does not exist`);
  }
  for (const check of objs(service, 'Checks')) {
    const type = str(check, 'Type');
    if (!['tcp', 'http', 'script', 'grpc'].includes(type)) errors.push(`Service ${name} check has invalid type "${type}"`);
    if (num(check, 'Interval', 0) <= 0) errors.push(`Service ${name} check ${str(check, 'Name')}: interval (0) must be positive`);
    if (num(check, 'Timeout', 0) <= 0) errors.push(`Service ${name} check ${str(check, 'Name')}: timeout (0) must be positive`);
    const checkLabel = str(check, 'PortLabel') || portLabel;
    if ((type === 'tcp' || type === 'http') && checkLabel === '') errors.push(`Service ${name} check ${str(check, 'Name')} requires a port`);
  }
  return errors;
}

// ---- the typed view ---------------------------------------------------------------------------------------

function specOf(job: Obj): JobSpec {
  const update = sub(job, 'Update');
  return {
    id: str(job, 'ID'),
    name: str(job, 'Name'),
    namespace: str(job, 'Namespace'),
    region: str(job, 'Region'),
    type: str(job, 'Type'),
    priority: num(job, 'Priority', 50),
    datacenters: [...(job.Datacenters as string[])],
    nodePool: str(job, 'NodePool'),
    constraints: constraintsOf(job),
    meta: strMap(job, 'Meta'),
    // MaxParallel 0 is an empty strategy (UpdateStrategy.IsEmpty): no deployments.
    update: update && num(update, 'MaxParallel', 1) > 0 ? healthOf(update) : undefined,
    groups: objs(job, 'TaskGroups').map(groupOf),
  };
}

function healthOf(strategy: Obj): HealthSpec {
  return {
    healthCheck: str(strategy, 'HealthCheck', 'checks'),
    minHealthyTimeMs: nsToMs(num(strategy, 'MinHealthyTime', 0)),
    healthyDeadlineMs: nsToMs(num(strategy, 'HealthyDeadline', 0)),
  };
}

function constraintsOf(o: Obj): ConstraintSpec[] {
  return objs(o, 'Constraints').map((c) => ({ LTarget: str(c, 'LTarget'), RTarget: str(c, 'RTarget'), Operand: str(c, 'Operand') || '=' }));
}

function restartOf(o: Obj): RestartSpec {
  return { attempts: num(o, 'Attempts', 2), intervalMs: nsToMs(num(o, 'Interval', 0)), delayMs: nsToMs(num(o, 'Delay', 0)), mode: str(o, 'Mode', 'fail') };
}

function rescheduleOf(o: Obj): RescheduleSpec {
  return { attempts: num(o, 'Attempts', 0), intervalMs: nsToMs(num(o, 'Interval', 0)), delayMs: nsToMs(num(o, 'Delay', 0)), unlimited: bool(o, 'Unlimited') };
}

function servicesOf(o: Obj): ServiceSpec[] {
  return objs(o, 'Services').map((service) => {
    const portLabel = str(service, 'PortLabel');
    const checks = objs(service, 'Checks').map((check): CheckSpec => ({
      name: str(check, 'Name') || `service: "${str(service, 'Name')}" check`,
      type: str(check, 'Type'),
      path: str(check, 'Path') || '/',
      portLabel: str(check, 'PortLabel') || portLabel,
      intervalMs: Math.max(1, nsToMs(num(check, 'Interval', 0))),
      timeoutMs: Math.max(1, nsToMs(num(check, 'Timeout', 0))),
    }));
    return { name: str(service, 'Name'), portLabel, checks };
  });
}

function groupOf(group: Obj): GroupSpec {
  const network = objs(group, 'Networks')[0] ?? {};
  const migrate = sub(group, 'Migrate');
  const ports: PortSpec[] = [
    ...objs(network, 'ReservedPorts').map((port) => ({ label: str(port, 'Label'), value: num(port, 'Value', 0), to: num(port, 'To', 0) })),
    ...objs(network, 'DynamicPorts').map((port) => ({ label: str(port, 'Label'), value: 0, to: num(port, 'To', 0) })),
  ];
  return {
    name: str(group, 'Name'),
    count: num(group, 'Count', 1),
    networkMode: str(network, 'Mode') === 'bridge' ? 'bridge' : 'host',
    ports,
    services: servicesOf(group),
    restart: restartOf(sub(group, 'RestartPolicy') ?? {}),
    reschedule: rescheduleOf(sub(group, 'ReschedulePolicy') ?? {}),
    diskMB: num(sub(group, 'EphemeralDisk') ?? {}, 'SizeMB', 300),
    meta: strMap(group, 'Meta'),
    constraints: constraintsOf(group),
    migrate: migrate ? healthOf(migrate) : undefined,
    tasks: objs(group, 'Tasks').map((task): TaskSpec => {
      const resources = sub(task, 'Resources') ?? {};
      return {
        name: str(task, 'Name'),
        driver: str(task, 'Driver'),
        config: (sub(task, 'Config') ?? {}) as JsonObject,
        env: strMap(task, 'Env'),
        meta: strMap(task, 'Meta'),
        cpu: num(resources, 'CPU', 100),
        memoryMB: num(resources, 'MemoryMB', 300),
        killTimeoutMs: nsToMs(num(task, 'KillTimeout', 5 * SECOND_NS)),
        killSignal: (str(task, 'KillSignal') || 'SIGTERM') as NodeJS.Signals,
        constraints: constraintsOf(task),
        services: servicesOf(task),
        restart: restartOf(sub(task, 'RestartPolicy') ?? {}),
        logs: { maxFiles: num(sub(task, 'LogConfig') ?? {}, 'MaxFiles', 10), maxFileBytes: num(sub(task, 'LogConfig') ?? {}, 'MaxFileSizeMB', 10) * 1024 * 1024 },
      };
    }),
  };
}

/** JSON with object keys sorted at every depth: equal content gives equal text. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value as Json));
}

function sortKeys(value: Json): Json {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === 'object') {
    const sorted: JsonObject = {};
    for (const key of Object.keys(value).sort()) {
      const item = value[key];
      if (item !== undefined) sorted[key] = sortKeys(item);
    }
    return sorted;
  }
  return value;
}

/** Go's time.ParseDuration for the `wait` parameter (e.g. "5s", "1m30s", "300ms"); undefined when invalid. */
export function parseGoDuration(text: string): number | undefined {
  const units: Record<string, number> = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };
  if (text === '0') return 0;
  const pattern = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/gy;
  let total = 0;
  let consumed = 0;
  for (let match = pattern.exec(text); match; match = pattern.exec(text)) {
    total += Number(match[1]) * (units[match[2] ?? 's'] ?? 0);
    consumed = pattern.lastIndex;
  }
  return consumed === text.length && consumed > 0 ? total : undefined;
}
