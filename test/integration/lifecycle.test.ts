import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Observable } from 'rxjs';
import { loadTemplates } from '../../controller/api/templates.js';
import type { SessionTemplate } from '../../controller/api/types.js';
import { LocalScheduler } from '../../controller/scheduler/local-scheduler.js';
import { NomadScheduler } from '../../controller/scheduler/nomad-scheduler.js';
import { jobIdFor, type RenderedJob, type Scheduler, type WorkloadStep } from '../../controller/scheduler/scheduler.js';
import { ConsulStore } from '../../controller/store/consul-store.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import type { Store } from '../../controller/store/store.js';
import { ConsulDouble } from '../fakes/consul.js';
import { NomadDouble } from '../fakes/nomad.js';
import { condition, ControllerHarness, createSession, keys, requestDeletion, routesOf, statusOf, statusWhen, testLog, type HarnessOptions } from '../support/controller-harness.js';
import { waitFor } from '../support/wait.js';

const repoRoot = path.resolve(__dirname, '../../..');
const templates: ReadonlyMap<string, SessionTemplate> = new Map([
  ...loadTemplates(path.join(repoRoot, 'manifests/templates')),
  ...loadTemplates(path.join(repoRoot, 'test/fixtures/templates')),
]);
const minute = 60_000;

/** A scheduler that notes, in order, each registration and each workload first reported healthy. */
class RecordingScheduler implements Scheduler {
  readonly log: string[] = [];
  private readonly healthy = new Set<string>();

  constructor(private readonly inner: Scheduler) {}

