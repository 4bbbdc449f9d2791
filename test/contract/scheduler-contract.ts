import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { Subscription } from 'rxjs';
import type { SessionTemplate } from '../../controller/api/types.js';
import {
  RenderError,
  jobIdFor,
  type RenderedJob,
  type Scheduler,
  type Workload,
  type WorkloadRequest,
  type WorkloadStep,
} from '../../controller/scheduler/scheduler.js';
import { LogNotFoundError, type LogEvent, type LogReadRequest } from '../../controller/scheduler/task-logs.js';
import { EXIT_3, commandTemplate } from '../support/templates.js';
import { waitFor } from '../support/wait.js';

/**
 * Behaviour every Scheduler must show, whatever runs the workloads (local processes, Nomad, the Nomad
 * double). The template `make` returns must run on the scheduler's backend and have at least one service;
 * the suite checks only what the Scheduler interface promises, never a backend's body format.
 */
export interface SchedulerFixture {
  scheduler: Scheduler;
  cleanup(): Promise<void>;
  template: SessionTemplate;
}

/**
 * A request as admission would build it: distinct, recognisable public endpoints per service (so every
 * reference can be found in a rendered body) and the given parameters over the template's defaults.
 */
export function contractRequest(
  template: SessionTemplate,
  sessionId: string,
  parameters: Readonly<Record<string, string>> = {},
): WorkloadRequest {
  const endpoints: Record<string, { url: string; host: string; port: number }> = {};
  template.spec.services.forEach((service, index) => {
    // Random, not derived from the session id: the body must carry the session marker on its own.
    const token = `${service.name}-${randomBytes(6).toString('hex')}`.toLowerCase();
    if (service.expose === 'tcp') {
      const host = `${token}.tcp.example.test`;
      const port = 20_000 + index;
      endpoints[service.name] = { url: `tcp://${host}:${port}`, host, port };
    } else {
      const host = `${token}.sessions.example.test`;
      const scheme = service.expose === 'ws' ? 'wss' : 'https';
      endpoints[service.name] = { url: `${scheme}://${host}`, host, port: 443 };
    }
  });
  const resolved: Record<string, string> = {};
  for (const parameter of template.spec.parameters) resolved[parameter.name] = parameters[parameter.name] ?? parameter.default;
  return { jobId: jobIdFor(sessionId), sessionId, template, parameters: resolved, endpoints };
}

/** Follows one watch of a scheduler: every step seen, the latest workload per job, each job's allocation ids. */
export class WorkloadRecorder {
  readonly steps: WorkloadStep[] = [];
  readonly workloads = new Map<string, Workload>();
  /** jobId → allocation ids in the order they were first reported. */
  readonly allocations = new Map<string, string[]>();
  private readonly subscription: Subscription;

  constructor(scheduler: Scheduler) {
    this.subscription = scheduler.watch().subscribe((step) => this.record(step));
  }

  /** Waits for the job's workload to satisfy `predicate`, returning it. */
  until(jobId: string, what: string, predicate: (workload: Workload) => boolean, timeoutMs?: number): Promise<Workload> {
    return waitFor(`${jobId}: ${what}`, () => {
      const workload = this.workloads.get(jobId);
      return workload !== undefined && predicate(workload) ? workload : undefined;
    }, timeoutMs);
  }

  healthy(job: RenderedJob, timeoutMs?: number): Promise<Workload> {
    return this.until(job.id, `healthy allocation of ${job.specHash.slice(0, 12)}`, (workload) =>
      workload.specHash === job.specHash &&
      workload.allocation?.clientStatus === 'running' &&
      workload.allocation.healthy === true, timeoutMs);
  }

  close(): void {
    this.subscription.unsubscribe();
  }

  private record(step: WorkloadStep): void {
    this.steps.push(step);
    if (step.kind === 'reset') {
      this.workloads.clear();
      for (const workload of step.workloads) this.put(workload);
    } else if (step.kind === 'upsert') {
      this.put(step.workload);
    } else {
      this.workloads.delete(step.jobId);
    }
  }

  private put(workload: Workload): void {
    this.workloads.set(workload.jobId, workload);
    const id = workload.allocation?.id;
    if (id === undefined) return;
    const seen = this.allocations.get(workload.jobId) ?? [];
    if (!seen.includes(id)) seen.push(id);
    this.allocations.set(workload.jobId, seen);
  }
}

