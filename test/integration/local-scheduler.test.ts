import assert from 'node:assert/strict';
import childProcess, { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { filter, firstValueFrom, map } from 'rxjs';
import sinon from 'sinon';
import WebSocket from 'ws';
import YAML from 'yaml';
import type { SessionTemplate } from '../../controller/api/types.js';
import {
  LocalScheduler,
  canonicalJson,
  type LocalJobBody,
  type LocalSchedulerOptions,
} from '../../controller/scheduler/local-scheduler.js';
import type { RenderedJob, Workload } from '../../controller/scheduler/scheduler.js';
import { silentLogger } from '../../controller/util/log.js';
import { capturingLogger } from '../support/controller-harness.js';
import { waitFor } from '../support/wait.js';
import { alive } from '../support/processes.js';
import { EXIT_3, RUN_FOREVER, commandTemplate } from '../support/templates.js';
import { WorkloadRecorder, contractRequest, describeSchedulerContract } from '../contract/scheduler-contract.js';

// Compiled to dist/test/integration/: three levels up is the repository root (the tasks' working directory).
const repoRoot = path.resolve(__dirname, '../../..');
const demo = YAML.parse(fs.readFileSync(path.join(repoRoot, 'manifests/templates/demo.yaml'), 'utf8')) as SessionTemplate;

/** Every allocation any test here saw: after each test none of their processes may be left. */
const seenAllocations = new Set<string>();
const schedulers: LocalScheduler[] = [];
const stateDirs: string[] = [];
const recorders: WorkloadRecorder[] = [];
const strays: ChildProcess[] = [];
/** Processes that are not our children and carry no allocation id, should a test fail to see them stopped. */
const strayPids: number[] = [];

function newStateDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-local-scheduler-'));
  stateDirs.push(dir);
  return dir;
}

async function makeScheduler(options: Partial<LocalSchedulerOptions> = {}): Promise<LocalScheduler> {
  const scheduler = new LocalScheduler({
    stateDir: options.stateDir ?? newStateDir(),
    workDir: repoRoot,
    log: silentLogger(),
    restart: { attempts: 3, intervalMs: 60_000, delayMs: 100 },
    killTimeoutMs: 2_000,
    checkIntervalMs: 50,
    ...options,
  });
  schedulers.push(scheduler);
  await scheduler.start();
  return scheduler;
}

/** A recorder that also notes every allocation for the leftover check. */
function record(scheduler: LocalScheduler): WorkloadRecorder {
  const recorder = new WorkloadRecorder(scheduler);
  recorders.push(recorder);
  scheduler.watch().subscribe((step) => {
    const workloads = step.kind === 'reset' ? step.workloads : step.kind === 'upsert' ? [step.workload] : [];
    for (const workload of workloads) if (workload.allocation) seenAllocations.add(workload.allocation.id);
  });
  return recorder;
}

const session = (): string => `lt${randomBytes(5).toString('hex')}`;

/** Live processes whose environment names one of the allocations. */
function processesOf(allocIds: ReadonlySet<string>): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const allocId = fs
        .readFileSync(`/proc/${entry}/environ`, 'utf8')
        .split('\0')
        .find((item) => item.startsWith('NOMAD_ALLOC_ID='))
        ?.slice('NOMAD_ALLOC_ID='.length);
      if (allocId !== undefined && allocIds.has(allocId) && alive(Number(entry))) pids.push(Number(entry));
    } catch {
      // Gone, or not ours to read.
    }
  }
  return pids;
}

function environOf(pid: number): Map<string, string> {
  const env = new Map<string, string>();
  for (const item of fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0')) {
    const eq = item.indexOf('=');
    if (eq > 0) env.set(item.slice(0, eq), item.slice(eq + 1));
  }
  return env;
}

function readPids(stateDir: string, allocId: string): Record<string, number> {
  return JSON.parse(fs.readFileSync(path.join(stateDir, 'allocs', allocId, 'pids.json'), 'utf8')) as Record<string, number>;
}

/** pids.json as it is once every task of the allocation has been (re)spawned and recorded. */
function pidsWhenRecorded(stateDir: string, allocId: string, tasks: string[], notIn: number[] = []): Promise<Record<string, number>> {
  return waitFor(`pids of ${allocId}`, () => {
    const pids = readPids(stateDir, allocId);
    return tasks.every((task) => pids[task] !== undefined && !notIn.includes(pids[task])) ? pids : undefined;
  });
}

function hostAndPort(address: string | undefined): { host: string; port: number } {
  assert.ok(address, 'an address was reported');
  const colon = address.lastIndexOf(':');
  return { host: address.slice(0, colon), port: Number(address.slice(colon + 1)) };
}