  get kind(): Scheduler['kind'] {
    return this.inner.kind;
  }
  start(): Promise<void> {
    return this.inner.start();
  }
  render(...args: Parameters<Scheduler['render']>): RenderedJob {
    return this.inner.render(...args);
  }
  async register(job: RenderedJob, signal?: AbortSignal): Promise<void> {
    this.log.push(`register ${job.sessionId}`);
    await this.inner.register(job, signal);
  }
  deregister(jobId: string, signal?: AbortSignal): Promise<void> {
    return this.inner.deregister(jobId, signal);
  }
  stop(jobId: string, signal?: AbortSignal): Promise<void> {
    return this.inner.stop(jobId, signal);
  }
  reschedule(jobId: string, signal?: AbortSignal): Promise<void> {
    return this.inner.reschedule(jobId, signal);
  }
  capacityChanges(): Observable<void> {
    return this.inner.capacityChanges();
  }
  readLogs(...args: Parameters<Scheduler['readLogs']>): ReturnType<Scheduler['readLogs']> {
    return this.inner.readLogs(...args);
  }
  watch(): Observable<WorkloadStep> {
    return new Observable<WorkloadStep>((subscriber) =>
      this.inner.watch().subscribe({
        next: (step) => {
          const workloads = step.kind === 'reset' ? step.workloads : step.kind === 'upsert' ? [step.workload] : [];
          for (const workload of workloads) {
            if (workload.allocation?.healthy !== true || this.healthy.has(workload.sessionId)) continue;
            this.healthy.add(workload.sessionId);
            this.log.push(`healthy ${workload.sessionId}`);
          }
          subscriber.next(step);
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => subscriber.complete(),
      }),
    );
  }
  close(): Promise<void> {
    return this.inner.close();
  }

  /** The most sessions registered and not yet healthy at one moment. */
  peakStarting(): number {
    let starting = 0;
    let peak = 0;
    for (const entry of this.log) {
      starting += entry.startsWith('register') ? 1 : -1;
      peak = Math.max(peak, starting);
    }
    return peak;
  }
}

interface World {
  readonly store: Store;
  readonly scheduler: Scheduler;
  /** The Nomad double, on the cluster backend. */
  readonly nomad?: NomadDouble;
  /** The local scheduler's state (allocations and their process ids), on the embedded backend. */
  readonly stateDir?: string;
  cleanup(): Promise<void>;
}

interface Backend {
  readonly name: string;
  /** The template of an ordinary session here (real processes locally, simulated containers on the double). */
  readonly template: string;
  /** `nodes`: the double's node sizes (cluster only). */
  /** `slowStart`: workloads take about a second to become healthy, so a start can be seen overlapping others. */
  setUp(options: { restartAttempts: number; slowStart?: boolean; nodes?: Array<{ name: string; cpu: number; memoryMB: number }> }): Promise<World>;
  /** Kills the session's Core task the way a crash would. */
  killCore(world: World, allocationId: string): void;
}

const embedded: Backend = {
  name: 'the embedded backend (SQLite store, local processes)',
  template: 'demo',
  async setUp({ restartAttempts, slowStart }) {
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-lifecycle-'));
    const store = EmbeddedStore.open(':memory:');
    const scheduler = new LocalScheduler({
      stateDir,
      workDir: repoRoot,
      log: testLog,
      restart: { attempts: restartAttempts, intervalMs: 60_000, delayMs: 50 },
      checkIntervalMs: slowStart ? 1_000 : 50,
    });
    await scheduler.start();
    return {
      store,
      scheduler,
      stateDir,
      async cleanup() {
        await scheduler.close();
        await store.close();
        fs.rmSync(stateDir, { recursive: true, force: true });
      },
    };
  },
  killCore(world, allocationId) {
    const pids = JSON.parse(fs.readFileSync(path.join(world.stateDir!, 'allocs', allocationId, 'pids.json'), 'utf8')) as Record<string, number>;
    process.kill(pids.core!, 'SIGKILL');
  },
};

const cluster: Backend = {
  name: 'the cluster backend (Consul KV and Nomad API doubles)',
  template: 'sdl',
  async setUp({ restartAttempts, slowStart, nodes }) {
    const consul = await ConsulDouble.start({ log: testLog });
    const nomad = await NomadDouble.start({ workDir: repoRoot, log: testLog, ...(nodes ? { nodes } : {}), ...(slowStart ? { dockerStartMs: 1_000 } : {}) });
    const store = new ConsulStore({ address: consul.address, log: testLog });
    const scheduler = new NomadScheduler({
      address: nomad.address,
      log: testLog,
      job: { datacenters: ['dc1'], restart: { attempts: restartAttempts, intervalMs: 60_000, delayMs: 50 }, healthyDeadlineMs: 30_000, checkIntervalMs: 50, checkTimeoutMs: 1_000 },
      requestTimeoutMs: 5_000,
    });
    await scheduler.start();
    return {
      store,
      scheduler,
      nomad,
      async cleanup() {
        await scheduler.close();
        await store.close();
        await nomad.stop();
        await consul.stop();
      },
    };
  },
  killCore(world, allocationId) {
    world.nomad!.killTask(allocationId, 'core', 'SIGKILL');
  },
};

for (const backend of [embedded, cluster]) {
  describe(`session lifecycle on ${backend.name}`, function () {
    this.timeout(60_000);
    let world: World;
    let h: ControllerHarness<Scheduler>;

    async function start(options: HarnessOptions & { restartAttempts?: number; nodes?: Array<{ name: string; cpu: number; memoryMB: number }> } = {}): Promise<void> {
      world = await backend.setUp({ restartAttempts: options.restartAttempts ?? 3, ...(options.nodes ? { nodes: options.nodes } : {}) });
      h = new ControllerHarness<Scheduler>(world.store, world.scheduler, { templates, ports: { start: 20000, end: 20099 }, ...options });
      await h.start();
    }

    afterEach(async () => {
      await h.controller.stop();
      await h.router.stop();
      await world.cleanup();
    });

    const create = (owner: string, createdAt: number, template = backend.template): Promise<string> =>
      createSession(world.store, { owner, createdAt, spec: { template, parameters: {} } });

    it('admits first come first served up to maxSessions; the third user waits with a position and starts when one leaves', async () => {
      await start({ limits: { maxSessions: 2 } });
      const base = Date.now() - 10 * minute;
      const ann = await create('ann', base);
      const bob = await create('bob', base + 1000);
      const cid = await create('cid', base + 2000);
      await statusWhen(world.store, ann, 'Ready', 30_000);
      await statusWhen(world.store, bob, 'Ready', 30_000);
      const waiting = await statusWhen(world.store, cid, (s) => s.phase === 'Waiting' && s.queuePosition === 1);
      assert.equal(condition(waiting, 'Admitted'), 'False/ClusterFull');
      assert.equal(await routesOf(world.store, cid), undefined);
      await requestDeletion(world.store, ann);
      const ready = await statusWhen(world.store, cid, 'Ready', 30_000);
      assert.equal(ready.queuePosition, undefined);
      await waitFor('ann gone', async () => (await world.store.get(keys.session(ann))) === undefined);
    });

    it('starts 50 sessions created at once concurrently', async function () {
      this.timeout(120_000);
      const recording = await (async () => {
        world = await backend.setUp({ restartAttempts: 3, slowStart: true, nodes: [{ name: 'big', cpu: 100_000, memoryMB: 100_000 }] });
        const scheduler = new RecordingScheduler(world.scheduler);
        h = new ControllerHarness<Scheduler>(world.store, scheduler, { templates, ports: { start: 20000, end: 20099 }, limits: { maxStarting: 50 }, workers: 16 });
        await h.start();
        return scheduler;
      })();
      const base = Date.now() - 10 * minute;
      const ids = await Promise.all(Array.from({ length: 50 }, (_, n) => create(`user${n}`, base + n, 'light')));
      for (const id of ids) await statusWhen(world.store, id, 'Ready', 60_000);
      const registered = recording.log.filter((entry) => entry.startsWith('register')).length;
      assert.equal(registered, 50, 'one registration per session');
      // One at a time would never have more than one session starting; here most start together.
      assert.ok(recording.peakStarting() >= 25, `at most ${recording.peakStarting()} sessions were starting at once: ${recording.log.slice(0, 60).join(', ')}`);
    });

    it('warns an idle session, clears the warning on activity, and deletes it at the timeout, across a controller restart', async () => {
      await start();
      const id = await create('ann', Date.now());
      await statusWhen(world.store, id, 'Ready', 30_000);
      h.tick(25 * minute);
      await statusWhen(world.store, id, (s) => condition(s, 'IdleWarning') === 'True/Idle');
      await world.store.put(keys.activity(id), JSON.stringify({ lastActivityAt: new Date(h.clock.now).toISOString() }));
      await statusWhen(world.store, id, (s) => condition(s, 'IdleWarning') === 'False/Active');
      await h.restartController();
      h.tick(25 * minute);
      await statusWhen(world.store, id, (s) => condition(s, 'IdleWarning') === 'True/Idle');
      await h.restartController();
      h.tick(5 * minute);
      await waitFor('the session is gone', async () => (await world.store.get(keys.session(id))) === undefined, 20_000);
      await waitFor('its job is gone', async () => !(await jobExists(world, id)), 20_000);
      assert.equal(await world.store.get(keys.activity(id)), undefined);
    });

    it('notices a crash after Ready, leaves Ready, and recovers', async () => {
      await start();
      const id = await create('ann', Date.now());
      const ready = await statusWhen(world.store, id, 'Ready', 30_000);
      backend.killCore(world, ready.allocationId!);
      const down = await statusWhen(world.store, id, (s) => s.phase === 'Starting');
      assert.equal(down.failures?.length, 1);
      assert.deepEqual(down.endpoints, ready.endpoints, 'the addresses stay while it recovers');
      const back = await statusWhen(world.store, id, 'Ready', 30_000);
      assert.deepEqual(back.endpoints, ready.endpoints);
    });

    it('replaces a failed workload after the backoff and ends in Failed after too many failures', async () => {
      await start({ restartAttempts: 0, policy: { maxRestarts: 1 } });
      const id = await create('ann', Date.now());
      const ready = await statusWhen(world.store, id, 'Ready', 30_000);
      backend.killCore(world, ready.allocationId!);
      const restarting = await statusWhen(world.store, id, (s) => condition(s, 'Healthy') === 'False/Restarting', 20_000);
      assert.equal(restarting.failures?.[0]?.reason, 'AllocationFailed');
      h.tick(5_000);
      const again = await statusWhen(world.store, id, (s) => s.phase === 'Ready' && s.allocationId !== ready.allocationId, 30_000);
      backend.killCore(world, again.allocationId!);
      const failed = await statusWhen(world.store, id, 'Failed', 20_000);
      assert.equal(condition(failed, 'Ready'), 'False/CrashLoop');
      assert.match(failed.conditions[0]!.message, /failed 2 times within 10 min; last: /);
      await waitFor('released', async () => !(await jobExists(world, id)) && (await routesOf(world.store, id)) === undefined, 20_000);
    });

    it('fails a session that is not healthy before the start timeout, and releases it', async () => {
      await start({ policy: { startTimeoutMs: 10 * minute } });
      const id = await create('ann', Date.now(), 'stuck');
      await statusWhen(world.store, id, (s) => s.phase === 'Starting' && condition(s, 'Scheduled') === 'True/Placed', 20_000);
      h.tick(10 * minute);
      const failed = await statusWhen(world.store, id, 'Failed', 20_000);
      assert.equal(condition(failed, 'Ready'), 'False/StartTimeout');
      assert.match(failed.conditions[0]!.message, /not ready within 10 min: /);
      await waitFor('released', async () => !(await jobExists(world, id)) && (await routesOf(world.store, id)) === undefined, 20_000);
    });

    it('sweeps orphans of every kind at start-up: jobs, routes, ports, statuses and activity without a session', async () => {
      // Without a grace period the running orphan job goes at once, as debris does.
      await start({ orphanGracePeriodMs: 0 });
      const keep = await create('ann', Date.now());
      await statusWhen(world.store, keep, 'Ready', 30_000);
      await h.controller.stop();
      const orphan = 'orphan000001';
      const template = templates.get(backend.template)!;
      const endpoints = Object.fromEntries(template.spec.services.map((service, n) => [service.name, { url: `tcp://localhost:${20060 + n}`, host: 'localhost', port: 20060 + n }]));
      const parameters = Object.fromEntries(template.spec.parameters.map((parameter) => [parameter.name, parameter.default]));
      const job = world.scheduler.render({ jobId: jobIdFor(orphan), sessionId: orphan, template, parameters, endpoints });
      await world.scheduler.register(job);
      await world.store.put(keys.route('orphan000002'), JSON.stringify({ sessionId: 'orphan000002', hosts: [], ports: [{ service: 'tcp', port: 20050 }] }));
      await world.store.put(keys.status('orphan000003'), JSON.stringify({ phase: 'Ready', observedGeneration: 1, conditions: [], endpoints: {}, events: [] }));
      await world.store.put(keys.activity('orphan000004'), JSON.stringify({ lastActivityAt: new Date().toISOString() }));
      h.controller = await h.startController();
      await waitFor(
        'orphans removed',
        async () =>
          !(await jobExists(world, orphan)) &&
          (await world.store.get(keys.route('orphan000002'))) === undefined &&
          (await world.store.get(keys.status('orphan000003'))) === undefined &&
          (await world.store.get(keys.activity('orphan000004'))) === undefined,
        20_000,
      );
      assert.equal((await statusOf(world.store, keep))?.phase, 'Ready', 'the live session is untouched');
    });

    if (backend === cluster) {
      it('keeps a session Nomad cannot place waiting at the head, with no job left, and starts it as soon as a node joins', async () => {
        // Room for one sdl session (325 MB) on the only node.
        await start({ nodes: [{ name: 'small', cpu: 4_000, memoryMB: 400 }] });
        const base = Date.now() - 10 * minute;
        const ann = await create('ann', base);
        await statusWhen(world.store, ann, 'Ready', 30_000);
        const bob = await create('bob', base + 1000);
        const blocked = await statusWhen(world.store, bob, (s) => s.phase === 'Waiting' && condition(s, 'Admitted') === 'False/InsufficientCapacity', 20_000);
        assert.equal(blocked.queuePosition, 1);
        assert.match(blocked.conditions[0]!.message, /memory/);
        await waitFor('no job left registered', async () => !(await jobExists(world, bob)));
        const cid = await create('cid', base + 2000);
        await statusWhen(world.store, cid, (s) => s.phase === 'Waiting' && s.queuePosition === 2);

        world.nomad!.addNode({ name: 'joined', cpu: 4_000, memoryMB: 400 });
        await statusWhen(world.store, bob, 'Ready', 30_000);
        // Nomad is the judge of room: cid may be tried, and waits at the head again with nothing held.
        await statusWhen(world.store, cid, (s) => s.phase === 'Waiting' && s.queuePosition === 1 && condition(s, 'Admitted') === 'False/InsufficientCapacity', 20_000);
        await waitFor('no job left for cid', async () => !(await jobExists(world, cid)));
        await requestDeletion(world.store, ann);
        await statusWhen(world.store, cid, 'Ready', 30_000);
      });
    }
  });
}

async function jobExists(world: World, sessionId: string): Promise<boolean> {
  return new Promise<boolean>((resolve, reject) => {
    const subscription = world.scheduler.watch().subscribe({
      next: (step) => {
        if (step.kind !== 'reset') return;
        resolve(step.workloads.some((workload) => workload.sessionId === sessionId));
        queueMicrotask(() => subscription.unsubscribe());
      },
      error: reject,
    });
  });
}
