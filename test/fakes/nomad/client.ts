import http from 'node:http';
import net from 'node:net';
import type { Logger } from '../../../controller/util/log.js';
import type { AllocClient } from './state.js';
import { TaskRunner, type TaskHost } from './tasks.js';
import type { AllocRecord, CheckSpec, HealthSpec, NodeRecord } from './types.js';

/**
 * The Nomad client of the double: one AllocRunner per allocation placed on any of its nodes. An
 * AllocRunner starts the tasks, derives the allocation's ClientStatus from its task states (Nomad's
 * getClientStatus), probes the service checks and sets DeploymentStatus.Healthy once (allochealth).
 */

export interface ClientOptions {
  workDir: string;
  hostIP: string;
  dockerStartMs: number;
  dockerLogIntervalMs: number;
  /** An allocation's `alloc/logs` directory. */
  logsDir(allocId: string): string;
  log: Logger;
  node(id: string): NodeRecord | undefined;
  report(alloc: AllocRecord): void;
}

interface CheckProbe {
  spec: CheckSpec;
  /** Simulated checks (docker tasks: nothing really listens) pass once the tasks run. */
  simulated: boolean;
  passing: boolean;
}

class AllocRunner implements TaskHost {
  readonly tasks: TaskRunner[];
  readonly log: Logger;
  private readonly checks: CheckProbe[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  private healthyTimer: NodeJS.Timeout | undefined;
  private healthyDeadline: NodeJS.Timeout | undefined;
  private stopping: Promise<void> | undefined;
  private reportQueued = false;
  private destroyed = false;

  constructor(
    readonly alloc: AllocRecord,
    readonly node: NodeRecord,
    private readonly options: ClientOptions,
  ) {
    this.log = options.log;
    this.tasks = alloc.group.tasks.map((spec) => new TaskRunner(this, spec));
    for (const task of this.tasks) alloc.TaskStates[task.spec.name] = task.state;
    const dockerOnly = alloc.group.tasks.every((task) => task.driver === 'docker');
    for (const service of alloc.group.services) for (const spec of service.checks) this.checks.push({ spec, simulated: dockerOnly, passing: false });
    for (const task of alloc.group.tasks) {
      for (const service of task.services) for (const spec of service.checks) this.checks.push({ spec, simulated: task.driver === 'docker', passing: false });
    }
  }

  get workDir(): string {
    return this.options.workDir;
  }
  get hostIP(): string {
    return this.options.hostIP;
  }
  get dockerStartMs(): number {
    return this.options.dockerStartMs;
  }
  get dockerLogIntervalMs(): number {
    return this.options.dockerLogIntervalMs;
  }
  get logsDir(): string {
    return this.options.logsDir(this.alloc.ID);
  }

  start(): void {
    this.changed();
    for (const task of this.tasks) task.start();
    for (const check of this.checks) if (!check.simulated) this.probeLoop(check);
    this.watchHealth();
  }

  /** Updated in place: a new deployment (DeploymentStatus cleared) has its health judged from now, as allochealth starts a new tracker. */
  updated(): void {
    if (this.alloc.DeploymentStatus !== null) return;
    this.watchHealth();
    this.changed();
  }

  /** The healthy deadline of the deployment (or migration) the allocation is judged for runs from now. */
  private watchHealth(): void {
    if (this.healthyDeadline) {
      clearTimeout(this.healthyDeadline);
      this.timers.delete(this.healthyDeadline);
      this.healthyDeadline = undefined;
    }
    const health = this.health;
    if (health && health.healthyDeadlineMs > 0) {
      this.healthyDeadline = this.later(health.healthyDeadlineMs, () => this.setHealth(false, 'healthy deadline passed'));
    }
  }

  /** In a deployment by the job's update strategy, else (a migration, a lost allocation's replacement) by the group's Migrate strategy. */
  private get health(): HealthSpec | undefined {
    return this.alloc.DeploymentID !== '' ? this.alloc.job.spec.update : this.alloc.group.migrate;
  }

  private later(ms: number, action: () => void): NodeJS.Timeout {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (!this.destroyed) action();
    }, ms);
    this.timers.add(timer);
    return timer;
  }

  /**
   * The allocation's state moved on. Nomad's client sends allocation updates to the servers in batches
   * (its allocSync, every 200 ms), each allocation's latest state once; here the changes of one turn of
   * the event loop (tasks started together, a task and the health it settles) go as one update.
   */
  changed(): void {
    if (this.destroyed) return;
    this.refreshClientStatus();
    this.evaluateHealth();
    if (this.reportQueued) return;
    this.reportQueued = true;
    setImmediate(() => {
      this.reportQueued = false;
      if (!this.destroyed) this.options.report(this.alloc);
    });
  }

  failed(task: TaskRunner): void {
    for (const sibling of this.tasks) if (sibling !== task) void sibling.killForSibling(task.spec.name);
  }

  /** Nomad's getClientStatus: failed > running > pending > complete. */
  private refreshClientStatus(): void {
    const alloc = this.alloc;
    if (alloc.ClientStatus === 'lost') return;
    const states = this.tasks.map((task) => task.state);
    if (states.some((state) => state.State === 'dead' && state.Failed)) {
      alloc.ClientStatus = 'failed';
      alloc.ClientDescription = 'Failed tasks';
    } else if (states.some((state) => state.State === 'running')) {
      alloc.ClientStatus = 'running';
      alloc.ClientDescription = 'Tasks are running';
    } else if (states.some((state) => state.State === 'pending')) {
      alloc.ClientStatus = 'pending';
      alloc.ClientDescription = 'No tasks have started';
    } else {
      alloc.ClientStatus = 'complete';
      alloc.ClientDescription = 'All tasks have completed';
    }
  }

  /** allochealth: unhealthy when a task dies first; healthy once all run (and checks pass) for MinHealthyTime. */
  private evaluateHealth(): void {
    const health = this.health;
    if (!health || this.alloc.DeploymentStatus?.Healthy != null || this.alloc.DesiredStatus !== 'run') return;
    const states = this.tasks.map((task) => task.state);
    if (states.some((state) => state.Failed || state.FinishedAt !== null)) {
      this.setHealth(false, 'task failed');
      return;
    }
    const running = states.every((state) => state.State === 'running');
    for (const check of this.checks) if (check.simulated && running) check.passing = true;
    const checksPass = health.healthCheck !== 'checks' || this.checks.every((check) => check.passing);
    const ready = health.healthCheck !== 'manual' && running && checksPass;
    if (!ready) {
      if (this.healthyTimer) clearTimeout(this.healthyTimer);
      this.healthyTimer = undefined;
      return;
    }
    if (health.minHealthyTimeMs <= 0) {
      this.setHealth(true, 'healthy');
      return;
    }
    if (this.healthyTimer) return;
    this.healthyTimer = setTimeout(() => {
      this.healthyTimer = undefined;
      if (!this.destroyed) this.setHealth(true, 'healthy for min_healthy_time');
    }, health.minHealthyTimeMs);
  }

  private setHealth(healthy: boolean, why: string): void {
    if (this.alloc.DeploymentStatus?.Healthy != null) return;
    this.alloc.DeploymentStatus = { Healthy: healthy, Timestamp: new Date().toISOString(), Canary: false, ModifyIndex: 0 };
    this.log.debug({ allocId: this.alloc.ID, healthy, why }, 'allocation health set');
    if (this.healthyTimer) clearTimeout(this.healthyTimer);
    this.healthyTimer = undefined;
    this.options.report(this.alloc);
  }

  /** Probes a check every Interval until it passes once (all that deployment health needs). */
  private probeLoop(check: CheckProbe): void {
    const port = this.alloc.ports.find((item) => item.Label === check.spec.portLabel);
    const address = port ? { host: port.HostIP, port: port.Value } : /^\d+$/.test(check.spec.portLabel) ? { host: this.hostIP, port: Number(check.spec.portLabel) } : undefined;
    if (!address) return;
    const attempt = (): void => {
      if (this.destroyed || this.stopping) return;
      void probe(check.spec, address.host, address.port).then((ok) => {
        if (this.destroyed || this.stopping) return;
        if (!ok) {
          this.later(check.spec.intervalMs, attempt);
          return;
        }
        check.passing = true;
        this.log.debug({ allocId: this.alloc.ID, check: check.spec.name }, 'check passing');
        this.changed();
      });
    };
    this.later(Math.min(check.spec.intervalMs, 50), attempt);
  }

  /** Stops every task (KillTimeout applies unless `force`). */
  stop(force = false): Promise<void> {
    if (force) {
      return Promise.all(this.tasks.map((task) => task.kill('allocation stopped', true))).then(() => this.finish());
    }
    this.stopping ??= Promise.all(this.tasks.map((task) => task.kill('alloc was stopped'))).then(() => this.finish());
    return this.stopping;
  }

  /** The tasks' log files are complete and closed (they stay readable, as Nomad keeps them until GC). */
  closeOutput(): Promise<void> {
    return Promise.all(this.tasks.map((task) => task.closeOutput())).then(() => undefined);
  }

  private finish(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    if (this.healthyTimer) clearTimeout(this.healthyTimer);
  }

  /** No more reports: the state this allocation belonged to is gone. */
  detach(): void {
    this.destroyed = true;
    this.finish();
  }

  pids(): number[] {
    return this.tasks.map((task) => task.pid).filter((pid): pid is number => pid !== undefined);
  }
}

