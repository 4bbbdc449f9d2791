import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { Writable } from 'node:stream';
import { isDeepStrictEqual } from 'node:util';
import { loadTemplates } from '../../controller/api/templates.js';
import type { SessionTemplate } from '../../controller/api/types.js';
import { canonicalJson } from '../../controller/scheduler/local-scheduler.js';
import { REPLACES_META_KEY, SPEC_HASH_META_KEY, type NomadJobOptions } from '../../controller/scheduler/nomad-job.js';
import { NomadScheduler } from '../../controller/scheduler/nomad-scheduler.js';
import type { RenderedJob, Workload, WorkloadStep } from '../../controller/scheduler/scheduler.js';
import { createLogger, silentLogger, type Logger } from '../../controller/util/log.js';
import { WorkloadRecorder, contractRequest, describeSchedulerContract } from '../contract/scheduler-contract.js';
import { NomadDouble, type NomadDoubleOptions } from '../fakes/nomad.js';
import { EXIT_3, commandTemplate } from '../support/templates.js';
import { capturingLogger } from '../support/controller-harness.js';
import { waitFor } from '../support/wait.js';

// Compiled to dist/test/integration/: three levels up is the repository root (raw_exec's working directory).
const repoRoot = path.resolve(__dirname, '../../..');
const demo = loadTemplates(path.join(repoRoot, 'manifests/templates')).get('demo') as SessionTemplate;

/** Fast enough for tests against the double, which does not hold Nomad's minimums (checks ≥ 1 s, restart interval ≥ 5 s). */
const doubleJobOptions: NomadJobOptions = {
  datacenters: ['dc1'],
  restart: { attempts: 3, intervalMs: 60_000, delayMs: 100 },
  healthyDeadlineMs: 30_000,
  checkIntervalMs: 100,
  checkTimeoutMs: 1_000,
};

/** What a real agent accepts. */
const realJobOptions: NomadJobOptions = {
  datacenters: (process.env.NOMAD_DATACENTERS ?? 'dc1').split(','),
  restart: { attempts: 3, intervalMs: 60_000, delayMs: 1_000 },
  healthyDeadlineMs: 60_000,
  checkIntervalMs: 1_000,
  checkTimeoutMs: 1_000,
};

const NODE = { name: 'node-1', cpu: 4_000, memoryMB: 4_096 };

const session = (): string => `nt${randomBytes(5).toString('hex')}`;

type RequestPredicate = (method: string, path: string, query: URLSearchParams) => boolean;

/**
 * A loopback HTTP proxy in front of the double that counts requests, can hold some of them back (as a
 * slow or partitioned link would), delay answers, and stall or cut the event streams passing through, so
 * tests see exactly what the scheduler sends and decide what it hears.
 */
class CountingProxy {
  readonly requests: Array<{ method: string; path: string; query: URLSearchParams; body: string }> = [];
  /** Awaited before an answer is passed on (the double has answered: its state is past the answer). */
  beforeAnswer: ((method: string, path: string) => Promise<void> | void) | undefined;
  /** Replaces the body of every answer but an event stream's, as another Nomad version would answer. */
  rewrite: ((method: string, path: string, body: string) => string) | undefined;
  private holding: RequestPredicate | undefined;
  private readonly held: Array<() => void> = [];
  /** Event streams passing through: the double's answer and ours. */
  private readonly streams = new Set<{ answer: http.IncomingMessage; res: http.ServerResponse }>();

  private constructor(private readonly server: http.Server, readonly address: string) {}

  static async start(target: string): Promise<CountingProxy> {
    const upstream = new URL(target);
    const server = http.createServer();
    server.keepAliveTimeout = 0;
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as { port: number };
    const proxy = new CountingProxy(server, `http://127.0.0.1:${port}`);
    server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      const url = new URL(req.url ?? '/', 'http://proxy');
      const method = req.method ?? 'GET';
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        proxy.requests.push({ method, path: url.pathname, query: url.searchParams, body: body.toString('utf8') });
        const forward = (): void => {
          const out = http.request(
            { host: upstream.hostname, port: upstream.port, method, path: req.url, headers: req.headers },
            (answer) => {
              void (async () => {
                await proxy.beforeAnswer?.(method, url.pathname);
                const rewrite = proxy.rewrite;
                if (rewrite && url.pathname !== '/v1/event/stream') {
                  const parts: Buffer[] = [];
                  answer.on('data', (part: Buffer) => parts.push(part));
                  answer.on('end', () => {
                    const { 'content-length': _length, ...headers } = answer.headers;
                    res.writeHead(answer.statusCode ?? 502, headers);
                    res.end(rewrite(method, url.pathname, Buffer.concat(parts).toString('utf8')));
                  });
                  return;
                }
                res.writeHead(answer.statusCode ?? 502, answer.headers);
                answer.pipe(res);
                // An answer cut upstream is cut here too.
                answer.on('close', () => {
                  if (!answer.complete) res.destroy();
                });
                if (url.pathname !== '/v1/event/stream') return;
                const stream = { answer, res };
                proxy.streams.add(stream);
                res.on('close', () => proxy.streams.delete(stream));
              })();
            },
          );
          out.on('error', () => res.destroy());
          res.on('close', () => out.destroy());
          out.end(body);
        };
        if (proxy.holding?.(method, url.pathname, url.searchParams)) proxy.held.push(forward);
        else forward();
      });
    });
    return proxy;
  }

  count(method: string, pathname: string): number {
    return this.requests.filter((request) => request.method === method && request.path === pathname).length;
  }

  /** Holds back matching requests until release(). */
  hold(predicate: (method: string, path: string, query: URLSearchParams) => boolean): void {
    this.holding = predicate;
  }

  release(): void {
    this.holding = undefined;
    for (const forward of this.held.splice(0)) forward();
  }

  /** The event streams open now pass nothing more on (their connections stay open). */
  stallStreams(): void {
    for (const { answer, res } of this.streams) answer.unpipe(res);
  }

  /** The event streams open now are cut, as a broken connection would. */
  cutStreams(): void {
    for (const { answer, res } of this.streams) {
      res.destroy();
      answer.destroy();
    }
  }

  async stop(): Promise<void> {
    this.holding = undefined;
    this.held.splice(0);
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }
}

