import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { Observable, Subject, ignoreElements } from 'rxjs';
import type { SessionTemplate } from '../api/types.js';
import { lockDirectory, type DirectoryLock } from '../util/dir-lock.js';
import { writeFileAtomic } from '../util/files.js';
import { KeyedSerializer } from '../util/keyed-serializer.js';
import type { Logger } from '../util/log.js';
import { interpolate } from './interpolate.js';
import { DEFAULT_ROTATION, LogFiles, RotatingLogWriter, closeWriter, forwardOutput, type RotationPolicy } from './log-files.js';
import type { LogEvent, LogReadRequest, LogStreamName } from './task-logs.js';
import {
  RenderError,
  SESSION_META_KEY,
  type Allocation,
  type ClientStatus,
  type RenderedJob,
  type Scheduler,
  type TaskState,
  type Workload,
  type WorkloadRequest,
  type WorkloadStep,
} from './scheduler.js';

/**
 * The embedded default's scheduler: runs a template's `spec.backends.embedded.tasks` as child processes on
 * this machine (like JupyterHub's LocalProcessSpawner), shaped after Nomad so the controller cannot tell
 * the difference: jobs, one allocation per job, restart policy, health checks, Nomad's task environment.
 */

/** Nomad-style restart policy (mode "fail"): at most `attempts` restarts per `intervalMs`, `delayMs` apart. */
export interface RestartPolicy {
  attempts: number;
  intervalMs: number;
  delayMs: number;
}

export interface LocalSchedulerOptions {
  /** Where jobs (`jobs/`) and allocations (`allocs/`: logs, pids) are kept across restarts. */
  stateDir: string;
  /** Working directory of every task (the repository root, so templates can name `hack/demo/core.js`). */
  workDir: string;
  /** A child logger that already names the component. */
  log: Logger;
  restart?: RestartPolicy;
  /** Time between SIGTERM and SIGKILL when stopping a task. */
  killTimeoutMs?: number;
  /** Pause between health-check rounds until every check has passed. */
  checkIntervalMs?: number;
  /** Address tasks bind their ports on. */
  bindHost?: string;
  /** How much of each task's stdout and stderr is kept (the allocation's `logs/` directory). */
  logs?: RotationPolicy;
  /** How many stopped jobs' allocations keep their directories (logs) until the next start; default {@link keptStoppedAllocations}. */
  keptStoppedAllocations?: number;
}

/** Where an allocation's task logs are, under the scheduler's state directory (for readers elsewhere). */
export function allocationLogsDir(stateDir: string, allocId: string): string | undefined {
  // Allocation ids are UUIDs; anything else (a path, a dot) never names one of ours.
  return /^[A-Za-z0-9-]{1,64}$/.test(allocId) ? path.join(stateDir, 'allocs', allocId, 'logs') : undefined;
}


export interface LocalTaskSpec {
  name: string;
  command: string;
  args: string[];
  env: Record<string, string>;
  ports: string[];
}

export interface LocalCheck {
  portLabel: string;
  type: 'tcp' | 'http';
  /** Only for http checks. */
  path?: string;
}

/** The `body` of a job rendered by {@link LocalScheduler.render}. */
export interface LocalJobBody {
  template: string;
  meta: Record<string, string>;
  tasks: LocalTaskSpec[];
  checks: LocalCheck[];
}

const DEFAULT_RESTART: RestartPolicy = { attempts: 3, intervalMs: 300_000, delayMs: 1_000 };
const DEFAULT_KILL_TIMEOUT_MS = 5_000;
const DEFAULT_CHECK_INTERVAL_MS = 500;
/** Bounds one probe, so a task that accepts but never answers cannot stall its health forever. */
const CHECK_TIMEOUT_MS = 2_000;
/** How often a leftover process from a previous run is looked at while it shuts down (it is not our child). */
const LEFTOVER_POLL_MS = 25;

/** The parent's variables a task inherits; anything else (credentials, NODE_OPTIONS…) stays out. */
const INHERITED_ENV = ['PATH', 'HOME', 'USER', 'LOGNAME', 'SHELL', 'LANG', 'LANGUAGE', 'TZ', 'TMPDIR'];
const TASK_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]*$/;
/** Port labels become environment variable names (`NOMAD_PORT_<label>`). */
const PORT_LABEL = /^[A-Za-z0-9_]+$/;

interface StoredJob {
  id: string;
  sessionId: string;
  specHash: string;
  body: LocalJobBody;
}

/** The fields of every log line about a job: its session (what operators filter on) and the job itself. */
function jobFields(job: Pick<StoredJob, 'id' | 'sessionId'>): { session: string; jobId: string } {
  return { session: job.sessionId, jobId: job.id };
}

interface TaskRuntime {
  readonly spec: LocalTaskSpec;
  child?: ChildProcess;
  /** Resolves when the current child has exited (or failed to start). */
  exited?: Promise<void>;
  /** Resolves when the current child's stdout and stderr have closed: its output is all in the log writers. */
  outputDone?: Promise<void>;
  state: TaskState['state'];
  failed: boolean;
  restarts: number;
  lastEvent?: string;
  /** Times (Date.now) of the restarts decided within the current restart interval. */
  restartTimes: number[];
  restartTimer?: NodeJS.Timeout;
  /** The task's stdout and stderr, kept for the allocation's life across restarts. */
  readonly output: Readonly<Record<LogStreamName, RotatingLogWriter>>;
}

interface AllocRuntime {
  readonly id: string;
  readonly jobId: string;
  /** The job content this allocation runs (a newer registration gets a new allocation). */
  readonly job: StoredJob;
  readonly dir: string;
  readonly ports: Readonly<Record<string, number>>;
  readonly tasks: Map<string, TaskRuntime>;
  clientStatus: ClientStatus;
  healthy: boolean | undefined;
  /** Set once the allocation is being stopped: exits are then expected and never restarted. */
  stopReason?: string;
  /** Bumped on every exit and stop; a probe that started in an older epoch is ignored. */
  epoch: number;
  checkTimer?: NodeJS.Timeout;
  /** The checks not passed yet in the current round of probing, each with why (see Allocation.failingChecks). */
  failingChecks?: readonly string[];
  /** pids.json writes, chained so they land in order. */
  pidsWrite: Promise<void>;
}

interface JobRuntime {
  job: StoredJob;
  alloc?: AllocRuntime;
  /** Why the last attempt to start an allocation failed (reported like Nomad's placement failures). */
  placementFailure?: string;
}

