import type { EventType, StreamEvent } from './events.js';
import { NOMAD_VERSION, nodeAttributes } from './placement.js';
import type { NomadState, WriteChanges } from './state.js';
import type { AllocRecord, EvalRecord, Json, JobRecord, JsonObject, NodeRecord } from './types.js';

/** The JSON Nomad's API answers with, built from the double's records (field names as Nomad's structs). */

/** Allocations and blocked evaluations by job, gathered in one pass for a whole job listing. */
export interface JobActivity {
  readonly allocs: ReadonlyMap<string, readonly AllocRecord[]>;
  readonly blocked: ReadonlyMap<string, readonly EvalRecord[]>;
}

export function jobActivity(state: NomadState): JobActivity {
  const allocs = new Map<string, AllocRecord[]>();
  const blocked = new Map<string, EvalRecord[]>();
  for (const alloc of state.allocs.values()) append(allocs, alloc.JobID, alloc);
  for (const evaluation of state.evals.values()) if (evaluation.Status === 'blocked') append(blocked, evaluation.JobID, evaluation);
  return { allocs, blocked };
}

function append<T>(groups: Map<string, T[]>, key: string, item: T): void {
  const group = groups.get(key);
  if (group) group.push(item);
  else groups.set(key, [item]);
}

export function jobStub(activity: JobActivity, job: JobRecord, withMeta: boolean): JsonObject {
  const stub: JsonObject = {
    ID: job.spec.id,
    ParentID: '',
    Name: job.spec.name,
    Namespace: job.spec.namespace,
    Datacenters: job.spec.datacenters,
    NodePool: job.spec.nodePool,
    Multiregion: null,
    Type: job.spec.type,
    Priority: job.spec.priority,
    Periodic: false,
    ParameterizedJob: false,
    Stop: job.stop,
    Status: job.status,
    StatusDescription: '',
    JobSummary: jobSummary(activity, job),
    CreateIndex: job.createIndex,
    ModifyIndex: job.modifyIndex,
    JobModifyIndex: job.jobModifyIndex,
    SubmitTime: job.submitTime,
    Version: job.version,
  };
  // JobListStub's Meta is `json:",omitempty"`: a job without meta lists none, even with meta=true.
  if (withMeta && Object.keys(job.spec.meta).length > 0) stub.Meta = { ...job.spec.meta };
  return stub;
}

function jobSummary(activity: JobActivity, job: JobRecord): JsonObject {
  const summary: JsonObject = {};
  for (const group of job.spec.groups) {
    const counts = { Queued: 0, Complete: 0, Failed: 0, Running: 0, Starting: 0, Lost: 0, Unknown: 0 };
    for (const alloc of activity.allocs.get(job.spec.id) ?? []) {
      if (alloc.TaskGroup !== group.name) continue;
      if (alloc.ClientStatus === 'pending') counts.Starting++;
      else if (alloc.ClientStatus === 'running') counts.Running++;
      else if (alloc.ClientStatus === 'complete') counts.Complete++;
      else if (alloc.ClientStatus === 'failed') counts.Failed++;
      else counts.Lost++;
    }
    for (const evaluation of activity.blocked.get(job.spec.id) ?? []) counts.Queued += evaluation.FailedTGAllocs?.[group.name] ? 1 : 0;
    summary[group.name] = counts;
  }
  return { JobID: job.spec.id, Namespace: job.spec.namespace, Summary: summary, Children: { Pending: 0, Running: 0, Dead: 0 }, CreateIndex: job.createIndex, ModifyIndex: job.modifyIndex };
}

export function jobFull(state: NomadState, job: JobRecord): JsonObject {
  return state.jobJson(job);
}