const doubles: NomadDouble[] = [];
const schedulers: NomadScheduler[] = [];
const proxies: CountingProxy[] = [];
const recorders: WorkloadRecorder[] = [];

async function startDouble(options: Partial<NomadDoubleOptions> = {}): Promise<NomadDouble> {
  const double = await NomadDouble.start({ port: 0, nodes: [NODE], workDir: repoRoot, log: silentLogger(), ...options });
  doubles.push(double);
  return double;
}

async function startScheduler(address: string, overrides: Partial<ConstructorParameters<typeof NomadScheduler>[0]> = {}): Promise<NomadScheduler> {
  const scheduler = new NomadScheduler({
    address,
    job: doubleJobOptions,
    log: silentLogger(),
    requestTimeoutMs: 5_000,
    ...overrides,
  });
  schedulers.push(scheduler);
  await scheduler.start();
  return scheduler;
}

function record(scheduler: NomadScheduler): WorkloadRecorder {
  const recorder = new WorkloadRecorder(scheduler);
  recorders.push(recorder);
  return recorder;
}

/** A double, a scheduler on it with a recorder, and a demo job registered through it, once healthy. */
async function healthyDemoJob(): Promise<{ double: NomadDouble; scheduler: NomadScheduler; recorder: WorkloadRecorder; job: RenderedJob; healthy: Workload }> {
  const double = await startDouble();
  const scheduler = await startScheduler(double.address);
  const recorder = record(scheduler);
  const job = scheduler.render(contractRequest(demo, session()));
  await scheduler.register(job);
  return { double, scheduler, recorder, job, healthy: await recorder.healthy(job) };
}

/** A logger keeping the records it is given at error level, parsed. */
function errorLog(): { log: Logger; errors: () => Array<{ msg: string; jobId?: string }> } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString('utf8').split('\n').filter((line) => line !== ''));
      done();
    },
  });
  return { log: createLogger('error', 'json', sink), errors: () => lines.map((line) => JSON.parse(line) as { msg: string; jobId?: string }) };
}

/** A raw_exec job that is not Manticore's; `meta` its Meta, if any. */
function foreignJob(id: string, meta?: Record<string, string>): unknown {
  return {
    ID: id,
    Name: id,
    Type: 'service',
    Datacenters: ['dc1'],
    ...(meta ? { Meta: meta } : {}),
    TaskGroups: [{ Name: 'web', Count: 1, Tasks: [{ Name: 'web', Driver: 'raw_exec', Config: { command: 'sleep', args: ['600'] }, Resources: { CPU: 10, MemoryMB: 16 } }] }],
  };
}

