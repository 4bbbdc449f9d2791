import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { silentLogger, type Logger } from '../../controller/util/log.js';
import { NomadClient } from './nomad/client.js';
import { NomadApi, type Faults, type InjectedFaults } from './nomad/http.js';
import { NomadState } from './nomad/state.js';
import type { NodeSpec } from './nomad/types.js';

export type { Faults as NomadFaults, InjectedFaults } from './nomad/http.js';
export type { NodeSpec } from './nomad/types.js';

/**
 * A test double that speaks the subset of Nomad's HTTP API Manticore uses (jobs, job evaluation with
 * forced rescheduling, allocations, evaluations, nodes, blocking queries, the event stream, task logs), with a real
 * scheduler loop (evaluations → placement by resources and constraints → allocations, blocked evaluations,
 * rescheduling; a new version of a job updates each allocation in place or replaces it, as Nomad's
 * tasksUpdated decides, see nomad/inplace.ts) and a real client for raw_exec tasks (processes in their own process groups, restart
 * policy, service checks, deployment health). docker is simulated. It is test infrastructure, never a
 * production backend.
 *
 * Every state write publishes the events of the objects it changed (topics Job, Evaluation, Allocation,
 * Node; full objects as Nomad renders them) into a ring buffer of the last `eventBufferSize` writes, which
 * `GET /v1/event/stream` serves with Nomad's start-index rule, topic/key and namespace filters and
 * heartbeats (`eventHeartbeatMs`).
 *
 * Task logs: raw_exec tasks' stdout and stderr are captured into rotated files per task in the
 * allocation's directory (`alloc/logs/<task>.<type>.<n>`, by the task's LogConfig) as Nomad's logmon
 * does; a simulated docker task, once its logs are asked for, writes a synthetic line every
 * `dockerLogIntervalMs`. `GET /v1/client/fs/logs/:alloc_id` serves them (nomad/logs.ts): frames, offsets, origin, follow,
 * heartbeats, plain text, and Nomad's errors.
 *
 * Faults (`faults`, applied to every request while set): `latencyMs` before each answer; `errorRate`, a
 * share answered 500 without being handled; `timeoutRate`, a share never answered (the connection is held
 * until the client gives up or the double stops; an event stream never starts), half of the writes among
 * them applied first, as when a registration or deregistration happened but its answer was lost. The
 * requests they hit come from a seeded draw, the same on every run.
 * `injected` counts what they hit. `outage()`, `restart()` and `reset()` take the agent away, bounce it, or
 * lose the servers' state; each ends the open event streams.
 *
 * Deliberate differences from Nomad, for strictness or determinism:
 * - unknown JSON field names in a job or a job evaluation request are refused (400); Nomad ignores them;
 * - a task whose driver is neither raw_exec nor docker is placed and then fails ("missing drivers");
 *   Nomad filters such nodes at placement instead;
 * - check minimums (≥ 1 s) and the restart interval minimum (≥ 5 s) are not enforced;
 * - no task directories (NOMAD_ALLOC_DIR, NOMAD_TASK_DIR) but the logs, no deployments API;
 * - an allocation updated in place keeps the restart policy and checks it was placed with (Nomad's client
 *   takes the new ones); only its deployment health is judged again;
 * - the logs API sends each read as its own frame at once, where Nomad's framer batches reads made within
 *   200 ms (its Offset is then the end of the first); a simulated docker task's output is synthetic;
 * - only the "default" namespace and the "global" region exist;
 * - the event stream gives each write one frame and one event type, where Nomad may split a write over
 *   several frames of the same index (a job and its evaluation) and applies a plan and its evaluation's
 *   update as two writes; an event matching several topic keys is sent once (Nomad sends it per key); a
 *   reader that falls behind is never cut off (Nomad ends a subscription whose next write left the
 *   buffer); a negative start index is refused (400).
 */

