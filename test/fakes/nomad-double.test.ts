import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import sinon from 'sinon';
import { loadTemplates } from '../../controller/api/templates.js';
import type { SessionTemplate } from '../../controller/api/types.js';
import { renderNomadJob, type NomadJobOptions } from '../../controller/scheduler/nomad-job.js';
import { silentLogger } from '../../controller/util/log.js';
import { contractRequest } from '../contract/scheduler-contract.js';
import { httpRequest, type HttpAnswer } from '../support/http.js';
import { alive } from '../support/processes.js';
import { turnsUntil, waitFor } from '../support/wait.js';
import { NomadDouble, type NomadDoubleOptions } from './nomad.js';
import { blockingWaitMs } from './nomad/http.js';

/**
 * Conformance of the Nomad double, through its HTTP API only (as the scheduler and real clients see it),
 * plus the test hooks (addNode, killTask, faults, outage, restart, reset, stop).
 */

// Compiled to dist/test/fakes/: three levels up is the repository root.
const repoRoot = path.resolve(__dirname, '../../..');
const templates = loadTemplates(path.join(repoRoot, 'manifests/templates'));
const jobOptions: NomadJobOptions = {
  datacenters: ['dc1'],
  restart: { attempts: 2, intervalMs: 60_000, delayMs: 50 },
  healthyDeadlineMs: 20_000,
  checkIntervalMs: 50,
  checkTimeoutMs: 1_000,
};

interface Answer extends HttpAnswer {
  json: unknown;
}
type Obj = Record<string, unknown>;

const doubles: NomadDouble[] = [];

async function start(options: Partial<NomadDoubleOptions> = {}): Promise<NomadDouble> {
  const double = await NomadDouble.start({ port: 0, workDir: repoRoot, log: silentLogger(), dockerStartMs: 20, ...options });
  doubles.push(double);
  return double;
}

async function call(double: NomadDouble, method: string, pathAndQuery: string, body?: unknown, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Answer> {
  const answer = await httpRequest(`${double.address}${pathAndQuery}`, {
    method,
    headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  let json: unknown;
  try {
    json = JSON.parse(answer.body);
  } catch {
    json = undefined;
  }
  return { ...answer, json };
}

async function get<T = Obj>(double: NomadDouble, pathAndQuery: string): Promise<T> {
  const answer = await call(double, 'GET', pathAndQuery);
  assert.equal(answer.status, 200, `GET ${pathAndQuery}: ${answer.body}`);
  return answer.json as T;
}

async function register(double: NomadDouble, job: Obj, options: Obj = {}): Promise<Obj> {
  const answer = await call(double, 'PUT', '/v1/jobs', { Job: job, ...options });
  assert.equal(answer.status, 200, `register ${String(job.ID)}: ${answer.body}`);
  return answer.json as Obj;
}

/** A raw_exec job (sleep, unless another command is given) with one group "g" and one task "t". */
function sleepJob(id: string, extra: { memoryMB?: number; command?: string; args?: string[]; group?: Obj; task?: Obj; job?: Obj } = {}): Obj {
  return {
    ID: id,
    Name: id,
    Type: 'service',
    Datacenters: ['dc1'],
    ...extra.job,
    TaskGroups: [{
      Name: 'g',
      Count: 1,
      RestartPolicy: { Attempts: 1, Interval: 60e9, Delay: 50e6, Mode: 'fail' },
      ReschedulePolicy: { Attempts: 0, Unlimited: false },
      ...extra.group,
      Tasks: [{
        Name: 't',
        Driver: 'raw_exec',
        Config: { command: extra.command ?? 'sleep', args: extra.args ?? ['600'] },
        Resources: { CPU: 100, MemoryMB: extra.memoryMB ?? 64 },
        KillTimeout: 2e9,
        ...extra.task,
      }],
    }],
  };
}

async function allocsOf(double: NomadDouble, jobId: string): Promise<Obj[]> {
  return get<Obj[]>(double, `/v1/job/${jobId}/allocations?resources=true`);
}

function untilAlloc(double: NomadDouble, jobId: string, what: string, predicate: (alloc: Obj) => boolean, timeoutMs = 10_000): Promise<Obj> {
  return waitFor(`${jobId}: ${what}`, async () => (await allocsOf(double, jobId)).find(predicate), timeoutMs);
}

const running = (alloc: Obj): boolean => alloc.ClientStatus === 'running' && alloc.DesiredStatus === 'run';
const healthy = (alloc: Obj): boolean => running(alloc) && (alloc.DeploymentStatus as Obj | null)?.Healthy === true;
const taskState = (alloc: Obj, task: string): Obj => (alloc.TaskStates as Record<string, Obj>)[task] ?? {};
const eventTypes = (alloc: Obj, task: string): string[] => ((taskState(alloc, task).Events as Obj[] | undefined) ?? []).map((event) => String(event.Type));
const ports = (alloc: Obj): Obj[] => (((alloc.AllocatedResources as Obj).Shared as Obj).Ports as Obj[]) ?? [];

/** One `GET /v1/event/stream`, read line by line as it arrives. */
class EventStream {
  /** Every line, heartbeats (`{}`) included, parsed. */
  readonly lines: Obj[] = [];
  ended = false;

  private constructor(private readonly request: http.ClientRequest, readonly status: number, readonly body: () => string) {}

  /** Opens the stream; resolves once the answer's headers are in (an error status: with its whole body). */
  static open(double: NomadDouble, query: string, headers: Record<string, string> = {}): Promise<EventStream> {
    return new Promise((resolve, reject) => {
      const request = http.get(`${double.address}/v1/event/stream${query}`, { headers }, (response) => {
        let text = '';
        let pending = '';
        const stream = new EventStream(request, response.statusCode ?? 0, () => text);
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => {
          text += chunk;
          const lines = (pending + chunk).split('\n');
          pending = lines.pop() ?? '';
          for (const line of lines) stream.lines.push(JSON.parse(line) as Obj);
        });
        response.on('error', () => (stream.ended = true));
        response.on('close', () => (stream.ended = true));
        if (stream.status === 200) resolve(stream);
        else response.on('end', () => resolve(stream));
      });
      request.on('error', reject);
    });
  }

  get frames(): Array<{ Index: number; Events: Obj[] }> {
    return this.lines.filter((line) => 'Index' in line) as Array<{ Index: number; Events: Obj[] }>;
  }

  get heartbeats(): number {
    return this.lines.filter((line) => Object.keys(line).length === 0).length;
  }

  events(): Obj[] {
    return this.frames.flatMap((frame) => frame.Events);
  }

  /** Waits for an event satisfying `predicate`; returns it with every event that came before it. */
  async until(what: string, predicate: (event: Obj) => boolean): Promise<{ event: Obj; before: Obj[] }> {
    return waitFor(what, () => {
      const events = this.events();
      const at = events.findIndex(predicate);
      return at >= 0 ? { event: events[at] as Obj, before: events.slice(0, at) } : undefined;
    });
  }

  close(): void {
    this.request.destroy();
  }
}

const payload = (event: Obj, key: string): Obj => (event.Payload as Obj)[key] as Obj;

/** Process ids of a process group (the task's leader and everything it started). */
function groupMembers(pgid: number): number[] {
  const members: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) === pgid) members.push(Number(entry));
    } catch {
      // The process ended while /proc was read.
    }
  }
  return members;
}

/** Whether a process ignores SIGTERM (bit 15 of SigIgn in /proc/<pid>/status). */
function ignoresSigterm(pid: number): boolean {
  try {
    const mask = /^SigIgn:\s*([0-9a-f]+)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '0';
    return (BigInt(`0x${mask}`) & (1n << 14n)) !== 0n;
  } catch {
    return false;
  }
}