/** PUTs a job straight to Nomad, bypassing the scheduler (another user of the cluster). */
async function putJob(address: string, job: unknown): Promise<number> {
  const body = JSON.stringify({ Job: job });
  return new Promise<number>((resolve, reject) => {
    const url = new URL('/v1/jobs', address);
    const req = http.request(url, { method: 'PUT', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function cleanup(): Promise<void> {
  for (const recorder of recorders.splice(0)) recorder.close();
  for (const scheduler of schedulers.splice(0)) await scheduler.close();
  for (const proxy of proxies.splice(0)) await proxy.stop();
  for (const double of doubles.splice(0)) await double.stop();
}

describe('Nomad scheduler', function () {
  afterEach(cleanup);

  describeSchedulerContract('Nomad scheduler (double)', async () => {
    const double = await startDouble();
    const scheduler = await startScheduler(double.address);
    return {
      scheduler,
      template: demo,
      cleanup: async () => {
        await scheduler.close();
        await double.stop();
      },
    };
  });

  if (process.env.NOMAD_ADDR) {
    // raw_exec runs a task in its own task directory and wants an absolute command (raw_exec driver
    // docs): the demo programs and node are named by absolute path here.
    const absolute = structuredClone(demo);
    for (const task of absolute.spec.backends.nomad?.tasks ?? []) {
      const args = task.config.args;
      task.config.command = process.execPath;
      if (Array.isArray(args)) task.config.args = args.map((arg) => (typeof arg === 'string' && arg.startsWith('hack/') ? path.join(repoRoot, arg) : arg));
    }
    describeSchedulerContract('Nomad scheduler (real agent)', async () => {
      const scheduler = await startScheduler(process.env.NOMAD_ADDR ?? '', {
        token: process.env.NOMAD_TOKEN,
        namespace: process.env.NOMAD_NAMESPACE,
        region: process.env.NOMAD_REGION,
        job: realJobOptions,
        requestTimeoutMs: 10_000,
      });
      return { scheduler, template: absolute, cleanup: () => scheduler.close() };
    });
  }

  describe('against the Nomad double', function () {
    it('start() names the address when Nomad cannot be reached', async function () {
      const double = await startDouble();
      const address = double.address;
      await double.stop();
      const scheduler = new NomadScheduler({ address, job: doubleJobOptions, log: silentLogger(), requestTimeoutMs: 2_000 });
      await assert.rejects(scheduler.start(), (error: unknown) => error instanceof Error && error.message.startsWith(`cannot reach Nomad at ${address}`));
    });

    it('registers unchanged content no more: no request at all, and EnforceIndex guards each write', async function () {
      const double = await startDouble();
      const proxy = await CountingProxy.start(double.address);
      proxies.push(proxy);
      const scheduler = await startScheduler(proxy.address);
      const recorder = record(scheduler);
      const request = contractRequest(demo, session());
      const job = scheduler.render(request);
      await scheduler.register(job);
      await recorder.healthy(job);
      const before = proxy.requests.length;
      await scheduler.register(job);
      await scheduler.register(scheduler.render(request));
      const sent = proxy.requests.slice(before).filter((item) => !isObservation(item.method, item.path));
      assert.deepEqual(sent, [], 'registering the same content again sends nothing');
      assert.equal(proxy.count('PUT', '/v1/jobs'), 1);

      const changed = scheduler.render(contractRequest(demo, request.sessionId, { coreVersion: '8.1.0' }));
      await scheduler.register(changed);
      assert.equal(proxy.count('PUT', '/v1/jobs'), 2);
      const [created, updatedBody] = proxy.requests
        .filter((item) => item.method === 'PUT' && item.path === '/v1/jobs')
        .map((item) => JSON.parse(item.body) as { EnforceIndex: boolean; JobModifyIndex: number; Job: { Meta: Record<string, string> } });
      assert.equal(created?.EnforceIndex, true);
      assert.equal(created?.JobModifyIndex, 0, 'created only if it does not exist');
      assert.equal(updatedBody?.EnforceIndex, true);
      assert.ok((updatedBody?.JobModifyIndex ?? 0) > 0, 'updated only if still at the JobModifyIndex seen');
      assert.equal(updatedBody?.Job.Meta[SPEC_HASH_META_KEY], changed.specHash);
      const updated = await recorder.healthy(changed);
      assert.equal(updated.specHash, changed.specHash);
    });

    it('sends no write once its signal has aborted, and abandons one on its way when it aborts, sending it no second time', async function () {
      const double = await startDouble();
      const proxy = await CountingProxy.start(double.address);
      proxies.push(proxy);
      const scheduler = await startScheduler(proxy.address);
      const job = scheduler.render(contractRequest(demo, session()));
      const before = proxy.requests.length;
      const ended = AbortSignal.abort();
      await assert.rejects(scheduler.register(job, ended));
      await assert.rejects(scheduler.deregister(job.id, ended));
      await assert.rejects(scheduler.reschedule(job.id, ended));
      const sent = proxy.requests.slice(before).filter((item) => !isObservation(item.method, item.path));
      assert.deepEqual(sent, [], 'nothing sent after the signal aborted');
      // The proxy holds the registration back, as a slow Nomad would, until its signal aborts.
      proxy.hold((method, path) => method === 'PUT' && path === '/v1/jobs');
      const term = new AbortController();
      const registering = scheduler.register(job, term.signal);
      await waitFor('the registration on its way', () => proxy.count('PUT', '/v1/jobs') === 1);
      term.abort();
      await assert.rejects(registering, (error: unknown) => error instanceof Error && error.message.startsWith(`registering job ${job.id}: Nomad not reached`));
      assert.equal(proxy.count('PUT', '/v1/jobs'), 1, 'the abandoned registration is not sent again');
    });

    it('reports a conflict when the job changed behind a stale cache, and refuses to overwrite foreign jobs', async function () {
      const double = await startDouble();
      const proxy = await CountingProxy.start(double.address);
      proxies.push(proxy);
      const fresh = await startScheduler(double.address);
      const stale = await startScheduler(proxy.address);
      // The stale scheduler's event stream passes nothing more on: it still believes the job does not exist.
      proxy.stallStreams();
      const request = contractRequest(demo, session());
      await fresh.register(fresh.render(request));
      const other = stale.render(contractRequest(demo, request.sessionId, { coreVersion: '8.1.0' }));
      await assert.rejects(stale.register(other), (error: unknown) =>
        error instanceof Error && error.message.includes(`registering job ${other.id}: conflict`) && /Enforcing job modify index 0/.test(error.message));

      const foreignId = `manticore-${session()}`;
      assert.equal(await putJob(double.address, foreignJob(foreignId)), 200);
      await waitFor('the foreign job in the cache', async () => {
        const attempt = fresh.register(fresh.render(contractRequest(demo, foreignId.slice('manticore-'.length))));
        return attempt.then(() => false, (error: Error) => error.message.includes("exists without Manticore's marker"));
      });
    });

    it('never reports jobs without the marker', async function () {
      const double = await startDouble();
      const scheduler = await startScheduler(double.address);
      const recorder = record(scheduler);
      const steps: WorkloadStep[] = [];
      const subscription = scheduler.watch().subscribe((step) => steps.push(step));
      for (const id of [`manticore-${session()}`, `other-${session()}`]) {
        assert.equal(await putJob(double.address, foreignJob(id, { owner: 'someone else' })), 200);
      }
      // Ours, registered afterwards, is the barrier: once it is healthy, the others have long been seen.
      const ours = scheduler.render(contractRequest(demo, session()));
      await scheduler.register(ours);
      await recorder.healthy(ours);
      subscription.unsubscribe();
      const reported = new Set(steps.flatMap((step) => (step.kind === 'reset' ? step.workloads.map((w) => w.jobId) : step.kind === 'upsert' ? [step.workload.jobId] : [step.jobId])));
      assert.deepEqual([...reported], [ours.id]);
    });

    it("takes a job with its prefix listed without Meta (Nomad lists none for a job without meta, as manticore-router) for somebody else's, and does not claim Nomad ignores meta=true", async function () {
      const double = await startDouble();
      assert.equal(await putJob(double.address, foreignJob('manticore-router')), 200);
      const logged = errorLog();
      const scheduler = await startScheduler(double.address, { log: logged.log });
      await assert.rejects(scheduler.register(scheduler.render(contractRequest(demo, 'router'))), /exists without Manticore's marker/);
      assert.deepEqual(logged.errors(), []);
    });

    it('says so when Nomad ignores meta=true: a job listed without Meta carries the marker in full', async function () {
      const double = await startDouble();
      const first = await startScheduler(double.address);
      const job = first.render(contractRequest(demo, session()));
      await first.register(job);
      const proxy = await CountingProxy.start(double.address);
      proxies.push(proxy);
      proxy.rewrite = (method, path, body) =>
        method === 'GET' && path === '/v1/jobs' ? JSON.stringify((JSON.parse(body) as Array<Record<string, unknown>>).map(({ Meta: _meta, ...stub }) => stub)) : body;
      const logged = errorLog();
      await startScheduler(proxy.address, { log: logged.log });
      assert.deepEqual(logged.errors().map((record) => [record.jobId, record.msg]), [
        [job.id, "Nomad lists jobs without their Meta though asked to (meta=true; Manticore needs Nomad 1.6 or later): no job can be recognised as Manticore's"],
      ]);
    });

    it('reports a placement failure for lack of memory, cleared when a node joins', async function () {
      const double = await startDouble({ nodes: [{ name: 'small', cpu: 4_000, memoryMB: 64 }] });
      const scheduler = await startScheduler(double.address);
      const recorder = record(scheduler);
      const job = scheduler.render(contractRequest(demo, session()));
      await scheduler.register(job);
      const unplaced = await recorder.until(job.id, 'a placement failure', (workload) => workload.placementFailure !== undefined);
      assert.match(unplaced.placementFailure ?? '', /no node has enough memory \(1 of 1 exhausted\)/);
      assert.equal(unplaced.allocation, undefined);
      double.addNode({ name: 'big', cpu: 4_000, memoryMB: 4_096 });
      const placed = await recorder.healthy(job);
      assert.equal(placed.placementFailure, undefined);
    });

    it('reports a killed task as unhealthy, then healthy again after Nomad restarts it in place', async function () {
      const { double, recorder, job, healthy: before } = await healthyDemoJob();
      const allocId = before.allocation?.id ?? '';
      double.killTask(allocId, 'core');
      const down = await recorder.until(job.id, 'unhealthy after the kill', (workload) => workload.allocation?.healthy === false);
      assert.equal(down.allocation?.id, allocId);
      const back = await recorder.until(job.id, 'healthy after the restart', (workload) =>
        workload.allocation?.healthy === true && (workload.allocation.tasks.core?.restarts ?? 0) >= 1);
      assert.equal(back.allocation?.id, allocId, 'restarted in place');
      assert.ok(back.allocation?.tasks.core?.lastEvent, 'the latest task event is reported');
    });

    it('keeps a running session up through a change Nomad applies in place (the update and migrate strategies): the same allocation and tasks, reported healthy with the new spec hash', async function () {
      const double = await startDouble();
      const scheduler = await startScheduler(double.address);
      const recorder = record(scheduler);
      const request = contractRequest(demo, session());
      const job = scheduler.render(request);
      await scheduler.register(job);
      const first = await recorder.healthy(job);
      const pids = double.pids();
      // A longer healthy deadline changes only the job's Update and the group's Migrate (and the spec hash).
      const reconfigured = await startScheduler(double.address, { job: { ...doubleJobOptions, healthyDeadlineMs: 60_000 } });
      const changed = reconfigured.render(request);
      assert.notEqual(changed.specHash, job.specHash);
      await reconfigured.register(changed);
      const updated = await recorder.healthy(changed);
      assert.equal(updated.allocation?.id, first.allocation?.id);
      assert.deepEqual(recorder.allocations.get(job.id), [first.allocation?.id], 'no other allocation was ever reported');
      assert.deepEqual(double.pids(), pids, 'the tasks kept running');
    });

    it('keeps reporting a failed allocation that a change applied in place leaves as it is, so that it can be rescheduled', async function () {
      const double = await startDouble();
      const scheduler = await startScheduler(double.address);
      const recorder = record(scheduler);
      const request = contractRequest(commandTemplate([{ name: 'crash', script: EXIT_3 }]), session());
      const job = scheduler.render(request);
      await scheduler.register(job);
      const failed = await recorder.until(job.id, 'a failed allocation', (workload) => workload.allocation?.clientStatus === 'failed');
      // Nomad updates no terminal allocation in place: the failed one keeps its version and evaluation.
      const reconfigured = await startScheduler(double.address, { job: { ...doubleJobOptions, healthyDeadlineMs: 60_000 } });
      const changed = reconfigured.render(request);
      await reconfigured.register(changed);
      await recorder.until(job.id, 'the failed allocation under the new spec', (workload) => workload.specHash === changed.specHash && workload.allocation?.id === failed.allocation?.id);
      await reconfigured.reschedule(job.id);
      await recorder.until(job.id, 'its replacement', (workload) => workload.allocation !== undefined && workload.allocation.id !== failed.allocation?.id);
    });

    it('reschedules by registering the same job again with Meta naming the failed allocation, once', async function () {
      const double = await startDouble();
      const proxy = await CountingProxy.start(double.address);
      proxies.push(proxy);
      const scheduler = await startScheduler(proxy.address);
      const recorder = record(scheduler);
      const job = scheduler.render(contractRequest(commandTemplate([{ name: 'crash', script: EXIT_3 }]), session()));
      await scheduler.register(job);
      const failed = await recorder.until(job.id, 'a failed allocation', (workload) => workload.allocation?.clientStatus === 'failed');
      const failedId = failed.allocation?.id ?? '';
      const before = proxy.requests.length;
      await scheduler.reschedule(job.id);
      const sent = proxy.requests.slice(before).filter((item) => !isObservation(item.method, item.path));
      assert.deepEqual(sent.map((item) => `${item.method} ${item.path}`), [`GET /v1/job/${job.id}`, 'PUT /v1/jobs']);
      const body = JSON.parse(sent[1]?.body ?? '{}') as { EnforceIndex: boolean; JobModifyIndex: number; Job: { Meta: Record<string, string> } };
      assert.equal(body.EnforceIndex, true);
      assert.ok(body.JobModifyIndex > 0, 'only over the version whose allocation failed');
      assert.equal(body.Job.Meta[REPLACES_META_KEY], failedId);
      assert.equal(body.Job.Meta[SPEC_HASH_META_KEY], job.specHash, 'the content is unchanged');

      // Asked again before or after the watch shows the new version: nothing more is registered.
      await scheduler.reschedule(job.id);
      const replaced = await recorder.until(job.id, 'a new allocation', (workload) => workload.allocation !== undefined && workload.allocation.id !== failedId);
      assert.equal(replaced.specHash, job.specHash);
      await scheduler.reschedule(job.id);
      await scheduler.register(job);
      assert.equal(proxy.count('PUT', '/v1/jobs'), 2, 'one register, one reschedule');
    });

    it('names the session on every line it logs about its job: registered, rescheduled, deregistered', async function () {
      const double = await startDouble();
      const captured = capturingLogger();
      const scheduler = await startScheduler(double.address, { log: captured.log });
      const recorder = record(scheduler);
      const id = session();
      const job = scheduler.render(contractRequest(commandTemplate([{ name: 'crash', script: EXIT_3 }]), id));
      await scheduler.register(job);
      const failed = await recorder.until(job.id, 'a failed allocation', (workload) => workload.allocation?.clientStatus === 'failed');
      await scheduler.reschedule(job.id);
      await recorder.until(job.id, 'a new allocation', (workload) => workload.allocation !== undefined && workload.allocation.id !== failed.allocation?.id);
      await scheduler.deregister(job.id);
      const about = captured.lines.filter((line) => line.jobId === job.id);
      assert.deepEqual(
        about.filter((line) => line.level >= 30).map((line) => line.msg),
        ['job registered', 'job registered again to replace its failed allocation', 'job deregistered'],
      );
      assert.deepEqual(about.filter((line) => line.session !== id).map((line) => line.msg), [], 'lines about the session that do not name it');
    });

    it('emits capacityChanges() when a node joins, neither for the first node list nor for other changes', async function () {
      const double = await startDouble();
      const scheduler = await startScheduler(double.address);
      const recorder = record(scheduler);
      let emitted = 0;
      let completed = false;
      const subscription = scheduler.capacityChanges().subscribe({ next: () => emitted++, complete: () => (completed = true) });
      await waitFor('the event stream open', () => double.openStreams === 1);
      assert.equal(emitted, 0, 'the first node list is no change');
      const job = scheduler.render(contractRequest(demo, session()));
      await scheduler.register(job);
      await recorder.healthy(job);
      assert.equal(emitted, 0, 'jobs, evaluations and allocations are no capacity change');

      double.addNode({ name: 'node-2', cpu: 4_000, memoryMB: 4_096 });
      await waitFor('an emission', () => emitted === 1);
      // A barrier: once a job registered after the node is healthy, every event of the node has come.
      const later = scheduler.render(contractRequest(demo, session()));
      await scheduler.register(later);
      await recorder.healthy(later);
      assert.equal(emitted, 1, 'one node, one emission');
      await scheduler.close();
      assert.equal(completed, true, 'close() completes it');
      subscription.unsubscribe();
    });

    it("judges the replacement of a lost allocation healthy as its deployment would: when its checks pass, not Nomad's migrate defaults (10 s later, 5 min deadline)", async function () {
      const double = await startDouble({ nodes: [{ ...NODE, name: 'a' }, { ...NODE, name: 'b' }] });
      const scheduler = await startScheduler(double.address);
      const recorder = record(scheduler);
      const job = scheduler.render(contractRequest(demo, session()));
      await scheduler.register(job);
      const first = await recorder.healthy(job);
      const placed = (await (await fetch(`${double.address}/v1/allocation/${first.allocation?.id ?? ''}`)).json()) as { NodeID: string };
      const lostAt = Date.now();
      double.removeNode(placed.NodeID);
      const replaced = await recorder.until(job.id, 'a healthy replacement', (workload) => workload.allocation?.id !== first.allocation?.id && workload.allocation?.healthy === true, 20_000);
      // Outside a deployment (that of the job's version succeeded), Nomad's client judges health by the group's
      // migrate strategy, whose default holds a healthy allocation back for 10 s.
      assert.ok(Date.now() - lostAt < 10_000, `healthy ${Date.now() - lostAt} ms after the node left`);
      assert.equal(replaced.specHash, job.specHash, 'the same job, replaced by Nomad');
    });

    it('keeps a node that reports an event (its ModifyIndex unchanged): no capacity gain when the stream starts over', async function () {
      const { double, scheduler, recorder } = await healthyDemoJob();
      let emitted = 0;
      const subscription = scheduler.capacityChanges().subscribe(() => emitted++);
      const [node] = (await (await fetch(`${double.address}/v1/nodes`)).json()) as Array<{ ID: string }>;
      double.emitNodeEvent(node?.ID ?? '', 'Driver: docker', 'Driver docker is healthy');
      // A barrier: once a job registered after the node event is healthy, the event has come.
      const later = scheduler.render(contractRequest(demo, session()));
      await scheduler.register(later);
      await recorder.healthy(later);
      // The lists taken when the stream starts over hold the same node as before.
      await double.restart();
      const after = scheduler.render(contractRequest(demo, session()));
      await waitFor('a register after the restart', () => scheduler.register(after).then(() => true, () => false));
      await recorder.healthy(after);
      assert.equal(emitted, 0, 'the node neither left nor joined');
      subscription.unsubscribe();
    });

    it('keeps watching through a restart, an outage and injected errors and latency', async function () {
      const double = await startDouble();
      const scheduler = await startScheduler(double.address);
      const recorder = record(scheduler);
      const first = scheduler.render(contractRequest(demo, session()));
      await scheduler.register(first);
      await recorder.healthy(first);

      await double.restart();
      const second = scheduler.render(contractRequest(demo, session()));
      await waitFor('a register after the restart', () => scheduler.register(second).then(() => true));
      await recorder.healthy(second);

      await double.outage(true);
      await assert.rejects(scheduler.register(scheduler.render(contractRequest(demo, session()))), (error: unknown) =>
        error instanceof Error && /registering job manticore-nt[0-9a-f]+: Nomad not reached/.test(error.message));
      await double.outage(false);
      const third = scheduler.render(contractRequest(demo, session()));
      await waitFor('a register after the outage', () => scheduler.register(third).then(() => true, () => false));
      await recorder.healthy(third);

      double.faults.errorRate = 0.5;
      double.faults.latencyMs = 50;
      const fourth = scheduler.render(contractRequest(demo, session()));
      await waitFor('a register through the errors', () => scheduler.register(fourth).then(() => true, () => false), 20_000);
      await recorder.healthy(fourth, 20_000);
      double.faults.errorRate = 0;
      double.faults.latencyMs = 0;
      const kinds = recorder.steps.map((step) => step.kind);
      assert.equal(kinds.filter((kind) => kind === 'reset').length, 1, 'one reset per watch, whatever happens after');
    });

    it('starts over when the event stream goes silent: no heartbeat, no event for three heartbeat intervals', async function () {
      const double = await startDouble({ eventHeartbeatMs: 100 });
      const proxy = await CountingProxy.start(double.address);
      proxies.push(proxy);
      const scheduler = await startScheduler(proxy.address, { eventHeartbeatMs: 200 });
      const recorder = record(scheduler);
      // The stream stays open but passes nothing on, heartbeats included, as a half-dead connection would.
      proxy.stallStreams();
      const job = scheduler.render(contractRequest(demo, session()));
      await scheduler.register(job);
      await recorder.healthy(job);
      assert.ok(proxy.count('GET', '/v1/event/stream') >= 2, 'subscribed again');
      assert.equal(recorder.steps.filter((step) => step.kind === 'reset').length, 1, 'one reset, whatever happens after');
    });

    it('backs off on errors (100 ms doubling, jittered) instead of hot-looping, and close() ends every watch', async function () {
      const double = await startDouble();
      const proxy = await CountingProxy.start(double.address);
      proxies.push(proxy);
      const scheduler = await startScheduler(proxy.address);
      let completed = false;
      const subscription = scheduler.watch().subscribe({ complete: () => (completed = true) });
      double.faults.errorRate = 1;
      await double.restart();
      const from = proxy.requests.length;
      const started = Date.now();
      const subscriptions = (): number => proxy.requests.slice(from).filter((request) => request.method === 'GET' && request.path === '/v1/event/stream').length;
      await waitFor('four attempts at subscribing', () => subscriptions() >= 4);
      // Between four failed attempts, three waits of at least 100, 200 and 400 ms (the lower end of their jitter).
      assert.ok(Date.now() - started >= 700, `four attempts took only ${Date.now() - started} ms`);
      double.faults.errorRate = 0;
      await scheduler.close();
      assert.equal(completed, true, 'close() completes the watch');
      subscription.unsubscribe();
    });

    it('subscribes before it lists: what changes just after the lists are taken is not lost, however small the event buffer', async function () {
      // Nothing fits on the node: a job's registration (and its evaluations) is all the stream says of it.
      const double = await startDouble({ nodes: [{ name: 'small', cpu: 4_000, memoryMB: 64 }], eventBufferSize: 2 });
      const writer = await startScheduler(double.address);
      const purged = writer.render(contractRequest(demo, session()));
      await writer.register(purged);
      const registered = Array.from({ length: 4 }, () => writer.render(contractRequest(demo, session())));
      const proxy = await CountingProxy.start(double.address);
      proxies.push(proxy);
      let changed = false;
      proxy.beforeAnswer = async (method, pathname) => {
        // The jobs list is taken last: Nomad changes once it has answered, before the scheduler reads it.
        if (method !== 'GET' || pathname !== '/v1/jobs' || changed) return;
        changed = true;
        await writer.deregister(purged.id);
        for (const job of registered) await writer.register(job);
      };
      const scheduler = await startScheduler(proxy.address);
      const recorder = record(scheduler);
      for (const job of registered) await recorder.until(job.id, 'unplaced', (workload) => workload.placementFailure !== undefined);
      const reported = recorder.steps.flatMap((step) => (step.kind === 'reset' ? step.workloads.map((w) => w.jobId) : step.kind === 'upsert' ? [step.workload.jobId] : [step.jobId]));
      assert.equal(reported.includes(purged.id), false, 'the job purged after the lists was never reported');
      const order = proxy.requests.map((request) => request.path);
      assert.ok(order.indexOf('/v1/event/stream') < order.indexOf('/v1/allocations') && order.indexOf('/v1/allocations') < order.indexOf('/v1/jobs'), `subscribed, then listed: ${order.join(', ')}`);
    });

    it('resyncs after its stream is cut mid-burst: no workload change reported twice, none missed', async function () {
      const double = await startDouble();
      const proxy = await CountingProxy.start(double.address);
      proxies.push(proxy);
      const scheduler = await startScheduler(proxy.address);
      const recorder = record(scheduler);
      const upserts = (): number => recorder.steps.filter((step) => step.kind === 'upsert').length;
      const jobs = Array.from({ length: 6 }, () => scheduler.render(contractRequest(demo, session())));
      const register = (burst: RenderedJob[]): Promise<void[]> => Promise.all(burst.map((job) => scheduler.register(job)));
      // Two bursts, each cut: the second begins once the stream is open again, so changes come on that stream
      // however soon the first burst is over (on a busy machine, before the scheduler had subscribed again).
      const registering = [register(jobs.slice(0, 3))];
      await waitFor('the first changes', () => upserts() >= 3);
      proxy.cutStreams();
      await waitFor('subscribed again', () => proxy.count('GET', '/v1/event/stream') === 2);
      const seen = upserts();
      registering.push(register(jobs.slice(3)));
      await waitFor('more changes', () => upserts() > seen);
      proxy.cutStreams();
      // The burst may be over by now: the third subscription is waited for, not assumed to come before the last change.
      await waitFor('subscribed a third time', () => proxy.count('GET', '/v1/event/stream') >= 3);
      await Promise.all(registering);
      for (const job of jobs) await recorder.healthy(job);

      const last = new Map<string, string>();
      for (const step of recorder.steps) {
        if (step.kind !== 'upsert') continue;
        const key = canonicalJson(step.workload);
        assert.notEqual(last.get(step.workload.jobId), key, `${step.workload.jobId}: the same workload reported twice in a row`);
        last.set(step.workload.jobId, key);
      }
      assert.equal(recorder.steps.filter((step) => step.kind === 'reset').length, 1, 'one reset, whatever happens after');
      // A scheduler that starts now sees what this one reported last.
      const fresh = record(await startScheduler(double.address));
      await waitFor('the same picture', () => jobs.every((job) => isDeepStrictEqual(fresh.workloads.get(job.id), recorder.workloads.get(job.id))));
    });

    it('drops what it holds of a purged job (its allocations and evaluations too); the same id registered again computes afresh', async function () {
      const { double, scheduler, recorder, job, healthy: first } = await healthyDemoJob();
      const one = scheduler.cacheSizes();
      assert.equal(one.jobs, 1);
      assert.ok(one.allocations >= 1 && one.evaluations >= 1, JSON.stringify(one));
      await scheduler.deregister(job.id);
      await waitFor('the delete step', () => recorder.steps.some((step) => step.kind === 'delete' && step.jobId === job.id));
      // Nomad deletes the purged job's allocation with it (hashicorp/nomad#19609): no update of it comes.
      assert.equal((await fetch(`${double.address}/v1/allocation/${first.allocation?.id ?? ''}`)).status, 404);
      // A barrier: once a job registered after the purge is healthy, every event of the purge has come.
      const other = scheduler.render(contractRequest(demo, session()));
      await scheduler.register(other);
      await recorder.healthy(other);
      assert.deepEqual(scheduler.cacheSizes(), one, 'what one healthy job takes, nothing of the purged one');

      await scheduler.register(job);
      const again = await recorder.healthy(job);
      assert.notEqual(again.allocation?.id, first.allocation?.id);
    });

    it('reports a job stopped behind its back (nomad job stop, without -purge) as gone, and register() starts it again', async function () {
      const { double, scheduler, recorder, job, healthy: first } = await healthyDemoJob();
      const stopped = await fetch(`${double.address}/v1/job/${job.id}`, { method: 'DELETE' });
      assert.equal(stopped.status, 200);
      // Read as a job still waiting for placement, it would never be registered again.
      await waitFor('the delete step', () => recorder.steps.some((step) => step.kind === 'delete' && step.jobId === job.id));
      await scheduler.register(job);
      const again = await recorder.healthy(job);
      assert.notEqual(again.allocation?.id, first.allocation?.id);
    });

    it('starts over when Nomad loses its state: the lost jobs are deleted, new ones are seen', async function () {
      const double = await startDouble();
      const scheduler = await startScheduler(double.address);
      const recorder = record(scheduler);
      const lost = scheduler.render(contractRequest(demo, session()));
      await scheduler.register(lost);
      await recorder.healthy(lost);
      await double.reset();
      await waitFor('the lost job deleted', () => recorder.steps.some((step) => step.kind === 'delete' && step.jobId === lost.id));
      const next = scheduler.render(contractRequest(demo, session()));
      await scheduler.register(next);
      await recorder.healthy(next);
      // The lost job registers again from scratch (EnforceIndex 0), as the controller's next reconcile would.
      await scheduler.register(lost);
      await recorder.healthy(lost);
    });
  });
});

/** The scheduler's own observation: the event stream, and the lists it takes with each subscription. */
function isObservation(method: string, pathname: string): boolean {
  return method === 'GET' && ['/v1/event/stream', '/v1/jobs', '/v1/allocations', '/v1/evaluations', '/v1/nodes'].includes(pathname);
}
