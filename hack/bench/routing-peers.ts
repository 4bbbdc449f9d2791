import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import readline from 'node:readline';
import type { Logger } from '../../controller/util/log.js';
import { freePort } from '../../test/support/ports.js';

/**
 * The processes around the routing benchmark: the trivial workload every path ends at, JupyterHub's
 * configurable-http-proxy that Manticore's HAProxy is compared with, and the store (the Consul double).
 * Each runs as a separate process, as in production, so that none shares an event loop with the router
 * agent, the load or another path.
 */

const OUTPUT_LINES_KEPT = 40;
const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 3_000;

/** Stops what was started, last first; a failing step is logged and the others still run. */
export class Teardown {
  private readonly steps: Array<{ readonly what: string; readonly run: () => Promise<void> }> = [];

  constructor(private readonly log: Logger) {}

  add(what: string, run: () => Promise<void>): void {
    this.steps.push({ what, run });
  }

  async run(): Promise<void> {
    for (const step of this.steps.splice(0).reverse()) {
      try {
        await step.run();
      } catch (error) {
        this.log.error({ err: error, what: step.what }, 'stopping a part of the benchmark failed');
      }
    }
  }
}

/** A child process with its recent output (for errors) and a stop that waits until it is gone. */
export class BenchChild {
  private readonly childProcess: ChildProcess;
  private readonly lines: string[] = [];
  private readonly exited: Promise<void>;
  private exitStatus: string | undefined;

  constructor(
    readonly name: string,
    command: string,
    args: readonly string[],
    env: NodeJS.ProcessEnv = {},
    private readonly onLine: (line: string) => void = () => undefined,
  ) {
    this.childProcess = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    this.exited = new Promise((resolve) => {
      this.childProcess.once('exit', (code, signal) => {
        this.exitStatus = signal ?? `code ${code}`;
        resolve();
      });
      // A failed spawn emits 'error' and no 'exit'.
      this.childProcess.once('error', (error) => {
        this.exitStatus = error.message;
        resolve();
      });
    });
    for (const stream of [this.childProcess.stdout, this.childProcess.stderr]) {
      readline.createInterface({ input: stream! }).on('line', (line) => this.keep(line));
    }
  }

  get pid(): number {
    if (this.childProcess.pid === undefined) throw new Error(`${this.name} did not start: ${this.exitStatus ?? 'no pid'}`);
    return this.childProcess.pid;
  }

  /** What the process printed last, for error messages. */
  get output(): string {
    return this.lines.join('\n');
  }

