import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { constants as fsConstants, promises as fs } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { lockDirectory, type DirectoryLock } from '../util/dir-lock.js';
import { writeFileAtomic, writeSynced } from '../util/files.js';
import type { Logger } from '../util/log.js';
import { renderHaproxyConfig, runPaths, type HaproxyConfigValues } from './haproxy-config.js';
import { HaproxyRuntime, HaproxyRuntimeError } from './haproxy-runtime.js';

/**
 * Owns one local HAProxy in master-worker mode, run as a child process: start (after stopping any
 * leftover of ours), validated hitless reloads through the master CLI, and a stop that leaves no process.
 */

export interface HaproxyProcessOptions {
  /** Directory for config, maps, sockets and pidfile; created if missing. */
  readonly runDir: string;
  /** The config template (manifests/haproxy/haproxy.cfg). */
  readonly template: string;
  /** Placeholder values; runDir is filled in from `runDir`. */
  readonly values: Omit<HaproxyConfigValues, 'runDir'>;
  /** HAProxy binary: a path, or a name looked up on PATH (default `haproxy`, then /usr/sbin/haproxy). */
  readonly binary?: string;
  readonly log: Logger;
  /** How long start and reload wait for HAProxy to answer (default 10 s). */
  readonly readyTimeoutMs?: number;
  /** How long stop lets connections finish after a soft stop before hard-stopping (default 5 s). */
  readonly gracefulStopMs?: number;
  /** How long stop waits after a hard stop before SIGKILL (default 3 s). */
  readonly killAfterMs?: number;
  /** Called when HAProxy exits without being asked to (crash, kill -9), so a supervisor can restart it. */
  readonly onUnexpectedExit?: (exit: { code: number | null; signal: NodeJS.Signals | null }) => void;
}

export interface HaproxyProcEntry {
  readonly pid: number;
  readonly reloads: number;
}

/** `show proc` on the master CLI. */
export interface HaproxyProcTable {
  readonly master: HaproxyProcEntry & { readonly failedReloads: number };
  readonly workers: readonly HaproxyProcEntry[];
  readonly oldWorkers: readonly HaproxyProcEntry[];
}

export class HaproxyProcessError extends Error {
  constructor(
    message: string,
    /** What HAProxy printed (config check or recent process output). */
    readonly output: string,
  ) {
    super(output ? `${message}:\n${output}` : message);
    this.name = 'HaproxyProcessError';
  }
}

/**
 * What the master CLI answers to `reload` from HAProxy 2.7 on (3.x included): once the new worker is forked
 * or the load failed, "Success=1" or "Success=0", a "--" line, then the startup log. 2.6 answers nothing.
 */
export interface HaproxyReloadStatus {
  readonly success: boolean;
  /** The startup log of the reload (warnings, and the alerts of a failed one). */
  readonly log: string;
}

/** The status in the master CLI's answer to `reload`; undefined for an answer without one (HAProxy 2.6). */
export function parseReloadReply(text: string): HaproxyReloadStatus | undefined {
  const [first = '', ...rest] = text.trimStart().split('\n');
  const status = /^Success=(\d+)$/.exec(first.trim());
  if (!status) return undefined;
  if (rest[0]?.trim() === '--') rest.shift();
  return { success: status[1] !== '0', log: rest.join('\n').trim() };
}