/** Connects to the demo Core's TCP service: returns its greeting and the echo of one line. */
async function tcpGreetingAndEcho(address: string | undefined, line: string): Promise<{ greeting: string; echo: string }> {
  const { host, port } = hostAndPort(address);
  const socket = net.connect({ host, port });
  try {
    let received = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (received += chunk));
    const failed = new Promise<never>((_, reject) => socket.once('error', reject));
    const lines = async (count: number): Promise<string[]> =>
      Promise.race([failed, waitFor(`${count} lines from ${address}`, () => {
        const parts = received.split('\n');
        return parts.length > count ? parts.slice(0, count) : undefined;
      })]);
    const [greeting = ''] = await lines(1);
    socket.write(`${line}\n`);
    const [, echo = ''] = await lines(2);
    return { greeting, echo };
  } finally {
    socket.destroy();
  }
}

async function websocketEcho(address: string | undefined, message: string): Promise<string> {
  const { host, port } = hostAndPort(address);
  const socket = new WebSocket(`ws://${host}:${port}/`);
  try {
    return await new Promise<string>((resolve, reject) => {
      socket.once('error', reject);
      socket.once('open', () => socket.send(message));
      socket.once('message', (data) => resolve(String(data)));
    });
  } finally {
    socket.terminate();
  }
}

