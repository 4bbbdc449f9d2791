import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { SessionRecord, SessionStatus } from '../../controller/api/types.js';
import { Keys } from '../../controller/controller/keys.js';
import { RouterAgent } from '../../controller/router/agent.js';
import { ConsulStore } from '../../controller/store/consul-store.js';
import type { KvEntry } from '../../controller/store/store.js';
import { silentLogger, type Logger } from '../../controller/util/log.js';
import { RecordingDataPlane } from '../../test/support/controller-harness.js';
import { freePort } from '../../test/support/ports.js';
import { waitFor } from '../../test/support/wait.js';
import { cli, profileFlags, repoRoot } from './paths.js';
import { treeCpuSeconds } from './process-stats.js';

export const keys = new Keys('manticore/');

/**
 * Node sizes its V8 heap from the memory its container may use: in the controller's 512 MB (the job file) the
 * heap limit is about 259 MB. The controller runs here with that limit, so that it is measured as deployed:
 * on this machine's 24 GB Node would allow it several GB of heap and collect garbage only when it pleased,
 * which reads as resident memory the deployed controller never holds.
 */
const DEPLOYED_NODE_FLAGS: Partial<Record<'controller' | 'frontend' | 'router', readonly string[]>> = { controller: ['--max-old-space-size=256'] };

/** The Consul and Nomad API doubles, each in a process of its own (`double-process.ts`). */
export class Doubles {
  private constructor(
    readonly consulAddress: string,
    readonly nomadAddress: string,
    private readonly consul: ChildProcess,
    private readonly nomad: ChildProcess,
  ) {}

  static async start(nomadNodes: number): Promise<Doubles> {
    const consul = spawnDouble(['consul']);
    const nomad = spawnDouble(['nomad', String(nomadNodes)]);
    try {
      const [consulAddress, nomadAddress] = await Promise.all([consul.address, nomad.address]);
      return new Doubles(consulAddress, nomadAddress, consul.child, nomad.child);
    } catch (error) {
      for (const child of [consul.child, nomad.child]) child.kill('SIGKILL');
      throw error;
    }
  }

  async stop(): Promise<void> {
    await Promise.all([this.consul, this.nomad].map((child) => stopChild(child)));
  }

  /** The doubles' processes by name. */
  processes(): Array<{ readonly name: string; readonly pid: number }> {
    return [
      { name: 'Consul double', pid: this.consul.pid! },
      { name: 'Nomad double', pid: this.nomad.pid! },
    ];
  }
}

function spawnDouble(args: readonly string[]): { child: ChildProcess; address: Promise<string> } {
  const child = spawn(process.execPath, [...profileFlags(`${args[0]}-double`), path.join(__dirname, 'double-process.js'), ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'inherit'] });
  const address = new Promise<string>((resolve, reject) => {
    let output = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const line = output.split('\n')[0]!;
      if (output.includes('\n')) resolve((JSON.parse(line) as { address: string }).address);
    });
    child.once('exit', (code) => reject(new Error(`the ${args[0]} double exited (${code}) before listening`)));
  });
  return { child, address };
}

/** SIGTERM, then SIGKILL after 20 s; resolves when the process has exited. */
async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  await exited;
  clearTimeout(timer);
}

export interface BenchClusterOptions {
  readonly workDir: string;
  readonly log: Logger;
  /** Nomad double nodes (each offers Nomad's dynamic port range, 12,000 ports: 9 per `sdl` session). */
  readonly nomadNodes: number;
  /** The public TCP port range the controller claims ports from. */
  readonly tcpPorts: { readonly start: number; readonly end: number };
  readonly limits: { readonly maxSessions: number; readonly maxStarting: number };
  /**
   * `haproxy`: a `manticore router` process with its HAProxy binding the TCP range; `recording`: the router
   * agent in this process with a data plane that records the routes (for sizes no loopback range holds).
   */
  readonly router: 'haproxy' | 'recording';
  readonly frontend: boolean;
}

/**
 * Manticore in cluster mode against the Consul and Nomad API doubles (in this process; simulated Docker
 * allocations become healthy as soon as they are placed), with the controller, front end and router as
 * their own processes, configured as an operator would for the load: the `sdl` template, limits raised to
 * the benchmark's size.
 */
export class BenchCluster {
  doubles!: Doubles;
  /** A client of the Consul double for the benchmark's own reads and writes. */
  store!: ConsulStore;
  controller: ChildProcess | undefined;
  controllerStatusPort = 0;
  frontendUrl = '';
  private readonly children = new Set<ChildProcess>();
  /** The running process of each role. */
  private readonly roles = new Map<'controller' | 'frontend' | 'router', ChildProcess>();
  private recordingRouter: RouterAgent | undefined;
  private configFile = '';