export interface NomadDoubleOptions {
  /** Address written into `address` (default 127.0.0.1). */
  host?: string;
  /** 0 (the default) lets the OS pick a free port. */
  port?: number;
  /** Default: one node "node-1" with 4000 MHz, 8192 MB in dc1, pool default. */
  nodes?: NodeSpec[];
  /** Working directory of raw_exec tasks (default: the current directory). */
  workDir?: string;
  log?: Logger;
  /** When set, every API call but /v1/status/* needs this X-Nomad-Token. */
  aclToken?: string;
  /** Interface the API listens on and the host IP of allocations (default 127.0.0.1). */
  bindHost?: string;
  /** How long a simulated docker task takes to start (default 50 ms). */
  dockerStartMs?: number;
  /** Between the synthetic lines a simulated docker task writes to its stdout (default 1 s). */
  dockerLogIntervalMs?: number;
  /** Between heartbeats of the logs API's streams (default 1 s, as Nomad). */
  logHeartbeatMs?: number;
  /** Where allocation directories (task logs) go; default a fresh temporary directory, removed by stop(). */
  dataDir?: string;
  /** Writes kept for event stream subscriptions (the servers' `event_buffer_size`, default 100 as Nomad). */
  eventBufferSize?: number;
  /** Between event stream heartbeats (default 30 s, as Nomad). */
  eventHeartbeatMs?: number;
}

const DEFAULT_NODE: NodeSpec = { name: 'node-1', cpu: 4_000, memoryMB: 8_192, datacenter: 'dc1', nodePool: 'default' };
const DEFAULT_EVENT_HEARTBEAT_MS = 30_000;
const DEFAULT_LOG_HEARTBEAT_MS = 1_000;

export class NomadDouble {
  /** Fault injection, applied to every request while set. */
  readonly faults: Faults = { latencyMs: 0, errorRate: 0, timeoutRate: 0 };
  private state: NomadState;
  private client: NomadClient;
  private readonly api: NomadApi;
  private server: http.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  private boundPort = 0;
  private readonly log: Logger;
  private readonly nodeSpecs: NodeSpec[];
  private readonly bindHost: string;
  private readonly host: string;
  private readonly dataDir: string;
  private stopped = false;