describe('Nomad double', function () {
  afterEach(async function () {
    for (const double of doubles.splice(0)) await double.stop();
  });

  it('registers, reads, lists and deregisters with purge', async function () {
    const double = await start();
    const registered = await call(double, 'PUT', '/v1/jobs', { Job: sleepJob('web-1', { job: { Meta: { owner: 'me' } } }) });
    assert.equal(registered.status, 200, registered.body);
    const body = registered.json as Obj;
    assert.equal(typeof body.EvalID, 'string');
    assert.equal(body.EvalCreateIndex, body.JobModifyIndex);
    assert.equal(body.Warnings, '');
    assert.equal(registered.headers['x-nomad-index'], String(body.Index));

    const job = await get(double, '/v1/job/web-1');
    assert.equal(job.ID, 'web-1');
    assert.equal(job.Version, 0);
    assert.equal(job.Stop, false);
    assert.equal(job.Namespace, 'default');
    assert.deepEqual(job.Meta, { owner: 'me' });
    const read = await call(double, 'GET', '/v1/job/web-1');
    assert.equal(read.headers['x-nomad-knownleader'], 'true');
    assert.equal(read.headers['x-nomad-lastcontact'], '0');
    assert.ok(Number(read.headers['x-nomad-index']) >= Number(body.JobModifyIndex));

    await register(double, sleepJob('other-1'));
    const stubs = await get<Obj[]>(double, '/v1/jobs?prefix=web-');
    assert.deepEqual(stubs.map((stub) => stub.ID), ['web-1']);
    assert.equal('Meta' in (stubs[0] ?? {}), false, 'no Meta without meta=true');
    const withMeta = await get<Obj[]>(double, '/v1/jobs?prefix=web-&meta=true');
    assert.deepEqual(withMeta[0]?.Meta, { owner: 'me' });
    for (const field of ['Name', 'Namespace', 'Type', 'Status', 'JobModifyIndex', 'ModifyIndex', 'CreateIndex']) assert.ok(field in (withMeta[0] ?? {}), field);
    const [withoutMeta] = await get<Obj[]>(double, '/v1/jobs?prefix=other-&meta=true');
    assert.equal(withoutMeta?.ID, 'other-1');
    assert.equal('Meta' in withoutMeta, false, 'no Meta, even with meta=true, for a job without meta (omitempty)');

    const alloc = await untilAlloc(double, 'web-1', 'running', running);
    await untilAlloc(double, 'other-1', 'running', running);
    assert.equal(alloc.Name, 'web-1.g[0]');
    assert.equal(alloc.TaskGroup, 'g');
    assert.equal((await get(double, '/v1/job/web-1')).Status, 'running');
    const full = await get(double, `/v1/allocation/${String(alloc.ID)}`);
    assert.equal((full.Job as Obj).ID, 'web-1');
    assert.ok(full.AllocatedResources, 'a full allocation carries its resources');
    const pids = double.pids();
    assert.equal(pids.length, 2, 'one process per running job');

    const missing = await call(double, 'GET', '/v1/job/nope');
    assert.equal(missing.status, 404);
    assert.equal(missing.body, 'job not found');

    const purged = await call(double, 'DELETE', '/v1/job/web-1?purge=true');
    assert.equal(purged.status, 200, purged.body);
    assert.equal(typeof (purged.json as Obj).EvalID, 'string');
    assert.equal((await call(double, 'GET', '/v1/job/web-1')).status, 404);
    // A purge deletes the job's allocations at once (hashicorp/nomad#19609); the client then kills their tasks.
    assert.equal((await call(double, 'GET', `/v1/allocation/${String(alloc.ID)}`)).status, 404);
    assert.deepEqual((await get<Obj[]>(double, '/v1/allocations')).map((item) => item.JobID), ['other-1']);
    const logs = await call(double, 'GET', `/v1/client/fs/logs/${String(alloc.ID)}?task=t&type=stdout`);
    assert.equal(logs.status, 404);
    assert.equal(logs.body, `Unknown allocation "${String(alloc.ID)}"`);
    await waitFor('the task process gone', () => double.pids().length === 1);

    // Nomad's Job.Deregister returns at once for a job it does not have: 200, nothing written, no evaluation.
    const evals = (await get<Obj[]>(double, '/v1/evaluations')).length;
    const jobsIndex = (await call(double, 'GET', '/v1/jobs')).headers['x-nomad-index'];
    for (const path of ['/v1/job/web-1?purge=true', '/v1/job/never-was']) {
      const gone = await call(double, 'DELETE', path);
      assert.equal(gone.status, 200, gone.body);
      assert.deepEqual(gone.json, { EvalID: '', EvalCreateIndex: 0, JobModifyIndex: 0, VolumeEvalID: '', VolumeEvalIndex: 0, Index: 0, LastContact: 0, KnownLeader: false });
    }
    assert.equal((await get<Obj[]>(double, '/v1/evaluations')).length, evals);
    assert.equal((await call(double, 'GET', '/v1/jobs')).headers['x-nomad-index'], jobsIndex);
  });

  it('keeps version and allocation on an identical register; a change bumps Version and replaces the allocation', async function () {
    const double = await start();
    const first = await register(double, sleepJob('same'));
    const alloc = await untilAlloc(double, 'same', 'running', running);
    const again = await register(double, sleepJob('same'));
    assert.equal(again.JobModifyIndex, first.JobModifyIndex);
    assert.notEqual(again.EvalID, first.EvalID, 'an identical register still creates an evaluation');
    await waitFor('the second evaluation complete', async () => (await get(double, `/v1/evaluation/${String(again.EvalID)}`)).Status === 'complete');
    const job = await get(double, '/v1/job/same');
    assert.equal(job.Version, 0);
    assert.deepEqual((await allocsOf(double, 'same')).map((item) => item.ID), [alloc.ID]);

    const changed = await register(double, sleepJob('same', { args: ['601'] }));
    assert.ok(Number(changed.JobModifyIndex) > Number(first.JobModifyIndex));
    assert.equal((await get(double, '/v1/job/same')).Version, 1);
    const replacement = await untilAlloc(double, 'same', 'running version 1', (item) => running(item) && item.JobVersion === 1);
    assert.notEqual(replacement.ID, alloc.ID);
    const old = await untilAlloc(double, 'same', 'old one complete', (item) => item.ID === alloc.ID && item.ClientStatus === 'complete');
    assert.equal(old.DesiredStatus, 'stop');
    const evaluations = await get<Obj[]>(double, '/v1/job/same/evaluations');
    assert.equal(evaluations.length, 3);
  });

  it('updates an allocation in place when no change reaches its tasks, as tasksUpdated decides, and replaces it when one does', async function () {
    const double = await start();
    const update = { MaxParallel: 1, HealthCheck: 'task_states', MinHealthyTime: 0, HealthyDeadline: 60e9 };
    // The task's own "hash" shadows the job's (Job.CombinedTaskMeta: the deepest scope wins), so the job's does not reach it.
    const version = (meta: Obj, group: Obj = {}): Obj => sleepJob('inplace', { job: { Meta: meta, Update: update }, task: { Meta: { hash: '' } }, group });
    await register(double, version({ owner: 'me', hash: 'a' }));
    const first = await untilAlloc(double, 'inplace', 'healthy', healthy);
    const pids = double.pids();
    const stream = await EventStream.open(double, `?topic=Allocation:*&index=${String(first.ModifyIndex)}`);

    const strategies = {
      Migrate: { MaxParallel: 1, HealthCheck: 'task_states', MinHealthyTime: 0, HealthyDeadline: 30e9 },
      RestartPolicy: { Attempts: 2, Interval: 60e9, Delay: 50e6, Mode: 'fail' },
      ReschedulePolicy: { Attempts: 1, Interval: 3600e9, Unlimited: false },
    };
    const second = await register(double, { ...version({ owner: 'me', hash: 'b' }, strategies), Priority: 60 });
    const updated = await untilAlloc(double, 'inplace', 'updated in place to version 1', (alloc) => alloc.JobVersion === 1 && healthy(alloc));
    assert.equal(updated.ID, first.ID);
    assert.equal(updated.CreateIndex, first.CreateIndex);
    assert.equal(updated.EvalID, second.EvalID);
    assert.equal((await allocsOf(double, 'inplace')).length, 1, 'no allocation placed');
    assert.deepEqual(double.pids(), pids, 'the task kept running');
    assert.ok(!eventTypes(updated, 't').includes('Restarting'));
    const full = await get(double, `/v1/allocation/${String(first.ID)}`);
    assert.equal((full.Job as Obj).Version, 1);
    assert.ok(Number(full.AllocModifyIndex) >= Number(second.JobModifyIndex));
    // As Nomad serves them: JobVersion and JobType only in the list stub (AllocListStub), AllocModifyIndex
    // only in the allocation (structs.Allocation), whose events carry no Job.
    assert.ok(!('AllocModifyIndex' in updated) && !('PreviousAllocation' in updated) && 'JobType' in updated && 'PreemptedAllocations' in updated);
    assert.equal(full.PreviousAllocation, '');
    assert.ok(!('JobVersion' in full) && !('JobType' in full));
    const { event } = await stream.until('the in-place update published', (item) => item.Type === 'PlanResult' && payload(item, 'Allocation').EvalID === second.EvalID);
    stream.close();
    const published = payload(event, 'Allocation');
    assert.equal(published.ID, first.ID);
    assert.equal(published.Job, null);
    assert.ok(!('JobVersion' in published));
    // Allocation events are filtered by job and by deployment (their FilterKeys), as in Nomad.
    assert.equal(typeof full.DeploymentID, 'string');
    assert.deepEqual(event.FilterKeys, ['inplace', full.DeploymentID]);
    const byDeployment = await EventStream.open(double, `?topic=Allocation:${String(full.DeploymentID)}&index=${String(first.ModifyIndex)}`);
    await byDeployment.until('the update, by its deployment', (item) => payload(item, 'Allocation').EvalID === second.EvalID);
    byDeployment.close();

    // The job's "owner" reaches the task: a destructive update.
    await register(double, { ...version({ owner: 'you', hash: 'b' }, strategies), Priority: 60 });
    const replacement = await untilAlloc(double, 'inplace', 'replaced at version 2', (alloc) => alloc.JobVersion === 2 && running(alloc));
    assert.notEqual(replacement.ID, first.ID);
    await untilAlloc(double, 'inplace', 'the old one stopped', (alloc) => alloc.ID === first.ID && alloc.DesiredStatus === 'stop');
  });

  it('enforces the job modify index as Nomad does', async function () {
    const double = await start();
    const created = await register(double, sleepJob('enf'), { EnforceIndex: true, JobModifyIndex: 0 });
    const exists = await call(double, 'PUT', '/v1/jobs', { Job: sleepJob('enf', { args: ['2'] }), EnforceIndex: true, JobModifyIndex: 0 });
    // A plain error of Job.Register (not an RPC-coded one): the agent answers 500.
    assert.equal(exists.status, 500);
    assert.match(exists.body, /^Enforcing job modify index 0: job already exists/);
    const stale = await call(double, 'PUT', '/v1/jobs', { Job: sleepJob('enf', { args: ['2'] }), EnforceIndex: true, JobModifyIndex: Number(created.JobModifyIndex) + 100 });
    assert.equal(stale.status, 500);
    assert.match(stale.body, /job exists with conflicting job modify index/);
    const absent = await call(double, 'PUT', '/v1/jobs', { Job: sleepJob('enf-new'), EnforceIndex: true, JobModifyIndex: 7 });
    assert.equal(absent.status, 500);
    assert.match(absent.body, /Enforcing job modify index 7: job does not exist/);
    const updated = await register(double, sleepJob('enf', { args: ['2'] }), { EnforceIndex: true, JobModifyIndex: created.JobModifyIndex });
    assert.ok(Number(updated.JobModifyIndex) > Number(created.JobModifyIndex));
  });

  it("refuses malformed jobs with Nomad's messages and accepts every field the scheduler renders", async function () {
    const double = await start();
    const refused = async (job: unknown, pattern: RegExp): Promise<void> => {
      const answer = await call(double, 'PUT', '/v1/jobs', { Job: job });
      assert.equal(answer.status, 400, `expected 400 for ${JSON.stringify(job)}`);
      assert.match(answer.body, pattern);
    };
    await refused({ ...sleepJob('x'), Datacenter: ['dc1'] }, /unknown field "Datacenter"/);
    await refused(sleepJob('x', { group: { RestartPolicyy: {} } }), /unknown field "RestartPolicyy" \(at Job\.TaskGroups\[0\]\)/);
    await refused(sleepJob('x', { task: { Resources: { CPU: 100, MemoryMb: 64 } } }), /unknown field "MemoryMb"/);
    await refused({ ...sleepJob('x'), ID: '' }, /Missing job ID/);
    await refused({ ...sleepJob('x'), TaskGroups: [] }, /Missing job task groups/);
    const noTasks = sleepJob('x');
    (noTasks.TaskGroups as Obj[])[0] = { Name: 'g', Tasks: [] };
    await refused(noTasks, /Missing tasks for task group/);
    await refused(sleepJob('x', { task: { Driver: '' } }), /Missing task driver/);
    await refused(sleepJob('x', { task: { Resources: { CPU: -5, MemoryMB: 64 } } }), /minimum CPU value is 1; got -5/);
    await refused(sleepJob('x', { memoryMB: -1 }), /minimum MemoryMB value is 10; got -1/);
    await refused(sleepJob('x', { task: { KillTimeout: 'soon' } }), /cannot unmarshal string/);
    assert.equal((await call(double, 'PUT', '/v1/jobs', '{not json')).status, 400);
    assert.equal((await call(double, 'GET', '/v1/jobs')).json instanceof Array, true);

    for (const name of ['demo', 'sdl']) {
      const template = templates.get(name) as SessionTemplate;
      const body = renderNomadJob(contractRequest(template, `render${name}`), { ...jobOptions, nodePool: 'default', priority: 60, constraints: [{ LTarget: '${node.datacenter}', RTarget: 'dc1', Operand: '=' }] });
      const answer = await call(double, 'PUT', '/v1/jobs', { ...body, EnforceIndex: true, JobModifyIndex: 0 });
      assert.equal(answer.status, 200, `${name}: ${answer.body}`);
    }
  });

  it('counts a node whose dynamic port range is used up as exhausted, placing on another node', async function () {
    const double = await start({ nodes: [{ name: 'a', cpu: 100_000, memoryMB: 100_000 }, { name: 'b', cpu: 100_000, memoryMB: 100_000 }] });
    // 7,000 dynamic ports per allocation: one fits in a node's range of 12,001, two do not.
    const ports = Array.from({ length: 7_000 }, (_, n) => ({ Label: `p${n}`, To: 0 }));
    const job = sleepJob('many-ports', {
      group: { Count: 3, Networks: [{ Mode: 'bridge', DynamicPorts: ports }] },
      task: { Driver: 'docker', Config: { image: 'busybox' } },
    });
    const registered = await register(double, job);
    const evaluation = await waitFor('the evaluation complete', async () => {
      const item = await get(double, `/v1/evaluation/${String(registered.EvalID)}`);
      return item.Status === 'complete' ? item : undefined;
    });
    const allocs = await allocsOf(double, 'many-ports');
    assert.deepEqual(allocs.map((alloc) => alloc.NodeName).sort(), ['a', 'b']);
    const metric = (evaluation.FailedTGAllocs as Record<string, Obj>).g ?? {};
    assert.deepEqual(metric.DimensionExhausted, { 'network: dynamic port selection failed': 2 });
  });

  it('places by resources over two nodes and reports a group that fits nowhere, placing it when capacity appears', async function () {
    const double = await start({ nodes: [{ name: 'small', cpu: 4_000, memoryMB: 256 }, { name: 'big', cpu: 4_000, memoryMB: 1_024 }] });
    await register(double, sleepJob('fits-big', { memoryMB: 512 }));
    const placed = await untilAlloc(double, 'fits-big', 'running', running);
    assert.equal(placed.NodeName, 'big');
    const node = await get(double, `/v1/node/${String(placed.NodeID)}`);
    assert.deepEqual((node.NodeResources as Obj).Memory, { MemoryMB: 1_024 });
    assert.equal(((node.NodeResources as Obj).Cpu as Obj).CpuShares, 4_000);
    const nodes = await get<Obj[]>(double, '/v1/nodes');
    assert.deepEqual(nodes.map((item) => item.Name).sort(), ['big', 'small']);
    assert.ok(nodes.every((item) => item.Status === 'ready' && item.Datacenter === 'dc1' && item.NodePool === 'default'));

    const tooBig = await register(double, sleepJob('too-big', { memoryMB: 600 }));
    const evaluation = await waitFor('the evaluation complete', async () => {
      const item = await get(double, `/v1/evaluation/${String(tooBig.EvalID)}`);
      return item.Status === 'complete' ? item : undefined;
    });
    const metric = (evaluation.FailedTGAllocs as Record<string, Obj>).g ?? {};
    assert.equal(metric.NodesEvaluated, 2);
    assert.equal(metric.NodesExhausted, 2);
    assert.deepEqual(metric.DimensionExhausted, { memory: 2 });
    const blocked = await get(double, `/v1/evaluation/${String(evaluation.BlockedEval)}`);
    assert.equal(blocked.Status, 'blocked');
    assert.equal((await get(double, '/v1/job/too-big')).Status, 'pending');
    assert.deepEqual(await allocsOf(double, 'too-big'), []);

    double.addNode({ name: 'bigger', cpu: 4_000, memoryMB: 2_048 });
    const late = await untilAlloc(double, 'too-big', 'placed on the new node', running);
    assert.equal(late.NodeName, 'bigger');
    assert.equal(late.EvalID, evaluation.BlockedEval);
    assert.equal((await get(double, `/v1/evaluation/${String(evaluation.BlockedEval)}`)).Status, 'complete');

    // Constraints filter nodes by name; ConstraintFiltered says which one.
    const constrained = await register(double, sleepJob('pinned', { job: { Constraints: [{ LTarget: '${node.unique.name}', RTarget: 'nowhere', Operand: '=' }] } }));
    const filtered = await waitFor('the constrained evaluation', async () => {
      const item = await get(double, `/v1/evaluation/${String(constrained.EvalID)}`);
      return item.Status === 'complete' ? item : undefined;
    });
    assert.deepEqual(((filtered.FailedTGAllocs as Record<string, Obj>).g ?? {}).ConstraintFiltered, { '${node.unique.name} = nowhere': 3 });
  });

  it('places a blocked job once another job is purged', async function () {
    const double = await start({ nodes: [{ name: 'only', cpu: 1_000, memoryMB: 512 }] });
    await register(double, sleepJob('first', { memoryMB: 400 }));
    await untilAlloc(double, 'first', 'running', running);
    const second = await register(double, sleepJob('second', { memoryMB: 400 }));
    await waitFor('a blocked evaluation', async () => (await get(double, `/v1/evaluation/${String(second.EvalID)}`)).BlockedEval !== '');
    assert.equal((await call(double, 'DELETE', '/v1/job/first?purge=true')).status, 200);
    await untilAlloc(double, 'second', 'running after the purge', running);
  });

  it('runs raw_exec for real: the task serves on its port with the Nomad environment, and its check makes it healthy', async function () {
    const double = await start();
    const server = "require('http').createServer((q,s)=>s.end(JSON.stringify({env:process.env,cwd:process.cwd()}))).listen(Number(process.env.NOMAD_PORT_http),process.env.NOMAD_IP_http)";
    const job = sleepJob('web', {
      command: process.execPath,
      args: ['-e', server],
      job: { Update: { HealthCheck: 'checks', MinHealthyTime: 0, HealthyDeadline: 20e9 } },
      group: {
        Networks: [{ Mode: 'host', DynamicPorts: [{ Label: 'http' }] }],
        Services: [{ Name: 'web-http', PortLabel: 'http', Provider: 'nomad', Checks: [{ Name: 'alive', Type: 'http', Path: '/', Interval: 50e6, Timeout: 1e9 }] }],
      },
      task: { Env: { GREETING: 'hello ${NOMAD_JOB_NAME}' } },
    });
    await register(double, job);
    const alloc = await untilAlloc(double, 'web', 'healthy', healthy);
    const [port] = ports(alloc);
    assert.equal(port?.Label, 'http');
    assert.equal(port?.HostIP, '127.0.0.1');
    const answer = await httpRequest(`http://${String(port?.HostIP)}:${String(port?.Value)}/`);
    const seen = JSON.parse(answer.body) as { env: Record<string, string>; cwd: string };
    assert.equal(seen.cwd, repoRoot);
    const expected: Record<string, string> = {
      NOMAD_PORT_http: String(port?.Value),
      NOMAD_HOST_PORT_http: String(port?.Value),
      NOMAD_IP_http: '127.0.0.1',
      NOMAD_ADDR_http: `127.0.0.1:${String(port?.Value)}`,
      NOMAD_HOST_ADDR_http: `127.0.0.1:${String(port?.Value)}`,
      NOMAD_ALLOC_ID: String(alloc.ID),
      NOMAD_ALLOC_NAME: 'web.g[0]',
      NOMAD_JOB_ID: 'web',
      NOMAD_JOB_NAME: 'web',
      NOMAD_TASK_NAME: 't',
      NOMAD_GROUP_NAME: 'g',
      NOMAD_NAMESPACE: 'default',
      NOMAD_REGION: 'global',
      NOMAD_DC: 'dc1',
      GREETING: 'hello web',
    };
    for (const [name, value] of Object.entries(expected)) assert.equal(seen.env[name], value, name);
    assert.deepEqual(eventTypes(alloc, 't'), ['Received', 'Task Setup', 'Started']);
    assert.equal(taskState(alloc, 't').State, 'running');
  });

  it('restarts a killed task in place within the restart policy, and fails the allocation beyond it', async function () {
    const double = await start();
    await register(double, sleepJob('crashy', { job: { Update: { HealthCheck: 'task_states', MinHealthyTime: 0, HealthyDeadline: 20e9 } } }));
    const alloc = await untilAlloc(double, 'crashy', 'healthy', healthy);
    const allocId = String(alloc.ID);
    const [firstPid] = double.pids();
    double.killTask(allocId, 't');
    const restarted = await untilAlloc(double, 'crashy', 'running again', (item) => running(item) && taskState(item, 't').Restarts === 1 && taskState(item, 't').State === 'running');
    assert.equal(restarted.ID, allocId, 'restarted in place');
    assert.deepEqual(eventTypes(restarted, 't').slice(-3), ['Terminated', 'Restarting', 'Started']);
    const terminated = ((taskState(restarted, 't').Events as Obj[]) ?? []).find((event) => event.Type === 'Terminated') ?? {};
    assert.equal(terminated.Signal, 9);
    assert.equal(terminated.ExitCode, 137);
    assert.equal(alive(firstPid ?? 0), false);

    double.killTask(allocId, 't', 'SIGTERM');
    const failed = await untilAlloc(double, 'crashy', 'failed', (item) => item.ClientStatus === 'failed');
    assert.equal(taskState(failed, 't').Failed, true);
    assert.equal(taskState(failed, 't').State, 'dead');
    assert.equal(eventTypes(failed, 't').at(-1), 'Not Restarting');
    assert.equal(failed.DesiredStatus, 'run');
    assert.equal((failed.DeploymentStatus as Obj).Healthy, true, 'deployment health, once set, stays');
    // Another job placed and running is the barrier: with ReschedulePolicy Attempts 0 nothing replaced the allocation.
    await register(double, sleepJob('barrier'));
    await untilAlloc(double, 'barrier', 'running', running);
    assert.equal((await allocsOf(double, 'crashy')).length, 1);
    assert.equal((await get(double, '/v1/job/crashy')).Status, 'dead');
  });

  it('evaluates a job on request; ForceReschedule replaces a failed allocation now, whatever its reschedule attempts and delay', async function () {
    const double = await start();
    // Rescheduling is on, but Nomad's own replacement waits an hour and gets one attempt per two hours.
    const failing = sleepJob('forced', {
      command: 'sh',
      args: ['-c', 'exit 3'],
      group: { RestartPolicy: { Attempts: 0, Interval: 60e9, Delay: 50e6, Mode: 'fail' }, ReschedulePolicy: { Attempts: 1, Interval: 7200e9, Delay: 3600e9, Unlimited: false } },
    });
    await register(double, failing);
    const first = await untilAlloc(double, 'forced', 'failed', (item) => item.ClientStatus === 'failed');
    assert.deepEqual(first.DesiredTransition, { Migrate: null, Reschedule: null, ForceReschedule: null, NoShutdownDelay: null });
    const job = await get(double, '/v1/job/forced');

    const answer = await call(double, 'POST', '/v1/job/forced/evaluate', { JobID: 'forced', EvalOptions: { ForceReschedule: true } });
    assert.equal(answer.status, 200, answer.body);
    const body = answer.json as Obj;
    assert.equal(typeof body.EvalID, 'string');
    assert.equal(body.EvalCreateIndex, body.Index);
    assert.equal(answer.headers['x-nomad-index'], String(body.Index));
    assert.equal(body.JobModifyIndex, job.ModifyIndex, "Nomad answers with the job's ModifyIndex");
    const evaluation = await get(double, `/v1/evaluation/${String(body.EvalID)}`);
    assert.equal(evaluation.TriggeredBy, 'job-register');
    const old = await untilAlloc(double, 'forced', 'replaced', (item) => item.ID === first.ID && item.NextAllocation !== '');
    const second = await get(double, `/v1/allocation/${String(old.NextAllocation)}`);
    assert.equal(second.PreviousAllocation, first.ID);
    assert.equal(second.EvalID, body.EvalID);
    assert.equal((old.DesiredTransition as Obj).ForceReschedule, true);

    // The replacement fails too, its one attempt used: forcing again still replaces it.
    await untilAlloc(double, 'forced', 'the replacement failed', (item) => item.ID === second.ID && item.ClientStatus === 'failed');
    assert.equal((await call(double, 'PUT', '/v1/job/forced/evaluate', { JobID: 'forced', EvalOptions: { ForceReschedule: true } })).status, 200);
    await untilAlloc(double, 'forced', 'replaced again', (item) => item.ID === second.ID && item.NextAllocation !== '');
    assert.equal((await allocsOf(double, 'forced')).length, 3);
  });

  it('does not force a group without rescheduling (as Nomad), and refuses evaluations of missing or mismatched jobs', async function () {
    const double = await start();
    await register(double, sleepJob('pinned', { command: 'sh', args: ['-c', 'exit 3'], group: { RestartPolicy: { Attempts: 0, Interval: 60e9, Delay: 50e6, Mode: 'fail' } } }));
    const failed = await untilAlloc(double, 'pinned', 'failed', (item) => item.ClientStatus === 'failed');
    // ReschedulePolicy Attempts 0 (not Unlimited): Nomad's Job.Evaluate marks nothing, and the evaluation follows the usual rules.
    const forced = await call(double, 'POST', '/v1/job/pinned/evaluate', { JobID: 'pinned', EvalOptions: { ForceReschedule: true } });
    assert.equal(forced.status, 200, forced.body);
    // Without a body, the path names the job.
    const plain = await call(double, 'POST', '/v1/job/pinned/evaluate');
    assert.equal(plain.status, 200, plain.body);
    for (const evaluation of [forced, plain]) {
      await waitFor('the evaluation complete', async () => (await get(double, `/v1/evaluation/${String((evaluation.json as Obj).EvalID)}`)).Status === 'complete');
    }
    const allocs = await allocsOf(double, 'pinned');
    assert.deepEqual(allocs.map((item) => item.ID), [failed.ID]);
    assert.equal((allocs[0]?.DesiredTransition as Obj).ForceReschedule, null);

    const missing = await call(double, 'POST', '/v1/job/nope/evaluate', { JobID: 'nope' });
    assert.equal(missing.status, 500, 'an uncoded RPC error, as Nomad answers it');
    assert.equal(missing.body, 'job not found');
    const mismatched = await call(double, 'POST', '/v1/job/pinned/evaluate', { JobID: 'other' });
    assert.equal(mismatched.status, 400);
    assert.equal(mismatched.body, 'JobID not same as job name');
    assert.equal((await call(double, 'POST', '/v1/job/pinned/evaluate', { EvalOptions: {} })).body, 'Job ID must be specified');
    assert.match((await call(double, 'POST', '/v1/job/pinned/evaluate', { JobID: 'pinned', EvalOptions: { Force: true } })).body, /unknown field "Force"/);
    assert.equal((await call(double, 'GET', '/v1/job/pinned/evaluate')).status, 405);
  });

  it('marks an allocation unhealthy when its check does not pass within HealthyDeadline', async function () {
    const double = await start();
    await register(double, sleepJob('never-ready', {
      job: { Update: { HealthCheck: 'checks', MinHealthyTime: 0, HealthyDeadline: 300e6 } },
      group: {
        Networks: [{ Mode: 'host', DynamicPorts: [{ Label: 'db' }] }],
        Services: [{ Name: 'never-ready-db', PortLabel: 'db', Provider: 'nomad', Checks: [{ Name: 'db', Type: 'tcp', Interval: 50e6, Timeout: 200e6 }] }],
      },
    }));
    const alloc = await untilAlloc(double, 'never-ready', 'health decided', (item) => (item.DeploymentStatus as Obj | null)?.Healthy != null);
    assert.equal((alloc.DeploymentStatus as Obj).Healthy, false);
    assert.equal(alloc.ClientStatus, 'running', 'an unhealthy allocation keeps running');
    assert.match(String((alloc.DeploymentStatus as Obj).Timestamp), /^\d{4}-\d\d-\d\dT/);
  });

  it('escalates to SIGKILL after KillTimeout when a task ignores its kill signal', async function () {
    const double = await start();
    // An ignored signal stays ignored across exec: neither the shell nor sleep reacts to SIGTERM.
    await register(double, sleepJob('stubborn', { command: 'sh', args: ['-c', "trap '' TERM; sleep 600"], task: { KillTimeout: 300e6 } }));
    const alloc = await untilAlloc(double, 'stubborn', 'running', running);
    const [pid] = double.pids();
    // Running means spawned; the shell may not have run its trap yet.
    await waitFor('SIGTERM ignored by the task', () => {
      const members = groupMembers(pid ?? 0);
      return members.length > 0 && members.every(ignoresSigterm);
    });
    const began = Date.now();
    assert.equal((await call(double, 'DELETE', '/v1/job/stubborn')).status, 200);
    const stopped = await untilAlloc(double, 'stubborn', 'complete', (item) => item.ClientStatus === 'complete');
    assert.ok(Date.now() - began >= 250, 'not killed before KillTimeout');
    const killing = ((taskState(stopped, 't').Events as Obj[]) ?? []).find((event) => event.Type === 'Killing') ?? {};
    assert.equal(killing.KillTimeout, 300e6);
    assert.equal(killing.DisplayMessage, 'Sent interrupt. Waiting 300ms before force killing');
    const terminated = ((taskState(stopped, 't').Events as Obj[]) ?? []).find((event) => event.Type === 'Terminated') ?? {};
    assert.equal(terminated.Signal, 9);
    assert.equal(alive(pid ?? 0), false);
    assert.equal(stopped.ID, alloc.ID);
    const job = await get(double, '/v1/job/stubborn');
    assert.equal(job.Stop, true, 'without purge the job stays, stopped');
    assert.equal(job.Status, 'dead');
  });

  it('replaces the allocations of a node that leaves', async function () {
    const double = await start({ nodes: [{ name: 'a', cpu: 1_000, memoryMB: 1_024, meta: { rack: 'r1' } }] });
    await register(double, sleepJob('mover', { job: { Constraints: [{ LTarget: '${meta.rack}', RTarget: '', Operand: 'is_set' }] } }));
    const first = await untilAlloc(double, 'mover', 'running', running);
    const [pid] = double.pids();
    double.addNode({ name: 'b', cpu: 1_000, memoryMB: 1_024, meta: { rack: 'r2' } });
    double.removeNode(String(first.NodeID));
    const moved = await untilAlloc(double, 'mover', 'running on b', (item) => running(item) && item.NodeName === 'b');
    assert.equal((await get(double, `/v1/allocation/${String(moved.ID)}`)).PreviousAllocation, '');
    const lost = (await allocsOf(double, 'mover')).find((item) => item.ID === first.ID) ?? {};
    assert.equal(lost.ClientStatus, 'lost');
    assert.equal(lost.DesiredStatus, 'stop');
    await waitFor('the lost task killed', () => !alive(pid ?? 0));
  });

  it('simulates docker with bridge ports, and fails tasks with a bad config or an unknown driver', async function () {
    const double = await start();
    const template = templates.get('sdl') as SessionTemplate;
    const body = renderNomadJob(contractRequest(template, 'dockerized'), jobOptions);
    await register(double, body.Job as unknown as Obj);
    const alloc = await untilAlloc(double, body.Job.ID, 'healthy', healthy);
    const mapped = ports(alloc);
    assert.equal(mapped.length, 9);
    for (const port of mapped) {
      assert.ok(Number(port.Value) >= 20_000 && Number(port.Value) <= 32_000, `port ${String(port.Label)} in the dynamic range`);
      assert.equal(port.HostIP, '127.0.0.1');
    }
    assert.equal(mapped.find((port) => port.Label === 'broker')?.To, 9000);
    assert.equal(double.pids().length, 0, 'docker tasks start no process');

    await register(double, sleepJob('bad-image', { task: { Driver: 'docker', Config: { image: '' } } }));
    const bad = await untilAlloc(double, 'bad-image', 'failed', (item) => item.ClientStatus === 'failed');
    assert.equal(eventTypes(bad, 't').at(-1), 'Driver Failure');
    await register(double, sleepJob('bad-ports', { task: { Driver: 'docker', Config: { image: 'x:1', ports: ['nope'] } } }));
    await untilAlloc(double, 'bad-ports', 'failed', (item) => item.ClientStatus === 'failed');
    await register(double, sleepJob('exotic', { task: { Driver: 'qemu', Config: {} } }));
    const exotic = await untilAlloc(double, 'exotic', 'failed', (item) => item.ClientStatus === 'failed');
    const last = ((taskState(exotic, 't').Events as Obj[]) ?? []).at(-1) ?? {};
    assert.equal(last.Type, 'Driver Failure');
    assert.equal(last.DisplayMessage, 'missing drivers');
  });

  it('holds blocking queries until the table changes, or for the wait', async function () {
    const double = await start();
    // The wait on a clock the test moves, before any job gives the double timers of its own: on real time a
    // bound on how long the answer took was one a busy machine's late timers and slow requests could exceed.
    const idleIndex = Number((await call(double, 'GET', '/v1/nodes')).headers['x-nomad-index']);
    const clock = sinon.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'], shouldClearNativeTimers: true });
    try {
      const idle = call(double, 'GET', `/v1/nodes?index=${idleIndex}&wait=300ms`);
      await turnsUntil(() => double.heldQueries === 1);
      await clock.tickAsync(299);
      assert.equal(double.heldQueries, 1, 'held for the wait');
      // The wait and the most jitter the double adds to it (1/16).
      await clock.tickAsync(1 + 300 / 16);
      assert.equal(double.heldQueries, 0, 'answered once the wait is over');
      assert.equal(Number((await idle).headers['x-nomad-index']), idleIndex);
    } finally {
      clock.restore();
    }

    const first = await call(double, 'GET', '/v1/jobs');
    const index = Number(first.headers['x-nomad-index']);
    assert.ok(index >= 1);
    const began = Date.now();
    const held = call(double, 'GET', `/v1/jobs?index=${index}&wait=10s`);
    const allocsHeld = call(double, 'GET', `/v1/allocations?index=${index}&wait=10s&resources=true`);
    await register(double, sleepJob('wake'));
    const woke = await held;
    assert.ok(Number(woke.headers['x-nomad-index']) > index);
    assert.deepEqual((woke.json as Obj[]).map((stub) => stub.ID), ['wake']);
    const allocs = await allocsHeld;
    assert.equal((allocs.json as Obj[])[0]?.JobID, 'wake');
    assert.ok(Date.now() - began < 5_000, 'answered on the change, not the wait');

    const nodes = await call(double, 'GET', '/v1/nodes');
    const now = Number(nodes.headers['x-nomad-index']);
    const [node] = nodes.json as Obj[];
    for (const field of ['ID', 'Name', 'Status', 'SchedulingEligibility', 'CreateIndex', 'ModifyIndex']) assert.ok(field in (node ?? {}), field);
    assert.equal(node?.SchedulingEligibility, 'eligible');
    assert.equal((await call(double, 'GET', '/v1/jobs?index=1&wait=forever')).status, 400);

    const joined = call(double, 'GET', `/v1/nodes?index=${now}&wait=10s`);
    await waitFor('the node query held', () => double.heldQueries === 1);
    const id = double.addNode({ name: 'node-2', cpu: 1_000, memoryMB: 1_024 });
    const answer = await joined;
    assert.ok(Number(answer.headers['x-nomad-index']) > now, 'a node joining moves the nodes index');
    const added = (answer.json as Obj[]).find((item) => item.ID === id);
    assert.equal(added?.Status, 'ready');
    assert.equal(added?.ModifyIndex, Number(answer.headers['x-nomad-index']));
  });

  it('caps a blocking query at 300 s plus a sixteenth of jitter, as Nomad does (not Consul\'s 10 minutes)', function () {
    assert.equal(blockingWaitMs('10m', () => 0), 300_000);
    assert.equal(blockingWaitMs('10m', () => 1), 300_000 + 300_000 / 16);
    assert.equal(blockingWaitMs(null, () => 0), 300_000, 'the default wait');
    assert.equal(blockingWaitMs('', () => 0), 300_000, 'an empty wait is the default');
    assert.equal(blockingWaitMs('2s', () => 1), 2_000 + 2_000 / 16);
    assert.throws(() => blockingWaitMs('forever'), /Invalid wait time/);
  });

  it('injects errors and latency, survives outages and restarts, and loses everything on reset', async function () {
    const double = await start();
    double.faults.errorRate = 1;
    const failed = await call(double, 'GET', '/v1/jobs');
    assert.equal(failed.status, 500);
    double.faults.errorRate = 0;
    double.faults.latencyMs = 150;
    const slowStart = Date.now();
    assert.equal((await call(double, 'GET', '/v1/status/leader')).json, '127.0.0.1:4647');
    assert.ok(Date.now() - slowStart >= 140);
    double.faults.latencyMs = 0;

    await register(double, sleepJob('keep'));
    const alloc = await untilAlloc(double, 'keep', 'running', running);
    const [pid] = double.pids();
    const port = double.port;
    await double.outage(true);
    // A kept-alive socket may notice the drop only when used: refused or reset, never answered.
    await assert.rejects(call(double, 'GET', '/v1/jobs'), /ECONNREFUSED|ECONNRESET|socket hang up/);
    await assert.rejects(call(double, 'GET', '/v1/jobs'), /ECONNREFUSED/);
    await double.outage(false);
    assert.equal(double.port, port);
    assert.equal((await get(double, '/v1/job/keep')).ID, 'keep');

    const before = Number((await call(double, 'GET', '/v1/allocations')).headers['x-nomad-index']);
    const held = call(double, 'GET', `/v1/allocations?index=${before}&wait=30s`);
    await waitFor('the query held', () => double.heldQueries === 1);
    await double.restart();
    await assert.rejects(held, /socket hang up|ECONNRESET/);
    assert.equal(double.port, port);
    assert.equal((await get(double, `/v1/allocation/${String(alloc.ID)}`)).ClientStatus, 'running');
    assert.ok(alive(pid ?? 0), 'tasks survive an agent restart');

    const blocked = call(double, 'GET', `/v1/allocations?index=${before}&wait=30s`);
    await waitFor('the query held', () => double.heldQueries === 1);
    await double.reset();
    const answer = await blocked;
    assert.ok(Number(answer.headers['x-nomad-index']) < before, 'the index went backwards');
    assert.deepEqual(answer.json, []);
    assert.equal((await call(double, 'GET', '/v1/job/keep')).status, 404);
    assert.equal(alive(pid ?? 0), false, 'the lost allocation was killed');
    assert.equal((await get<Obj[]>(double, '/v1/nodes')).length, 1, 'the nodes registered again');
    await register(double, sleepJob('after'));
    await untilAlloc(double, 'after', 'running', running);
  });

  it('answers a share of requests 500 and leaves another share unanswered, applying half of the timed-out writes', async function () {
    const double = await start();
    /** The answer's status, or "timeout" when none came within `ms`. */
    const status = (method: string, pathAndQuery: string, body?: unknown, ms = 500): Promise<number | 'timeout'> =>
      call(double, method, pathAndQuery, body, {}, AbortSignal.timeout(ms)).then(
        (answer) => answer.status,
        (error: Error) => (error.name === 'AbortError' ? 'timeout' : Promise.reject(error)),
      );

    double.faults.errorRate = 0.3;
    double.faults.timeoutRate = 0.1;
    // A generous client deadline: 300 requests at once must not time out on their own.
    const mixed = await Promise.all(Array.from({ length: 300 }, () => status('GET', '/v1/status/leader', undefined, 2_000)));
    const count = (value: number | 'timeout'): number => mixed.filter((item) => item === value).length;
    assert.equal(count(200) + count(500) + count('timeout'), 300);
    assert.ok(count(500) >= 55 && count(500) <= 125, `${count(500)} of 300 answered 500`);
    assert.ok(count('timeout') >= 10 && count('timeout') <= 55, `${count('timeout')} of 300 unanswered`);
    assert.deepEqual({ ...double.injected }, { errors: count(500), timeouts: count('timeout'), appliedWrites: 0 });

    // Every write times out: about half of them happen all the same, and a read shows which.
    double.faults.errorRate = 0;
    double.faults.timeoutRate = 1;
    const ids = Array.from({ length: 40 }, (_, n) => `lost${n}`);
    const answers = await Promise.all(ids.map((id) => status('PUT', '/v1/jobs', { Job: sleepJob(id, { memoryMB: 16 }) })));
    assert.ok(answers.every((answer) => answer === 'timeout'));
    double.faults.timeoutRate = 0;
    const registered = (await get<Obj[]>(double, '/v1/jobs?prefix=lost')).map((job) => String(job.ID));
    assert.equal(registered.length, double.injected.appliedWrites);
    assert.ok(registered.length >= 8 && registered.length <= 32, `${registered.length} of 40 timed-out registrations applied`);
    // A client that retries finds the job there (EnforceIndex 0 refused) or registers it now.
    for (const id of ids) {
      const retry = await call(double, 'PUT', '/v1/jobs', { Job: sleepJob(id, { memoryMB: 16 }), EnforceIndex: true, JobModifyIndex: 0 });
      assert.equal(retry.status, registered.includes(id) ? 500 : 200, `${id}: ${retry.body}`);
    }
    double.faults.timeoutRate = 1;
    assert.ok((await Promise.all(ids.map((id) => status('DELETE', `/v1/job/${id}?purge=true`)))).every((answer) => answer === 'timeout'));
    double.faults.timeoutRate = 0;
    const left = (await get<Obj[]>(double, '/v1/jobs?prefix=lost')).length;
    assert.ok(left >= 8 && left <= 32, `${40 - left} of 40 timed-out deregistrations applied`);

    // Held connections do not keep stop() waiting.
    double.faults.timeoutRate = 1;
    const held = ['GET /v1/jobs', 'PUT /v1/jobs', 'DELETE /v1/job/lost0'].map((line) => {
      const [method, pathAndQuery] = line.split(' ') as [string, string];
      return call(double, method, pathAndQuery, method === 'PUT' ? { Job: sleepJob('held') } : undefined).then(() => 'answered', (error: Error) => error.message);
    });
    await waitFor('three requests held', () => double.injected.timeouts === count('timeout') + 80 + 3);
    const stopping = Date.now();
    await double.stop();
    assert.ok(Date.now() - stopping < 2_000, `stop() took ${Date.now() - stopping} ms`);
    for (const outcome of await Promise.all(held)) assert.match(outcome, /socket hang up|ECONNRESET/);
  });

  describe('event stream', function () {
    const streams: EventStream[] = [];
    const open = async (double: NomadDouble, query: string, headers?: Record<string, string>): Promise<EventStream> => {
      const stream = await EventStream.open(double, query, headers);
      streams.push(stream);
      return stream;
    };
    afterEach(() => {
      for (const stream of streams.splice(0)) stream.close();
    });

    it("publishes every write's objects at its index: a heartbeat first, full objects, a purge as the job was, heartbeats", async function () {
      const double = await start({ eventHeartbeatMs: 100 });
      const stream = await open(double, '?topic=Job&topic=Allocation&topic=Evaluation&topic=Node');
      assert.equal(stream.status, 200);
      await waitFor('the first line', () => stream.lines.length > 0);
      assert.deepEqual(stream.lines[0], {}, 'a heartbeat as soon as the subscription is live');
      // Index 0 starts at the oldest write in the buffer: the node's registration.
      const { event: node } = await stream.until('the node registered', (event) => event.Topic === 'Node');
      assert.equal(node.Type, 'NodeRegistration');
      assert.equal(node.Namespace, '');
      assert.equal(payload(node, 'Node').Status, 'ready');

      const registered = await register(double, sleepJob('web-1', { job: { Meta: { owner: 'me' } } }));
      const { event: job } = await stream.until('the job registered', (event) => event.Topic === 'Job' && event.Key === 'web-1');
      assert.deepEqual(Object.keys(job), ['Topic', 'Type', 'Key', 'Namespace', 'FilterKeys', 'Index', 'Payload']);
      assert.equal(job.Type, 'JobRegistered');
      assert.equal(job.Index, registered.Index);
      assert.equal(job.Namespace, 'default');
      assert.deepEqual(payload(job, 'Job').Meta, { owner: 'me' });
      assert.equal(payload(job, 'Job').JobModifyIndex, registered.JobModifyIndex);
      const frame = stream.frames.find((item) => item.Index === registered.Index);
      const evaluation = frame?.Events.find((event) => event.Topic === 'Evaluation');
      assert.equal(evaluation?.Key, registered.EvalID, 'the evaluation created with the job, at its index');
      assert.deepEqual(evaluation?.FilterKeys, ['web-1', '']);

      const alloc = await untilAlloc(double, 'web-1', 'running', running);
      const { event: update } = await stream.until('the allocation running', (event) => event.Topic === 'Allocation' && payload(event, 'Allocation').ClientStatus === 'running');
      assert.equal(update.Key, alloc.ID);
      assert.equal(update.Type, 'AllocationUpdated');
      assert.deepEqual(update.FilterKeys, ['web-1', '']);
      const full = payload(update, 'Allocation');
      assert.equal(full.Job, null, 'without its job, as Nomad sends it');
      assert.ok(full.AllocatedResources && full.TaskStates, 'with its resources and task states');
      assert.equal((await stream.until('the allocation placed', (event) => event.Topic === 'Allocation')).event.Type, 'PlanResult');

      const purged = await call(double, 'DELETE', '/v1/job/web-1?purge=true');
      const { event: gone } = await stream.until('the job purged', (event) => event.Topic === 'Job' && event.Type === 'JobDeregistered');
      assert.equal(gone.Index, (purged.json as Obj).Index);
      assert.ok(Number(payload(gone, 'Job').ModifyIndex) < Number(gone.Index), 'the job as it was before the purge');

      const indexes = stream.frames.map((item) => item.Index);
      assert.deepEqual(indexes, [...indexes].sort((a, b) => a - b), 'frames in index order');
      assert.equal(new Set(indexes).size, indexes.length, 'one frame per write');
      const beats = stream.heartbeats;
      await waitFor('two more heartbeats', () => stream.heartbeats >= beats + 2);
    });

    it("starts at the requested index: within the buffer, older than the buffer (silently later), newer than every write", async function () {
      const double = await start({ eventBufferSize: 3 });
      const ids = Array.from({ length: 5 }, (_, n) => double.addNode({ name: `n${n}`, cpu: 1_000, memoryMB: 1_024 }));
      const first = await open(double, '?topic=Node');
      const { event: last } = await first.until('the last node', (event) => event.Key === ids[4]);
      const newest = Number(last.Index);
      const keysFrom = async (index: number): Promise<unknown[]> => {
        const stream = await open(double, `?topic=Node&index=${index}`);
        const { event, before } = await stream.until('the newest write', (item) => item.Index === newest);
        return [...before, event].map((item) => item.Key);
      };
      // The buffer holds the last three writes: the nodes n2, n3 and n4.
      assert.deepEqual(await keysFrom(newest - 1), [ids[3], ids[4]], 'from the index asked, inclusive');
      assert.deepEqual(await keysFrom(1), ids.slice(2), 'an index no longer in the buffer starts at its oldest write');
      assert.deepEqual(await keysFrom(0), ids.slice(2), 'index 0 starts at the oldest write');
      assert.deepEqual(await keysFrom(newest + 100), [ids[4]], 'an index beyond every write starts at the newest');
    });

    it('filters by topic and key (the key or a filter key: the job of an allocation or evaluation) and by namespace', async function () {
      const double = await start();
      const jobA = await open(double, '?topic=Job:web-a');
      const allocsB = await open(double, '?topic=Allocation:web-b');
      const evals = await open(double, '?topic=Evaluation');
      const everything = await open(double, '?topic=*');
      const elsewhere = await open(double, '?topic=*&namespace=other');
      await register(double, sleepJob('web-b'));
      await register(double, sleepJob('web-a'));
      const { before } = await jobA.until('web-a registered', (event) => event.Key === 'web-a');
      assert.deepEqual(before, [], 'nothing of web-b');
      await untilAlloc(double, 'web-a', 'running', running);
      await untilAlloc(double, 'web-b', 'running', running);
      await allocsB.until('web-b running', (event) => payload(event, 'Allocation').ClientStatus === 'running');
      assert.ok(allocsB.events().every((event) => event.Topic === 'Allocation' && payload(event, 'Allocation').JobID === 'web-b'));
      await evals.until('the evaluation of web-a', (event) => payload(event, 'Evaluation').JobID === 'web-a');
      assert.ok(evals.events().every((event) => event.Topic === 'Evaluation'));
      const id = double.addNode({ name: 'n2', cpu: 1_000, memoryMB: 1_024 });
      await elsewhere.until('the node, which has no namespace', (event) => event.Key === id);
      assert.ok(elsewhere.events().every((event) => event.Topic === 'Node'), 'nothing of the default namespace');
      await everything.until('the node', (event) => event.Key === id);
      assert.deepEqual(new Set(everything.events().map((event) => event.Topic)), new Set(['Node', 'Job', 'Evaluation', 'Allocation']));

      const badTopic = await open(double, '?topic=Job:a:b');
      assert.equal(badTopic.status, 400);
      assert.equal(badTopic.body(), 'Invalid topic query: error parsing topics: Invalid key value pair for topic, topic: Job:a:b');
      const badIndex = await open(double, '?index=soon');
      assert.equal(badIndex.status, 400);
      assert.match(badIndex.body(), /^Unable to parse index/);
    });

    it('requires the ACL token when one is configured', async function () {
      const double = await start({ aclToken: 'secret-token' });
      const denied = await open(double, '?topic=Job');
      assert.equal(denied.status, 403);
      assert.equal(denied.body(), 'Permission denied');
      const allowed = await open(double, '?topic=Job', { 'X-Nomad-Token': 'secret-token' });
      assert.equal(allowed.status, 200);
      await waitFor('the first heartbeat', () => allowed.heartbeats === 1);
    });

    it('takes the faults: errors, latency, a stream never started; restart, outage and reset end open streams', async function () {
      const double = await start();
      double.faults.errorRate = 1;
      assert.equal((await open(double, '')).status, 500);
      double.faults.errorRate = 0;
      double.faults.latencyMs = 150;
      const began = Date.now();
      const slow = await open(double, '');
      await waitFor('the first heartbeat', () => slow.heartbeats === 1);
      assert.ok(Date.now() - began >= 140, 'after the latency');
      double.faults.latencyMs = 0;

      double.faults.timeoutRate = 1;
      const never = EventStream.open(double, '').then(() => 'answered', (error: Error) => error.message);
      await waitFor('the stream held', () => double.injected.timeouts === 1);
      double.faults.timeoutRate = 0;
      assert.equal(double.openStreams, 1, 'only the slow stream runs');

      await double.restart();
      await waitFor('the slow stream ended', () => slow.ended);
      assert.match(await never, /socket hang up|ECONNRESET/);
      const beforeOutage = await open(double, '');
      await double.outage(true);
      await waitFor('the stream ended by the outage', () => beforeOutage.ended);
      await double.outage(false);

      await register(double, sleepJob('lost'));
      const beforeReset = await open(double, '?topic=Job');
      await beforeReset.until('the job', (event) => event.Key === 'lost');
      await double.reset();
      await waitFor('the stream ended by the reset', () => beforeReset.ended);
      assert.equal(double.openStreams, 0);
      const after = await open(double, '');
      const { event } = await after.until('the node registered again', (item) => item.Topic === 'Node');
      assert.equal(event.Index, after.frames[0]?.Index, 'the buffer starts over with the new state');
      assert.ok(Number(event.Index) < Number(beforeReset.frames[0]?.Index), 'at a lower index');
    });
  });

  describe('task logs (GET /v1/client/fs/logs/:alloc_id)', function () {
    /** Frames of a complete (not followed) answer: Go's back-to-back JSON values, heartbeats as {}. */
    const framesOf = (body: string): Obj[] => {
      const frames: Obj[] = [];
      let depth = 0;
      let start = 0;
      let inString = false;
      for (let i = 0; i < body.length; i++) {
        const c = body[i];
        if (inString) {
          if (c === '\\') i++;
          else if (c === '"') inString = false;
        } else if (c === '"') inString = true;
        else if (c === '{' && depth++ === 0) start = i;
        else if (c === '}' && --depth === 0) frames.push(JSON.parse(body.slice(start, i + 1)) as Obj);
      }
      return frames;
    };
    const dataOf = (frames: Obj[]): string => frames.map((frame) => Buffer.from(String(frame.Data ?? ''), 'base64').toString()).join('');

    /** A job whose task prints `count` numbered lines to stdout (and one to stderr), then sleeps. */
    async function printing(double: NomadDouble, id: string, count: number, logConfig?: Obj): Promise<string> {
      const script = `process.stderr.write('to stderr\\n'); for (let i = 0; i < ${count}; i++) process.stdout.write('line ' + i + '\\n'); setInterval(() => {}, 60000)`;
      await register(double, sleepJob(id, { command: process.execPath, args: ['-e', script], task: logConfig ? { LogConfig: logConfig } : {} }));
      const alloc = await untilAlloc(double, id, 'running', running);
      return String(alloc.ID);
    }

    it("serves a raw_exec task's real output as frames, from an origin and offset, plain or framed", async function () {
      const double = await start();
      const allocId = await printing(double, 'printer', 3);
      const logs = (query: string): Promise<Answer> => call(double, 'GET', `/v1/client/fs/logs/${allocId}?task=t&${query}`);
      const expected = 'line 0\nline 1\nline 2\n';
      const whole = await waitFor('the whole output', async () => {
        const answer = await logs('type=stdout');
        return dataOf(framesOf(answer.body)) === expected ? answer : undefined;
      });
      assert.equal(whole.status, 200);
      assert.equal(whole.headers['content-type'], 'application/json');
      const frames = framesOf(whole.body).filter((frame) => frame.Data !== undefined);
      assert.equal(frames[0]?.File, 'alloc/logs/t.stdout.0');
      assert.equal(frames.at(-1)?.Offset, expected.length, 'Offset: the file offset after the data');
      assert.equal(dataOf(framesOf((await logs('type=stdout&offset=7')).body)), 'line 1\nline 2\n');
      assert.equal(dataOf(framesOf((await logs('type=stdout&origin=end&offset=7')).body)), 'line 2\n');
      assert.equal(dataOf(framesOf((await logs('type=stdout&origin=end&offset=9999')).body)), expected, 'beyond the start: from the start');
      assert.equal(dataOf(framesOf((await logs('type=stderr')).body)), 'to stderr\n');
      const plain = await logs('type=stdout&plain=true&origin=end&offset=14');
      assert.equal(plain.headers['content-type'], 'text/plain');
      assert.equal(plain.body, 'line 1\nline 2\n');
    });

    it("walks an offset across rotated files as Nomad's findClosest does", async function () {
      const double = await start();
      // 1 MB files: 250,000 lines of ~12 bytes take two files and most of a third.
      const allocId = await printing(double, 'rotating', 250_000, { MaxFiles: 3, MaxFileSizeMB: 1 });
      const dir = double.logsDir(allocId);
      await waitFor('three files', () => fs.existsSync(path.join(dir, 't.stdout.2')) && fs.readFileSync(path.join(dir, 't.stdout.2'), 'utf8').endsWith('line 249999\n'), 20_000);
      const first = fs.statSync(path.join(dir, 't.stdout.0')).size;
      assert.equal(first, 1024 * 1024);
      const answer = await call(double, 'GET', `/v1/client/fs/logs/${allocId}?task=t&type=stdout&offset=${first + 5}`);
      const frames = framesOf(answer.body).filter((frame) => frame.Data !== undefined);
      assert.equal(frames[0]?.File, 'alloc/logs/t.stdout.1', 'an offset past the first file goes on in the next');
      assert.equal(Number(frames[0]?.Offset) - Buffer.from(String(frames[0]?.Data), 'base64').length, 5);
      assert.deepEqual([...new Set(frames.map((frame) => frame.File))], ['alloc/logs/t.stdout.1', 'alloc/logs/t.stdout.2']);
    });

    it('follows with heartbeats while idle, and writes synthetic output for simulated docker tasks once asked for', async function () {
      const double = await start({ logHeartbeatMs: 50, dockerLogIntervalMs: 20 });
      await register(double, sleepJob('container', { task: { Driver: 'docker', Config: { image: 'busybox:1.36' } } }));
      const alloc = await untilAlloc(double, 'container', 'running', running);
      assert.equal(fs.existsSync(double.logsDir(String(alloc.ID))), false, 'a simulated task nobody looked at holds no log files');
      const abort = new AbortController();
      let body = '';
      const following = new Promise<void>((resolve) => {
        const request = http.get(`${double.address}/v1/client/fs/logs/${String(alloc.ID)}?task=t&type=stdout&follow=true`, { signal: abort.signal }, (response) => {
          response.setEncoding('utf8');
          response.on('data', (chunk: string) => (body += chunk));
          response.on('close', resolve);
        });
        request.on('error', () => resolve());
      });
      await waitFor('three synthetic lines and heartbeats', () => {
        const frames = framesOf(body);
        return /simulated output line 3\n/.test(dataOf(frames)) && frames.some((frame) => Object.keys(frame).length === 0);
      });
      assert.match(dataOf(framesOf(body)), /busybox:1\.36 t: simulated output line 1\n/);
      abort.abort();
      await following;
      const stderr = await call(double, 'GET', `/v1/client/fs/logs/${String(alloc.ID)}?task=t&type=stderr`);
      assert.match(dataOf(framesOf(stderr.body)), /docker is simulated/);
    });

    it("answers Nomad's errors for bad parameters, unknown allocations and tasks, and tasks not started", async function () {
      // Simulated containers that take a minute to start: a task not started yet.
      const double = await start({ dockerStartMs: 60_000 });
      await register(double, sleepJob('plainsleep'), {});
      const allocId = String((await untilAlloc(double, 'plainsleep', 'running', running)).ID);
      const cases: Array<[string, number, string | RegExp]> = [
        ['type=stdout', 500, 'must provide task name'],
        ['task=t', 500, 'must provide log type (stdout/stderr)'],
        ['task=t&type=stdout&follow=maybe', 400, /failed to parse follow field to boolean/],
        ['task=t&type=stdout&plain=x', 400, /failed to parse plain field to boolean/],
        ['task=t&type=stdout&offset=ten', 400, /error parsing offset/],
        ['task=t&type=stdout&origin=middle', 500, 'origin must be start or end'],
        ['task=nope&type=stdout', 400, 'unknown task name "nope"'],
      ];
      for (const [query, status, message] of cases) {
        const answer = await call(double, 'GET', `/v1/client/fs/logs/${allocId}?${query}`);
        assert.equal(answer.status, status, query);
        if (typeof message === 'string') assert.equal(answer.body, message, query);
        else assert.match(answer.body, message, query);
      }
      const unknown = await call(double, 'GET', '/v1/client/fs/logs/0000-nope?task=t&type=stdout');
      assert.deepEqual([unknown.status, unknown.body], [404, 'Unknown allocation "0000-nope"']);
      await register(double, sleepJob('slowstart', { task: { Driver: 'docker', Config: { image: 'x:1' } } }));
      const pending = await untilAlloc(double, 'slowstart', 'placed', () => true);
      const notStarted = await call(double, 'GET', `/v1/client/fs/logs/${String(pending.ID)}?task=t&type=stdout`);
      assert.deepEqual([notStarted.status, notStarted.body], [404, 'task "t" not started yet. No logs available']);
    });
  });

  it('requires the ACL token when one is configured', async function () {
    const double = await start({ aclToken: 'secret-token' });
    const denied = await call(double, 'GET', '/v1/jobs');
    assert.equal(denied.status, 403);
    assert.equal(denied.body, 'Permission denied');
    assert.equal((await call(double, 'GET', '/v1/jobs', undefined, { 'X-Nomad-Token': 'wrong' })).status, 403);
    assert.equal((await call(double, 'GET', '/v1/jobs', undefined, { 'X-Nomad-Token': 'secret-token' })).status, 200);
    assert.equal((await call(double, 'GET', '/v1/status/leader')).status, 200);
    assert.equal((await call(double, 'GET', '/v1/client/fs/logs/x?task=t&type=stdout')).status, 403);
  });

  it('stop() leaves no process behind, not even what a task started', async function () {
    const double = await start();
    await register(double, sleepJob('tree', { command: 'sh', args: ['-c', 'sleep 600 & sleep 600 & wait'], task: { KillTimeout: 30e9 } }));
    await register(double, sleepJob('plain'));
    await untilAlloc(double, 'tree', 'running', running);
    await untilAlloc(double, 'plain', 'running', running);
    const leaders = double.pids();
    assert.equal(leaders.length, 2);
    const everything = await waitFor('the shell children', () => {
      const all = leaders.flatMap(groupMembers);
      return all.length >= 4 ? all : undefined;
    });
    await double.stop();
    for (const pid of everything) assert.equal(alive(pid), false, `process ${pid} is gone`);
    assert.deepEqual(leaders.flatMap(groupMembers).filter(alive), []);
  });
});
