import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import readline from 'node:readline';
import { RotatingLogWriter, closeWriter, forwardOutput } from '../../../controller/scheduler/log-files.js';
import type { LogStreamName } from '../../../controller/scheduler/task-logs.js';
import type { Logger } from '../../../controller/util/log.js';
import { nodeAttributes } from './placement.js';
import { nowNs, NS_PER_MS, type AllocRecord, type NodeRecord, type TaskEvent, type TaskSpec, type TaskStateRecord } from './types.js';

/**
 * One task of an allocation, as Nomad's task runner drives it: Task Setup → Started → (Terminated →
 * Restarting → Started)* with the restart policy, or Not Restarting → dead and failed; Killing → Killed
 * when the allocation stops. raw_exec runs the command for real in its own process group; docker is
 * simulated (no engine here); any other driver fails the task.
 */

/** Nomad keeps the latest 10 events per task (structs.MaxTaskEventsPerTask... 10 in the client). */
const MAX_EVENTS = 10;

export interface TaskHost {
  readonly alloc: AllocRecord;
  readonly node: NodeRecord;
  readonly workDir: string;
  readonly hostIP: string;
  readonly dockerStartMs: number;
  /** Between the lines a simulated container writes. */
  readonly dockerLogIntervalMs: number;
  /** The allocation's `alloc/logs` directory. */
  readonly logsDir: string;
  readonly log: Logger;
  /** The task's state changed: recompute the allocation and report it. */
  changed(): void;
  /** The task failed for good: the allocation kills its siblings. */
  failed(task: TaskRunner): void;
}

export function taskEvent(type: string, display: string, extra: Partial<TaskEvent> = {}): TaskEvent {
  return {
    Type: type,
    Time: nowNs(),
    DisplayMessage: display,
    Message: '',
    Details: {},
    ExitCode: 0,
    Signal: 0,
    KillTimeout: 0,
    KillReason: '',
    StartDelay: 0,
    RestartReason: '',
    DriverError: '',
    FailsTask: false,
    ...extra,
  };
}

/** Go's time.Duration.String() for whole milliseconds, as Nomad's messages print durations. */
export function goDuration(ms: number): string {
  if (ms < 1_000) return `${ms}ms`;
  const h = Math.floor(ms / 3_600_000);
  const m = Math.floor((ms % 3_600_000) / 60_000);
  const s = (ms % 60_000) / 1_000;
  return `${h > 0 ? `${h}h` : ''}${h > 0 || m > 0 ? `${m}m` : ''}${s}s`;
}

export class TaskRunner {
  readonly state: TaskStateRecord;
  private child: ChildProcess | undefined;
  /** Resolves when the current process (or simulated container) has exited. */
  private exited: Promise<void> = Promise.resolve();
  private markExited: () => void = () => undefined;
  private timer: NodeJS.Timeout | undefined;
  private killTimer: NodeJS.Timeout | undefined;
  private killing = false;
  private windowStart = 0;
  private windowCount = 0;
  /** stdout and stderr in rotated files, as logmon keeps them; opened at the first start. */
  private output: Record<LogStreamName, RotatingLogWriter> | undefined;
  /** A simulated container while it runs: its image, since when, and how many lines it has written. */
  private simulated: { image: string; since: number; lines: number } | undefined;
  /** Someone asked for this task's logs: a simulated container writes from then on (see observeOutput). */
  private observed = false;
  private chatter: NodeJS.Timeout | undefined;
  /** Resolves once the current process's stdout and stderr have closed (all its output is in the files). */
  private outputClosed: Promise<void> = Promise.resolve();