/**
 * How many stopped jobs' allocations keep their directories, and so their logs (Failed sessions'), by default:
 * as many as a Nomad client keeps terminal allocations (`gc_max_allocs`).
 */
const keptStoppedAllocations = 50;

/** Attempts at finding a port none of our allocations holds before giving up on an allocation. */
const maxPortAttempts = 64;

export class LocalScheduler implements Scheduler {
  readonly kind = 'embedded' as const;

  private readonly log: Logger;
  private readonly jobsDir: string;
  private readonly allocsDir: string;
  private readonly restart: RestartPolicy;
  private readonly killTimeoutMs: number;
  private readonly checkIntervalMs: number;
  private readonly bindHost: string;
  /** Where routers and checks reach a task: the bind address, or loopback when binding every address. */
  private readonly reachHost: string;
  private readonly jobs = new Map<string, JobRuntime>();
  /** Ports given to allocations that have not stopped yet. */
  private readonly portsHeld = new Set<number>();
  /** Register, deregister and reschedule of one job never interleave. */
  private readonly perJob = new KeyedSerializer();
  /** Allocations of stopped jobs whose directories (logs) are kept, oldest first. */
  private readonly stoppedAllocations: AllocRuntime[] = [];
  private readonly changes = new Subject<WorkloadStep>();
  /** Every task process not yet exited, for kill(). */
  private readonly children = new Set<ChildProcess>();
  private readonly logFiles: LogFiles;
  private lock: DirectoryLock | undefined;
  private started = false;
  private closed = false;

  constructor(private readonly options: LocalSchedulerOptions) {
    // The caller names the component (`log.child({ component: 'scheduler' })`); a second binding would repeat the key.
    this.log = options.log;
    this.jobsDir = path.join(options.stateDir, 'jobs');
    this.allocsDir = path.join(options.stateDir, 'allocs');
    this.restart = options.restart ?? DEFAULT_RESTART;
    this.killTimeoutMs = options.killTimeoutMs ?? DEFAULT_KILL_TIMEOUT_MS;
    this.checkIntervalMs = options.checkIntervalMs ?? DEFAULT_CHECK_INTERVAL_MS;
    this.bindHost = options.bindHost ?? '127.0.0.1';
    this.reachHost = this.bindHost === '0.0.0.0' ? '127.0.0.1' : this.bindHost === '::' ? '::1' : this.bindHost;
    this.logFiles = new LogFiles({ dirOf: (allocId) => allocationLogsDir(options.stateDir, allocId), log: this.log });
  }

  /**
   * Loads the persisted jobs. Processes left by a previous run that died without `close()` (kill -9) are
   * killed first, then every job gets a fresh allocation, as Nomad reschedules lost allocations. Refuses to
   * start while another scheduler holds the state directory (its tasks would look left over), or when the
   * working directory is not one.
   */
  async start(): Promise<void> {
    if (this.started) throw new Error('LocalScheduler.start() was already called');
    if (this.closed) throw new Error('LocalScheduler is closed');
    await checkWorkDir(this.options.workDir);
    this.lock = lockDirectory(this.options.stateDir, 'the scheduler state directory');
    await fsp.mkdir(this.jobsDir, { recursive: true });
    await fsp.mkdir(this.allocsDir, { recursive: true });
    await this.reapPreviousAllocations();
    for (const job of await this.loadJobs()) this.jobs.set(job.id, { job });
    this.started = true;
    await Promise.all(
      [...this.jobs.values()].map((runtime) =>
        this.perJob.run(runtime.job.id, async () => {
          // A deregister may have been queued behind this start.
          if (this.jobs.get(runtime.job.id) !== runtime || this.closed) return;
          // One job that cannot start must not keep the others from starting: it is logged and reported as
          // the workload's placementFailure, and the controller's next register tries again.
          await this.startAllocation(runtime).catch(() => undefined);
        }),
      ),
    );
    this.log.info({ stateDir: this.options.stateDir, jobs: this.jobs.size }, 'local scheduler started');
  }

  render(request: WorkloadRequest): RenderedJob {
    const body = renderBody(request);
    return { id: request.jobId, sessionId: request.sessionId, specHash: specHashOf(body), body };
  }

  /** `signal` is checked once the job's turn comes; what then starts (files, processes) runs to its end. */
  async register(job: RenderedJob, signal?: AbortSignal): Promise<void> {
    this.assertUsable();
    const body = parseBody(job.body, `job ${job.id}`);
    const stored: StoredJob = { id: job.id, sessionId: job.sessionId, specHash: job.specHash, body };
    await this.perJob.run(job.id, async () => {
      this.assertUsable();
      signal?.throwIfAborted();
      const existing = this.jobs.get(job.id);
      if (existing && existing.job.specHash === job.specHash && existing.alloc && isLive(existing.alloc)) return;
      // Persist before spawning anything, so a crash from here on leaves a job the next start() runs.
      if (!existing || existing.job.specHash !== job.specHash) await this.persistJob(stored);
      const runtime: JobRuntime = existing ?? { job: stored };
      runtime.job = stored;
      this.jobs.set(job.id, runtime);
      await this.replaceAllocation(runtime, 'job updated');
    });
  }

  async deregister(jobId: string, signal?: AbortSignal): Promise<void> {
    await this.remove(jobId, 'purge', signal);
  }

  /** The allocation's directory, logs included, stays until `keptStoppedAllocations` newer ones are kept, or the next start. */
  async stop(jobId: string, signal?: AbortSignal): Promise<void> {
    await this.remove(jobId, 'stop', signal);
  }

  private async remove(jobId: string, how: 'purge' | 'stop', signal: AbortSignal | undefined): Promise<void> {
    this.assertUsable();
    await this.perJob.run(jobId, async () => {
      signal?.throwIfAborted();
      const runtime = this.jobs.get(jobId);
      if (!runtime) return;
      const alloc = runtime.alloc;
      if (alloc) {
        await this.stopAllocation(alloc, how === 'purge' ? 'job deregistered' : 'job stopped');
        if (how === 'purge') await this.removeAllocDir(alloc);
        else await this.keepStopped(alloc);
      }
      await fsp.rm(this.jobFile(jobId), { force: true });
      this.jobs.delete(jobId);
      this.log.info({ ...jobFields(runtime.job), ...(how === 'stop' && alloc ? { allocId: alloc.id } : {}) }, how === 'purge' ? 'job deregistered' : 'job stopped; its allocation\'s logs are kept');
      this.changes.next({ kind: 'delete', jobId, sessionId: runtime.job.sessionId });
    });
  }