  private constructor(private readonly options: BenchClusterOptions) {}

  static async start(options: BenchClusterOptions): Promise<BenchCluster> {
    const cluster = new BenchCluster(options);
    try {
      await cluster.boot();
    } catch (error) {
      await cluster.stop();
      throw error;
    }
    return cluster;
  }

  private async boot(): Promise<void> {
    const { options } = this;
    const doublesLog = silentLogger();
    this.doubles = await Doubles.start(options.nomadNodes);
    this.store = new ConsulStore({ address: this.doubles.consulAddress, log: doublesLog });
    this.controllerStatusPort = await freePort();
    const frontendPort = options.frontend ? await freePort() : 0;
    this.frontendUrl = `http://127.0.0.1:${frontendPort}`;
    this.configFile = path.join(options.workDir, 'manticore.yaml');
    fs.writeFileSync(this.configFile, this.configuration(frontendPort));

    if (options.router === 'recording') {
      this.recordingRouter = new RouterAgent({ store: this.store, keys, name: 'edge-1', dataPlane: new RecordingDataPlane(), heartbeatMs: 10_000, storeLossGraceMs: 0, log: doublesLog });
      await this.recordingRouter.start();
    } else {
      const runDir = path.join(options.workDir, 'router');
      this.spawnRole('router', { MANTICORE_ROUTER_NAME: 'edge-1', MANTICORE_ROUTER_RUN_DIR: runDir, MANTICORE_HTTP_PORT: String(await freePort()) });
      await waitFor('the router to report in', () => this.store.get(`${keys.routers}edge-1`), 30_000, 50);
    }
    if (options.frontend) {
      this.spawnRole('frontend');
      await waitFor('the front end', async () => (await fetch(`${this.frontendUrl}/healthz`)).ok, 30_000, 50);
    }
    this.startController();
    await waitFor('a leader', () => this.store.get(keys.leader), 30_000, 50);
  }

  private configuration(frontendPort: number): string {
    const { options } = this;
    return [
      `store: { backend: consul, consul: { address: "${this.doubles.consulAddress}" } }`,
      'scheduler:',
      '  backend: nomad',
      `  nomad: { address: "${this.doubles.nomadAddress}", datacenters: [dc1], healthyDeadlineSeconds: 120, checkIntervalSeconds: 1 }`,
      `templates: { dir: ${path.join(repoRoot, 'manifests/templates')} }`,
      `router: { tcp: { portRangeStart: ${options.tcpPorts.start}, portRangeEnd: ${options.tcpPorts.end} } }`,
      `limits: { maxSessions: ${options.limits.maxSessions}, maxStarting: ${options.limits.maxStarting}, sessionsPerUser: 1 }`,
      // The default controller.workers unless BENCH_WORKERS says otherwise.
      `controller: { statusPort: ${this.controllerStatusPort},${process.env.BENCH_WORKERS ? ` workers: ${process.env.BENCH_WORKERS},` : ''} leaderElection: { ttlSeconds: 15, lockDelaySeconds: 1 } }`,
      `frontend: { host: 127.0.0.1, port: ${frontendPort}, rateLimit: { requestsPerSecond: 100000, burst: 100000 } }`,
      '',
    ].join('\n');
  }

  /** Runs `manticore <role>` with its warnings and errors kept in the work directory. */
  private spawnRole(role: 'controller' | 'frontend' | 'router', env: NodeJS.ProcessEnv = {}): ChildProcess {
    const logPath = path.join(this.options.workDir, `${role}.log`);
    const logFile = fs.openSync(logPath, 'a');
    const child = spawn(process.execPath, [...profileFlags(role), ...(DEPLOYED_NODE_FLAGS[role] ?? []), cli, role, '--config', this.configFile], {
      cwd: repoRoot,
      stdio: ['ignore', logFile, logFile],
      env: { ...process.env, MANTICORE_LOG_LEVEL: 'warn', MANTICORE_LOG_FORMAT: 'json', ...env },
    });
    fs.closeSync(logFile);
    this.children.add(child);
    this.roles.set(role, child);
    child.once('exit', (code, signal) => {
      this.children.delete(child);
      if (code !== 0 && signal === null) this.options.log.error({ role, code, output: fs.readFileSync(logPath, 'utf8').slice(-2_000) }, 'a Manticore process exited');
    });
    return child;
  }

  /** Starts a controller; `logLevel` replaces the default (warnings and errors) in its log. */
  startController(logLevel?: 'info'): ChildProcess {
    this.controller = this.spawnRole('controller', logLevel === undefined ? {} : { MANTICORE_LOG_LEVEL: logLevel });
    return this.controller;
  }