/** `${params.x}` and `${endpoints.s.f}` references in a template's section for one backend. */
function referencesIn(section: unknown): { params: string[]; endpoints: Array<[string, string]> } {
  const text = JSON.stringify(section);
  const params = [...text.matchAll(/\$\{params\.([^}]+)\}/g)].map((match) => match[1] ?? '');
  const endpoints = [...text.matchAll(/\$\{endpoints\.([^.}]+)\.([^}]+)\}/g)].map(
    (match): [string, string] => [match[1] ?? '', match[2] ?? ''],
  );
  return { params, endpoints };
}

function withoutBackend(template: SessionTemplate, kind: Scheduler['kind']): SessionTemplate {
  const copy = structuredClone(template);
  delete copy.spec.backends[kind];
  return copy;
}

/** The same template with an extra environment variable on the backend's first task. */
function withExtraEnv(template: SessionTemplate, kind: Scheduler['kind'], name: string, value: string): SessionTemplate {
  const copy = structuredClone(template);
  const task = copy.spec.backends[kind]?.tasks[0];
  assert.ok(task, `the contract template needs a ${kind} task`);
  task.env = { ...task.env, [name]: value };
  return copy;
}

/** Another value for a parameter, so a request can differ from the default one. */
function otherValue(template: SessionTemplate, name: string, current: string): string | undefined {
  return template.spec.parameters.find((parameter) => parameter.name === name)?.enum.find((value) => value !== current);
}

/** The request with one referenced value changed (a parameter if possible, else an endpoint). */
function changedRequest(template: SessionTemplate, kind: Scheduler['kind'], request: WorkloadRequest): WorkloadRequest {
  const references = referencesIn(template.spec.backends[kind]);
  for (const parameter of references.params) {
    const other = otherValue(template, parameter, request.parameters[parameter] ?? '');
    if (other !== undefined) return { ...request, parameters: { ...request.parameters, [parameter]: other } };
  }
  const [service] = references.endpoints[0] ?? [];
  const endpoint = service === undefined ? undefined : request.endpoints[service];
  assert.ok(service !== undefined && endpoint, 'the contract template must reference a parameter or an endpoint');
  const moved = { url: `${endpoint.url}/moved`, host: `moved-${endpoint.host}`, port: endpoint.port + 1 };
  return { ...request, endpoints: { ...request.endpoints, [service]: moved } };
}

/** Reads a task's log (stdout from the start, not followed, unless the request says otherwise), until `until` holds if given. */
async function readLog(
  scheduler: Scheduler,
  request: Partial<LogReadRequest> & Pick<LogReadRequest, 'allocId' | 'task'>,
  until?: (text: string) => boolean,
): Promise<{ events: LogEvent[]; text: string }> {
  const abort = new AbortController();
  const events: LogEvent[] = [];
  let text = '';
  for await (const event of scheduler.readLogs({ stream: 'stdout', from: { kind: 'start' }, follow: false, signal: abort.signal, ...request })) {
    events.push(event);
    if (event.kind === 'data') text += event.data.toString();
    if (until?.(text)) abort.abort();
  }
  return { events, text };
}