/** Parses the master CLI's `show proc` table (the layout of 2.5 and later, 3.x included: master line, then sections). */
export function parseShowProc(text: string): HaproxyProcTable {
  let section: 'master' | 'workers' | 'old' | 'programs' = 'master';
  let master: (HaproxyProcEntry & { failedReloads: number }) | undefined;
  const workers: HaproxyProcEntry[] = [];
  const oldWorkers: HaproxyProcEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('# workers')) section = 'workers';
    else if (line.startsWith('# old workers')) section = 'old';
    else if (line.startsWith('# programs')) section = 'programs';
    if (line.startsWith('#') || line.trim() === '') continue;
    const match = /^(\d+)\s+(\S+)\s+(\d+)(?:\s+\[failed:\s*(\d+)\])?/.exec(line);
    if (!match) continue;
    const entry = { pid: Number(match[1]), reloads: Number(match[3]) };
    if (section === 'master' && match[2] === 'master') master = { ...entry, failedReloads: Number(match[4] ?? 0) };
    else if (section === 'workers') workers.push(entry);
    else if (section === 'old') oldWorkers.push(entry);
  }
  if (!master) throw new Error(`show proc reply has no master line: ${JSON.stringify(text.slice(0, 200))}`);
  return { master, workers, oldWorkers };
}

/** `haproxy` from PATH, else Debian's /usr/sbin (not on PATH for non-root users), else the name as given. */
export async function resolveHaproxyBinary(binary = 'haproxy', envPath = process.env.PATH ?? ''): Promise<string> {
  if (binary.includes('/')) return binary;
  const candidates = envPath
    .split(path.delimiter)
    .filter((dir) => dir !== '')
    .map((dir) => path.join(dir, binary));
  if (binary === 'haproxy') candidates.push('/usr/sbin/haproxy', '/usr/local/sbin/haproxy');
  for (const candidate of candidates) {
    try {
      await fs.access(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // not here; try the next directory
    }
  }
  return binary;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Alive and not a zombie (a zombie holds no sockets and cannot be signalled away). */
async function isAlive(pid: number): Promise<boolean> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
    // The state follows the parenthesised command name, which may itself contain spaces or ')'.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function commandLine(pid: number): Promise<string[] | undefined> {
  try {
    return (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').filter((arg) => arg !== '');
  } catch {
    return undefined;
  }
}

/** True if the process is an HAProxy started with `-f <configPath>` (pids get reused; the path is ours alone). */
async function runsOurConfig(pid: number, configPath: string): Promise<boolean> {
  const args = await commandLine(pid);
  if (!args || args.length === 0) return false;
  const usesConfig = args.some((arg, i) => arg === configPath && args[i - 1] === '-f');
  return usesConfig && path.basename(args[0]!).includes('haproxy');
}

/** Every live process running HAProxy on our config: masters and workers of earlier runs alike. */
async function findOurProcesses(configPath: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid !== process.pid && (await runsOurConfig(pid, configPath)) && (await isAlive(pid))) pids.push(pid);
  }
  return pids;
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

async function waitGone(pids: readonly number[], timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const alive = await Promise.all(pids.map(isAlive));
    if (!alive.some(Boolean)) return true;
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
}

/** Runs `file`; `missing` when there is no such program. */
function execFileOutput(file: string, args: readonly string[]): Promise<{ ok: boolean; output: string; missing: boolean }> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: 30_000 }, (error, stdout, stderr) => {
      const output = `${stdout}${stderr}`.trim();
      if (error && (error as NodeJS.ErrnoException).code === 'ENOENT') resolve({ ok: false, output: '', missing: true });
      else resolve({ ok: !error, output: output || (error ? error.message : ''), missing: false });
    });
  });
}

const OUTPUT_LINES_KEPT = 60;

export class HaproxyProcess {
  readonly runDir: string;
  readonly configPath: string;
  readonly adminSocket: string;
  readonly masterSocket: string;
  readonly pidFile: string;
  private readonly hostsMap: string;
  private readonly tcpMap: string;
  private readonly log: Logger;
  private readonly master: HaproxyRuntime;
  private readonly admin: HaproxyRuntime;
  private readonly readyTimeoutMs: number;
  private readonly gracefulStopMs: number;
  private readonly killAfterMs: number;
  private binary: string | undefined;
  private child: ChildProcess | undefined;
  /** Set once start() has succeeded; an exit after that, not asked for, is reported to onUnexpectedExit. */
  private answering = false;
  private exited: Promise<void> | undefined;
  private stopping = false;
  private reloadCount = 0;
  private configText: string | undefined;
  private lastWorkers: number[] = [];
  /** Recent HAProxy output, for error messages; `outputSeq` numbers lines so a reload can show only its own. */
  private output: Array<{ seq: number; line: string }> = [];
  private outputSeq = 0;
  private busy: Promise<unknown> = Promise.resolve();
  /** Held from the first start to stop: another process's HAProxy in runDir would look left over. */
  private runDirLock: DirectoryLock | undefined;