  constructor(private readonly host: TaskHost, readonly spec: TaskSpec) {
    this.state = { State: 'pending', Failed: false, Restarts: 0, LastRestart: null, StartedAt: null, FinishedAt: null, Events: [] };
    this.record(taskEvent('Received', 'Task received by client'));
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  start(): void {
    this.record(taskEvent('Task Setup', 'Building Task Directory', { Message: 'Building Task Directory' }));
    this.host.changed();
    this.launch();
  }

  private record(event: TaskEvent): void {
    this.state.Events.push(event);
    if (this.state.Events.length > MAX_EVENTS) this.state.Events.splice(0, this.state.Events.length - MAX_EVENTS);
  }

  private launch(): void {
    if (this.killing) return;
    const driver = this.spec.driver;
    if (driver === 'raw_exec') this.launchRawExec();
    else if (driver === 'docker') this.launchDocker();
    else this.fail('Driver Failure', 'missing drivers', `driver "${driver}" is not available on node ${this.host.node.spec.name}`);
  }

  /** The task's log writers, opened once and kept across restarts (logmon appends to the newest file). */
  private outputFiles(): Record<LogStreamName, RotatingLogWriter> {
    if (!this.output) {
      const open = (stream: LogStreamName): RotatingLogWriter => {
        const writer = new RotatingLogWriter(this.host.logsDir, `${this.spec.name}.${stream}`, this.spec.logs);
        writer.on('error', (error) => this.host.log.warn({ err: error, allocId: this.host.alloc.ID, task: this.spec.name, stream }, 'nomad double: writing a task log failed'));
        return writer;
      };
      this.output = { stdout: open('stdout'), stderr: open('stderr') };
    }
    return this.output;
  }

  /** Ends the log files once the task is gone for good (the allocation stopped), after its last output (1 s at most). */
  async closeOutput(): Promise<void> {
    this.stopChatter();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.outputClosed, new Promise<void>((resolve) => (timer = setTimeout(resolve, 1_000)))]);
    clearTimeout(timer);
    if (this.output) await Promise.all(Object.values(this.output).map(closeWriter));
  }

  private stopChatter(): void {
    clearInterval(this.chatter);
    this.chatter = undefined;
    this.simulated = undefined;
  }

  private running(): void {
    this.state.State = 'running';
    this.state.StartedAt = new Date().toISOString();
    this.record(taskEvent('Started', 'Task started by client'));
    this.host.changed();
  }

  // ---- raw_exec ------------------------------------------------------------------------------------------

  private launchRawExec(): void {
    const env = taskEnvironment(this.host.alloc, this.spec, this.host.node, this.host.hostIP);
    const config = this.spec.config;
    const command = typeof config.command === 'string' ? interpolate(config.command, env, this.host) : '';
    const args = Array.isArray(config.args) ? config.args.filter((arg): arg is string => typeof arg === 'string').map((arg) => interpolate(arg, env, this.host)) : [];
    if (command === '') {
      this.fail('Failed Validation', 'failed to decode driver config: missing required field "command"', 'missing command');
      return;
    }
    this.exited = new Promise<void>((resolve) => (this.markExited = resolve));
    let child: ChildProcess;
    try {
      const output = this.outputFiles();
      // detached: its own process group, so the whole tree is signalled, as Nomad's executor does.
      child = spawn(command, args, { cwd: this.host.workDir, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
      forwardOutput(child.stdout!, output.stdout);
      forwardOutput(child.stderr!, output.stderr);
      this.outputClosed = new Promise<void>((resolve) => child.once('close', () => resolve()));
    } catch (error) {
      this.markExited();
      this.startFailed((error as Error).message);
      return;
    }
    this.child = child;
    const log = this.host.log.child({ allocId: this.host.alloc.ID, task: this.spec.name });
    for (const [stream, source] of [['stdout', child.stdout], ['stderr', child.stderr]] as const) {
      if (source) readline.createInterface({ input: source }).on('line', (line) => log.debug({ stream }, line));
    }
    let started = false;
    child.once('spawn', () => {
      started = true;
      log.debug({ pid: child.pid, command, args }, 'task process started');
      this.running();
    });
    child.once('error', (error) => {
      if (started) return;
      this.child = undefined;
      this.markExited();
      this.startFailed(`failed to launch command with executor: ${error.message}`);
    });
    child.once('exit', (code, signal) => {
      if (!started) return;
      this.child = undefined;
      const pid = child.pid;
      void (async () => {
        // Whatever the leader left behind in its group goes with it, and the task has exited only
        // once the whole group is gone (as Nomad's executor waits for it).
        if (pid !== undefined) {
          signalGroup(pid, 'SIGKILL');
          if (!(await groupGone(pid))) log.warn({ pgid: pid }, 'processes of the task survived SIGKILL');
        }
        this.markExited();
        this.exitedWith(code ?? 0, signal);
      })();
    });
  }

  // ---- docker (simulated) ----------------------------------------------------------------------------------

  private launchDocker(): void {
    const config = this.spec.config;
    const labels = new Set(this.host.alloc.group.ports.map((port) => port.label));
    const problem =
      typeof config.image !== 'string' || config.image.trim() === '' ? 'failed to decode driver config: missing required field "image"'
      : config.ports !== undefined && (!Array.isArray(config.ports) || !config.ports.every((label) => typeof label === 'string' && labels.has(label)))
        ? `failed to decode driver config: ports ${JSON.stringify(config.ports)} must name the group's port labels (${[...labels].join(', ')})`
        : undefined;
    if (problem) {
      this.fail('Driver Failure', problem, problem);
      return;
    }
    this.record(taskEvent('Driver', `Downloading image`, { Details: { image: String(config.image) } }));
    this.host.changed();
    this.exited = new Promise<void>((resolve) => (this.markExited = resolve));
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.killing) return;
      this.running();
      this.simulated = { image: String(config.image), since: Date.now(), lines: 0 };
      if (this.observed) this.simulateOutput();
    }, this.host.dockerStartMs);
  }

  /**
   * The logs of this task are asked for. No container runs, so a simulated one writes synthetic output, but
   * only once somebody looks: thousands of simulated tasks (the benchmarks) then hold no log files and no
   * timers. What it would have written since it started is filled in first (its last 100 lines).
   */
  observeOutput(): void {
    this.observed = true;
    if (this.simulated && !this.chatter) this.simulateOutput();
  }

  /** A note on stderr, the lines due since the container started, then one line per interval. */
  private simulateOutput(): void {
    const simulated = this.simulated!;
    let output: Record<LogStreamName, RotatingLogWriter>;
    try {
      output = this.outputFiles();
    } catch (error) {
      this.host.log.warn({ err: error, allocId: this.host.alloc.ID, task: this.spec.name }, 'nomad double: cannot open task logs');
      return;
    }
    const interval = this.host.dockerLogIntervalMs;
    const line = (n: number, at: number): string => `${new Date(at).toISOString()} ${simulated.image} ${this.spec.name}: simulated output line ${n}\n`;
    if (simulated.lines === 0) output.stderr.write(`nomad double: docker is simulated; ${simulated.image} does not run, and its output is synthetic\n`);
    const due = Math.floor((Date.now() - simulated.since) / interval);
    for (let n = Math.max(simulated.lines + 1, due - 99); n <= due; n++) output.stdout.write(line(n, simulated.since + n * interval));
    simulated.lines = Math.max(simulated.lines, due);
    this.chatter = setInterval(() => output.stdout.write(line(++simulated.lines, Date.now())), interval);
  }

  // ---- exits and restarts -------------------------------------------------------------------------------------

  private exitedWith(code: number, signal: NodeJS.Signals | null): void {
    const signo = signal ? (osConstants.signals[signal] ?? 0) : 0;
    const exitCode = signal && code === 0 ? 128 + signo : code;
    const display = signo ? `Exit Code: ${exitCode}, Signal: ${signo}` : `Exit Code: ${exitCode}`;
    this.record(taskEvent('Terminated', display, { ExitCode: exitCode, Signal: signo, Details: { exit_code: String(exitCode), signal: String(signo) } }));
    if (this.killing) return;
    this.restartOrFail();
  }

  private startFailed(message: string): void {
    this.record(taskEvent('Driver Failure', message, { DriverError: message }));
    this.restartOrFail();
  }

  /** Nomad's restart tracker: at most Attempts restarts per Interval, Delay apart (+ up to 25% jitter). */
  private restartOrFail(): void {
    const policy = this.spec.restart;
    const now = Date.now();
    if (this.windowStart === 0 || now > this.windowStart + policy.intervalMs) {
      this.windowStart = now;
      this.windowCount = 0;
    }
    this.windowCount++;
    let delayMs = policy.delayMs + Math.floor(Math.random() * policy.delayMs * 0.25);
    if (this.windowCount > policy.attempts) {
      if (policy.mode !== 'delay') {
        this.fail('Not Restarting', `Exceeded allowed attempts ${policy.attempts} in interval ${goDuration(policy.intervalMs)} and mode is "${policy.mode}"`);
        return;
      }
      // Mode delay: wait out the interval, then start a new one.
      delayMs = Math.max(delayMs, this.windowStart + policy.intervalMs - now);
    }
    this.state.State = 'pending';
    this.state.Restarts++;
    this.state.LastRestart = new Date().toISOString();
    this.record(taskEvent('Restarting', `Task restarting in ${goDuration(delayMs)}`, { StartDelay: delayMs * NS_PER_MS, RestartReason: 'Restart within policy' }));
    this.host.changed();
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.launch();
    }, delayMs);
  }

  /** The task is dead and failed; the allocation fails with it. */
  private fail(type: string, display: string, driverError = ''): void {
    this.state.State = 'dead';
    this.state.Failed = true;
    this.state.FinishedAt = new Date().toISOString();
    this.record(taskEvent(type, display, { FailsTask: true, DriverError: driverError }));
    this.host.changed();
    this.host.failed(this);
  }

  /** Sends `signal` to the task from outside (as a crash or an operator would): Nomad sees an exit. */
  signal(signal: NodeJS.Signals): boolean {
    if (this.state.State !== 'running') return false;
    if (this.child?.pid !== undefined) return signalGroup(this.child.pid, signal, true);
    if (this.spec.driver !== 'docker') return false;
    const signo = osConstants.signals[signal] ?? 0;
    this.stopChatter();
    this.markExited();
    this.exitedWith(0, signo ? signal : null);
    return true;
  }

  /**
   * Stops the task as Nomad does: Killing, the task's KillSignal to its process group, SIGKILL after
   * KillTimeout (or at once with `force`), then Killed.
   */
  async kill(reason: string, force = false): Promise<void> {
    if (this.killing) {
      if (force && this.child?.pid !== undefined) signalGroup(this.child.pid, 'SIGKILL', true);
      return this.exited;
    }
    this.killing = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.stopChatter();
    if (this.state.State === 'dead') return;
    const timeoutMs = this.spec.killTimeoutMs;
    this.record(taskEvent('Killing', `Sent interrupt. Waiting ${goDuration(timeoutMs)} before force killing`, { KillTimeout: timeoutMs * NS_PER_MS, KillReason: reason }));
    this.host.changed();
    const pid = this.child?.pid;
    if (pid !== undefined) {
      // The child object is live until its exit event, so its pid cannot have been reused yet.
      signalGroup(pid, force ? 'SIGKILL' : this.spec.killSignal, true);
      if (!force) this.killTimer = setTimeout(() => signalGroup(pid, 'SIGKILL', this.child?.pid === pid), timeoutMs);
      await this.exited;
      if (this.killTimer) clearTimeout(this.killTimer);
    } else if (this.spec.driver === 'docker') {
      this.markExited();
    } else {
      // No process, or a leader that exited while its group is still being swept.
      await this.exited;
    }
    this.state.State = 'dead';
    this.state.FinishedAt = new Date().toISOString();
    this.record(taskEvent('Killed', 'Task successfully killed'));
    this.host.changed();
  }

  /** Stops the task because a sibling failed (it is not failed itself). */
  killForSibling(sibling: string): Promise<void> {
    if (this.state.State !== 'dead' && !this.killing) this.record(taskEvent('Sibling Task Failed', `Task's sibling "${sibling}" failed`));
    return this.kill(`task's sibling "${sibling}" failed`);
  }
}