async function httpGet(address: string | undefined, urlPath: string): Promise<{ status: number; body: string }> {
  const { host, port } = hostAndPort(address);
  return new Promise((resolve, reject) => {
    const request = http.get({ host, port, path: urlPath, agent: false }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    request.once('error', reject);
  });
}

async function cleanUp(): Promise<void> {
  for (const recorder of recorders.splice(0)) recorder.close();
  for (const scheduler of schedulers.splice(0)) await scheduler.close();
  for (const child of strays.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  for (const pid of strayPids.splice(0)) if (alive(pid)) process.kill(pid, 'SIGKILL');
  const leftovers = processesOf(seenAllocations);
  for (const pid of leftovers) process.kill(pid, 'SIGKILL');
  seenAllocations.clear();
  for (const dir of stateDirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
  assert.deepEqual(leftovers, [], 'no task process outlives its scheduler');
}

describe('LocalScheduler', function () {
  afterEach(cleanUp);

  describeSchedulerContract('LocalScheduler with the demo template', async () => {
    const scheduler = await makeScheduler();
    record(scheduler);
    return { scheduler, template: demo, cleanup: cleanUp };
  });

  describe('render', function () {
    it('derives the checks and the session marker, and hashes the canonical body', async function () {
      const scheduler = await makeScheduler();
      const job = scheduler.render(contractRequest(demo, 'render1', { coreVersion: '8.1.0' }));
      const body = job.body as LocalJobBody;
      assert.deepEqual(body.checks, [
        { portLabel: 'http', type: 'http', path: '/' },
        { portLabel: 'broker', type: 'tcp' },
        { portLabel: 'tcp', type: 'tcp' },
      ]);
      assert.deepEqual(body.meta, { manticore_session_id: 'render1' });
      assert.equal(body.tasks[0]?.env.CORE_VERSION, '8.1.0');
      assert.match(body.tasks[1]?.env.BROKER_URL ?? '', /^wss:\/\/broker-[0-9a-f]+\.sessions\.example\.test$/);
      assert.equal(job.specHash, createHash('sha256').update(canonicalJson(job.body)).digest('hex'));
    });

    it('keeps $${…} as a literal ${…}', async function () {
      const scheduler = await makeScheduler();
      const template = commandTemplate([{ name: 'echo', script: 'console.log("$${HOME} ${params.x}")' }]);
      template.spec.parameters.push({ name: 'x', enum: ['y'], default: 'y' });
      const body = scheduler.render(contractRequest(template, 'render2')).body as LocalJobBody;
      assert.deepEqual(body.tasks[0]?.args, ['-e', 'console.log("${HOME} y")']);
    });
  });

  describe('with the demo processes', function () {
    const secret = `MANTICORE_TEST_SECRET_${randomBytes(3).toString('hex')}`;
    before(() => (process.env[secret] = 'must not reach tasks'));
    after(() => delete process.env[secret]);

    it('runs Core and HMI on the allocated ports with Nomad-style environments', async function () {
      const stateDir = newStateDir();
      const scheduler = await makeScheduler({ stateDir });
      const recorder = record(scheduler);
      const request = contractRequest(demo, session(), { coreVersion: '8.1.0' });
      const job = scheduler.render(request);
      await scheduler.register(job);
      const workload = await recorder.healthy(job);
      const allocation = workload.allocation;
      assert.ok(allocation);
      const { ports } = allocation;
      assert.deepEqual(Object.keys(ports).sort(), ['broker', 'http', 'tcp']);
      for (const address of Object.values(ports)) assert.match(address, /^127\.0\.0\.1:\d+$/);

      assert.equal(await websocketEcho(ports.broker, 'hello core'), 'hello core');
      assert.deepEqual(await tcpGreetingAndEcho(ports.tcp, 'ping'), { greeting: 'manticore demo core 8.1.0', echo: 'ping' });
      const page = await httpGet(ports.http, '/');
      assert.equal(page.status, 200);
      assert.match(page.body, /<title>Manticore demo HMI<\/title>/);
      assert.ok(page.body.includes(request.endpoints.broker?.url ?? '?'), 'the page shows the broker URL');
      assert.ok(page.body.includes(`${request.endpoints.tcp?.host}:${request.endpoints.tcp?.port}`), 'the page shows the TCP address');
      assert.equal((await httpGet(ports.http, '/healthz')).status, 200);

      const pids = readPids(stateDir, allocation.id);
      const core = environOf(pids.core ?? 0);
      assert.equal(core.get('NOMAD_PORT_broker'), String(hostAndPort(ports.broker).port));
      assert.equal(core.get('NOMAD_IP_broker'), '127.0.0.1');
      assert.equal(core.get('NOMAD_ADDR_tcp'), ports.tcp);
      assert.equal(core.get('NOMAD_ALLOC_ID'), allocation.id);
      assert.equal(core.get('NOMAD_JOB_ID'), job.id);
      assert.equal(core.get('NOMAD_TASK_NAME'), 'core');
      assert.equal(core.get('MANTICORE_SESSION_ID'), job.sessionId);
      assert.equal(core.get('CORE_VERSION'), '8.1.0');
      assert.equal(core.get('PATH'), process.env.PATH);
      assert.equal(core.has(secret), false, 'only an allow-list of the parent environment is passed on');
      assert.equal(environOf(pids.hmi ?? 0).get('NOMAD_TASK_NAME'), 'hmi');
      assert.match(fs.readFileSync(path.join(stateDir, 'allocs', allocation.id, 'logs/core.stdout.0'), 'utf8'), /websocket echo on 127\.0\.0\.1:/);
      assert.ok(fs.existsSync(path.join(stateDir, 'jobs', `${job.id}.json`)), 'the job is persisted');
    });

    it('restarts a killed task in place, on the same ports, and becomes healthy again', async function () {
      const stateDir = newStateDir();
      const scheduler = await makeScheduler({ stateDir });
      const recorder = record(scheduler);
      const job = scheduler.render(contractRequest(demo, session()));
      await scheduler.register(job);
      const before = await recorder.healthy(job);
      const allocId = before.allocation?.id ?? '';
      const pids = await pidsWhenRecorded(stateDir, allocId, ['core', 'hmi']);
      process.kill(pids.core ?? 0, 'SIGKILL');

      const down = await recorder.until(job.id, 'core dead', (workload) => workload.allocation?.tasks.core?.state === 'dead');
      assert.equal(down.allocation?.healthy, false);
      assert.equal(down.allocation?.tasks.core?.lastEvent, 'killed by SIGKILL; restarting in 100ms');
      const after = await recorder.until(job.id, 'healthy after the restart', (workload) =>
        workload.allocation?.healthy === true && workload.allocation.tasks.core?.restarts === 1);
      assert.equal(after.allocation?.id, allocId, 'restarted in place');
      assert.deepEqual(after.allocation?.ports, before.allocation?.ports, 'same ports');
      assert.equal(after.allocation?.clientStatus, 'running');
      assert.equal(after.allocation?.tasks.hmi?.restarts, 0);
      const restarted = await pidsWhenRecorded(stateDir, allocId, ['core'], [pids.core ?? 0]);
      assert.equal(restarted.hmi, pids.hmi);
      assert.equal((await tcpGreetingAndEcho(after.allocation?.ports.tcp, 'again')).echo, 'again');
    });

    it('deregister stops every task and removes the job state', async function () {
      const stateDir = newStateDir();
      const scheduler = await makeScheduler({ stateDir });
      const recorder = record(scheduler);
      const job = scheduler.render(contractRequest(demo, session()));
      await scheduler.register(job);
      const workload = await recorder.healthy(job);
      const allocId = workload.allocation?.id ?? '';
      const pids = Object.values(await pidsWhenRecorded(stateDir, allocId, ['core', 'hmi']));
      await scheduler.deregister(job.id);
      assert.deepEqual(pids.filter(alive), [], 'every task has exited when deregister resolves');
      assert.deepEqual(processesOf(new Set([allocId])), []);
      assert.equal(fs.existsSync(path.join(stateDir, 'jobs', `${job.id}.json`)), false);
      assert.equal(fs.existsSync(path.join(stateDir, 'allocs', allocId)), false);
    });

    it('stop stops every task but keeps the allocation\'s directory, the most recent `keptStoppedAllocations` of them', async function () {
      const stateDir = newStateDir();
      const scheduler = await makeScheduler({ stateDir, keptStoppedAllocations: 1 });
      const recorder = record(scheduler);
      const stopped: Array<{ allocId: string; pids: number[] }> = [];
      for (let i = 0; i < 2; i++) {
        const job = scheduler.render(contractRequest(demo, session()));
        await scheduler.register(job);
        const allocId = (await recorder.healthy(job)).allocation?.id ?? '';
        stopped.push({ allocId, pids: Object.values(await pidsWhenRecorded(stateDir, allocId, ['core', 'hmi'])) });
        await scheduler.stop(job.id);
        assert.equal(fs.existsSync(path.join(stateDir, 'jobs', `${job.id}.json`)), false);
      }
      const [older, newer] = stopped;
      assert.deepEqual([...older!.pids, ...newer!.pids].filter(alive), [], 'every task has exited when stop resolves');
      assert.equal(fs.existsSync(path.join(stateDir, 'allocs', newer!.allocId, 'logs')), true, 'the latest stopped keeps its logs');
      assert.equal(fs.existsSync(path.join(stateDir, 'allocs', older!.allocId)), false, 'the one before goes beyond the limit');
    });

    it('close() stops every task but keeps the jobs, which the next start() runs again', async function () {
      const stateDir = newStateDir();
      const first = await makeScheduler({ stateDir });
      const firstRecorder = record(first);
      const job = first.render(contractRequest(demo, session()));
      await first.register(job);
      const workload = await firstRecorder.healthy(job);
      const allocId = workload.allocation?.id ?? '';
      const pids = Object.values(await pidsWhenRecorded(stateDir, allocId, ['core', 'hmi']));
      await first.close();
      assert.deepEqual(pids.filter(alive), []);
      assert.deepEqual(processesOf(new Set([allocId])), []);
      assert.ok(fs.existsSync(path.join(stateDir, 'jobs', `${job.id}.json`)));

      const second = await makeScheduler({ stateDir });
      const again = await record(second).healthy(job);
      assert.notEqual(again.allocation?.id, allocId);
      assert.equal(again.sessionId, job.sessionId);
      assert.equal((await tcpGreetingAndEcho(again.allocation?.ports.tcp, 'back')).echo, 'back');
    });

    it('a second scheduler on a state directory in use refuses to start and leaves the first one\'s tasks running', async function () {
      const stateDir = newStateDir();
      const first = await makeScheduler({ stateDir });
      const job = first.render(contractRequest(demo, session()));
      await first.register(job);
      const workload = await record(first).healthy(job);
      const pids = Object.values(await pidsWhenRecorded(stateDir, workload.allocation?.id ?? '', ['core', 'hmi']));

      await assert.rejects(makeScheduler({ stateDir }), /scheduler state directory .* is in use by another Manticore process/);
      assert.deepEqual(pids.filter((pid) => !alive(pid)), [], "the first scheduler's tasks were stopped");
      assert.ok(fs.existsSync(path.join(stateDir, 'allocs', workload.allocation?.id ?? '')), "the first scheduler's allocation was removed");

      await first.close();
      const next = await makeScheduler({ stateDir });
      assert.equal((await record(next).healthy(job)).sessionId, job.sessionId, 'once closed, the directory is free again');
    });

    it('refuses to start when the tasks\' working directory is missing or not a directory, naming it', async function () {
      // Every task would otherwise fail with "spawn node ENOENT", which blames the command.
      const missing = path.join(newStateDir(), 'no-such-dir');
      await assert.rejects(makeScheduler({ workDir: missing }), (error: Error) => {
        assert.match(error.message, /working directory .*no-such-dir \(scheduler\.workDir\).*ENOENT/);
        return true;
      });
      const file = path.join(newStateDir(), 'a-file');
      fs.writeFileSync(file, '');
      await assert.rejects(makeScheduler({ workDir: file }), /working directory .*a-file \(scheduler\.workDir\) is not a directory/);
    });

    it('deregister and close() also stop what a task started outside its process group (setsid, a daemon)', async function () {
      const scheduler = await makeScheduler();
      const recorder = record(scheduler);
      // The helper runs in a session of its own, as daemonizing programs and detached spawns do.
      const script = `
        require('node:child_process').spawn(process.execPath, ['-e', ${JSON.stringify(RUN_FOREVER)}], { detached: true, stdio: 'ignore' }).unref();
        ${RUN_FOREVER}
      `;
      const running = async (): Promise<{ job: RenderedJob; allocId: string }> => {
        const job = scheduler.render(contractRequest(commandTemplate([{ name: 'core', script }]), session()));
        await scheduler.register(job);
        const allocId = (await recorder.healthy(job)).allocation?.id ?? '';
        await waitFor(`the task and its helper in ${allocId}`, () => processesOf(new Set([allocId])).length === 2);
        return { job, allocId };
      };
      const deleted = await running();
      const kept = await running();
      await scheduler.deregister(deleted.job.id);
      assert.deepEqual(processesOf(new Set([deleted.allocId])), [], 'deregister left a process of the allocation');
      await scheduler.close();
      assert.deepEqual(processesOf(new Set([kept.allocId])), [], 'close() left a process of the allocation');
    });

    it('a new scheduler kills what a killed (-9) one left running, and starts fresh allocations', async function () {
      const stateDir = newStateDir();
      const request = contractRequest(demo, session());
      // The previous Manticore runs in its own process so that it can really be killed with SIGKILL.
      const script = `
        const { LocalScheduler } = require(process.env.TEST_SCHEDULER_MODULE);
        const { silentLogger } = require(process.env.TEST_LOG_MODULE);
        (async () => {
          const scheduler = new LocalScheduler({ stateDir: process.env.TEST_STATE_DIR, workDir: process.env.TEST_WORK_DIR, log: silentLogger(), checkIntervalMs: 50 });
          await scheduler.start();
          scheduler.watch().subscribe((step) => {
            if (step.kind === 'upsert' && step.workload.allocation && step.workload.allocation.healthy === true) {
              process.stdout.write(JSON.stringify(step.workload) + '\\n');
            }
          });
          await scheduler.register(scheduler.render(JSON.parse(process.env.TEST_REQUEST)));
        })().catch((error) => { process.stderr.write(String(error && error.stack || error) + '\\n'); process.exit(1); });
      `;
      const previous = spawn(process.execPath, ['-e', script], {
        cwd: repoRoot,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          ...process.env,
          TEST_SCHEDULER_MODULE: path.resolve(__dirname, '../../controller/scheduler/local-scheduler.js'),
          TEST_LOG_MODULE: path.resolve(__dirname, '../../controller/util/log.js'),
          TEST_STATE_DIR: stateDir,
          TEST_WORK_DIR: repoRoot,
          TEST_REQUEST: JSON.stringify(request),
        },
      });
      strays.push(previous);
      let output = '';
      let errors = '';
      previous.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
      previous.stderr?.on('data', (chunk: Buffer) => (errors += chunk.toString()));
      const healthyLine = await waitFor('the previous scheduler to report a healthy workload', () => {
        if (previous.exitCode !== null) throw new Error(`previous scheduler exited: ${errors}`);
        return output.split('\n').find((line) => line.startsWith('{'));
      });
      const old = JSON.parse(healthyLine) as Workload;
      const oldAllocId = old.allocation?.id ?? '';
      seenAllocations.add(oldAllocId);
      const oldPids = Object.values(await pidsWhenRecorded(stateDir, oldAllocId, ['core', 'hmi']));
      const exited = new Promise((resolve) => previous.once('exit', resolve));
      previous.kill('SIGKILL');
      await exited;
      assert.deepEqual(oldPids.filter(alive), oldPids, 'the tasks outlive a scheduler killed with -9');

      // Traps for the restart: an unrelated process whose pid a stale record names, and a corrupt job file.
      const unrelated = spawn(process.execPath, ['-e', RUN_FOREVER], { stdio: 'ignore' });
      strays.push(unrelated);
      await new Promise((resolve) => unrelated.once('spawn', resolve));
      const staleAlloc = randomUUID();
      fs.mkdirSync(path.join(stateDir, 'allocs', staleAlloc));
      fs.writeFileSync(path.join(stateDir, 'allocs', staleAlloc, 'pids.json'), JSON.stringify({ core: unrelated.pid }));
      fs.writeFileSync(path.join(stateDir, 'jobs', 'broken.json'), '{ not json');

      const next = await makeScheduler({ stateDir });
      assert.deepEqual(oldPids.filter(alive), [], 'start() killed the leftovers');
      assert.ok(alive(unrelated.pid ?? 0), 'a process without the allocation id is never killed');
      assert.equal(fs.existsSync(path.join(stateDir, 'allocs', staleAlloc)), false);
      const fresh = await record(next).until(request.jobId, 'a fresh healthy allocation', (workload) =>
        workload.allocation?.healthy === true);
      assert.notEqual(fresh.allocation?.id, oldAllocId);
      assert.equal(fresh.specHash, old.specHash);
      assert.deepEqual(await tcpGreetingAndEcho(fresh.allocation?.ports.tcp, 'fresh'), { greeting: 'manticore demo core 8.2.0', echo: 'fresh' });
    });

    it('a new scheduler stops a leftover task with its process group, children with an environment of their own included', async function () {
      const stateDir = newStateDir();
      // What a Manticore killed with -9 leaves: an allocation directory with pids.json, and its task running
      // as the leader of its own process group, with a child it gave an environment without the allocation id.
      const allocId = randomUUID();
      seenAllocations.add(allocId);
      const childPidFile = path.join(stateDir, 'child.pid');
      const script = `
        const { spawn } = require('node:child_process');
        const child = spawn(process.execPath, ['-e', ${JSON.stringify(RUN_FOREVER)}], { stdio: 'ignore', env: { PATH: process.env.PATH } });
        require('node:fs').writeFileSync(${JSON.stringify(childPidFile)}, String(child.pid));
        ${RUN_FOREVER}
      `;
      const task = spawn(process.execPath, ['-e', script], { detached: true, stdio: 'ignore', env: { PATH: process.env.PATH, NOMAD_ALLOC_ID: allocId } });
      strays.push(task);
      const childPid = await waitFor("the task's child", () => fs.existsSync(childPidFile) && Number(fs.readFileSync(childPidFile, 'utf8')));
      strayPids.push(childPid);
      fs.mkdirSync(path.join(stateDir, 'allocs', allocId), { recursive: true });
      fs.writeFileSync(path.join(stateDir, 'allocs', allocId, 'pids.json'), JSON.stringify({ core: task.pid }));

      await makeScheduler({ stateDir });
      assert.equal(alive(task.pid ?? 0), false, 'the leftover task was stopped');
      assert.equal(alive(childPid), false, "the task's child went with its process group");
    });
  });

  describe('health checks', function () {
    it('passes an http check below 400, as Nomad does: 404 and 401 fail, a redirect passes', async function () {
      const stateDir = newStateDir();
      const scheduler = await makeScheduler({ stateDir });
      const recorder = record(scheduler);
      // Answers the checks 404, 401, then 302, and notes each answer in its stdout.
      const script = `
        const statuses = [404, 401, 302];
        require('node:http')
          .createServer((request, response) => {
            const status = statuses.shift() ?? 200;
            console.log(request.url + ' ' + status);
            response.writeHead(status, { location: '/' }).end();
          })
          .listen(Number(process.env.NOMAD_PORT_web), process.env.NOMAD_IP_web);
      `;
      const template = commandTemplate([{ name: 'web', script, ports: ['web'] }]);
      template.spec.services.push({ name: 'page', port: 'web', expose: 'http', check: { type: 'http', path: '/health' } });
      const job = scheduler.render(contractRequest(template, session()));
      await scheduler.register(job);
      const allocId = (await recorder.healthy(job)).allocation?.id ?? '';
      // Once healthy no more checks are made; stopped, the task's whole output is in its log.
      await scheduler.close();
      const answers = fs.readFileSync(path.join(stateDir, 'allocs', allocId, 'logs/web.stdout.0'), 'utf8').match(/^\/health \d+$/gm);
      assert.deepEqual(answers, ['/health 404', '/health 401', '/health 302'], 'healthy only once a check was answered below 400');
    });
  });

  describe('health checks, failing', function () {
    it('reports each check that has not passed yet with why its last probe failed, and none once all pass', async function () {
      const scheduler = await makeScheduler();
      const recorder = record(scheduler);
      // Answers 503 on port a until its marker file exists; nothing ever listens on port b until then either.
      const marker = path.join(newStateDir(), 'ready');
      const script = `
        const fs = require('node:fs');
        require('node:http')
          .createServer((request, response) => response.writeHead(fs.existsSync(${JSON.stringify(marker)}) ? 200 : 503).end())
          .listen(Number(process.env.NOMAD_PORT_a), process.env.NOMAD_IP_a);
        const timer = setInterval(() => {
          if (!fs.existsSync(${JSON.stringify(marker)})) return;
          clearInterval(timer);
          require('node:net').createServer().listen(Number(process.env.NOMAD_PORT_b), process.env.NOMAD_IP_b);
        }, 20);
      `;
      const template = commandTemplate([{ name: 'core', script, ports: ['a', 'b'] }]);
      template.spec.services.push(
        { name: 'page', port: 'a', expose: 'http', check: { type: 'http', path: '/health' } },
        { name: 'link', port: 'b', expose: 'tcp', check: { type: 'tcp' } },
      );
      const job = scheduler.render(contractRequest(template, session()));
      await scheduler.register(job);
      // Refused until the task listens, then answered 503: each change is reported.
      const failing = await recorder.until(job.id, 'the http check answered', (workload) => workload.allocation?.failingChecks?.[0]?.endsWith('answered 503') === true);
      assert.deepEqual(failing.allocation?.failingChecks, ['http GET /health on port a: answered 503', 'tcp on port b: connection refused']);
      assert.equal(failing.allocation?.healthy, undefined);

      fs.writeFileSync(marker, '');
      const healthy = await recorder.healthy(job);
      assert.equal(healthy.allocation?.failingChecks, undefined);
    });
  });

  describe('restart policy', function () {
    it('fails the allocation, stopping its other tasks, once a task exceeds the restart limit', async function () {
      const scheduler = await makeScheduler({ restart: { attempts: 2, intervalMs: 60_000, delayMs: 20 } });
      const recorder = record(scheduler);
      const job = scheduler.render(contractRequest(commandTemplate([
        { name: 'crash', script: EXIT_3 },
        { name: 'steady', script: RUN_FOREVER },
      ]), session()));
      await scheduler.register(job);
      const failed = await recorder.until(job.id, 'failed', (workload) =>
        workload.allocation?.clientStatus === 'failed' && workload.allocation.tasks.steady?.state === 'dead');
      const allocation = failed.allocation;
      assert.equal(allocation?.healthy, false);
      assert.deepEqual(allocation?.tasks.crash, {
        state: 'dead',
        failed: true,
        restarts: 2,
        // The task's name is the status message's to give ("crash: exited …"), as for every other event.
        lastEvent: 'exited with code 3; restart limit (2 in 60s) reached',
      });
      assert.equal(allocation?.tasks.steady?.failed, false);
      assert.match(allocation?.tasks.steady?.lastEvent ?? '', /sibling task crash failed/);
      assert.deepEqual(processesOf(new Set([allocation?.id ?? ''])), []);
      // A failed allocation is not live: registering the same content again starts a new one.
      await scheduler.register(job);
      const retried = recorder.workloads.get(job.id);
      assert.notEqual(retried?.allocation?.id, allocation?.id);
    });

    it('names the session on every line it logs about the job, its allocation and its tasks, so a filter on session finds why it failed', async function () {
      const captured = capturingLogger();
      const scheduler = await makeScheduler({ log: captured.log, restart: { attempts: 1, intervalMs: 60_000, delayMs: 20 } });
      const recorder = record(scheduler);
      const id = session();
      const job = scheduler.render(contractRequest(commandTemplate([{ name: 'crash', script: EXIT_3 }]), id));
      await scheduler.register(job);
      await recorder.until(job.id, 'failed', (workload) => workload.allocation?.clientStatus === 'failed');
      await scheduler.deregister(job.id);
      const about = captured.lines.filter((line) => line.jobId === job.id);
      for (const wanted of ['starting allocation', 'task started', 'task exited with code 3', 'allocation failed', 'job deregistered']) {
        assert.ok(about.some((line) => line.msg.startsWith(wanted)), `no "${wanted}" line: ${about.map((line) => line.msg).join(' | ')}`);
      }
      assert.deepEqual(about.filter((line) => line.session !== id).map((line) => line.msg), [], 'lines about the session that do not name it');
    });

    it('reschedule replaces a failed allocation: new id, new processes and ports, restart counts from 0', async function () {
      const stateDir = newStateDir();
      const scheduler = await makeScheduler({ stateDir, restart: { attempts: 1, intervalMs: 60_000, delayMs: 20 } });
      const recorder = record(scheduler);
      const job = scheduler.render(contractRequest(commandTemplate([
        { name: 'crash', script: EXIT_3, ports: ['a'] },
        { name: 'steady', script: RUN_FOREVER, ports: ['b'] },
      ]), session()));
      await scheduler.register(job);
      const failed = await recorder.until(job.id, 'failed', (workload) =>
        workload.allocation?.clientStatus === 'failed' && workload.allocation.tasks.steady?.state === 'dead');
      assert.equal(failed.allocation?.tasks.crash?.restarts, 1);
      const oldId = failed.allocation?.id ?? '';
      const { steady: oldSteady } = await pidsWhenRecorded(stateDir, oldId, ['steady']);

      await scheduler.reschedule(job.id);
      const [, newId = ''] = recorder.allocations.get(job.id) ?? [];
      assert.ok(newId !== '' && newId !== oldId, 'a new allocation is reported when reschedule resolves');
      const fresh = recorder.steps
        .flatMap((step) => (step.kind === 'upsert' && step.workload.allocation?.id === newId ? [step.workload] : []))
        .at(0);
      assert.deepEqual(fresh?.allocation?.tasks.steady, { state: 'pending', failed: false, restarts: 0 });
      assert.deepEqual(fresh?.allocation?.tasks.crash, { state: 'pending', failed: false, restarts: 0 });
      assert.deepEqual(Object.keys(fresh?.allocation?.ports ?? {}).sort(), ['a', 'b']);
      assert.equal(fs.existsSync(path.join(stateDir, 'allocs', oldId)), false, 'the failed allocation is gone');
      // The new allocation fails in turn soon: only what outlives its processes is looked at.
      const { steady: newSteady } = await pidsWhenRecorded(stateDir, newId, ['steady']);
      assert.notEqual(newSteady, oldSteady);
      assert.equal(alive(oldSteady ?? 0), false);
      assert.match(fs.readFileSync(path.join(stateDir, 'allocs', newId, 'logs/crash.stdout.0'), 'utf8'), /^--- manticore: starting crash \(restart 0\)/);
    });

    describe('on a fake clock', function () {
      let clock: sinon.SinonFakeTimers | undefined;
      afterEach(() => {
        clock?.restore();
        clock = undefined;
      });

      /** The job's workload once it satisfies `predicate`; driven by watch steps, so no timer is involved. */
      const when = (scheduler: LocalScheduler, jobId: string, predicate: (workload: Workload) => boolean): Promise<Workload> =>
        firstValueFrom(
          scheduler.watch().pipe(
            map((step) => (step.kind === 'reset' ? step.workloads.find((w) => w.jobId === jobId) : step.kind === 'upsert' ? step.workload : undefined)),
            filter((workload): workload is Workload => workload !== undefined && workload.jobId === jobId && predicate(workload)),
          ),
        );
      const crash = (workload: Workload): { state?: string; restarts?: number; lastEvent?: string } =>
        workload.allocation?.tasks.crash ?? {};

      async function crashing(restart: LocalSchedulerOptions['restart']): Promise<{ scheduler: LocalScheduler; job: RenderedJob }> {
        const scheduler = await makeScheduler({ restart });
        record(scheduler);
        // Only what the restart policy uses is faked; process exits and file I/O stay real.
        clock ??= sinon.useFakeTimers({ now: 1_000_000, toFake: ['setTimeout', 'clearTimeout', 'Date'] });
        const job = scheduler.render(contractRequest(commandTemplate([{ name: 'crash', script: EXIT_3 }]), session()));
        await scheduler.register(job);
        return { scheduler, job };
      }

      it('waits delayMs before each restart and fails at attempts + 1 exits within intervalMs', async function () {
        const { scheduler, job } = await crashing({ attempts: 2, intervalMs: 10_000, delayMs: 1_000 });
        const waiting = await when(scheduler, job.id, (w) => crash(w).state === 'dead' && crash(w).restarts === 0);
        assert.equal(crash(waiting).lastEvent, 'exited with code 3; restarting in 1s');
        // The restart timer's callback spawns the task synchronously, so a spy on spawn tells exactly
        // when the restart happened on the fake clock.
        const spawns = sinon.spy(childProcess, 'spawn');
        try {
          clock?.tick(999);
          assert.equal(spawns.callCount, 0, 'no restart before delayMs');
          clock?.tick(1);
          assert.equal(spawns.callCount, 1, 'restarted at delayMs');
        } finally {
          spawns.restore();
        }
        await when(scheduler, job.id, (w) => crash(w).state === 'dead' && crash(w).restarts === 1);
        clock?.tick(1_000);
        const failed = await when(scheduler, job.id, (w) => w.allocation?.clientStatus === 'failed');
        assert.equal(crash(failed).restarts, 2);
        assert.equal(crash(failed).lastEvent, 'exited with code 3; restart limit (2 in 10s) reached');
        const late = sinon.spy(childProcess, 'spawn');
        try {
          clock?.tick(60_000);
          assert.equal(late.callCount, 0, 'nothing restarts after the failure');
        } finally {
          late.restore();
        }
      });

      it('forgets restarts older than intervalMs', async function () {
        // Each restart comes 11 s after the previous one, so at most one falls within any 10 s window.
        const { scheduler, job } = await crashing({ attempts: 1, intervalMs: 10_000, delayMs: 11_000 });
        for (let restarts = 0; restarts < 3; restarts++) {
          const waiting = await when(scheduler, job.id, (w) => crash(w).state === 'dead' && crash(w).restarts === restarts);
          assert.equal(waiting.allocation?.clientStatus, 'running');
          assert.equal(crash(waiting).lastEvent, 'exited with code 3; restarting in 11s');
          clock?.tick(11_000);
        }
        await when(scheduler, job.id, (w) => crash(w).state === 'dead' && crash(w).restarts === 3);
        // Within the window, by contrast, the second exit is one too many.
        const tight = await crashing({ attempts: 1, intervalMs: 10_000, delayMs: 9_000 });
        await when(tight.scheduler, tight.job.id, (w) => crash(w).state === 'dead' && crash(w).restarts === 0);
        clock?.tick(9_000);
        const failed = await when(tight.scheduler, tight.job.id, (w) => w.allocation?.clientStatus === 'failed');
        assert.equal(crash(failed).lastEvent, 'exited with code 3; restart limit (1 in 10s) reached');
      });
    });
  });
});