  /** Keeps a stopped allocation's directory (its logs), removing the oldest kept beyond `keptStoppedAllocations`. */
  private async keepStopped(alloc: AllocRuntime): Promise<void> {
    this.stoppedAllocations.push(alloc);
    const kept = this.options.keptStoppedAllocations ?? keptStoppedAllocations;
    const expired = this.stoppedAllocations.splice(0, Math.max(0, this.stoppedAllocations.length - kept));
    await Promise.all(expired.map((old) => this.removeAllocDir(old)));
  }

  async reschedule(jobId: string, signal?: AbortSignal): Promise<void> {
    this.assertUsable();
    await this.perJob.run(jobId, async () => {
      this.assertUsable();
      signal?.throwIfAborted();
      const runtime = this.jobs.get(jobId);
      if (runtime?.alloc?.clientStatus !== 'failed') {
        this.log.debug({ ...(runtime ? jobFields(runtime.job) : { jobId }), clientStatus: runtime?.alloc?.clientStatus }, 'nothing to reschedule: no failed allocation');
        return;
      }
      await this.replaceAllocation(runtime, 'rescheduled after failing');
    });
  }

  watch(): Observable<WorkloadStep> {
    return new Observable<WorkloadStep>((subscriber) => {
      // Emitting the reset and subscribing in one synchronous step means no change can fall in between.
      const workloads = [...this.jobs.values()]
        .map((runtime) => this.snapshot(runtime))
        .sort((a, b) => a.jobId.localeCompare(b.jobId));
      subscriber.next({ kind: 'reset', workloads });
      return this.changes.subscribe(subscriber);
    });
  }

  /** Reads the allocation's `logs/` directory (kept until the allocation is replaced or its job deregistered; a stopped job's for a while). */
  readLogs(request: LogReadRequest): AsyncIterable<LogEvent> {
    return this.logFiles.read(request);
  }

  /** This machine has no capacity limit to wait for: nothing is ever emitted; completes on close(). */
  capacityChanges(): Observable<void> {
    return this.changes.pipe(ignoreElements());
  }

  /** Stops every task (no stray processes after Ctrl-C) but keeps the jobs on disk for the next start(). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.perJob.drain();
    await Promise.all(
      [...this.jobs.values()].map(async (runtime) => {
        if (!runtime.alloc) return;
        await this.stopAllocation(runtime.alloc, 'scheduler shutting down');
        await runtime.alloc.pidsWrite;
      }),
    );
    this.changes.complete();
    this.lock?.release();
    this.log.info('local scheduler closed');
  }

  /**
   * SIGKILL to every task's process group, at once: for a stop of Manticore cut short, as it exits. Each task
   * leads a group of its own, so it would outlive Manticore holding its ports; the next start() finds anything
   * that left its group by the allocation id.
   */
  kill(): void {
    for (const child of this.children) signalTask(child, 'SIGKILL');
  }

  // ---- allocations -------------------------------------------------------------------------------------

  /** Stops and forgets the job's allocation, if any, then starts a fresh one for the job's content. */
  private async replaceAllocation(runtime: JobRuntime, reason: string): Promise<void> {
    const previous = runtime.alloc;
    // The old allocation is no longer reported: it does not run the registered content, or it failed.
    runtime.alloc = undefined;
    this.emitUpsert(runtime);
    if (previous) {
      this.log.info({ ...jobFields(runtime.job), allocId: previous.id, reason }, 'replacing allocation');
      await this.stopAllocation(previous, reason);
      await this.removeAllocDir(previous);
    }
    await this.startAllocation(runtime);
  }

  private async startAllocation(runtime: JobRuntime): Promise<void> {
    const { job } = runtime;
    const id = randomUUID();
    const dir = path.join(this.allocsDir, id);
    let ports: Record<string, number> = {};
    try {
      ports = await this.allocatePorts(job.body.tasks.flatMap((task) => task.ports));
      await fsp.mkdir(dir, { recursive: true });
    } catch (error) {
      for (const port of Object.values(ports)) this.portsHeld.delete(port);
      runtime.placementFailure = (error as Error).message;
      this.log.error({ err: error, ...jobFields(job) }, 'could not start an allocation');
      this.emitUpsert(runtime);
      throw new Error(`starting an allocation for job ${job.id}: ${(error as Error).message}`, { cause: error });
    }
    const tasks = new Map<string, TaskRuntime>();
    try {
      for (const spec of job.body.tasks) tasks.set(spec.name, { spec, state: 'pending', failed: false, restarts: 0, restartTimes: [], output: this.openOutput(dir, spec.name, job) });
    } catch (error) {
      await Promise.all([...tasks.values()].flatMap((task) => Object.values(task.output).map(closeWriter)));
      for (const port of Object.values(ports)) this.portsHeld.delete(port);
      runtime.placementFailure = `cannot open the task logs: ${(error as Error).message}`;
      this.log.error({ err: error, ...jobFields(job) }, 'could not start an allocation');
      this.emitUpsert(runtime);
      throw new Error(`starting an allocation for job ${job.id}: ${runtime.placementFailure}`, { cause: error });
    }
    runtime.placementFailure = undefined;
    const alloc: AllocRuntime = {
      id,
      jobId: job.id,
      job,
      dir,
      ports,
      tasks,
      clientStatus: 'pending',
      healthy: undefined,
      epoch: 0,
      pidsWrite: Promise.resolve(),
    };
    runtime.alloc = alloc;
    this.log.info({ ...jobFields(job), allocId: id, ports }, 'starting allocation');
    this.emitUpsert(runtime);
    for (const task of tasks.values()) this.spawnTask(alloc, task);
  }