export function describeSchedulerContract(name: string, make: () => Promise<SchedulerFixture>): void {
  describe(`Scheduler contract: ${name}`, function () {
    let fixture: SchedulerFixture;
    let scheduler: Scheduler;
    let template: SessionTemplate;
    const recorders: WorkloadRecorder[] = [];
    const registered = new Set<string>();

    const session = (): string => `ct${randomBytes(5).toString('hex')}`;
    const record = (): WorkloadRecorder => {
      const recorder = new WorkloadRecorder(scheduler);
      recorders.push(recorder);
      return recorder;
    };
    const register = async (job: RenderedJob): Promise<void> => {
      registered.add(job.id);
      await scheduler.register(job);
    };
    /** Registers a job of one task running `script`, and waits until the task runs. */
    const runTask = async (recorder: WorkloadRecorder, name: string, script: string): Promise<{ job: RenderedJob; allocId: string }> => {
      const job = scheduler.render(contractRequest(commandTemplate([{ name, script }]), session()));
      await register(job);
      const running = await recorder.until(job.id, 'the task running', (workload) => workload.allocation?.tasks[name]?.state === 'running');
      return { job, allocId: running.allocation!.id };
    };

    beforeEach(async function () {
      fixture = await make();
      scheduler = fixture.scheduler;
      template = fixture.template;
      assert.ok(template.spec.backends[scheduler.kind], `the contract template must have a ${scheduler.kind} backend`);
      assert.ok(template.spec.services.length > 0, 'the contract template must have services');
    });

    afterEach(async function () {
      for (const recorder of recorders.splice(0)) recorder.close();
      for (const jobId of registered) await scheduler.deregister(jobId).catch(() => undefined);
      registered.clear();
      await fixture.cleanup();
    });

    it('renders deterministically, whatever the key order of parameters and endpoints', function () {
      const request = contractRequest(template, session());
      const first = scheduler.render(request);
      const reordered: WorkloadRequest = {
        ...request,
        parameters: Object.fromEntries(Object.entries(request.parameters).reverse()),
        endpoints: Object.fromEntries(Object.entries(request.endpoints).reverse()),
      };
      const before = structuredClone(template);
      const second = scheduler.render(reordered);
      assert.deepEqual(second, first);
      assert.equal(second.specHash, first.specHash);
      assert.equal(first.id, request.jobId);
      assert.equal(first.sessionId, request.sessionId);
      assert.ok(first.specHash.length > 0);
      assert.deepEqual(template, before, 'render must not modify the template');
    });

    it('interpolates parameters and endpoints and carries the session marker', function () {
      const sessionId = session();
      const parameters: Record<string, string> = {};
      for (const parameter of template.spec.parameters) {
        parameters[parameter.name] = parameter.enum[parameter.enum.length - 1] ?? parameter.default;
      }
      const request = contractRequest(template, sessionId, parameters);
      const job = scheduler.render(request);
      const body = JSON.stringify(job.body);
      assert.doesNotMatch(body, /\$\{(params|endpoints)\./, 'no reference may be left in the body');
      assert.ok(body.includes(sessionId), 'the body carries the session marker');
      const references = referencesIn(template.spec.backends[scheduler.kind]);
      assert.ok(references.params.length + references.endpoints.length > 0, 'the contract template must use references');
      for (const parameter of references.params) {
        const value = request.parameters[parameter];
        assert.ok(value !== undefined && body.includes(value), `parameter ${parameter}=${value} is in the body`);
        const other = otherValue(template, parameter, value);
        if (other !== undefined) {
          const changed = scheduler.render({ ...request, parameters: { ...request.parameters, [parameter]: other } });
          assert.notEqual(changed.specHash, job.specHash, `changing ${parameter} changes the spec hash`);
        }
      }
      for (const [service, field] of references.endpoints) {
        const endpoint = request.endpoints[service];
        assert.ok(endpoint, `the request has an endpoint for ${service}`);
        const value = field === 'url' ? endpoint.url : field === 'host' ? endpoint.host : String(endpoint.port);
        assert.ok(body.includes(value), `endpoints.${service}.${field}=${value} is in the body`);
        const moved = { ...endpoint, url: `${endpoint.url}x`, host: `x${endpoint.host}`, port: endpoint.port + 1 };
        const changed = scheduler.render({ ...request, endpoints: { ...request.endpoints, [service]: moved } });
        assert.notEqual(changed.specHash, job.specHash, `moving endpoint ${service} changes the spec hash`);
      }
    });

    it('refuses a template without its backend, or with an unknown reference, with a RenderError', function () {
      const sessionId = session();
      assert.throws(
        () => scheduler.render(contractRequest(withoutBackend(template, scheduler.kind), sessionId)),
        (error: unknown) => error instanceof RenderError && error.message.includes(template.metadata.name),
      );
      for (const reference of ['${params.noSuchParameter}', '${endpoints.noSuchService.url}']) {
        assert.throws(
          () => scheduler.render(contractRequest(withExtraEnv(template, scheduler.kind, 'BROKEN', reference), sessionId)),
          (error: unknown) => error instanceof RenderError && error.message.includes(reference.slice(2, -1)),
          `${reference} is refused`,
        );
      }
    });

    it('runs a registered job: running, healthy, a port for every service', async function () {
      const recorder = record();
      const job = scheduler.render(contractRequest(template, session()));
      await register(job);
      const workload = await recorder.healthy(job);
      assert.equal(workload.sessionId, job.sessionId);
      const ports = workload.allocation?.ports ?? {};
      for (const service of template.spec.services) {
        assert.match(ports[service.port] ?? '', /^.+:\d+$/, `service ${service.name} has an address for port ${service.port}`);
      }
    });

    it('keeps the allocation when the same content is registered again', async function () {
      const recorder = record();
      const request = contractRequest(template, session());
      const job = scheduler.render(request);
      await register(job);
      const first = await recorder.healthy(job);
      await register(job);
      await register(scheduler.render(request));
      // Something else scheduled and healthy afterwards is the barrier: a replacement would have shown by now.
      const other = scheduler.render(contractRequest(template, session()));
      await register(other);
      await recorder.healthy(other);
      assert.deepEqual(recorder.allocations.get(job.id), [first.allocation?.id]);
      assert.equal(recorder.workloads.get(job.id)?.allocation?.healthy, true);
    });

    it('replaces the allocation when the content changes', async function () {
      const recorder = record();
      const request = contractRequest(template, session());
      const job = scheduler.render(request);
      await register(job);
      const first = await recorder.healthy(job);
      const changed = scheduler.render(changedRequest(template, scheduler.kind, request));
      assert.notEqual(changed.specHash, job.specHash);
      await register(changed);
      const second = await recorder.healthy(changed);
      assert.notEqual(second.allocation?.id, first.allocation?.id);
      // An allocation is only ever reported under the content it runs.
      for (const step of recorder.steps) {
        if (step.kind === 'upsert' && step.workload.jobId === job.id && step.workload.allocation?.id === first.allocation?.id) {
          assert.equal(step.workload.specHash, job.specHash, 'the old allocation is never reported with the new spec hash');
        }
      }
    });

    it('deregisters: a delete step, nothing left, and deregistering a missing job succeeds', async function () {
      const recorder = record();
      const job = scheduler.render(contractRequest(template, session()));
      await register(job);
      await recorder.healthy(job);
      await scheduler.deregister(job.id);
      registered.delete(job.id);
      await waitFor('delete step', () =>
        recorder.steps.some((step) => step.kind === 'delete' && step.jobId === job.id && step.sessionId === job.sessionId),
      );
      assert.equal(recorder.workloads.has(job.id), false);
      const fresh = record();
      const reset = await waitFor('reset of a new watch', () => fresh.steps[0]);
      assert.equal(reset.kind, 'reset');
      assert.ok(reset.kind === 'reset' && !reset.workloads.some((workload) => workload.jobId === job.id));
      await scheduler.deregister(job.id);
      await scheduler.deregister(jobIdFor(session()));
    });

    it('stops: a delete step, but the stopped allocation\'s logs stay readable; stopping a missing job succeeds', async function () {
      const recorder = record();
      const { job, allocId } = await runTask(recorder, 'told', "console.log('why it failed'); setInterval(() => {}, 1000)");
      const readAll = async (): Promise<string> => (await readLog(scheduler, { allocId, task: 'told' })).text;
      await waitFor('the line written', async () => (await readAll()).includes('why it failed'));
      await scheduler.stop(job.id);
      await waitFor('delete step', () => recorder.steps.some((step) => step.kind === 'delete' && step.jobId === job.id && step.sessionId === job.sessionId));
      assert.equal(recorder.workloads.has(job.id), false);
      assert.match(await readAll(), /^why it failed$/m);
      await scheduler.stop(job.id);
      await scheduler.stop(jobIdFor(session()));
      // Registered again, it runs again.
      await scheduler.register(job);
      await recorder.until(job.id, 'running again', (workload) => workload.allocation?.tasks.told?.state === 'running' && workload.allocation.id !== allocId);
    });

    it('reschedule replaces a failed allocation with a fresh one whose tasks run again from 0 restarts', async function () {
      const recorder = record();
      const job = scheduler.render(contractRequest(commandTemplate([{ name: 'crash', script: EXIT_3 }]), session()));
      await register(job);
      const failed = (workload: Workload): boolean => workload.allocation?.clientStatus === 'failed';
      const first = await recorder.until(job.id, 'a failed allocation', failed);
      const firstId = first.allocation?.id;
      await scheduler.reschedule(job.id);
      // The task crashes in the new allocation too: failing again after as many restarts as the first one
      // proves that it ran, restarted from 0.
      const second = await recorder.until(job.id, 'a new allocation failed in turn', (workload) => failed(workload) && workload.allocation?.id !== firstId);
      assert.equal(second.specHash, job.specHash);
      assert.equal(second.allocation?.tasks.crash?.restarts, first.allocation?.tasks.crash?.restarts);
      assert.deepEqual(recorder.allocations.get(job.id), [firstId, second.allocation?.id], 'one replacement, nothing else');
    });

    it('reschedule leaves a job without a failed allocation alone, and a missing job too', async function () {
      const recorder = record();
      const job = scheduler.render(contractRequest(template, session()));
      await register(job);
      const healthy = await recorder.healthy(job);
      await scheduler.reschedule(job.id);
      await scheduler.reschedule(jobIdFor(session()));
      // Something else scheduled and healthy afterwards is the barrier: a replacement would have shown by now.
      const other = scheduler.render(contractRequest(template, session()));
      await register(other);
      await recorder.healthy(other);
      assert.deepEqual(recorder.allocations.get(job.id), [healthy.allocation?.id]);
      assert.equal(recorder.workloads.get(job.id)?.allocation?.healthy, true);
    });

    it('reads a task\'s stdout and stderr from the start, a position or the end, and follows them as they are written', async function () {
      const { allocId } = await runTask(record(), 'chatty', "process.stderr.write('warming up\\n'); let n = 0; setInterval(() => console.log('tick ' + n++), 20)");
      const read = (request: Partial<LogReadRequest>, until?: (text: string) => boolean): Promise<{ events: LogEvent[]; text: string }> =>
        readLog(scheduler, { allocId, task: 'chatty', ...request }, until);
      const followed = await read({ follow: true }, (text) => text.includes('tick 5\n'));
      assert.equal(followed.events[0]?.kind, 'opened');
      assert.match(followed.text, /tick 0\ntick 1\ntick 2\ntick 3\ntick 4\ntick 5\n/);
      const data = followed.events.filter((event) => event.kind === 'data');
      for (let i = 1; i < data.length; i++) assert.equal(data[i]!.start, data[i - 1]!.end, 'pieces follow one another');
      // From a position a read reported: exactly what came after it.
      const middle = data[Math.floor(data.length / 2)]!;
      const resumed = await read({ from: { kind: 'position', position: middle.end } });
      const whole = await read({});
      const before = data.filter((event) => event.end <= middle.end).map((event) => event.data.toString()).join('');
      assert.ok(whole.text.startsWith(before + resumed.text.slice(0, 20)), 'a resumed read continues exactly where the position is');
      const tail = await read({ from: { kind: 'tail', bytes: 8 } });
      assert.ok(tail.text.length >= 8 && /tick \d+\n$/.test(tail.text), JSON.stringify(tail.text));
      assert.match((await read({ stream: 'stderr' })).text, /^warming up\n/m);
      await assert.rejects(read({ task: 'nope' }), LogNotFoundError);
      await assert.rejects(read({ allocId: '00000000-0000-0000-0000-000000000000' }), LogNotFoundError);
    });

    it('completes capacityChanges() when the scheduler closes', async function () {
      let completed = false;
      const subscription = scheduler.capacityChanges().subscribe({ complete: () => (completed = true) });
      await scheduler.close();
      assert.equal(completed, true);
      subscription.unsubscribe();
    });

    it('gives every watcher a reset first, then the changes', async function () {
      const early = record();
      const job = scheduler.render(contractRequest(template, session()));
      await register(job);
      await early.healthy(job);
      const late = record();
      const lateReset = await waitFor('reset of the late watch', () => late.steps[0]);
      assert.equal(early.steps[0]?.kind, 'reset');
      assert.ok(early.steps[0]?.kind === 'reset' && !early.steps[0].workloads.some((workload) => workload.jobId === job.id));
      assert.equal(lateReset.kind, 'reset');
      const reported = lateReset.kind === 'reset' ? lateReset.workloads.find((workload) => workload.jobId === job.id) : undefined;
      assert.equal(reported?.allocation?.healthy, true, 'the late reset holds the running workload');
      await scheduler.deregister(job.id);
      registered.delete(job.id);
      for (const recorder of [early, late]) {
        await waitFor('delete step on every watch', () => recorder.steps.some((step) => step.kind === 'delete' && step.jobId === job.id));
      }
    });
  });
}