function allocatedResources(alloc: AllocRecord): JsonObject {
  const tasks: JsonObject = {};
  for (const task of alloc.group.tasks) {
    tasks[task.name] = { Cpu: { CpuShares: task.cpu, ReservedCores: null }, Memory: { MemoryMB: task.memoryMB, MemoryMaxMB: 0 }, Networks: null, Devices: null };
  }
  const network: JsonObject = {
    Mode: alloc.group.networkMode,
    Device: alloc.group.networkMode === 'host' ? 'lo' : '',
    CIDR: '',
    IP: alloc.ports[0]?.HostIP ?? '',
    Hostname: '',
    MBits: 0,
    DNS: null,
    ReservedPorts: alloc.group.ports
      .filter((port) => port.value > 0)
      .map((port) => ({ Label: port.label, Value: port.value, To: port.to, HostNetwork: 'default' })),
    DynamicPorts: alloc.ports
      .filter((mapping) => alloc.group.ports.find((port) => port.label === mapping.Label)?.value === 0)
      .map((mapping) => ({ Label: mapping.Label, Value: mapping.Value, To: mapping.To, HostNetwork: 'default' })),
  };
  return {
    Tasks: tasks,
    TaskLifecycles: Object.fromEntries(alloc.group.tasks.map((task) => [task.name, null])),
    Shared: {
      DiskMB: alloc.group.diskMB,
      Networks: alloc.group.ports.length > 0 || alloc.group.networkMode === 'bridge' ? [network] : null,
      Ports: alloc.ports.length > 0 ? alloc.ports.map((port) => ({ ...port })) : null,
    },
  };
}

/** Fields of both the list stub (AllocListStub) and the allocation (structs.Allocation). */
const ALLOC_FIELDS = [
  'ID', 'Namespace', 'EvalID', 'Name', 'NodeID', 'NodeName', 'JobID', 'TaskGroup', 'DesiredStatus',
  'DesiredDescription', 'DesiredTransition', 'ClientStatus', 'ClientDescription', 'DeploymentStatus', 'NextAllocation',
  'FollowupEvalID', 'CreateIndex', 'ModifyIndex', 'CreateTime', 'ModifyTime',
] as const;

function allocFields(alloc: AllocRecord, options: { resources: boolean; taskStates: boolean }): JsonObject {
  const fields: JsonObject = {};
  for (const field of ALLOC_FIELDS) {
    const value = alloc[field];
    fields[field] = (typeof value === 'object' && value !== null ? structuredClone(value) : value) as Json;
  }
  fields.TaskStates = options.taskStates ? (structuredClone(alloc.TaskStates) as unknown as JsonObject) : null;
  fields.RescheduleTracker = null;
  fields.PreemptedAllocations = null;
  fields.PreemptedByAllocation = '';
  if (options.resources) fields.AllocatedResources = allocatedResources(alloc);
  return fields;
}

/**
 * The allocation list stub (`GET /v1/allocations`, `/v1/job/:id/allocations`): the only form with the job's
 * version and type (Allocation.Stub reads them off the job), and without AllocModifyIndex, DeploymentID
 * and PreviousAllocation.
 */
export function allocStub(alloc: AllocRecord, options: { resources: boolean; taskStates: boolean }): JsonObject {
  return { ...allocFields(alloc, options), JobType: alloc.job.spec.type, JobVersion: alloc.JobVersion };
}

/**
 * The full allocation (`GET /v1/allocation/:id`), with its job and resources; events carry it without the
 * job (`withJob` false), and so without any word of the job's version.
 */
export function allocFull(alloc: AllocRecord, withJob = true): JsonObject {
  const full = allocFields(alloc, { resources: true, taskStates: true });
  full.AllocModifyIndex = alloc.AllocModifyIndex;
  full.PreviousAllocation = alloc.PreviousAllocation;
  full.Job = withJob ? structuredClone(alloc.jobJson) : null;
  full.Metrics = structuredClone(alloc.metric) as unknown as JsonObject;
  full.DeploymentID = alloc.DeploymentID;
  full.AllocStates = null;
  return full;
}