  /** The task's log writers (`logs/<task>.stdout.<n>`, `logs/<task>.stderr.<n>`), rotated by the configured policy. */
  private openOutput(allocDir: string, task: string, job: StoredJob): Record<LogStreamName, RotatingLogWriter> {
    const dir = path.join(allocDir, 'logs');
    const about = { ...jobFields(job), task };
    const open = (stream: LogStreamName): RotatingLogWriter => {
      const writer = new RotatingLogWriter(dir, `${task}.${stream}`, this.options.logs ?? DEFAULT_ROTATION);
      // A log that cannot be written loses output; the task runs on.
      writer.on('dropping', (error: Error) => this.log.warn({ err: error, ...about, stream }, 'the disk is full; task output is dropped until there is room'));
      writer.on('resumed', (bytes: number) => this.log.warn({ ...about, stream, droppedBytes: bytes }, 'task log writing resumed after output was dropped'));
      writer.on('error', (error) => this.log.error({ err: error, ...about, stream }, 'writing a task log failed; its further output is dropped'));
      return writer;
    };
    return { stdout: open('stdout'), stderr: open('stderr') };
  }

  /**
   * One loopback port per label: all are bound to port 0 at once (so no two labels share one), then
   * released for the tasks to bind. A port another allocation of ours holds (or is about to bind) is never
   * handed out twice. Another process could take a port in between; the task then fails to listen and is
   * restarted on the same port, and after the restart limit the allocation fails.
   */
  private async allocatePorts(labels: string[]): Promise<Record<string, number>> {
    const servers: net.Server[] = [];
    try {
      const ports: Record<string, number> = {};
      for (const label of labels) {
        for (let attempt = 0; ports[label] === undefined; attempt++) {
          if (attempt === maxPortAttempts) throw new Error(`no free port after ${maxPortAttempts} attempts`);
          // The server stays bound until the end, so the next attempt gets a different port.
          const server = net.createServer();
          servers.push(server);
          await new Promise<void>((resolve, reject) => {
            server.once('error', reject);
            server.listen(0, this.bindHost, resolve);
          });
          const port = (server.address() as net.AddressInfo).port;
          if (!this.portsHeld.has(port)) ports[label] = port;
        }
      }
      for (const port of Object.values(ports)) this.portsHeld.add(port);
      return ports;
    } catch (error) {
      throw new Error(`allocating ports on ${this.bindHost}: ${(error as Error).message}`, { cause: error });
    } finally {
      await Promise.all(servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
    }
  }

  private spawnTask(alloc: AllocRuntime, task: TaskRuntime): void {
    const { spec } = task;
    const log = this.log.child({ ...jobFields(alloc.job), allocId: alloc.id, task: spec.name });
    task.state = 'pending';
    let child: ChildProcess;
    try {
      // Marks each start in the log a person reads, so restarts show where they happened.
      task.output.stdout.write(`--- manticore: starting ${spec.name} (restart ${task.restarts}) at ${new Date().toISOString()}\n`);
      // detached: the task leads its own process group, so Ctrl-C in Manticore's terminal does not reach
      // it (close() stops it in order) and stopping it can signal the whole group, grandchildren included.
      // Its output comes through pipes into the rotated log files, as Nomad's logmon takes it.
      child = spawn(spec.command, spec.args, {
        cwd: this.options.workDir,
        env: this.taskEnv(alloc, spec),
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      forwardOutput(child.stdout!, task.output.stdout);
      forwardOutput(child.stderr!, task.output.stderr);
    } catch (error) {
      // Runs from a restart timer too: a failure here must become a task event, never an uncaught throw.
      task.child = undefined;
      task.exited = Promise.resolve();
      task.outputDone = Promise.resolve();
      this.onTaskExit(alloc, task, undefined, `failed to start: ${(error as Error).message}`);
      return;
    }
    task.child = child;
    let markExited: () => void = () => undefined;
    task.exited = new Promise<void>((resolve) => (markExited = resolve));
    let markOutputDone: () => void = () => undefined;
    task.outputDone = new Promise<void>((resolve) => (markOutputDone = resolve));
    child.once('close', () => markOutputDone());
    let ended = false;
    const end = (description: string): void => {
      if (ended) return;
      ended = true;
      if (task.child === child) task.child = undefined;
      markExited();
      this.onTaskExit(alloc, task, child.pid, description);
    };
    child.once('exit', (code, signal) => end(code !== null ? `exited with code ${code}` : `killed by ${signal ?? 'unknown signal'}`));
    child.on('error', (error) => {
      // Also emitted when a signal cannot be sent; only a process that never started has no pid.
      if (child.pid === undefined) {
        markOutputDone();
        end(`failed to start: ${error.message}`);
      }
      else log.warn({ err: error }, 'task process error');
    });
    if (child.pid === undefined) return;
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    this.recordPids(alloc);
    child.once('spawn', () => {
      if (ended || task.child !== child) return;
      task.state = 'running';
      task.lastEvent = task.restarts === 0 ? 'started' : `restarted (${task.restarts})`;
      log.info({ taskPid: child.pid }, 'task started');
      this.onTaskRunning(alloc);
    });
  }

  private taskEnv(alloc: AllocRuntime, spec: LocalTaskSpec): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = {};
    for (const [key, value] of Object.entries(process.env)) {
      if (value !== undefined && (INHERITED_ENV.includes(key) || key.startsWith('LC_'))) env[key] = value;
    }
    Object.assign(env, spec.env);
    // Nomad's runtime variables, set last as Nomad does, so the same programs run under Nomad. Like a
    // Nomad task group's network, every task sees every port of the allocation.
    for (const [label, port] of Object.entries(alloc.ports)) {
      env[`NOMAD_PORT_${label}`] = String(port);
      env[`NOMAD_HOST_PORT_${label}`] = String(port);
      env[`NOMAD_IP_${label}`] = this.bindHost;
      env[`NOMAD_ADDR_${label}`] = hostPort(this.bindHost, port);
    }
    env.NOMAD_ALLOC_ID = alloc.id;
    env.NOMAD_JOB_ID = alloc.jobId;
    env.NOMAD_TASK_NAME = spec.name;
    env.MANTICORE_SESSION_ID = alloc.job.sessionId;
    return env;
  }

  private onTaskRunning(alloc: AllocRuntime): void {
    if (alloc.stopReason !== undefined) return;
    if (![...alloc.tasks.values()].every((task) => task.state === 'running')) {
      this.emitUpsertFor(alloc);
      return;
    }
    if (alloc.clientStatus === 'pending') alloc.clientStatus = 'running';
    const { checks } = alloc.job.body;
    if (checks.length === 0) alloc.healthy = true;
    else this.startChecks(alloc, checks);
    this.emitUpsertFor(alloc);
  }

  private onTaskExit(alloc: AllocRuntime, task: TaskRuntime, pid: number | undefined, description: string): void {
    task.state = 'dead';
    const log = this.log.child({ ...jobFields(alloc.job), allocId: alloc.id, task: task.spec.name });
    if (alloc.stopReason !== undefined) {
      if (!task.failed) task.lastEvent = `${description} (${alloc.stopReason})`;
      log.info({ taskPid: pid, reason: alloc.stopReason }, `task stopped: ${description}`);
      this.emitUpsertFor(alloc);
      return;
    }
    // Whatever the task left in its process group would hold its ports against the restart.
    if (pid !== undefined) killGroupRemnants(pid);
    alloc.epoch++;
    clearTimeout(alloc.checkTimer);
    alloc.checkTimer = undefined;
    alloc.healthy = false;
    const now = Date.now();
    task.restartTimes = task.restartTimes.filter((time) => now - time < this.restart.intervalMs);
    if (task.restartTimes.length >= this.restart.attempts) {
      // Without the task's name, like every other event: the session's status puts it in front.
      const reason = `${description}; restart limit (${this.restart.attempts} in ${formatDuration(this.restart.intervalMs)}) reached`;
      task.failed = true;
      task.lastEvent = reason;
      alloc.clientStatus = 'failed';
      log.warn({ taskPid: pid }, `allocation failed: ${task.spec.name} ${reason}`);
      this.emitUpsertFor(alloc);
      void this.stopAllocation(alloc, `sibling task ${task.spec.name} failed`);
      return;
    }
    task.restartTimes.push(now);
    task.lastEvent = `${description}; restarting in ${formatDuration(this.restart.delayMs)}`;
    log.warn({ taskPid: pid }, `task ${task.lastEvent}`);
    task.restartTimer = setTimeout(() => {
      task.restartTimer = undefined;
      if (alloc.stopReason !== undefined) return;
      task.restarts++;
      this.spawnTask(alloc, task);
    }, this.restart.delayMs);
    this.emitUpsertFor(alloc);
  }

  /** Probes the checks that have not passed yet every checkIntervalMs; once all have, probing stops. */
  private startChecks(alloc: AllocRuntime, checks: LocalCheck[]): void {
    const epoch = alloc.epoch;
    let pending = checks;
    const round = async (): Promise<void> => {
      alloc.checkTimer = undefined;
      const failures = await Promise.all(pending.map((check) => this.probe(alloc, check)));
      if (alloc.epoch !== epoch || alloc.stopReason !== undefined) return;
      const failing = pending.flatMap((check, index) => (failures[index] === undefined ? [] : [`${describeCheck(check)}: ${failures[index]}`]));
      pending = pending.filter((_, index) => failures[index] !== undefined);
      if (pending.length > 0) {
        // Reported when it changes only: each report may become a status write.
        if (failing.join('\n') !== alloc.failingChecks?.join('\n')) {
          alloc.failingChecks = failing;
          this.emitUpsertFor(alloc);
        }
        alloc.checkTimer = setTimeout(() => void round(), this.checkIntervalMs);
        return;
      }
      alloc.failingChecks = undefined;
      alloc.healthy = true;
      this.log.info({ ...jobFields(alloc.job), allocId: alloc.id }, 'allocation healthy');
      this.emitUpsertFor(alloc);
    };
    void round();
  }

  /** Undefined when the check passes, else why it failed. */
  private probe(alloc: AllocRuntime, check: LocalCheck): Promise<string | undefined> {
    const port = alloc.ports[check.portLabel];
    if (port === undefined) return Promise.resolve('the allocation has no such port');
    const timedOut = `no answer within ${formatDuration(CHECK_TIMEOUT_MS)}`;
    return new Promise<string | undefined>((resolve) => {
      if (check.type === 'tcp') {
        const socket = net.connect({ host: this.reachHost, port });
        const done = (failure: string | undefined): void => {
          socket.destroy();
          resolve(failure);
        };
        socket.setTimeout(CHECK_TIMEOUT_MS, () => done(timedOut));
        socket.once('connect', () => done(undefined));
        socket.once('error', (error) => done(probeError(error)));
        return;
      }
      let expired = false;
      const request = http.get(
        { host: this.reachHost, port, path: check.path ?? '/', agent: false, timeout: CHECK_TIMEOUT_MS },
        (response) => {
          response.resume();
          // As Nomad's checks: a status below 400 passes, 4xx and 5xx fail (a redirect passes as it is, unfollowed).
          const status = response.statusCode ?? 500;
          resolve(status < 400 ? undefined : `answered ${status}`);
          request.destroy();
        },
      );
      request.once('timeout', () => {
        expired = true;
        request.destroy();
      });
      request.once('error', (error) => resolve(expired ? timedOut : probeError(error)));
    });
  }

  /**
   * SIGTERM to every task's process group, SIGKILL after killTimeoutMs, then the same for any process still
   * carrying the allocation id; resolves once all have exited.
   */
  private async stopAllocation(alloc: AllocRuntime, reason: string): Promise<void> {
    if (alloc.stopReason === undefined) alloc.stopReason = reason;
    alloc.epoch++;
    clearTimeout(alloc.checkTimer);
    alloc.checkTimer = undefined;
    alloc.healthy = false;
    for (const task of alloc.tasks.values()) {
      if (task.restartTimer) {
        clearTimeout(task.restartTimer);
        task.restartTimer = undefined;
        if (!task.failed) task.lastEvent = `not restarted (${alloc.stopReason})`;
      }
    }
    await Promise.all([...alloc.tasks.values()].map((task) => this.stopTask(task)));
    // A process that left its task's process group (setsid, a daemon) is found only by its environment, and
    // only now: once the allocation's directory is removed not even the next start() looks for it.
    await this.terminateLeftovers(await findAllocProcesses(new Set([alloc.id])), "stopping a process the allocation's tasks left running");
    await this.closeOutput(alloc);
    if (alloc.clientStatus !== 'failed') alloc.clientStatus = 'complete';
    for (const port of Object.values(alloc.ports)) this.portsHeld.delete(port);
    this.emitUpsertFor(alloc);
  }

  /**
   * Takes what the tasks wrote last into their logs, then closes them. A pipe still held open by
   * something that escaped the task's process group without the allocation id in its environment is
   * given the kill timeout, no more.
   */
  private async closeOutput(alloc: AllocRuntime): Promise<void> {
    const tasks = [...alloc.tasks.values()];
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<void>((resolve) => (timer = setTimeout(resolve, this.killTimeoutMs)));
    await Promise.race([Promise.all(tasks.map((task) => task.outputDone)), bound]);
    clearTimeout(timer);
    await Promise.all(tasks.flatMap((task) => Object.values(task.output).map(closeWriter)));
  }

  private async stopTask(task: TaskRuntime): Promise<void> {
    const child = task.child;
    const exited = task.exited;
    if (!child || child.pid === undefined || !exited) return;
    const pid = child.pid;
    let killed: () => void = () => undefined;
    const killedPromise = new Promise<void>((resolve) => (killed = resolve));
    const timer = setTimeout(() => {
      signalTask(child, 'SIGKILL');
      killGroupRemnants(pid);
      killed();
    }, this.killTimeoutMs);
    signalTask(child, 'SIGTERM');
    await exited;
    // The leader is gone; anything it left in its group gets the rest of the kill timeout, then SIGKILL.
    if (groupExists(pid)) await killedPromise;
    clearTimeout(timer);
  }

  // ---- persistence -------------------------------------------------------------------------------------

  private jobFile(jobId: string): string {
    return path.join(this.jobsDir, `${encodeURIComponent(jobId)}.json`);
  }

  private async persistJob(job: StoredJob): Promise<void> {
    await writeFileAtomic(this.jobFile(job.id), `${JSON.stringify({ version: 1, job }, null, 2)}\n`);
  }

  private async loadJobs(): Promise<StoredJob[]> {
    const jobs: StoredJob[] = [];
    for (const name of (await fsp.readdir(this.jobsDir)).sort()) {
      const file = path.join(this.jobsDir, name);
      if (name.endsWith('.tmp')) {
        // Left by a write that a crash interrupted; the rename never happened, so the job file is intact.
        await fsp.rm(file, { force: true });
        continue;
      }
      if (!name.endsWith('.json')) continue;
      try {
        jobs.push(parseStoredJob(JSON.parse(await fsp.readFile(file, 'utf8')), file));
      } catch (error) {
        this.log.error({ err: error, file }, 'skipping unreadable job state file');
      }
    }
    return jobs;
  }

  private recordPids(alloc: AllocRuntime): void {
    const pids: Record<string, number> = {};
    for (const [name, task] of alloc.tasks) if (task.child?.pid !== undefined) pids[name] = task.child.pid;
    // A flat task → pid map; the directory names the allocation.
    const content = `${JSON.stringify(pids)}\n`;
    alloc.pidsWrite = alloc.pidsWrite
      .then(() => writeFileAtomic(path.join(alloc.dir, 'pids.json'), content, { durable: false }))
      .catch((error: unknown) => this.log.error({ err: error, ...jobFields(alloc.job), allocId: alloc.id }, 'recording task pids failed'));
  }

  private async removeAllocDir(alloc: AllocRuntime): Promise<void> {
    await alloc.pidsWrite;
    await fsp.rm(alloc.dir, { recursive: true, force: true });
  }

  /**
   * Kills the processes of allocations recorded by a previous run (a Manticore killed with -9 leaves its
   * tasks running), then forgets those allocations. A process counts as ours only if its environment holds
   * `NOMAD_ALLOC_ID=<that allocation>`, so a pid reused by an unrelated process is never touched. Besides
   * the recorded pids, /proc is searched for the allocation ids: that also finds tasks spawned just before
   * the crash (pid not yet recorded) and whatever the tasks started. Each task goes with its process group,
   * so what it started with an environment of its own goes too.
   */
  private async reapPreviousAllocations(): Promise<void> {
    const allocIds = (await fsp.readdir(this.allocsDir)).filter((name) => !name.startsWith('.'));
    if (allocIds.length === 0) return;
    const candidates = new Map<number, string>();
    for (const allocId of allocIds) {
      const file = path.join(this.allocsDir, allocId, 'pids.json');
      try {
        const recorded: unknown = JSON.parse(await fsp.readFile(file, 'utf8'));
        if (!isRecord(recorded)) throw new Error('not a task → pid map');
        for (const pid of Object.values(recorded)) {
          if (typeof pid === 'number' && Number.isInteger(pid) && pid > 0) candidates.set(pid, allocId);
        }
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
          this.log.warn({ err: error, file }, 'unreadable pid record; searching /proc for the allocation instead');
        }
      }
    }
    for (const [pid, allocId] of await findAllocProcesses(new Set(allocIds))) candidates.set(pid, allocId);
    await this.terminateLeftovers(candidates, 'killing a task left running by a previous run');
    await Promise.all(allocIds.map((allocId) => fsp.rm(path.join(this.allocsDir, allocId), { recursive: true, force: true })));
  }

  /** Terminates each candidate pid whose environment names its allocation (any other is left alone). */
  private async terminateLeftovers(candidates: ReadonlyMap<number, string>, message: string): Promise<void> {
    await Promise.all(
      [...candidates].map(async ([pid, allocId]) => {
        if (!(await belongsToAlloc(pid, allocId))) return;
        this.log.warn({ taskPid: pid, allocId }, message);
        await this.terminateLeftover(pid, allocId);
      }),
    );
  }

  /**
   * SIGTERM, then SIGKILL after killTimeoutMs; not our child, so its end can only be polled. A leftover
   * that leads its process group (a task does, so does a helper in a session of its own) is stopped with
   * the group: what it started there may run with an environment of its own, without the allocation id
   * that would have found it.
   */
  private async terminateLeftover(pid: number, allocId: string): Promise<void> {
    const group = readStat(pid)?.pgrp === pid;
    const target = group ? -pid : pid;
    const running = async (): Promise<boolean> => (group ? groupRunning(pid) : isAlive(pid));
    signalPid(target, 'SIGTERM');
    const deadline = Date.now() + this.killTimeoutMs;
    while ((await running()) && Date.now() < deadline) await delay(LEFTOVER_POLL_MS);
    // Checked again: the pid may have been reused while we waited. A group whose leader is gone is still
    // the one signalled: its id stays taken as long as it has a member.
    if ((await running()) && ((group && !isAlive(pid)) || (await belongsToAlloc(pid, allocId)))) {
      signalPid(target, 'SIGKILL');
      const killDeadline = Date.now() + 1_000;
      while ((await running()) && Date.now() < killDeadline) await delay(LEFTOVER_POLL_MS);
      if (await running()) this.log.error({ taskPid: pid, allocId, group }, 'leftover task survived SIGKILL');
    }
  }

  // ---- reporting ---------------------------------------------------------------------------------------

  private emitUpsertFor(alloc: AllocRuntime): void {
    const runtime = this.jobs.get(alloc.jobId);
    // A replaced allocation winding down is no longer part of its job's workload.
    if (runtime && runtime.alloc === alloc) this.emitUpsert(runtime);
  }

  private emitUpsert(runtime: JobRuntime): void {
    this.changes.next({ kind: 'upsert', workload: this.snapshot(runtime) });
  }

  private snapshot(runtime: JobRuntime): Workload {
    const { job, alloc } = runtime;
    const workload: Workload = {
      jobId: job.id,
      sessionId: job.sessionId,
      specHash: job.specHash,
      ...(runtime.placementFailure !== undefined ? { placementFailure: runtime.placementFailure } : {}),
    };
    if (!alloc) return workload;
    const ports: Record<string, string> = {};
    for (const [label, port] of Object.entries(alloc.ports)) ports[label] = hostPort(this.reachHost, port);
    const tasks: Record<string, TaskState> = {};
    for (const [name, task] of alloc.tasks) {
      tasks[name] = {
        state: task.state,
        failed: task.failed,
        restarts: task.restarts,
        ...(task.lastEvent !== undefined ? { lastEvent: task.lastEvent } : {}),
      };
    }
    const allocation: Allocation = {
      id: alloc.id,
      clientStatus: alloc.clientStatus,
      healthy: alloc.healthy,
      ports,
      tasks,
      ...(alloc.failingChecks === undefined ? {} : { failingChecks: alloc.failingChecks }),
    };
    return { ...workload, allocation };
  }

  private assertUsable(): void {
    if (this.closed) throw new Error('LocalScheduler is closed');
    if (!this.started) throw new Error('LocalScheduler.start() must be called before using it');
  }
}

// ---- rendering -----------------------------------------------------------------------------------------

function renderBody(request: WorkloadRequest): LocalJobBody {
  const template: SessionTemplate = request.template;
  const name = template.metadata.name;
  const embedded = template.spec.backends.embedded;
  if (!embedded) {
    throw new RenderError(`template ${name} has no embedded backend; it runs only on the nomad (cluster) backend`);
  }
  if (embedded.tasks.length === 0) throw new RenderError(`template ${name}: the embedded backend has no tasks`);
  const labels = new Set<string>();
  const taskNames = new Set<string>();
  const tasks = embedded.tasks.map((task): LocalTaskSpec => {
    if (!TASK_NAME.test(task.name)) throw new RenderError(`template ${name}: task name "${task.name}" must match ${TASK_NAME}`);
    if (taskNames.has(task.name)) throw new RenderError(`template ${name}: task "${task.name}" is defined twice`);
    taskNames.add(task.name);
    for (const label of task.ports) {
      if (!PORT_LABEL.test(label)) throw new RenderError(`template ${name}: task ${task.name}: port label "${label}" must match ${PORT_LABEL}`);
      if (labels.has(label)) throw new RenderError(`template ${name}: port label "${label}" is used by two tasks`);
      labels.add(label);
    }
    const where = `template ${name}: task ${task.name}`;
    const env: Record<string, string> = {};
    for (const [key, value] of Object.entries(task.env ?? {})) env[key] = interpolate(value, request, `${where} env ${key}`);
    return {
      name: task.name,
      command: interpolate(task.command, request, `${where} command`),
      args: (task.args ?? []).map((arg, index) => interpolate(arg, request, `${where} args[${index}]`)),
      env,
      ports: [...task.ports],
    };
  });
  const checks: LocalCheck[] = [];
  for (const service of template.spec.services) {
    if (!labels.has(service.port)) {
      throw new RenderError(`template ${name}: service ${service.name} uses port "${service.port}", which no embedded task provides`);
    }
    if (!service.check) continue;
    checks.push(
      service.check.type === 'http'
        ? { portLabel: service.port, type: 'http', path: service.check.path ?? '/' }
        : { portLabel: service.port, type: 'tcp' },
    );
  }
  return { template: name, meta: { [SESSION_META_KEY]: request.sessionId }, tasks, checks };
}

/** JSON with object keys sorted at every level, so equal content always serializes (and hashes) the same. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (isRecord(value)) {
    const sorted: Record<string, unknown> = {};
    for (const key of Object.keys(value).sort()) if (value[key] !== undefined) sorted[key] = sortKeys(value[key]);
    return sorted;
  }
  return value;
}

export function specHashOf(body: unknown): string {
  return createHash('sha256').update(canonicalJson(body)).digest('hex');
}

// ---- validation of bodies handed in or read back from disk ---------------------------------------------

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isStringRecord(value: unknown): value is Record<string, string> {
  return isRecord(value) && Object.values(value).every((item) => typeof item === 'string');
}

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((item) => typeof item === 'string');
}

function parseBody(value: unknown, where: string): LocalJobBody {
  const fail = (problem: string): never => {
    throw new Error(`${where}: not an embedded job body: ${problem}`);
  };
  if (!isRecord(value)) return fail('not an object');
  const { template, meta, tasks, checks } = value;
  if (typeof template !== 'string') fail('template is not a string');
  if (!isStringRecord(meta) || typeof meta[SESSION_META_KEY] !== 'string') fail(`meta.${SESSION_META_KEY} is missing`);
  if (!Array.isArray(tasks) || tasks.length === 0) return fail('tasks is not a non-empty array');
  if (!Array.isArray(checks)) return fail('checks is not an array');
  const names = new Set<string>();
  const labels = new Set<string>();
  const parsedTasks = tasks.map((task: unknown, index): LocalTaskSpec => {
    if (!isRecord(task)) return fail(`tasks[${index}] is not an object`);
    const { name, command, args, env, ports } = task;
    if (typeof name !== 'string' || !TASK_NAME.test(name) || names.has(name)) return fail(`tasks[${index}].name is invalid or repeated`);
    names.add(name);
    if (typeof command !== 'string' || command === '') return fail(`tasks[${index}].command is not a string`);
    if (!isStringArray(args)) return fail(`tasks[${index}].args is not a string array`);
    if (!isStringRecord(env)) return fail(`tasks[${index}].env is not a string map`);
    if (!isStringArray(ports)) return fail(`tasks[${index}].ports is not a string array`);
    for (const label of ports) {
      if (!PORT_LABEL.test(label) || labels.has(label)) fail(`tasks[${index}].ports: label "${label}" is invalid or repeated`);
      labels.add(label);
    }
    return { name, command, args, env, ports };
  });
  const parsedChecks = checks.map((check: unknown, index): LocalCheck => {
    if (!isRecord(check)) return fail(`checks[${index}] is not an object`);
    const { portLabel, type, path: checkPath } = check;
    if (typeof portLabel !== 'string' || !labels.has(portLabel)) return fail(`checks[${index}].portLabel names no task port`);
    if (type === 'tcp') return { portLabel, type };
    if (type === 'http' && typeof checkPath === 'string') return { portLabel, type, path: checkPath };
    return fail(`checks[${index}] is neither a tcp check nor an http check with a path`);
  });
  return { template: template as string, meta: meta as Record<string, string>, tasks: parsedTasks, checks: parsedChecks };
}

function parseStoredJob(value: unknown, where: string): StoredJob {
  if (!isRecord(value) || value.version !== 1 || !isRecord(value.job)) throw new Error(`${where}: not a version 1 job record`);
  const { id, sessionId, specHash, body } = value.job;
  if (typeof id !== 'string' || typeof sessionId !== 'string' || typeof specHash !== 'string') {
    throw new Error(`${where}: job id, sessionId or specHash missing`);
  }
  return { id, sessionId, specHash, body: parseBody(body, where) };
}

// ---- processes and files -------------------------------------------------------------------------------

function isLive(alloc: AllocRuntime): boolean {
  return alloc.stopReason === undefined && (alloc.clientStatus === 'pending' || alloc.clientStatus === 'running');
}

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** "http GET /health on port http", "tcp on port broker": a check as a status message names it. */
function describeCheck(check: LocalCheck): string {
  return check.type === 'http' ? `http GET ${check.path ?? '/'} on port ${check.portLabel}` : `tcp on port ${check.portLabel}`;
}

/** Why a probe's connection failed, in words ("connection refused" rather than "connect ECONNREFUSED 127.0.0.1:4321"). */
function probeError(error: Error): string {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ECONNREFUSED' ? 'connection refused' : code === 'ECONNRESET' ? 'connection reset' : error.message;
}

/** "1s", "300s", "1.5s", "250ms": how Nomad-style task events show durations. */
function formatDuration(ms: number): string {
  return ms < 1_000 ? `${ms}ms` : `${ms / 1_000}s`;
}

/**
 * A missing working directory makes every spawn fail with "spawn <command> ENOENT", which blames the
 * command; checked at start so the configuration is named instead.
 */
async function checkWorkDir(dir: string): Promise<void> {
  const where = `the tasks' working directory ${dir} (scheduler.workDir)`;
  let stats: fs.Stats;
  try {
    stats = await fsp.stat(dir);
  } catch (error) {
    throw new Error(`${where} cannot be used: ${(error as Error).message}`, { cause: error });
  }
  if (!stats.isDirectory()) throw new Error(`${where} is not a directory`);
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Signals a running task's process group (it leads one: spawned detached), or the task alone if that fails.
 * `child.kill` is a no-op once Node has reaped the child, so a reused pid is never hit.
 */
function signalTask(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    child.kill(signal);
  }
}

/**
 * SIGKILL for what is left in an exited task's process group. Only the group is signalled, never the pid:
 * the leader is reaped, its pid is free for reuse, while a group id stays taken as long as a member lives.
 */
function killGroupRemnants(pgid: number): void {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    // ESRCH: the group is empty.
  }
}