  private constructor(private readonly options: NomadDoubleOptions) {
    this.log = options.log ?? silentLogger();
    this.bindHost = options.bindHost ?? '127.0.0.1';
    this.host = options.host ?? this.bindHost;
    this.nodeSpecs = (options.nodes ?? [DEFAULT_NODE]).map((node) => ({ ...node }));
    this.dataDir = options.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'nomad-double-'));
    ({ state: this.state, client: this.client } = this.freshState());
    this.api = new NomadApi({
      state: () => this.state,
      faults: this.faults,
      aclToken: options.aclToken,
      hostIP: this.bindHost,
      heartbeatMs: options.eventHeartbeatMs ?? DEFAULT_EVENT_HEARTBEAT_MS,
      logHeartbeatMs: options.logHeartbeatMs ?? DEFAULT_LOG_HEARTBEAT_MS,
      logsDir: (allocId) => this.logsDir(allocId),
      observeLogs: (allocId, task) => this.client.observeLogs(allocId, task),
      log: this.log,
    });
  }

  static async start(options: NomadDoubleOptions = {}): Promise<NomadDouble> {
    const double = new NomadDouble(options);
    await double.listen(options.port ?? 0);
    double.log.info({ address: double.address, nodes: double.nodeSpecs.map((node) => node.name) }, 'nomad double started');
    return double;
  }

  get port(): number {
    return this.boundPort;
  }

  get address(): string {
    return `http://${this.host}:${this.boundPort}`;
  }

  /** Adds a ready node; blocked evaluations are re-run. Returns the node ID. */
  addNode(spec: NodeSpec): string {
    this.nodeSpecs.push({ ...spec });
    return this.state.addNode(spec);
  }

  /** The node leaves: its allocations become lost (their tasks killed) and are replaced elsewhere. */
  removeNode(id: string): void {
    const node = this.state.nodes.get(id);
    this.state.removeNode(id);
    if (node) {
      const index = this.nodeSpecs.findIndex((spec) => spec.name === node.spec.name);
      if (index >= 0) this.nodeSpecs.splice(index, 1);
    }
  }

  /** The node's client reports an event (a driver's health changed, …): the node is published, its ModifyIndex unchanged. */
  emitNodeEvent(id: string, subsystem: string, message: string): void {
    this.state.emitNodeEvent(id, subsystem, message);
  }

  /** Sends `signal` to a running task from outside, as a crash would: Nomad's restart policy applies. */
  killTask(allocId: string, task: string, signal: NodeJS.Signals = 'SIGKILL'): void {
    if (!this.client.killTask(allocId, task, signal)) throw new Error(`killTask: task ${task} of allocation ${allocId} is not running`);
  }

  /** Blocking queries held right now (lets a test act once its query is really waiting). */
  get heldQueries(): number {
    return this.api.held;
  }

  /** Event streams open right now. */
  get openStreams(): number {
    return this.api.streams;
  }

  /** What the faults hit so far (errors, timeouts, timed-out writes that were applied). */
  get injected(): Readonly<InjectedFaults> {
    return this.api.injected;
  }

  /** Process ids of every running raw_exec task (for tests that check cleanup). */
  pids(): number[] {
    return this.client.pids();
  }

  /** Closes the listener and drops every connection (on), or listens again on the same port (off). */
  async outage(on: boolean): Promise<void> {
    if (on) await this.closeListener();
    else if (!this.server) await this.listen(this.boundPort);
  }

  /** An agent restart: connections dropped, the port closed and reopened; state and tasks survive. */
  async restart(): Promise<void> {
    await this.closeListener();
    await this.listen(this.boundPort);
  }

  /**
   * The servers lose all state: every task is killed, jobs, evaluations and allocations are gone and
   * the index starts low again, the event buffer empty (open streams end); the nodes register again.
   * Blocking queries held at that moment answer
   * at once with the new, lower index, so their clients see the index go backwards (Nomad would hold
   * them until their wait elapsed, and a client whose index the new state reaches again could miss the
   * reset). Queries arriving later are held as usual.
   */
  async reset(): Promise<void> {
    const old = { state: this.state, client: this.client };
    ({ state: this.state, client: this.client } = this.freshState());
    old.state.close();
    await old.client.destroy();
    for (const allocId of old.state.allocs.keys()) fs.rmSync(path.join(this.dataDir, allocId), { recursive: true, force: true });
    this.log.info('nomad double reset: state lost');
  }

  /** An allocation's task logs: `<dataDir>/<alloc id>/alloc/logs`, as a Nomad client lays out its alloc dirs. */
  logsDir(allocId: string): string {
    if (!/^[A-Za-z0-9-]+$/.test(allocId)) throw new Error(`not an allocation id: ${allocId}`);
    return path.join(this.dataDir, allocId, 'alloc', 'logs');
  }

  /** Stops every task it started and closes the API (held connections, timed-out ones too, are dropped). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.state.close();
    await this.closeListener();
    await this.client.destroy();
    if (this.options.dataDir === undefined) fs.rmSync(this.dataDir, { recursive: true, force: true });
    this.log.info({ address: this.address }, 'nomad double stopped');
  }

  private freshState(): { state: NomadState; client: NomadClient } {
    let state: NomadState | undefined;
    const client = new NomadClient({
      workDir: this.options.workDir ?? process.cwd(),
      hostIP: this.bindHost,
      dockerStartMs: this.options.dockerStartMs ?? 50,
      dockerLogIntervalMs: this.options.dockerLogIntervalMs ?? 1_000,
      logsDir: (allocId) => this.logsDir(allocId),
      log: this.log,
      node: (id) => state?.nodes.get(id),
      report: (alloc) => state?.clientUpdate(alloc),
    });
    state = new NomadState(client, this.bindHost, this.log, this.options.eventBufferSize);
    for (const spec of this.nodeSpecs) state.addNode(spec);
    return { state, client };
  }

  private async listen(port: number): Promise<void> {
    if (this.stopped) throw new Error('the Nomad double is stopped');
    const server = http.createServer((req, res) => void this.api.handle(req, res));
    // Go's server keeps idle keep-alive connections open; Node's 5 s default would race clients reusing them.
    server.keepAliveTimeout = 0;
    server.on('connection', (socket: net.Socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error) => reject(new Error(`Nomad double: cannot listen on ${this.bindHost}:${port}: ${error.message}`, { cause: error })));
      server.listen(port, this.bindHost, () => resolve());
    });
    this.server = server;
    this.boundPort = (server.address() as net.AddressInfo).port;
  }

  private async closeListener(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
    await closed;
  }
}