/**
 * Signals a process group; false when it no longer exists. With `orLeader`, a leader that has not yet
 * called setsid (just spawned) is signalled by its pid; never used once the leader may have been reaped.
 */
export function signalGroup(pid: number, signal: NodeJS.Signals, orLeader = false): boolean {
  try {
    process.kill(-pid, signal);
    return true;
  } catch {
    if (!orLeader) return false;
    try {
      process.kill(pid, signal);
      return true;
    } catch {
      return false;
    }
  }
}

/**
 * Resolves true once no live process is left in the group (zombies waiting for their new parent to
 * reap them count as gone), false after `timeoutMs`.
 */
async function groupGone(pgid: number, timeoutMs = 5_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (groupHasLiveMembers(pgid)) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return true;
}

function groupHasLiveMembers(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
  } catch {
    return false;
  }
  if (process.platform !== 'linux') return true;
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      // Fields after the command: state, ppid, pgrp, …
      const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(pgrp) === pgid && state !== 'Z') return true;
    } catch {
      // The process ended while /proc was read.
    }
  }
  return false;
}

/** Nomad's runtime variables for a task, over the few host variables a process needs. */
export function taskEnvironment(alloc: AllocRecord, task: TaskSpec, node: NodeRecord, hostIP: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of ['PATH', 'HOME', 'LANG', 'TMPDIR']) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  const job = alloc.job.spec;
  const runtime: Record<string, string> = {
    NOMAD_ALLOC_ID: alloc.ID,
    NOMAD_SHORT_ALLOC_ID: alloc.ID.slice(0, 8),
    NOMAD_ALLOC_NAME: alloc.Name,
    NOMAD_ALLOC_INDEX: String(alloc.index),
    NOMAD_JOB_ID: job.id,
    NOMAD_JOB_NAME: job.name,
    NOMAD_TASK_NAME: task.name,
    NOMAD_GROUP_NAME: alloc.group.name,
    NOMAD_NAMESPACE: job.namespace,
    NOMAD_REGION: job.region,
    NOMAD_DC: node.spec.datacenter,
    NOMAD_CPU_LIMIT: String(task.cpu),
    NOMAD_MEMORY_LIMIT: String(task.memoryMB),
  };
  for (const [key, value] of Object.entries({ ...job.meta, ...alloc.group.meta, ...task.meta })) {
    runtime[`NOMAD_META_${key}`] = value;
    runtime[`NOMAD_META_${key.toUpperCase()}`] = value;
  }
  for (const port of alloc.ports) {
    const inside = alloc.group.networkMode === 'bridge' && port.To > 0 ? port.To : port.Value;
    runtime[`NOMAD_PORT_${port.Label}`] = String(inside);
    runtime[`NOMAD_HOST_PORT_${port.Label}`] = String(port.Value);
    runtime[`NOMAD_IP_${port.Label}`] = port.HostIP;
    runtime[`NOMAD_HOST_IP_${port.Label}`] = port.HostIP;
    runtime[`NOMAD_ADDR_${port.Label}`] = `${port.HostIP}:${inside}`;
    runtime[`NOMAD_HOST_ADDR_${port.Label}`] = `${port.HostIP}:${port.Value}`;
    if (alloc.group.networkMode === 'bridge') runtime[`NOMAD_ALLOC_PORT_${port.Label}`] = String(inside);
  }
  const nodeVars: Record<string, string> = {
    'node.unique.id': node.id,
    'node.unique.name': node.spec.name,
    'node.datacenter': node.spec.datacenter,
    'node.class': node.spec.nodeClass,
    'node.pool': node.spec.nodePool,
  };
  for (const [key, value] of Object.entries(nodeAttributes(node, hostIP))) nodeVars[`attr.${key}`] = value;
  for (const [key, value] of Object.entries(node.spec.meta)) nodeVars[`meta.${key}`] = value;
  const lookup = { ...runtime, ...nodeVars };
  for (const [key, value] of Object.entries(task.env)) env[key] = replaceReferences(value, lookup);
  return { ...env, ...runtime };
}

/** `${NOMAD_x}`, `${attr.x}`, `${meta.x}`, `${node.x}`: known references replaced, others left as Nomad does. */
function replaceReferences(text: string, values: Record<string, string>): string {
  return text.replace(/\$\{([^}]+)\}/g, (whole, name: string) => values[name.trim()] ?? whole);
}

function interpolate(text: string, env: Record<string, string>, host: TaskHost): string {
  const values: Record<string, string> = { ...env };
  for (const [key, value] of Object.entries(nodeAttributes(host.node, host.hostIP))) values[`attr.${key}`] = value;
  for (const [key, value] of Object.entries(host.node.spec.meta)) values[`meta.${key}`] = value;
  values['node.unique.id'] = host.node.id;
  values['node.unique.name'] = host.node.spec.name;
  values['node.datacenter'] = host.node.spec.datacenter;
  return replaceReferences(text, values);
}