export function evalJson(evaluation: EvalRecord): JsonObject {
  return structuredClone(evaluation) as unknown as JsonObject;
}

export function nodeStub(node: NodeRecord, hostIP: string): JsonObject {
  return {
    Address: hostIP,
    ID: node.id,
    Attributes: { 'os.name': process.platform, 'kernel.name': process.platform, 'nomad.version': NOMAD_VERSION },
    Datacenter: node.spec.datacenter,
    Name: node.spec.name,
    NodeClass: node.spec.nodeClass,
    NodePool: node.spec.nodePool,
    Version: NOMAD_VERSION,
    Drain: false,
    SchedulingEligibility: 'eligible',
    Status: node.status,
    StatusDescription: '',
    Drivers: drivers(),
    HostVolumes: null,
    NodeResources: null,
    ReservedResources: null,
    LastDrain: null,
    CreateIndex: node.createIndex,
    ModifyIndex: node.modifyIndex,
  };
}

function drivers(): JsonObject {
  const info = (): JsonObject => ({ Attributes: null, Detected: true, Healthy: true, HealthDescription: 'Healthy', UpdateTime: new Date().toISOString() });
  return { raw_exec: info(), docker: info() };
}

export function nodeFull(node: NodeRecord, hostIP: string): JsonObject {
  return {
    ...nodeStub(node, hostIP),
    SecretID: '',
    HTTPAddr: `${hostIP}:4646`,
    TLSEnabled: false,
    Attributes: nodeAttributes(node, hostIP),
    Meta: { ...node.spec.meta },
    NodeResources: {
      Cpu: { CpuShares: node.spec.cpu, TotalCpuCores: 1, ReservableCpuCores: null },
      Memory: { MemoryMB: node.spec.memoryMB },
      Disk: { DiskMB: node.spec.diskMB },
      Networks: [{ Mode: 'host', Device: 'lo', CIDR: `${hostIP}/32`, IP: hostIP, MBits: 1000 }],
      MinDynamicPort: 20000,
      MaxDynamicPort: 32000,
    },
    ReservedResources: {
      Cpu: { CpuShares: 0 },
      Memory: { MemoryMB: 0 },
      Disk: { DiskMB: 0 },
      Networks: { ReservedHostPorts: '' },
    },
    StatusUpdatedAt: Math.floor(Date.now() / 1000),
    Events: structuredClone(node.events) as unknown as Json,
  };
}

/**
 * The events of one write, as Nomad's eventsFromChanges makes them: the full objects (a deleted one as it
 * was), allocations without their job (Nomad drops it to keep the events small), keyed by ID and filtered
 * by job and deployment (an evaluation's: none in the double).
 */
export function streamEvents(state: NomadState, type: EventType, changes: WriteChanges, hostIP: string): StreamEvent[] {
  const events: StreamEvent[] = [];
  for (const job of changes.jobs) {
    events.push({ Topic: 'Job', Type: type, Key: job.spec.id, Namespace: job.spec.namespace, FilterKeys: null, Payload: { Job: jobFull(state, job) } });
  }
  for (const evaluation of changes.evals) {
    events.push({ Topic: 'Evaluation', Type: type, Key: evaluation.ID, Namespace: evaluation.Namespace, FilterKeys: [evaluation.JobID, ''], Payload: { Evaluation: evalJson(evaluation) } });
  }
  for (const alloc of changes.allocs) {
    events.push({ Topic: 'Allocation', Type: type, Key: alloc.ID, Namespace: alloc.Namespace, FilterKeys: [alloc.JobID, alloc.DeploymentID], Payload: { Allocation: allocFull(alloc, false) } });
  }
  for (const node of changes.nodes) {
    events.push({ Topic: 'Node', Type: type, Key: node.id, Namespace: '', FilterKeys: null, Payload: { Node: nodeFull(node, hostIP) } });
  }
  return events;
}