/** Signals a process (or, given -pgid, a group) that is not our child; it may be gone already. */
function signalPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // ESRCH: already gone, which is what we wanted.
  }
}

function groupExists(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

interface ProcessStat {
  /** False for a zombie: an orphaned zombie waits for init to reap it but runs nothing. */
  running: boolean;
  pgrp: number;
}

/** The state and process group in a /proc/<pid>/stat. */
function parseStat(stat: string): ProcessStat {
  // The command name in parentheses may itself hold spaces or parentheses: the fields follow the last ')'.
  const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { running: state !== 'Z' && state !== 'X', pgrp: Number(pgrp) };
}

/** Undefined once the process is gone. */
function readStat(pid: number): ProcessStat | undefined {
  try {
    return parseStat(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

function isAlive(pid: number): boolean {
  return readStat(pid)?.running ?? false;
}

/**
 * Whether a member of the process group still runs. kill(-pgid, 0) alone also counts zombies, and an
 * orphan's zombie may wait long for init to reap it (forever under an init that does not reap).
 */
async function groupRunning(pgid: number): Promise<boolean> {
  if (!groupExists(pgid)) return false;
  const entries = await fsp.readdir('/proc').catch((): string[] => []);
  const members = await Promise.all(
    entries
      .filter((entry) => /^\d+$/.test(entry))
      .map(async (entry) => {
        const stat = await fsp.readFile(`/proc/${entry}/stat`, 'utf8').then(parseStat, () => undefined);
        return stat?.pgrp === pgid && stat.running;
      }),
  );
  return members.includes(true);
}

async function processEnviron(pid: number): Promise<string[] | undefined> {
  try {
    return (await fsp.readFile(`/proc/${pid}/environ`, 'utf8')).split('\0');
  } catch {
    return undefined;
  }
}

async function belongsToAlloc(pid: number, allocId: string): Promise<boolean> {
  if (pid === process.pid) return false;
  return (await processEnviron(pid))?.includes(`NOMAD_ALLOC_ID=${allocId}`) ?? false;
}

/** pid → allocation id, for every process whose environment names one of `allocIds`. */
async function findAllocProcesses(allocIds: ReadonlySet<string>): Promise<Map<number, string>> {
  const found = new Map<number, string>();
  let entries: string[];
  try {
    entries = await fsp.readdir('/proc');
  } catch {
    return found;
  }
  await Promise.all(
    entries
      .filter((entry) => /^\d+$/.test(entry) && Number(entry) !== process.pid)
      .map(async (entry) => {
        const variable = (await processEnviron(Number(entry)))?.find((item) => item.startsWith('NOMAD_ALLOC_ID='));
        const allocId = variable?.slice('NOMAD_ALLOC_ID='.length);
        if (allocId !== undefined && allocIds.has(allocId)) found.set(Number(entry), allocId);
      }),
  );
  return found;
}

