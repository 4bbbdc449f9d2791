import type { Logger } from '../../../controller/util/log.js';
import { EventBroker, type EventType } from './events.js';
import { assignPorts, placeGroup, type NodeUsage } from './placement.js';
import { streamEvents } from './render.js';
import {
  HttpError,
  newId,
  nowNs,
  type AllocMetric,
  type AllocRecord,
  type EvalRecord,
  type GroupSpec,
  type JobRecord,
  type NodeRecord,
  type NodeSpec,
  isObject,
} from './types.js';
import { destructiveChange } from './inplace.js';
import { canonicalJson, parseJob } from './validate.js';

/**
 * The double's server state: one raft-like index counter, the index of each table's last change, the
 * event broker every write publishes its changes to, and the scheduler (evaluations → allocations).
 * Clients (the task runners) report back through `clientUpdate`, as Nomad clients do with Node.UpdateAlloc.
 */

export type Table = 'jobs' | 'allocs' | 'evals' | 'nodes';

/** The client side: runs and stops the tasks of allocations placed on the double's nodes. */
export interface AllocClient {
  run(alloc: AllocRecord): void;
  /** Kills the allocation's tasks (DesiredStatus became stop). */
  stop(alloc: AllocRecord): void;
  /** The servers updated the allocation in place to a new version of its job; its tasks keep running. */
  update(alloc: AllocRecord): void;
}

export interface RegisterResult {
  EvalID: string;
  EvalCreateIndex: number;
  JobModifyIndex: number;
  Warnings: string;
  Index: number;
  LastContact: number;
  KnownLeader: boolean;
}

/** Nomad's JobDeregisterResponse with its QueryMeta, which a write leaves unset but for Index. */
export interface DeregisterResult {
  EvalID: string;
  EvalCreateIndex: number;
  JobModifyIndex: number;
  VolumeEvalID: string;
  VolumeEvalIndex: number;
  Index: number;
  LastContact: number;
  KnownLeader: boolean;
}

/** The objects one write changed (deleted ones as they were): its tables and its events. */
export interface WriteChanges {
  readonly jobs: Set<JobRecord>;
  readonly evals: Set<EvalRecord>;
  readonly allocs: Set<AllocRecord>;
  readonly nodes: Set<NodeRecord>;
}

interface Waiter {
  table: Table;
  min: number;
  done: () => void;
}

/** The fields of Nomad's JobEvaluateRequest (with its WriteRequest) a body may carry. */
const EVALUATE_FIELDS = ['JobID', 'EvalOptions', 'Namespace', 'Region', 'SecretID', 'AuthToken', 'IdempotencyToken'];

/** Nomad keeps a node's latest 10 events (structs.MaxRetainedNodeEvents). */
const MAX_NODE_EVENTS = 10;

const TERMINAL_CLIENT = new Set(['complete', 'failed', 'lost']);
export const isTerminal = (alloc: AllocRecord): boolean => alloc.DesiredStatus !== 'run' || TERMINAL_CLIENT.has(alloc.ClientStatus);
const evalTerminal = (evaluation: EvalRecord): boolean => ['complete', 'failed', 'canceled'].includes(evaluation.Status);

/** Like the double's job decoding, stricter than Nomad: an unknown field name in a request body is refused. */
function checkFields(request: Record<string, unknown>, allowed: readonly string[]): void {
  for (const key of Object.keys(request)) if (!allowed.includes(key)) throw new HttpError(400, `json: unknown field "${key}"`);
}

export class NomadState {
  private index = 0;
  private readonly tableIndex: Record<Table, number> = { jobs: 0, allocs: 0, evals: 0, nodes: 0 };
  private readonly waiters = new Set<Waiter>();
  readonly nodes = new Map<string, NodeRecord>();
  readonly jobs = new Map<string, JobRecord>();
  readonly evals = new Map<string, EvalRecord>();
  readonly allocs = new Map<string, AllocRecord>();
  /**
   * Indexes kept beside the tables, so that the scheduler's work per evaluation does not grow with every
   * allocation and evaluation the double has ever held (it keeps them all, as it never garbage-collects).
   */
  private readonly allocsByJob = new Map<string, AllocRecord[]>();
  private readonly evalsByJob = new Map<string, EvalRecord[]>();
  private readonly blockedEvals = new Set<EvalRecord>();
  /** What the allocations on each node hold now, kept up to date as allocations change (`recount`). */
  private readonly usageByNode = new Map<string, NodeUsage>();
  /** What each allocation counts in its node's usage. */
  private readonly holding = new Map<string, { ports: boolean; resources: boolean }>();
  /** Evaluations are processed one at a time, in order, like one scheduler worker. */
  private queue: Promise<void> = Promise.resolve();
  private readonly queued = new Set<string>();
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Failed allocations with a follow-up evaluation scheduled. */
  private readonly rescheduling = new Set<string>();
  private closed = false;
  /** What the write being applied has changed so far. */
  private changes: WriteChanges | undefined;
  readonly events: EventBroker;

