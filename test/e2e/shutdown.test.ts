import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import type { Session } from '../../controller/api/types.js';
import { Keys } from '../../controller/controller/keys.js';
import { ConsulStore } from '../../controller/store/consul-store.js';
import { silentLogger } from '../../controller/util/log.js';
import { ConsulDouble } from '../fakes/consul.js';
import { NomadDouble } from '../fakes/nomad.js';
import { httpRequest, jsonRequest } from '../support/http.js';
import { isolatedEnvironment, repoRoot, startManticore, waitForFrontend, type ManticoreProcess } from '../support/manticore.js';
import { freePort } from '../support/ports.js';
import { alive, processesNaming } from '../support/processes.js';
import { waitFor } from '../support/wait.js';

const cli = path.join(repoRoot, 'dist/controller/cli/main.js');
const keys = new Keys('manticore/');
const graceSeconds = 10;

interface Part {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

/**
 * Each part as its own process, as a cluster runs them (`manticore controller`, `frontend`, `router`,
 * against the Consul and Nomad doubles), stopped with SIGTERM while it has work: each exits 0 well within
 * its grace period, hands over or withdraws what it held, and nothing of the users' sessions is lost.
 */
describe('end to end: SIGTERM of every process', function () {
  this.timeout(90_000);
  let consul: ConsulDouble;
  let nomad: NomadDouble;
  let store: ConsulStore;
  let stateDir: string;
  let env: NodeJS.ProcessEnv;
  let api: string;
  let statusPorts: { controller: number; router: number; haproxy: number };
  const parts = new Map<string, Part>();

  const startPart = (role: 'controller' | 'frontend' | 'router'): Part => {
    const child = spawn(process.execPath, [cli, role, '--config', 'manifests/examples/cluster-dev.yaml'], { cwd: repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const part = { child, output: () => output, exited: new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code))) };
    parts.set(role, part);
    return part;
  };

  /** SIGTERM, then the exit code and how long it took. */
  const terminate = async (role: string): Promise<{ code: number | null; ms: number }> => {
    const part = parts.get(role)!;
    const startedAt = Date.now();
    part.child.kill('SIGTERM');
    const code = await part.exited;
    return { code, ms: Date.now() - startedAt };
  };

  before(async () => {
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-shutdown-'));
    consul = await ConsulDouble.start({ port: 0, log: silentLogger() });
    nomad = await NomadDouble.start({ port: 0, workDir: repoRoot, log: silentLogger() });
    store = new ConsulStore({ address: consul.address, log: silentLogger() });
    const isolated = await isolatedEnvironment(stateDir, 4);
    ({ api, statusPorts } = isolated);
    env = { ...process.env, ...isolated.env, CONSUL_HTTP_ADDR: consul.address, NOMAD_ADDR: nomad.address, MANTICORE_SHUTDOWN_GRACE_SECONDS: String(graceSeconds) };
    for (const role of ['router', 'controller', 'frontend'] as const) startPart(role);
    await waitFor('every part up', async () => {
      const probes = await Promise.all([`${api}/healthz`, `http://127.0.0.1:${statusPorts.controller}/readyz`, `http://127.0.0.1:${statusPorts.router}/readyz`].map((url) => httpRequest(url).catch(() => undefined)));
      return probes.every((answer) => answer?.status === 200);
    }, 30_000, 50).catch((error: Error) => {
      throw new Error(`${error.message}\n${[...parts.values()].map((part) => part.output()).join('\n')}`);
    });
  });

  after(async () => {
    for (const part of parts.values()) part.child.kill('SIGKILL');
    await store.close();
    await nomad.stop();
    await consul.stop();
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  it('stops the front end, the router and the controller cleanly, each handing over, with nothing lost', async () => {
    const created = await jsonRequest<Session>(`${api}/api/v1/sessions`, 'POST', { template: 'demo' }, { 'x-manticore-user': 'alice' });
    assert.equal(created.status, 201);
    const id = created.body.metadata.id;
    await waitFor('the session Ready', async () => (await jsonRequest<Session>(`${api}/api/v1/sessions/${id}`, 'GET', undefined, { 'x-manticore-user': 'alice' })).body.status.phase === 'Ready', 30_000, 50);

    // A user following the session when the front end stops is told why the stream ends.
    let stream = '';
    const streamEnded = new Promise<void>((resolve, reject) => {
      http
        .get(`${api}/api/v1/sessions/${id}/events`, { headers: { 'x-manticore-user': 'alice' } }, (response) => {
          response.setEncoding('utf8');
          response.on('data', (chunk: string) => (stream += chunk));
          response.on('end', () => resolve());
        })
        .on('error', reject);
    });
    await waitFor('the first event', () => stream.includes('event: session'));
    const frontend = await terminate('frontend');
    assert.equal(frontend.code, 0, parts.get('frontend')!.output());
    assert.ok(frontend.ms < graceSeconds * 1000, `front end stopped in ${frontend.ms} ms`);
    await streamEnded;
    assert.match(stream, /event: closing\ndata: \{"reason":"the server is shutting down"\}/);

    const haproxyPid = Number(fs.readFileSync(path.join(stateDir, 'haproxy/haproxy.pid'), 'utf8'));
    const router = await terminate('router');
    assert.equal(router.code, 0, parts.get('router')!.output());
    assert.ok(router.ms < graceSeconds * 1000, `router stopped in ${router.ms} ms`);
    assert.equal(await store.get(keys.router('local')), undefined, 'the router withdrew its heartbeat, so no session waits for it');
    assert.equal(alive(haproxyPid), false, 'its HAProxy stopped with it');

    assert.ok((await store.get(keys.leader))?.session, 'the controller leads');
    const controller = await terminate('controller');
    assert.equal(controller.code, 0, parts.get('controller')!.output());
    assert.ok(controller.ms < graceSeconds * 1000, `controller stopped in ${controller.ms} ms`);
    assert.equal((await store.get(keys.leader))?.session, undefined, 'the leader lock was released, so a standby would lead at once');
    assert.deepEqual((await store.list(keys.controllers)).entries, [], 'the replica withdrew its heartbeat');

    process.stdout.write(`      stopped after SIGTERM: front end ${frontend.ms} ms, router ${router.ms} ms, controller ${controller.ms} ms\n`);
    // Stopping is not deleting: the session, its status and routes, and its job are all still there.
    assert.ok(await store.get(keys.session(id)));
    assert.equal((JSON.parse((await store.get(keys.status(id)))!.value) as { phase: string }).phase, 'Ready');
    assert.ok(await store.get(keys.route(id)));
    const jobs = (await (await fetch(`${nomad.address}/v1/jobs?prefix=manticore-`)).json()) as Array<{ ID: string; Status: string }>;
    assert.deepEqual(jobs.map((job) => [job.ID, job.Status]), [[`manticore-${id}`, 'running']]);
  });
});

/**
 * `manticore up` against a Consul that does not answer (yet): start-up waits for the store with its HAProxy
 * already running. SIGTERM then stops what has started, as it does once everything runs, and the process
 * exits 0, rather than dying of the signal with HAProxy left behind.
 */
describe('end to end: SIGTERM during start-up', function () {
  this.timeout(60_000);
  let instance: ManticoreProcess | undefined;
  const dirs = ownStateDir('manticore-shutdown-', () => instance?.child);

  it('stops the HAProxy it started while waiting for the store, and exits 0', async () => {
    const { stateDir, haproxyConfig } = dirs;
    const isolated = await isolatedEnvironment(stateDir, 4);
    // Nothing listens there: every call to Consul (or Nomad) is refused.
    const nowhere = `http://127.0.0.1:${await freePort()}`;
    const env = { ...process.env, ...isolated.env, CONSUL_HTTP_ADDR: nowhere, NOMAD_ADDR: nowhere, MANTICORE_SHUTDOWN_GRACE_SECONDS: String(graceSeconds) };
    instance = startManticore('manifests/examples/cluster-dev.yaml', env);
    // The router starts HAProxy, then waits for its first routes from the store, retrying.
    await waitFor('start-up waiting for the store', () => instance!.output().includes('watch request failed; retrying'), 30_000, 50).catch((error: Error) => {
      throw new Error(`${error.message}\n${instance!.output()}`);
    });
    assert.notDeepEqual(processesNaming(haproxyConfig), [], 'HAProxy runs');
    const startedAt = Date.now();
    instance.child.kill('SIGTERM');
    const code = await instance.exited;
    assert.equal(code, 0, instance.output().slice(-1000));
    assert.ok(Date.now() - startedAt < graceSeconds * 1000, `stopped in ${Date.now() - startedAt} ms`);
    assert.deepEqual(processesNaming(haproxyConfig), [], 'its HAProxy stopped with it');
    assert.doesNotMatch(instance.output(), /Manticore is running/);
  });
});

/**
 * Ctrl-C in a terminal sends SIGINT to the whole foreground process group, not to Manticore alone: what
 * Manticore started must not take it as its own and stop out of order (HAProxy dying under the router,
 * which reports it and restarts it while shutting down).
 */
describe('end to end: Ctrl-C in the terminal of `manticore up`', function () {
  this.timeout(60_000);
  let child: ChildProcess | undefined;
  const dirs = ownStateDir('manticore-ctrl-c-', () => child);

  // SIGHUP: the terminal closed (its window, an ssh connection dropped), which must not leave HAProxy serving.
  for (const signal of ['SIGINT', 'SIGHUP'] as const) {
    it(`stops HAProxy in order, as it stops the rest, and exits 0 (${signal})`, async () => {
      const { stateDir, haproxyConfig } = dirs;
      const isolated = await isolatedEnvironment(stateDir, 4);
      // detached: a process group of its own, as a shell gives a foreground job.
      child = spawn(process.execPath, [cli, 'up', '--config', 'manifests/examples/embedded.yaml'], { cwd: repoRoot, env: { ...process.env, ...isolated.env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
      let output = '';
      child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
      child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
      const exited = new Promise<number | null>((resolve) => child!.once('exit', (code) => resolve(code)));
      await waitFor('the front end', async () => (await httpRequest(`${isolated.api}/healthz`).catch(() => undefined))?.status === 200, 30_000, 50).catch((error: Error) => {
        throw new Error(`${error.message}\n${output}`);
      });
      assert.notDeepEqual(processesNaming(haproxyConfig), [], 'HAProxy runs');
      process.kill(-child.pid!, signal);
      assert.equal(await exited, 0, output.slice(-2000));
      assert.doesNotMatch(output, /haproxy died|exited with code 130/, 'HAProxy was interrupted before it was stopped');
      assert.deepEqual(processesNaming(haproxyConfig), [], 'its HAProxy stopped with it');
    });
  }
});

/**
 * A second Ctrl-C (or the grace period running out) cuts the orderly stop short; what Manticore started
 * leads process groups of its own, so it would outlive Manticore and hold its ports.
 */
describe('end to end: a shutdown of `manticore up` cut short', function () {
  this.timeout(60_000);
  let instance: ManticoreProcess | undefined;
  const dirs = ownStateDir('manticore-cut-short-', () => instance?.child);

  it('kills HAProxy and every session process still running before it exits 1', async () => {
    const { stateDir, haproxyConfig } = dirs;
    const templates = path.join(stateDir, 'templates');
    fs.mkdirSync(templates);
    // A task that ignores SIGTERM keeps the stop waiting for its kill timeout; the state directory in its
    // arguments finds it.
    fs.writeFileSync(
      path.join(templates, 'deaf.yaml'),
      `apiVersion: manticore/v1
kind: SessionTemplate
metadata: { name: deaf, description: A task that ignores SIGTERM. }
spec:
  parameters: []
  services: [{ name: tcp, port: tcp, expose: tcp }]
  backends:
    embedded:
      tasks: [{ name: core, command: perl, args: ["-e", "$SIG{TERM} = 'IGNORE'; sleep 3600", "${stateDir}"], ports: [tcp] }]
`,
    );
    const isolated = await isolatedEnvironment(stateDir, 4);
    instance = startManticore('manifests/examples/embedded.yaml', { ...process.env, ...isolated.env, MANTICORE_TEMPLATES_DIR: templates, MANTICORE_LOG_LEVEL: 'info' });
    await waitForFrontend(isolated.api, instance);
    const created = await jsonRequest<Session>(`${isolated.api}/api/v1/sessions`, 'POST', { template: 'deaf' }, { 'x-manticore-user': 'alice' });
    assert.equal(created.status, 201);
    const task = await waitFor('the session task', () => processesNaming(stateDir).find((pid) => !processesNaming(haproxyConfig).includes(pid)));
    assert.notDeepEqual(processesNaming(haproxyConfig), [], 'HAProxy runs');

    instance.child.kill('SIGINT');
    await waitFor('the shutdown to start', () => instance!.output().includes('shutting down'));
    instance.child.kill('SIGINT');
    assert.equal(await instance.exited, 1, instance.output().slice(-2000));
    assert.match(instance.output(), /shutdown cut short: SIGINT received while stopping/);
    // SIGKILL takes effect as each process next runs; the deadline only bounds a failure.
    await waitFor('its HAProxy to be gone', () => processesNaming(haproxyConfig).length === 0, 5_000);
    await waitFor('the session task to be gone', () => !alive(task), 5_000);
  });
});

/**
 * A state directory of its own for the enclosing describe block (its HAProxy's configuration inside it). After
 * the block, the Manticore process is killed if it still runs, and so is every process whose command line
 * names the directory (HAProxy, session tasks), before the directory is removed.
 */
function ownStateDir(prefix: string, manticore: () => ChildProcess | undefined): { stateDir: string; haproxyConfig: string } {
  const dirs = { stateDir: '', haproxyConfig: '' };
  before(() => {
    dirs.stateDir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    dirs.haproxyConfig = path.join(dirs.stateDir, 'haproxy/haproxy.cfg');
  });
  after(() => {
    const child = manticore();
    if (child?.exitCode === null) child.kill('SIGKILL');
    for (const pid of processesNaming(dirs.stateDir)) process.kill(pid, 'SIGKILL');
    fs.rmSync(dirs.stateDir, { recursive: true, force: true });
  });
  return dirs;
}