  constructor(private readonly options: HaproxyProcessOptions) {
    const paths = runPaths(options.runDir);
    this.runDir = paths.runDir;
    this.configPath = paths.config;
    this.adminSocket = paths.adminSocket;
    this.masterSocket = paths.masterSocket;
    this.pidFile = paths.pidFile;
    this.hostsMap = paths.hostsMap;
    this.tcpMap = paths.tcpMap;
    this.log = options.log;
    this.readyTimeoutMs = options.readyTimeoutMs ?? 10_000;
    this.gracefulStopMs = options.gracefulStopMs ?? 5_000;
    this.killAfterMs = options.killAfterMs ?? 3_000;
    this.master = new HaproxyRuntime(this.masterSocket, { severityOutput: false, timeoutMs: 5_000 });
    this.admin = new HaproxyRuntime(this.adminSocket, { timeoutMs: 5_000 });
  }

  /** The master's pid while running. */
  get masterPid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== undefined;
  }

  /**
   * Started and answering on its sockets, until it exits or is stopped; false while a start is under way
   * (the process runs, but its ports may not be bound and its maps not loaded yet).
   */
  get serving(): boolean {
    return this.answering;
  }

  /** Successful reloads since this object was created. */
  get reloads(): number {
    return this.reloadCount;
  }

  /** The config the current workers run. */
  get currentConfig(): string | undefined {
    return this.configText;
  }

  /** Renders the template with other values (same runDir), e.g. to reload with a new maxconn. */
  renderConfig(values: Omit<HaproxyConfigValues, 'runDir'> = this.options.values): string {
    return renderHaproxyConfig(this.options.template, { ...values, runDir: this.runDir });
  }

  /** The master CLI's process table. */
  async processes(): Promise<HaproxyProcTable> {
    return parseShowProc(await this.master.execute('show proc'));
  }

  /**
   * The pid of the worker serving new connections, as the admin socket (which only that worker listens on)
   * answers it. Not from `show proc`: from HAProxy 3.1 on, after a failed reload it lists the worker that
   * goes on serving among the old workers, and no current one.
   */
  async workerPid(): Promise<number> {
    const pid = Number((await this.admin.showInfo()).Pid);
    if (!Number.isInteger(pid) || pid <= 0) throw new Error(`HAProxy's show info on ${this.adminSocket} names no worker pid`);
    return pid;
  }

  /**
   * Writes and validates the config (the rendered template, or what the last successful reload installed),
   * stops any HAProxy a previous run of ours left on this run directory, starts master and worker, and
   * resolves once the admin socket answers. Existing map files are kept: they hold the routes.
   */
  start(): Promise<void> {
    return this.serialize(() => this.doStart());
  }

  /**
   * Validates `configText` with `haproxy -c` (an invalid config is never installed: the old file stays and
   * this throws), then reloads through the master CLI and confirms with `show proc` that a new worker
   * took over, since a failed reload prints nothing in 2.6 (from 2.7 on, a failure it reports ends the wait
   * at once). A reload that fails anyway (e.g. a port in use) restores the previous file. Afterwards the
   * maps are those of the files on disk: run it through the data plane's replaceWorker, which re-applies
   * the routes.
   */
  reload(configText: string): Promise<void> {
    return this.serialize(() => this.doReload(configText));
  }

  /** Soft stop (connections may finish), then hard stop, then SIGKILL; resolves when no process of ours remains. */
  stop(): Promise<void> {
    return this.serialize(async () => {
      await this.doStop();
      this.runDirLock?.release();
      this.runDirLock = undefined;
    });
  }

  private serialize<T>(work: () => Promise<T>): Promise<T> {
    const run = this.busy.then(work, work);
    this.busy = run.catch(() => undefined);
    return run;
  }

  private async doStart(): Promise<void> {
    if (this.child) throw new Error(`HAProxy is already running (master ${this.child.pid})`);
    this.binary ??= await resolveHaproxyBinary(this.options.binary);
    await fs.mkdir(this.runDir, { recursive: true, mode: 0o700 });
    this.runDirLock ??= lockDirectory(this.runDir, 'the HAProxy run directory');
    await this.stopLeftovers();
    for (const file of [this.hostsMap, this.tcpMap]) {
      // Keep existing maps: they hold the routes of the previous run.
      await fs.writeFile(file, '', { flag: 'a', mode: 0o600 });
    }
    // A restart keeps what the last successful reload installed.
    const text = this.configText ?? this.renderConfig();
    await this.installConfig(text);
    this.configText = text;

    const args = ['-W', '-S', `${this.masterSocket},mode,600`, '-f', this.configPath, '-p', this.pidFile];
    this.log.info({ binary: this.binary, args }, 'starting haproxy');
    // detached: a process group of its own, so Ctrl-C in Manticore's terminal does not reach it (it would
    // die under the router, which would restart it); stop() stops it in order, softly.
    const child = spawn(this.binary, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    this.child = child;
    this.stopping = false;
    this.exited = new Promise<void>((resolve) => {
      child.once('exit', (code, sig) => {
        if (this.child === child) this.child = undefined;
        const unexpected = !this.stopping && this.answering;
        if (unexpected) this.answering = false;
        if (!this.stopping) this.log.error({ code, signal: sig, output: this.recentOutput() }, 'haproxy exited unexpectedly');
        else this.log.info({ code, signal: sig }, 'haproxy exited');
        resolve();
        if (unexpected) this.options.onUnexpectedExit?.({ code, signal: sig });
      });
    });
    const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
    for (const stream of [child.stdout, child.stderr]) {
      if (stream) readline.createInterface({ input: stream }).on('line', (line) => this.onOutput(line));
    }

    try {
      const failure = await Promise.race([
        this.waitReady(undefined).then(() => undefined),
        spawnError,
        this.exited.then(() => new Error('HAProxy exited during start-up')),
      ]);
      if (failure) throw failure;
    } catch (error) {
      this.stopping = true;
      child.kill('SIGKILL');
      await this.exited;
      const strays = await findOurProcesses(this.configPath);
      for (const pid of strays) signal(pid, 'SIGTERM');
      await this.killAll(strays);
      throw new HaproxyProcessError(`HAProxy did not start (${(error as Error).message})`, this.recentOutput());
    }
    this.answering = true;
    this.log.info({ masterPid: child.pid, workerPid: this.lastWorkers[0] }, 'haproxy is running');
  }

  private async doReload(configText: string): Promise<void> {
    if (!this.child) throw new Error('HAProxy is not running');
    const before = await this.processes();
    const previous = this.configText;
    await this.installConfig(configText);
    const firstLine = this.outputSeq;
    const failed = async (output: string): Promise<HaproxyProcessError> => {
      // The old worker keeps serving; put its config back so a later restart or reload uses it too.
      if (previous !== undefined) await writeFileAtomic(this.configPath, previous);
      return new HaproxyProcessError('HAProxy reload failed; the previous configuration keeps serving', output);
    };
    let reply = '';
    try {
      reply = await this.master.execute('reload');
    } catch (error) {
      // The master re-executes itself and drops the connection; only "could not connect" means it was not sent.
      const code = ((error as Error).cause as NodeJS.ErrnoException | undefined)?.code;
      if (code === 'ENOENT' || code === 'ECONNREFUSED') {
        if (previous !== undefined) await writeFileAtomic(this.configPath, previous);
        throw error;
      }
    }
    // From 2.7 on the master says how the reload went; 2.6 says nothing, and show proc below tells.
    const status = parseReloadReply(reply);
    if (status?.success === false) throw await failed(status.log || this.outputSince(firstLine));
    const oldPids = new Set(before.workers.map((w) => w.pid));
    let after: HaproxyProcTable;
    try {
      after = await this.poll('the master to finish reloading', async () => {
        const table = await this.processes();
        if (table.master.reloads <= before.master.reloads) return undefined;
        if (table.master.failedReloads > 0 || table.workers.some((w) => !oldPids.has(w.pid))) return table;
        return undefined;
      });
    } catch (error) {
      if (previous !== undefined) await writeFileAtomic(this.configPath, previous);
      throw new HaproxyProcessError(`HAProxy reload not confirmed (${(error as Error).message})`, this.outputSince(firstLine));
    }
    if (after.master.failedReloads > 0) throw await failed(this.outputSince(firstLine));
    await this.waitReady(oldPids);
    this.configText = configText;
    this.reloadCount++;
    this.log.info({ workerPid: this.lastWorkers[0], reloads: this.reloadCount, oldWorkers: after.oldWorkers.length }, 'haproxy reloaded');
  }

  private async doStop(): Promise<void> {
    const child = this.child;
    if (!child?.pid) return;
    this.answering = false;
    this.stopping = true;
    try {
      this.lastWorkers = (await this.processes()).workers.map((w) => w.pid);
    } catch {
      // keep the workers seen last; the /proc sweep below catches the rest
    }
    const exited = this.exited!;
    // The timer is cleared once HAProxy exits: a pending one would hold the process open for its whole length.
    const within = (ms: number): Promise<boolean> =>
      new Promise((resolve) => {
        const timer = setTimeout(() => resolve(false), ms);
        void exited.then(() => {
          clearTimeout(timer);
          resolve(true);
        });
      });
    // SIGUSR1: soft stop, workers finish their connections; SIGTERM: hard stop; SIGKILL: last resort.
    child.kill('SIGUSR1');
    if (!(await within(this.gracefulStopMs))) {
      this.log.warn({ afterMs: this.gracefulStopMs }, 'haproxy still has connections; hard-stopping');
      child.kill('SIGTERM');
      if (!(await within(this.killAfterMs))) {
        this.log.warn('haproxy ignored SIGTERM; killing');
        child.kill('SIGKILL');
        await exited;
      }
    }
    const strays = [...new Set([...this.lastWorkers, ...(await findOurProcesses(this.configPath))])];
    await this.killAll(strays);
    await fs.rm(this.pidFile, { force: true });
    this.lastWorkers = [];
  }

  /**
   * SIGKILL to HAProxy's process group (the master and its workers, old ones included), at once: for a stop
   * cut short, as the process exits. Nothing once Node has reaped the master, so a reused id is never hit.
   */
  kill(): void {
    const child = this.child;
    if (child?.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
    this.stopping = true;
    signal(-child.pid, 'SIGKILL');
  }

  /** A previous controller killed with -9 leaves its HAProxy holding our ports and sockets: stop it. */
  private async stopLeftovers(): Promise<void> {
    const pids = new Set<number>();
    try {
      const pid = Number((await fs.readFile(this.pidFile, 'utf8')).trim());
      if (Number.isInteger(pid) && pid > 0 && (await isAlive(pid)) && (await runsOurConfig(pid, this.configPath))) pids.add(pid);
    } catch {
      // no pidfile: nothing ran here, or it stopped cleanly
    }
    // Workers whose master was killed may linger briefly; they carry the same command line.
    for (const pid of await findOurProcesses(this.configPath)) pids.add(pid);
    if (pids.size === 0) return;
    this.log.warn({ pids: [...pids] }, 'stopping haproxy left over from a previous run');
    for (const pid of pids) signal(pid, 'SIGTERM');
    await this.killAll([...pids]);
  }

  private async killAll(pids: readonly number[]): Promise<void> {
    if (pids.length === 0) return;
    if (await waitGone(pids, this.killAfterMs)) return;
    for (const pid of pids) if ((await isAlive(pid)) && (await runsOurConfig(pid, this.configPath))) signal(pid, 'SIGKILL');
    if (!(await waitGone(pids, this.killAfterMs))) throw new Error(`haproxy processes ${pids.join(', ')} survived SIGKILL`);
  }

  /** Validates a config with `haproxy -c` as a side file, then renames it over the live one. */
  private async installConfig(text: string): Promise<void> {
    const next = `${this.configPath}.next`;
    await writeSynced(next, text);
    const check = await execFileOutput(this.binary!, ['-c', '-f', next]);
    if (!check.ok) {
      await fs.rm(next, { force: true });
      // Where HAProxy was never installed the config check is the first thing to fail: not the config's fault.
      if (check.missing) throw new HaproxyProcessError(`HAProxy is not installed: cannot run ${this.binary} (router.haproxyBinary); on Debian: apt-get install haproxy, or make system-deps`, '');
      throw new HaproxyProcessError('HAProxy configuration is invalid; nothing was changed', check.output);
    }
    for (const line of check.output.split('\n')) if (/\[(WARNING|ALERT)\]/.test(line)) this.log.warn({ line }, 'haproxy config check');
    await fs.rename(next, this.configPath);
  }

  /**
   * Waits until the master lists a current worker that is not one of `oldPids`, and the admin socket is
   * answered by that worker (so runtime changes reach the worker that serves new connections).
   */
  private async waitReady(oldPids: ReadonlySet<number> | undefined): Promise<void> {
    await this.poll('HAProxy to answer on its sockets', async () => {
      const table = await this.processes();
      const current = table.workers.filter((w) => !oldPids?.has(w.pid));
      if (current.length === 0 || table.workers.length !== current.length) return undefined;
      const info = await this.admin.showInfo();
      if (!current.some((w) => w.pid === Number(info.Pid))) return undefined;
      this.lastWorkers = current.map((w) => w.pid);
      return true;
    });
  }

  private async poll<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
    const deadline = Date.now() + this.readyTimeoutMs;
    let lastError: unknown;
    for (;;) {
      // Nothing will answer once HAProxy has exited: waiting on would only hold the process open until the deadline.
      if (this.child === undefined) throw new Error(`HAProxy exited while waiting for ${what}`, { cause: lastError });
      try {
        const value = await probe();
        if (value !== undefined) return value;
      } catch (error) {
        // Sockets come and go while HAProxy starts or re-executes.
        if (!(error instanceof HaproxyRuntimeError)) throw error;
        lastError = error;
      }
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${this.readyTimeoutMs} ms waiting for ${what}`, { cause: lastError });
      }
      await sleep(20);
    }
  }

  private onOutput(line: string): void {
    this.outputSeq++;
    this.output.push({ seq: this.outputSeq, line });
    if (this.output.length > OUTPUT_LINES_KEPT) this.output.shift();
    const fields = { line };
    if (line.startsWith('[ALERT]') || line.startsWith('[EMERG]')) this.log.error(fields, 'haproxy');
    // HAProxy reports its own orderly shutdown as warnings; while we are stopping it they are routine.
    else if (line.startsWith('[WARNING]') && !this.stopping) this.log.warn(fields, 'haproxy');
    else this.log.info(fields, 'haproxy');
  }

  private recentOutput(): string {
    return this.output.map((o) => o.line).join('\n');
  }

  private outputSince(seq: number): string {
    return this.output
      .filter((o) => o.seq > seq)
      .map((o) => o.line)
      .join('\n');
  }
}