  /** Rejects when the process exits, so a start-up wait fails at once instead of at its deadline. */
  async whileRunning<T>(work: Promise<T>, timeoutMs = START_TIMEOUT_MS): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${this.name} not ready within ${timeoutMs} ms; output:\n${this.output}`)), timeoutMs);
    });
    const exit = this.exited.then(() => {
      throw new Error(`${this.name} exited (${this.exitStatus}) while starting; output:\n${this.output}`);
    });
    try {
      return await Promise.race([work, deadline, exit]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGTERM, then SIGKILL if it lingers; resolves once it has exited. */
  async stop(): Promise<void> {
    if (this.exitStatus !== undefined || this.childProcess.pid === undefined) return;
    this.childProcess.kill('SIGTERM');
    const timer = setTimeout(() => this.childProcess.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await this.exited;
    clearTimeout(timer);
  }

  private keep(line: string): void {
    this.lines.push(line);
    if (this.lines.length > OUTPUT_LINES_KEPT) this.lines.shift();
    this.onLine(line);
  }
}

/**
 * Runs one of the benchmark's helper programs (a script beside this one) until it announces itself with a
 * one-line JSON object on standard output; `read` picks what the caller needs out of it.
 */
async function startHelper<T>(name: string, script: string, read: (announcement: Record<string, unknown>) => T | undefined): Promise<{ child: BenchChild; value: T }> {
  let announced!: (value: T) => void;
  const value = new Promise<T>((resolve) => (announced = resolve));
  const child = new BenchChild(name, process.execPath, [path.join(__dirname, script)], {}, (line) => {
    if (!line.startsWith('{')) return;
    try {
      const picked = read(JSON.parse(line) as Record<string, unknown>);
      if (picked !== undefined) announced(picked);
    } catch {
      // not the announcement
    }
  });
  try {
    return { child, value: await child.whileRunning(value) };
  } catch (error) {
    await child.stop();
    throw error;
  }
}

/** The trivial workload: its process and its loopback address. */
export interface Backend {
  readonly child: BenchChild;
  readonly port: number;
  /** `127.0.0.1:port`, as a route record's backend. */
  readonly address: string;
}

export async function startBackend(): Promise<Backend> {
  const { child, value: port } = await startHelper('benchmark backend', 'routing-backend.js', (announced) => (typeof announced.port === 'number' ? announced.port : undefined));
  return { child, port, address: `127.0.0.1:${port}` };
}

/** The Consul API double as its own process, and its `http://127.0.0.1:port` address. */
export async function startConsulDouble(): Promise<{ readonly child: BenchChild; readonly address: string }> {
  const { child, value: address } = await startHelper('Consul double', 'routing-consul.js', (announced) => (typeof announced.address === 'string' ? announced.address : undefined));
  return { child, address };
}

/** configurable-http-proxy with host routing, its REST API on another loopback port. */
export class ConfigurableHttpProxy {
  private constructor(
    readonly child: BenchChild,
    readonly port: number,
    private readonly apiPort: number,
    private readonly token: string,
  ) {}

  static async start(): Promise<ConfigurableHttpProxy> {
    const [port, apiPort] = [await freePort(), await freePort()];
    const token = randomBytes(16).toString('hex');
    const bin = path.join(path.dirname(require.resolve('configurable-http-proxy/package.json')), 'bin', 'configurable-http-proxy');
    const args = ['--ip', '127.0.0.1', '--port', String(port), '--api-ip', '127.0.0.1', '--api-port', String(apiPort), '--host-routing', '--log-level', 'warn'];
    const child = new BenchChild('configurable-http-proxy', process.execPath, [bin, ...args], { CONFIGPROXY_AUTH_TOKEN: token });
    const proxy = new ConfigurableHttpProxy(child, port, apiPort, token);
    try {
      await child.whileRunning(proxy.waitForApi());
      return proxy;
    } catch (error) {
      await child.stop();
      throw error;
    }
  }

  /** Routes each hostname to `target` (`http://ip:port`) through the REST API, a few requests at a time. */
  async addRoutes(hosts: readonly string[], target: string, concurrency = 8): Promise<void> {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < hosts.length) await this.api('POST', `/api/routes/${hosts[next++]!}`, { target });
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, hosts.length) }, worker));
  }

  stop(): Promise<void> {
    return this.child.stop();
  }

  private async waitForApi(): Promise<void> {
    // Bounded by the start deadline, so the loop also ends when the process died and nobody waits any more.
    for (const deadline = Date.now() + START_TIMEOUT_MS; Date.now() < deadline; ) {
      try {
        await this.api('GET', '/api/routes');
        return;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 50)); // not listening yet
      }
    }
    throw new Error(`the configurable-http-proxy API did not answer within ${START_TIMEOUT_MS} ms`);
  }

  private async api(method: 'GET' | 'POST', urlPath: string, body?: unknown): Promise<void> {
    const response = await fetch(`http://127.0.0.1:${this.apiPort}${urlPath}`, {
      method,
      headers: { authorization: `token ${this.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    await response.arrayBuffer();
    if (!response.ok) throw new Error(`configurable-http-proxy API ${method} ${urlPath.split('/').slice(0, 3).join('/')}/… answered ${response.status}`);
  }
}
