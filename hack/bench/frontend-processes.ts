import { spawn, type ChildProcess } from 'node:child_process';
import { profileFlags, repoRoot } from './paths.js';

/** How much of a child's output is kept for error messages. */
const OUTPUT_KEPT_CHARS = 16_384;
/** A child that does not exit this long after SIGINT is killed. */
const STOP_GRACE_MS = 10_000;

export interface ChildOptions {
  /** Names the child in errors and logs. */
  readonly name: string;
  readonly args: readonly string[];
  readonly env?: NodeJS.ProcessEnv;
  /** The child counts as started once its output matches this; the match is returned. */
  readonly ready: RegExp;
  readonly readyTimeoutMs?: number;
}

/**
 * A Node child process of the bench (a `manticore` role, the Consul double), its output kept for error
 * messages. start() resolves once the child printed what `ready` matches; a child that exits or stays
 * silent first is killed and the error carries its output.
 */
export class BenchChild {
  private output = '';
  private readonly exited: Promise<void>;

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
  ) {
    const keep = (chunk: Buffer): void => {
      this.output = (this.output + chunk.toString('utf8')).slice(-OUTPUT_KEPT_CHARS);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  static async start(options: ChildOptions): Promise<{ child: BenchChild; match: RegExpExecArray }> {
    const process_ = spawn(process.execPath, [...profileFlags(options.name), ...options.args], { cwd: repoRoot, env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    const child = new BenchChild(options.name, process_);
    try {
      return { child, match: await child.waitFor(options.ready, options.readyTimeoutMs ?? 30_000) };
    } catch (error) {
      await child.stop();
      throw error;
    }
  }

  get pid(): number {
    const pid = this.child.pid;
    if (pid === undefined) throw new Error(`${this.name} has no process id (it failed to spawn)\n${this.output}`);
    return pid;
  }

  /** Ctrl-C, as an operator stops it; killed when it does not exit within the grace period. Idempotent. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGINT');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), STOP_GRACE_MS);
    await this.exited;
    clearTimeout(timer);
  }

  private waitFor(pattern: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const match = pattern.exec(this.output);
        if (match) finish(() => resolve(match));
      };
      const fail = (why: string): void => finish(() => reject(new Error(`${this.name} ${why}; its output:\n${this.output}`)));
      const onExit = (code: number | null, signal: NodeJS.Signals | null): void => fail(`exited (code ${code}, signal ${signal}) before it was ready`);
      const onError = (error: Error): void => fail(`could not start: ${error.message}`);
      const timer = setTimeout(() => fail(`was not ready within ${timeoutMs} ms`), timeoutMs);
      const finish = (settle: () => void): void => {
        clearTimeout(timer);
        this.child.stdout!.off('data', check);
        this.child.stderr!.off('data', check);
        this.child.off('exit', onExit);
        this.child.off('error', onError);
        settle();
      };
      this.child.stdout!.on('data', check);
      this.child.stderr!.on('data', check);
      this.child.once('exit', onExit);
      this.child.once('error', onError);
      check();
    });
  }
}