  constructor(
    private readonly client: AllocClient,
    private readonly hostIP: string,
    private readonly log: Logger,
    eventBufferSize?: number,
  ) {
    this.events = new EventBroker(eventBufferSize);
  }

  // ---- indexes and blocking ---------------------------------------------------------------------------

  /** The index a read of `table` answers with (Nomad never answers 0). */
  indexOf(table: Table): number {
    return Math.max(1, this.tableIndex[table]);
  }

  /**
   * One raft apply: a new index, given to every table whose objects it changed, and their events
   * (all of Nomad's `type`, as one raft message gives all its events one type) published at that index.
   */
  private write(type: EventType, apply: (index: number) => void): number {
    const index = ++this.index;
    const changes: WriteChanges = (this.changes = { jobs: new Set(), evals: new Set(), allocs: new Set(), nodes: new Set() });
    try {
      apply(index);
    } finally {
      this.changes = undefined;
    }
    if (changes.jobs.size > 0) this.tableIndex.jobs = index;
    if (changes.evals.size > 0) this.tableIndex.evals = index;
    if (changes.allocs.size > 0) this.tableIndex.allocs = index;
    if (changes.nodes.size > 0) this.tableIndex.nodes = index;
    this.events.publish(index, streamEvents(this, type, changes, this.hostIP));
    this.notify();
    return index;
  }

  /** The changes of the write being applied (every change to the state happens within one). */
  private get changed(): WriteChanges {
    if (!this.changes) throw new Error('Nomad double: the state changed outside a write');
    return this.changes;
  }

  private notify(): void {
    for (const waiter of this.waiters) if (this.tableIndex[waiter.table] > waiter.min) waiter.done();
  }