function probe(check: CheckSpec, host: string, port: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    if (check.type === 'http') {
      const req = http.get({ host, port, path: check.path, timeout: check.timeoutMs, agent: false }, (res) => {
        res.resume();
        resolve((res.statusCode ?? 500) < 400);
      });
      req.on('timeout', () => req.destroy());
      req.on('error', () => resolve(false));
      return;
    }
    if (check.type === 'tcp') {
      const socket = net.connect({ host, port });
      socket.setTimeout(check.timeoutMs);
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('timeout', () => socket.destroy());
      socket.once('error', () => resolve(false));
      socket.once('close', () => resolve(false));
      return;
    }
    // script and grpc checks need an agent inside the task: the double counts them as passing.
    resolve(true);
  });
}

export class NomadClient implements AllocClient {
  private readonly runners = new Map<string, AllocRunner>();

  constructor(private readonly options: ClientOptions) {}

  run(alloc: AllocRecord): void {
    const node = this.options.node(alloc.NodeID);
    if (!node) throw new Error(`allocation ${alloc.ID} is placed on unknown node ${alloc.NodeID}`);
    const runner = new AllocRunner(alloc, node, this.options);
    this.runners.set(alloc.ID, runner);
    runner.start();
  }

  stop(alloc: AllocRecord): void {
    const runner = this.runners.get(alloc.ID);
    if (!runner) return;
    void runner
      .stop()
      .then(() => runner.closeOutput())
      .then(() => this.runners.delete(alloc.ID));
  }

  update(alloc: AllocRecord): void {
    this.runners.get(alloc.ID)?.updated();
  }

  /** Signals one task from outside; false when the allocation or task is unknown or not running. */
  killTask(allocId: string, task: string, signal: NodeJS.Signals): boolean {
    const runner = this.runners.get(allocId);
    const target = runner?.tasks.find((item) => item.spec.name === task);
    if (!runner || !target) throw new Error(`killTask: no task ${task} in allocation ${allocId}`);
    return target.signal(signal);
  }

  /** A task's logs are asked for; an allocation that no longer runs here is left alone. */
  observeLogs(allocId: string, task: string): void {
    this.runners.get(allocId)?.tasks.find((item) => item.spec.name === task)?.observeOutput();
  }

  /** Kills every task at once and forgets all allocations (stop or reset of the double). */
  async destroy(): Promise<void> {
    const runners = [...this.runners.values()];
    this.runners.clear();
    for (const runner of runners) runner.detach();
    await Promise.all(runners.map((runner) => runner.stop(true)));
    await Promise.all(runners.map((runner) => runner.closeOutput()));
  }

  pids(): number[] {
    return [...this.runners.values()].flatMap((runner) => runner.pids());
  }
}