  /** The log a role has written to the work directory so far, one JSON object per line. */
  roleLog(role: 'controller' | 'frontend' | 'router'): string {
    return fs.readFileSync(path.join(this.options.workDir, `${role}.log`), 'utf8');
  }

  /** SIGTERM to the controller (it hands its leadership over), resolved when it has exited. */
  async stopController(): Promise<void> {
    if (this.controller) await stopChild(this.controller);
  }

  /**
   * CPU seconds used so far by each process of the system under test: Manticore's roles (the router with
   * its HAProxy) and the doubles.
   */
  cpuSeconds(): Map<string, number> {
    const processes = [...[...this.roles].map(([name, child]) => ({ name, pid: child.pid! })), ...this.doubles.processes()];
    return new Map(processes.map(({ name, pid }) => [name, treeCpuSeconds(pid)]));
  }

  /** The sum of a metric's series, or of one series when `name` carries its labels (`name{label="value"}`). */
  async controllerMetric(name: string): Promise<number> {
    const response = await fetch(`http://127.0.0.1:${this.controllerStatusPort}/metrics`);
    const text = await response.text();
    let sum = 0;
    for (const line of text.split('\n')) {
      if (line.startsWith(`${name} `) || (!name.includes('{') && line.startsWith(`${name}{`))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
    return sum;
  }

  /** The store's index: it moves with every write (an empty listing answers the KV table's index). */
  async storeIndex(): Promise<number> {
    return (await this.store.list(`${keys.prefix}bench-nothing-here/`)).index;
  }

  /** Writes a session record the way the front end does (for sizes where the front end is not what is measured). */
  async createSession(id: string, template = 'sdl'): Promise<void> {
    const record: SessionRecord = {
      metadata: { id, owner: `bench-${id}`, createdAt: new Date().toISOString(), generation: 1 },
      spec: { template, parameters: {} },
    };
    if (!(await this.store.put(keys.session(id), JSON.stringify(record), { cas: 0 }))) throw new Error(`session ${id} exists already`);
  }

  /** One session's stored status, read by its key alone. */
  async status(id: string): Promise<SessionStatus | undefined> {
    const entry = await this.store.get(keys.status(id));
    return entry === undefined ? undefined : (JSON.parse(entry.value) as SessionStatus);
  }

  async statuses(): Promise<Array<KvEntry & { status: SessionStatus }>> {
    return (await this.store.list(keys.statuses)).entries.map((entry) => ({ ...entry, status: JSON.parse(entry.value) as SessionStatus }));
  }

  async sessions(): Promise<SessionRecord[]> {
    return (await this.store.list(keys.sessions)).entries.map((entry) => JSON.parse(entry.value) as SessionRecord);
  }

  /** Nomad job registrations so far (each leaves a `job-register` evaluation, even for an unchanged job). */
  async registrations(): Promise<number> {
    const response = await fetch(`${this.doubles.nomadAddress}/v1/evaluations`);
    return ((await response.json()) as Array<{ TriggeredBy: string }>).filter((evaluation) => evaluation.TriggeredBy === 'job-register').length;
  }

  /**
   * Waits until `count` sessions are Ready, as the leading controller counts them (its `manticore_sessions`
   * gauge, read every `intervalMs`): asking the store instead would list every status each time, work that
   * competes with the system under test. The count is the product's own claim, so the store is read once
   * at the end to confirm it.
   */
  async untilReady(count: number, timeoutMs: number, intervalMs = 500): Promise<void> {
    let ready = 0;
    let reportedAt = performance.now();
    await waitFor(
      `${count} sessions Ready`,
      async () => {
        ready = await this.controllerMetric('manticore_sessions{phase="Ready"}');
        if (performance.now() - reportedAt > 10_000) {
          reportedAt = performance.now();
          this.options.log.info({ ready, of: count }, 'sessions Ready so far');
        }
        return ready >= count;
      },
      timeoutMs,
      intervalMs,
    ).catch((error: Error) => {
      throw new Error(`${error.message} (${ready} Ready)`);
    });
    const stored = (await this.statuses()).filter((entry) => entry.status.phase === 'Ready').length;
    if (stored < count) throw new Error(`the controller counts ${ready} sessions Ready, but the store holds ${stored} Ready statuses (of ${count} expected)`);
  }

  async stop(): Promise<void> {
    await Promise.all([...this.children].map((child) => stopChild(child)));
    await this.recordingRouter?.stop();
    await this.store?.close();
    await this.doubles?.stop();
  }
}