  /** Resolves once `table`'s index exceeds `min`, after `ms`, or when `signal` aborts. */
  waitForIndex(table: Table, min: number, ms: number, signal: AbortSignal): Promise<void> {
    if (this.tableIndex[table] > min || signal.aborted) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const waiter: Waiter = {
        table,
        min,
        done: () => {
          clearTimeout(timer);
          signal.removeEventListener('abort', waiter.done);
          this.waiters.delete(waiter);
          resolve();
        },
      };
      const timer = setTimeout(waiter.done, ms);
      signal.addEventListener('abort', waiter.done);
      this.waiters.add(waiter);
    });
  }

  /** Releases every blocked query, event stream and pending timer: the state is being dropped. */
  close(): void {
    this.closed = true;
    this.events.close();
    for (const waiter of [...this.waiters]) waiter.done();
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  // ---- nodes ------------------------------------------------------------------------------------------

  addNode(spec: NodeSpec): string {
    const id = newId();
    const full: NodeRecord['spec'] = {
      name: spec.name,
      cpu: spec.cpu,
      memoryMB: spec.memoryMB,
      diskMB: spec.diskMB ?? 100_000,
      datacenter: spec.datacenter ?? 'dc1',
      nodePool: spec.nodePool ?? 'default',
      nodeClass: spec.nodeClass ?? '',
      meta: { ...(spec.meta ?? {}) },
      attributes: { ...(spec.attributes ?? {}) },
    };
    if (!(full.cpu > 0) || !(full.memoryMB > 0)) throw new Error(`node ${spec.name}: cpu and memoryMB must be positive`);
    this.write('NodeRegistration', (index) => {
      const registered = { Message: 'Node registered', Subsystem: 'Cluster', Details: null, Timestamp: new Date().toISOString(), CreateIndex: index };
      const node: NodeRecord = { id, spec: full, status: 'ready', events: [registered], createIndex: index, modifyIndex: index };
      this.nodes.set(id, node);
      this.changed.nodes.add(node);
    });
    this.log.debug({ nodeId: id, name: spec.name }, 'node registered');
    this.unblock();
    return id;
  }

  /**
   * A client reports an event of its node (Node.EmitEvents: a driver's health changed, …). Nomad appends
   * it to the node, keeping the latest 10, and publishes the node on the Node topic, but leaves its
   * ModifyIndex as it was.
   */
  emitNodeEvent(id: string, subsystem: string, message: string): void {
    const node = this.nodes.get(id);
    if (!node) throw new Error(`emitNodeEvent: no node ${id}`);
    this.write('NodeEvent', (index) => {
      node.events = [...node.events, { Message: message, Subsystem: subsystem, Details: null, Timestamp: new Date().toISOString(), CreateIndex: index }].slice(-MAX_NODE_EVENTS);
      this.changed.nodes.add(node);
    });
  }

  /** The node leaves: its allocations are lost (their tasks killed) and replaced elsewhere. */
  removeNode(id: string): void {
    const node = this.nodes.get(id);
    if (!node) throw new Error(`removeNode: no node ${id}`);
    const lost = [...this.allocs.values()].filter((alloc) => alloc.NodeID === id && !isTerminal(alloc));
    this.write('NodeDeregistration', (index) => {
      this.nodes.delete(id);
      this.changed.nodes.add(node);
      for (const alloc of lost) {
        alloc.DesiredStatus = 'stop';
        alloc.DesiredDescription = 'alloc is lost since its node is down';
        alloc.ClientStatus = 'lost';
        alloc.ClientDescription = 'node is down';
        this.touchAlloc(alloc, index);
      }
    });
    for (const alloc of lost) this.client.stop(alloc);
    for (const jobId of new Set(lost.map((alloc) => alloc.JobID))) this.createEval(jobId, 'node-update');
  }

  // ---- jobs -------------------------------------------------------------------------------------------

  register(body: unknown, namespace: string, pathJobId?: string): RegisterResult {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new HttpError(400, 'Request decode failed: the body is not a JSON object');
    const request = body as Record<string, unknown>;
    checkFields(request, ['Job', 'EnforceIndex', 'JobModifyIndex', 'PolicyOverride', 'PreserveCounts', 'EvalPriority', 'Submission', 'Namespace', 'Region', 'SecretID']);
    const parsed = parseJob(request.Job, namespace);
    const spec = parsed.spec;
    if (pathJobId !== undefined && pathJobId !== spec.id) throw new HttpError(400, 'Job ID does not match name');
    if (spec.namespace !== 'default') throw new HttpError(400, `job "${spec.id}" is in nonexistent namespace "${spec.namespace}"`);
    if (spec.region !== 'global') throw new HttpError(500, `No path to region`);
    const existing = this.jobs.get(spec.id);
    if (request.EnforceIndex === true) {
      const jmi = typeof request.JobModifyIndex === 'number' ? request.JobModifyIndex : 0;
      // Plain errors of Job.Register, not RPC-coded ones: the agent answers 500.
      const prefix = 'Enforcing job modify index';
      if (existing && jmi === 0) throw new HttpError(500, `${prefix} 0: job already exists`);
      if (existing && jmi !== existing.jobModifyIndex) throw new HttpError(500, `${prefix} ${jmi}: job exists with conflicting job modify index: ${existing.jobModifyIndex}`);
      if (!existing && jmi !== 0) throw new HttpError(500, `${prefix} ${jmi}: job does not exist`);
    }
    const key = canonicalJson(parsed.submitted);
    if (existing && existing.key === key && !existing.stop) {
      // Nomad's SpecChanged is false: no new version, only a new evaluation.
      const evaluation = this.createEval(spec.id, 'job-register');
      return { EvalID: evaluation.ID, EvalCreateIndex: evaluation.CreateIndex, JobModifyIndex: existing.jobModifyIndex, Warnings: '', Index: evaluation.CreateIndex, LastContact: 0, KnownLeader: true };
    }
    let evaluation!: EvalRecord;
    const index = this.write('JobRegistered', (at) => {
      const job: JobRecord = {
        submitted: parsed.submitted,
        key,
        spec,
        stop: false,
        status: 'pending',
        version: existing ? existing.version + 1 : 0,
        createIndex: existing?.createIndex ?? at,
        modifyIndex: at,
        jobModifyIndex: at,
        submitTime: nowNs(),
        deployment: undefined,
      };
      this.jobs.set(spec.id, job);
      this.changed.jobs.add(job);
      evaluation = this.newEval(job, 'job-register', at);
    });
    this.log.debug({ jobId: spec.id, version: this.jobs.get(spec.id)?.version, index }, existing ? 'job updated' : 'job registered');
    this.enqueue(evaluation);
    return { EvalID: evaluation.ID, EvalCreateIndex: index, JobModifyIndex: index, Warnings: '', Index: index, LastContact: 0, KnownLeader: true };
  }

  /**
   * Nomad's Job.Evaluate: a new evaluation of the job. With EvalOptions.ForceReschedule, the failed
   * allocations not yet replaced are marked to be replaced now, whatever their reschedule attempts and
   * delay, but only in groups whose ReschedulePolicy reschedules at all (Attempts > 0 or Unlimited).
   */
  evaluate(jobId: string, body: unknown, namespace: string): RegisterResult {
    // Without a body (older clients) the path names the job.
    const request = body === undefined ? { JobID: jobId } : body;
    if (!isObject(request)) throw new HttpError(400, 'Request decode failed: the body is not a JSON object');
    checkFields(request, EVALUATE_FIELDS);
    const options = request.EvalOptions;
    if (options !== undefined && options !== null) {
      if (!isObject(options)) throw new HttpError(400, 'json: cannot unmarshal into Go struct field JobEvaluateRequest.EvalOptions of type api.EvalOptions');
      checkFields(options, ['ForceReschedule']);
      if (options.ForceReschedule !== undefined && typeof options.ForceReschedule !== 'boolean') {
        throw new HttpError(400, 'json: cannot unmarshal into Go struct field JobEvaluateRequest.EvalOptions.ForceReschedule of type bool');
      }
    }
    if (typeof request.JobID !== 'string' || request.JobID === '') throw new HttpError(400, 'Job ID must be specified');
    if (request.JobID !== jobId) throw new HttpError(400, 'JobID not same as job name');
    const job = this.jobs.get(jobId);
    // An uncoded RPC error: Nomad answers 500 here, unlike the 404 of a job read.
    if (!job || job.spec.namespace !== namespace) throw new HttpError(500, 'job not found');
    const force = isObject(options) && options.ForceReschedule === true;
    const forced = force
      ? this.allocsOf(jobId).filter((alloc) => {
          const policy = job.spec.groups.find((group) => group.name === alloc.TaskGroup)?.reschedule;
          const enabled = policy !== undefined && (policy.unlimited || policy.attempts > 0);
          return enabled && alloc.job.createIndex === job.createIndex && alloc.ClientStatus === 'failed' &&
            alloc.NextAllocation === '' && alloc.DesiredTransition.ForceReschedule !== true;
        })
      : [];
    let evaluation!: EvalRecord;
    const index = this.write(forced.length > 0 ? 'AllocationUpdateDesiredStatus' : 'EvaluationUpdated', (at) => {
      for (const alloc of forced) {
        alloc.DesiredTransition.ForceReschedule = true;
        this.touchAlloc(alloc, at);
      }
      evaluation = this.newEval(job, 'job-register', at);
      evaluation.JobModifyIndex = job.modifyIndex;
    });
    this.enqueue(evaluation);
    this.log.debug({ jobId, force, forced: forced.map((alloc) => alloc.ID), index }, 'job evaluation created');
    return { EvalID: evaluation.ID, EvalCreateIndex: index, JobModifyIndex: job.modifyIndex, Warnings: '', Index: index, LastContact: 0, KnownLeader: true };
  }

  /**
   * Nomad's Job.Deregister. A purge deletes the job with its allocations in the same write, as Nomad's state
   * store does since hashicorp/nomad#19609: no allocation event, and an allocation's tasks are killed once
   * its client sees it gone (their report of it then reaches no allocation).
   */
  deregister(jobId: string, purge: boolean): DeregisterResult {
    const job = this.jobs.get(jobId);
    // Nomad's Job.Deregister returns before any write for a job it does not have: an empty, successful reply.
    if (!job) return { EvalID: '', EvalCreateIndex: 0, JobModifyIndex: 0, VolumeEvalID: '', VolumeEvalIndex: 0, Index: 0, LastContact: 0, KnownLeader: false };
    const deleted = purge ? [...this.allocsOf(jobId)] : [];
    let evaluation!: EvalRecord;
    const index = this.write('JobDeregistered', (at) => {
      if (purge) {
        this.jobs.delete(jobId);
        for (const alloc of deleted) {
          this.allocs.delete(alloc.ID);
          this.recount(alloc, true);
        }
        this.allocsByJob.delete(jobId);
      } else {
        job.stop = true;
        job.version++;
        job.jobModifyIndex = at;
        job.modifyIndex = at;
      }
      this.changed.jobs.add(job);
      evaluation = this.newEval(job, 'job-deregister', at);
    });
    for (const alloc of deleted) this.client.stop(alloc);
    this.enqueue(evaluation);
    this.log.debug({ jobId, purge, index }, 'job deregistered');
    return { EvalID: evaluation.ID, EvalCreateIndex: index, JobModifyIndex: index, VolumeEvalID: '', VolumeEvalIndex: 0, Index: index, LastContact: 0, KnownLeader: false };
  }

  // ---- evaluations ------------------------------------------------------------------------------------

  private newEval(job: JobRecord, triggeredBy: string, index: number, status: EvalRecord['Status'] = 'pending'): EvalRecord {
    const now = nowNs();
    const evaluation: EvalRecord = {
      ID: newId(),
      Namespace: job.spec.namespace,
      Priority: job.spec.priority,
      Type: job.spec.type,
      TriggeredBy: triggeredBy,
      JobID: job.spec.id,
      JobModifyIndex: job.jobModifyIndex,
      NodeID: '',
      Status: status,
      StatusDescription: '',
      Wait: 0,
      WaitUntil: null,
      NextEval: '',
      PreviousEval: '',
      BlockedEval: '',
      FailedTGAllocs: null,
      ClassEligibility: null,
      EscapedComputedClass: false,
      QueuedAllocations: null,
      CreateIndex: index,
      ModifyIndex: index,
      CreateTime: now,
      ModifyTime: now,
    };
    this.evals.set(evaluation.ID, evaluation);
    pushTo(this.evalsByJob, evaluation.JobID, evaluation);
    this.touchEval(evaluation, index);
    return evaluation;
  }

  /** A new pending evaluation of a job that still exists (or was just purged), queued for processing. */
  private createEval(jobId: string, triggeredBy: string): EvalRecord {
    const job = this.jobs.get(jobId);
    let evaluation!: EvalRecord;
    this.write('EvaluationUpdated', (index) => {
      const base: JobRecord = job ?? this.ghostJob(jobId);
      evaluation = this.newEval(base, triggeredBy, index);
    });
    this.enqueue(evaluation);
    return evaluation;
  }

  /** What an evaluation needs of a purged job: its id and namespace (its allocations are only stopped). */
  private ghostJob(jobId: string): JobRecord {
    const alloc = this.allocsOf(jobId)[0];
    if (alloc) return alloc.job;
    throw new Error(`no job ${jobId} to evaluate`);
  }

  private enqueue(evaluation: EvalRecord): void {
    // A blocked evaluation already waiting in the queue will see the latest capacity anyway.
    if (this.queued.has(evaluation.ID)) return;
    this.queued.add(evaluation.ID);
    this.queue = this.queue
      .then(() => {
        this.queued.delete(evaluation.ID);
        return this.closed ? undefined : this.process(evaluation);
      })
      .catch((error: unknown) => this.failEval(evaluation, error));
  }

  private failEval(evaluation: EvalRecord, error: unknown): void {
    if (this.closed) return;
    this.log.error({ err: error, evalId: evaluation.ID, jobId: evaluation.JobID }, 'evaluation failed');
    this.write('EvaluationUpdated', (index) => {
      evaluation.Status = 'failed';
      evaluation.StatusDescription = `evaluation failed: ${(error as Error).message}`;
      this.touchEval(evaluation, index);
    });
  }

  /** Re-runs every blocked evaluation: capacity changed (a node joined, an allocation stopped). */
  private unblock(): void {
    for (const evaluation of this.blockedEvals) this.enqueue(evaluation);
  }

  /** The generic scheduler's reconcile for one evaluation. */
  private async process(evaluation: EvalRecord): Promise<void> {
    if (evaluation.Status !== 'pending' && evaluation.Status !== 'blocked') return;
    const job = this.jobs.get(evaluation.JobID);
    const live = this.allocsOf(evaluation.JobID).filter((alloc) => alloc.DesiredStatus === 'run');
    if (!job || job.stop) {
      this.write('PlanResult', (index) => {
        for (const alloc of live) this.stopAlloc(alloc, 'alloc not needed due to job update', index);
        this.completeEval(evaluation, index, null);
        this.cancelBlocked(evaluation.JobID, evaluation.ID, index);
        if (job) this.refreshJobStatus(job, index);
      });
      for (const alloc of live) this.client.stop(alloc);
      if (live.length > 0) this.unblock();
      return;
    }
    const failed: Record<string, AllocMetric> = {};
    const stopping: AllocRecord[] = [];
    const placements: Array<{ group: GroupSpec; index: number; previous: AllocRecord | undefined }> = [];
    const inPlace: Array<{ alloc: AllocRecord; group: GroupSpec }> = [];
    for (const group of job.spec.groups) {
      const mine = live.filter((alloc) => alloc.TaskGroup === group.name);
      // An allocation of an older version is updated in place, or stopped and replaced (a destructive update).
      const current: AllocRecord[] = [];
      for (const alloc of mine) {
        if (alloc.index >= group.count || (alloc.job !== job && !this.updatesInPlace(alloc, job, group))) {
          stopping.push(alloc);
          continue;
        }
        // Nomad leaves a terminal allocation as it is (a failed one keeps its version).
        if (alloc.job !== job && !TERMINAL_CLIENT.has(alloc.ClientStatus)) inPlace.push({ alloc, group });
        current.push(alloc);
      }
      for (let slot = 0; slot < group.count; slot++) {
        const holder = current.find((alloc) => alloc.index === slot && alloc.NextAllocation === '');
        if (holder && !this.reschedulable(holder)) continue;
        placements.push({ group, index: slot, previous: holder });
      }
    }
    // The plan's view of the nodes: stopping first frees its resources for the placements of the same plan,
    // as in Nomad, and each placement takes its share before the next one is chosen. Ports are taken in the
    // nodes' own sets at once; the resources only count there once the plan is applied.
    const placed: AllocRecord[] = [];
    const planned = new Map<string, Resources>();
    const plan = (nodeId: string, sign: 1 | -1, resources: Resources): void => {
      const sum = planned.get(nodeId) ?? { cpu: 0, memoryMB: 0, diskMB: 0 };
      planned.set(nodeId, { cpu: sum.cpu + sign * resources.cpu, memoryMB: sum.memoryMB + sign * resources.memoryMB, diskMB: sum.diskMB + sign * resources.diskMB });
    };
    const usageOf = (nodeId: string): NodeUsage => {
      const used = this.usageOf(nodeId);
      const change = planned.get(nodeId);
      return change ? { cpu: used.cpu + change.cpu, memoryMB: used.memoryMB + change.memoryMB, diskMB: used.diskMB + change.diskMB, ports: used.ports } : used;
    };
    for (const alloc of stopping) if (this.holding.get(alloc.ID)?.resources) plan(alloc.NodeID, -1, resourcesOf(alloc));
    const deploymentId = this.deploymentFor(job, placements.length > 0 || inPlace.length > 0);
    for (const { group, index: slot, previous } of placements) {
      const result = placeGroup(job.spec, group, [...this.nodes.values()], usageOf, this.hostIP);
      if (!result.ok) {
        const prior = failed[group.name];
        if (prior) prior.CoalescedFailures++;
        else failed[group.name] = result.metric;
        continue;
      }
      const ports = await assignPorts(group, usageOf(result.node.id), this.hostIP);
      const alloc = this.newAlloc(job, group, slot, evaluation, result.node, ports, result.metric, previous, deploymentId);
      placed.push(alloc);
      plan(alloc.NodeID, 1, resourcesOf(alloc));
    }
    if (this.closed) return;
    const hasFailures = Object.keys(failed).length > 0;
    this.write('PlanResult', (index) => {
      for (const alloc of stopping) this.stopAlloc(alloc, 'alloc is being updated due to job update', index);
      for (const { alloc, group } of inPlace) this.updateAlloc(alloc, job, group, evaluation, deploymentId, index);
      for (const alloc of placed) {
        alloc.CreateIndex = index;
        alloc.AllocModifyIndex = index;
        this.allocs.set(alloc.ID, alloc);
        pushTo(this.allocsByJob, alloc.JobID, alloc);
        this.touchAlloc(alloc, index);
        const previous = alloc.PreviousAllocation ? this.allocs.get(alloc.PreviousAllocation) : undefined;
        if (previous) {
          previous.NextAllocation = alloc.ID;
          this.touchAlloc(previous, index);
        }
      }
      if (evaluation.Status === 'blocked') {
        // A re-run blocked evaluation completes once it placed everything; else it stays blocked.
        evaluation.FailedTGAllocs = hasFailures ? failed : null;
        if (!hasFailures) evaluation.Status = 'complete';
        this.touchEval(evaluation, index);
      } else {
        this.completeEval(evaluation, index, hasFailures ? failed : null);
        if (hasFailures) {
          this.cancelBlocked(job.spec.id, evaluation.ID, index);
          const blocked = this.newEval(job, 'queued-allocs', index, 'blocked');
          blocked.PreviousEval = evaluation.ID;
          blocked.FailedTGAllocs = failed;
          blocked.StatusDescription = 'created to place remaining allocations';
          evaluation.BlockedEval = blocked.ID;
        }
      }
      if (!hasFailures) this.cancelBlocked(job.spec.id, evaluation.ID, index);
      this.refreshJobStatus(job, index);
    });
    for (const alloc of stopping) this.client.stop(alloc);
    for (const { alloc } of inPlace) this.client.update(alloc);
    for (const alloc of placed) this.client.run(alloc);
    if (stopping.length > 0) this.unblock();
  }

  /**
   * Nomad's genericAllocUpdateFn: an allocation of an older version is updated in place when no change
   * reaching its tasks forces a replacement (tasksUpdated) and its node still takes the group as the new
   * version has it (datacenter, node pool, constraints and room, the allocation's own share discounted).
   * A terminal allocation is then left as it is.
   */
  private updatesInPlace(alloc: AllocRecord, job: JobRecord, group: GroupSpec): boolean {
    const change = destructiveChange(alloc.job.submitted, job.submitted, group.name);
    if (change !== undefined) {
      this.log.debug({ allocId: alloc.ID, change }, 'destructive update');
      return false;
    }
    if (TERMINAL_CLIENT.has(alloc.ClientStatus)) return true;
    const node = this.nodes.get(alloc.NodeID);
    if (!node) return false;
    const own = resourcesOf(alloc);
    const ports = new Set(alloc.ports.map((port) => port.Value));
    const withoutOwn = (nodeId: string): NodeUsage => {
      const used = this.usageOf(nodeId);
      return { cpu: used.cpu - own.cpu, memoryMB: used.memoryMB - own.memoryMB, diskMB: used.diskMB - own.diskMB, ports: new Set([...used.ports].filter((port) => !ports.has(port))) };
    };
    return placeGroup(job.spec, group, [node], withoutOwn, this.hostIP).ok;
  }

  /**
   * The in-place update as the plan applies it: same ID, node, ports and task states, the new job (and so
   * JobVersion), the evaluation that made it, and the version's deployment, its health to be judged anew
   * when that deployment is another (generic_sched.go clears DeploymentStatus).
   */
  private updateAlloc(alloc: AllocRecord, job: JobRecord, group: GroupSpec, evaluation: EvalRecord, deploymentId: string, index: number): void {
    alloc.job = job;
    alloc.jobJson = this.jobJson(job);
    alloc.group = group;
    alloc.JobVersion = job.version;
    alloc.EvalID = evaluation.ID;
    if (alloc.DeploymentID !== deploymentId) {
      alloc.DeploymentID = deploymentId;
      alloc.DeploymentStatus = null;
    }
    alloc.AllocModifyIndex = index;
    this.touchAlloc(alloc, index);
  }

  private completeEval(evaluation: EvalRecord, index: number, failed: Record<string, AllocMetric> | null): void {
    evaluation.Status = 'complete';
    evaluation.FailedTGAllocs = failed;
    evaluation.QueuedAllocations = failed ? Object.fromEntries(Object.keys(failed).map((group) => [group, 1])) : {};
    this.touchEval(evaluation, index);
  }

  /** Nomad keeps at most one blocked evaluation per job; a newer evaluation supersedes it. */
  private cancelBlocked(jobId: string, except: string, index: number): void {
    for (const evaluation of this.evalsByJob.get(jobId) ?? []) {
      if (evaluation.ID === except || evaluation.Status !== 'blocked') continue;
      evaluation.Status = 'canceled';
      evaluation.StatusDescription = `evaluation "${except}" successful`;
      this.touchEval(evaluation, index);
    }
  }

  /** A failed allocation whose group's ReschedulePolicy allows a replacement now, or that a forced evaluation marked. */
  private reschedulable(alloc: AllocRecord): boolean {
    if (alloc.ClientStatus !== 'failed') return false;
    if (alloc.DesiredTransition.ForceReschedule === true) return true;
    const policy = alloc.group.reschedule;
    if (!policy.unlimited) {
      let attempts = 0;
      const since = Date.now() - policy.intervalMs;
      for (let prev = this.allocs.get(alloc.PreviousAllocation); prev; prev = this.allocs.get(prev.PreviousAllocation)) {
        if (policy.intervalMs === 0 || prev.CreateTime / 1_000_000 >= since) attempts++;
      }
      if (attempts >= policy.attempts) return false;
    }
    return alloc.ModifyTime / 1_000_000 + policy.delayMs <= Date.now();
  }

  /**
   * The deployment that placements of the job join (Nomad's reconciler and computePlacements): a version
   * with an update strategy gets one when it is first placed; once that deployment succeeded or failed,
   * later placements of the version (the replacement of a lost allocation) join none, and their clients
   * judge their health by the group's Migrate strategy instead.
   */
  private deploymentFor(job: JobRecord, placing: boolean): string {
    if (placing && job.spec.update && !job.deployment && !this.allocsOf(job.spec.id).some((alloc) => alloc.job === job)) {
      job.deployment = { ID: newId(), status: 'running' };
    }
    return job.deployment?.status === 'running' ? job.deployment.ID : '';
  }

  /** Nomad's deployment watcher: an unhealthy allocation fails the deployment, all it wants healthy complete it. */
  private refreshDeployment(job: JobRecord): void {
    const deployment = job.deployment;
    if (deployment?.status !== 'running') return;
    const placed = this.allocsOf(job.spec.id).filter((alloc) => alloc.DeploymentID === deployment.ID);
    const wanted = job.spec.groups.reduce((sum, group) => sum + group.count, 0);
    if (placed.some((alloc) => alloc.DeploymentStatus?.Healthy === false)) deployment.status = 'failed';
    else if (placed.filter((alloc) => alloc.DeploymentStatus?.Healthy === true).length >= wanted) deployment.status = 'successful';
  }

  private newAlloc(job: JobRecord, group: GroupSpec, slot: number, evaluation: EvalRecord, node: NodeRecord, ports: AllocRecord['ports'], metric: AllocMetric, previous: AllocRecord | undefined, deploymentId: string): AllocRecord {
    const now = nowNs();
    return {
      ID: newId(),
      Namespace: job.spec.namespace,
      EvalID: evaluation.ID,
      Name: `${job.spec.id}.${group.name}[${slot}]`,
      NodeID: node.id,
      NodeName: node.spec.name,
      JobID: job.spec.id,
      JobVersion: job.version,
      TaskGroup: group.name,
      DesiredStatus: 'run',
      DesiredDescription: '',
      DesiredTransition: { Migrate: null, Reschedule: null, ForceReschedule: null, NoShutdownDelay: null },
      ClientStatus: 'pending',
      ClientDescription: '',
      TaskStates: {},
      DeploymentID: deploymentId,
      DeploymentStatus: null,
      PreviousAllocation: previous?.ID ?? '',
      NextAllocation: '',
      FollowupEvalID: '',
      CreateIndex: 0,
      ModifyIndex: 0,
      AllocModifyIndex: 0,
      CreateTime: now,
      ModifyTime: now,
      job,
      jobJson: this.jobJson(job),
      group,
      ports,
      metric,
      index: slot,
    };
  }

  private stopAlloc(alloc: AllocRecord, description: string, index: number): void {
    alloc.DesiredStatus = 'stop';
    alloc.DesiredDescription = description;
    alloc.AllocModifyIndex = index;
    this.touchAlloc(alloc, index);
  }

  /** Every change to an allocation ends here: it is published, and its node's usage follows it. */
  private touchAlloc(alloc: AllocRecord, index: number): void {
    alloc.ModifyIndex = index;
    alloc.ModifyTime = nowNs();
    this.changed.allocs.add(alloc);
    this.recount(alloc);
  }

  /** Every change to an evaluation ends here (its status may have changed). */
  private touchEval(evaluation: EvalRecord, index: number): void {
    evaluation.ModifyIndex = index;
    evaluation.ModifyTime = nowNs();
    this.changed.evals.add(evaluation);
    if (evaluation.Status === 'blocked') this.blockedEvals.add(evaluation);
    else this.blockedEvals.delete(evaluation);
  }

  private allocsOf(jobId: string): readonly AllocRecord[] {
    return this.allocsByJob.get(jobId) ?? [];
  }

  private usageOf(nodeId: string): NodeUsage {
    let used = this.usageByNode.get(nodeId);
    if (!used) this.usageByNode.set(nodeId, (used = { cpu: 0, memoryMB: 0, diskMB: 0, ports: new Set() }));
    return used;
  }

  /**
   * Brings the allocation's share of its node's usage in line with its state: ports are held until the
   * client lets go of them (a terminal client status), resources while the allocation is meant to run;
   * nothing once it is deleted (`gone`).
   */
  private recount(alloc: AllocRecord, gone = false): void {
    const was = this.holding.get(alloc.ID) ?? { ports: false, resources: false };
    const now = gone ? { ports: false, resources: false } : { ports: !TERMINAL_CLIENT.has(alloc.ClientStatus), resources: !isTerminal(alloc) };
    if (was.ports === now.ports && was.resources === now.resources) return;
    const used = this.usageOf(alloc.NodeID);
    if (now.ports !== was.ports) for (const port of alloc.ports) now.ports ? used.ports.add(port.Value) : used.ports.delete(port.Value);
    if (now.resources !== was.resources) {
      const sign = now.resources ? 1 : -1;
      const resources = resourcesOf(alloc);
      used.cpu += sign * resources.cpu;
      used.memoryMB += sign * resources.memoryMB;
      used.diskMB += sign * resources.diskMB;
    }
    if (now.ports || now.resources) this.holding.set(alloc.ID, now);
    else this.holding.delete(alloc.ID);
  }

  /** Nomad's getJobStatus: running with a non-terminal alloc, pending with an open evaluation, else dead. */
  private refreshJobStatus(job: JobRecord, index: number): void {
    if (this.jobs.get(job.spec.id) !== job) return;
    let status: JobRecord['status'] = 'pending';
    const allocs = this.allocsOf(job.spec.id);
    const evals = this.evalsByJob.get(job.spec.id) ?? [];
    if (allocs.some((alloc) => !isTerminal(alloc))) status = 'running';
    else if (evals.some((evaluation) => !evalTerminal(evaluation))) status = 'pending';
    else if (job.stop || allocs.length > 0 || evals.length > 0) status = 'dead';
    if (status === job.status) return;
    job.status = status;
    job.modifyIndex = index;
    this.changed.jobs.add(job);
  }

  // ---- client updates ---------------------------------------------------------------------------------

  /** A client reports an allocation's new task states, client status or deployment health. */
  clientUpdate(alloc: AllocRecord): void {
    if (this.closed) return;
    if (this.allocs.get(alloc.ID) !== alloc) {
      // A deleted (purged) allocation updates nothing, but its end still wakes the blocked evaluations, as
      // Nomad's FSM unblocks by the reporting node whether or not it still has the allocation.
      if (TERMINAL_CLIENT.has(alloc.ClientStatus)) this.unblock();
      return;
    }
    this.write('AllocationUpdated', (index) => {
      this.touchAlloc(alloc, index);
      const job = this.jobs.get(alloc.JobID);
      if (!job) return;
      this.refreshJobStatus(job, index);
      this.refreshDeployment(job);
    });
    if (TERMINAL_CLIENT.has(alloc.ClientStatus)) {
      this.unblock();
      if (alloc.ClientStatus === 'failed' && alloc.DesiredStatus === 'run') this.scheduleReschedule(alloc);
    }
  }

  /** Nomad's follow-up evaluation for a failed allocation its ReschedulePolicy replaces (after Delay). */
  private scheduleReschedule(alloc: AllocRecord): void {
    const policy = alloc.group.reschedule;
    if ((!policy.unlimited && policy.attempts === 0) || this.rescheduling.has(alloc.ID)) return;
    this.rescheduling.add(alloc.ID);
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (this.closed || !this.jobs.has(alloc.JobID)) return;
      const evaluation = this.createEval(alloc.JobID, 'alloc-failure');
      alloc.FollowupEvalID = evaluation.ID;
    }, policy.delayMs + 10);
    this.timers.add(timer);
  }

  // ---- reads ------------------------------------------------------------------------------------------

  /**
   * The full job as `GET /v1/job/:id` shows it. It shares the submitted job's parts: a registration never
   * changes them (a new version is a new record), and every answer and event only serializes them.
   */
  jobJson(job: JobRecord): AllocRecord['jobJson'] {
    return {
      ...job.submitted,
      Stop: job.stop,
      Status: job.status,
      StatusDescription: '',
      Stable: false,
      Version: job.version,
      SubmitTime: job.submitTime,
      CreateIndex: job.createIndex,
      ModifyIndex: job.modifyIndex,
      JobModifyIndex: job.jobModifyIndex,
    };
  }
}

type Resources = Omit<NodeUsage, 'ports'>;

/** The resources an allocation takes on its node while it is meant to run. */
function resourcesOf(alloc: AllocRecord): Resources {
  let cpu = 0;
  let memoryMB = 0;
  for (const task of alloc.group.tasks) {
    cpu += task.cpu;
    memoryMB += task.memoryMB;
  }
  return { cpu, memoryMB, diskMB: alloc.group.diskMB };
}

function pushTo<T>(index: Map<string, T[]>, key: string, item: T): void {
  const items = index.get(key);
  if (items) items.push(item);
  else index.set(key, [item]);
}
