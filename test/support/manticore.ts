import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { httpRequest } from './http.js';
import { freePort, freePortRange } from './ports.js';
import { waitFor } from './wait.js';

export const repoRoot = path.resolve(__dirname, '../../..');
const cli = path.join(repoRoot, 'dist/controller/cli/main.js');

/** `manticore up` running as a child process, its output kept for failure messages. */
export interface ManticoreProcess {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

/** Runs `manticore up --config <configFile>` from the repository, as `make run` does. */
export function startManticore(configFile: string, env: NodeJS.ProcessEnv): ManticoreProcess {
  const child = spawn(process.execPath, [cli, 'up', '--config', configFile], { cwd: repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, output: () => output, exited };
}

/**
 * The environment for a `manticore up` that shares nothing with anything else on the machine: its state
 * under `stateDir`, and loopback ports chosen by the OS (the front end, HAProxy's session port, a run of
 * `tcpPorts` TCP ports, and the status servers of the controller, the router and HAProxy).
 */
export async function isolatedEnvironment(
  stateDir: string,
  tcpPorts: number,
): Promise<{ env: Record<string, string>; api: string; httpPort: number; tcpRange: { start: number; end: number }; statusPorts: { controller: number; router: number; haproxy: number } }> {
  const frontendPort = await freePort();
  const statusPorts = { controller: await freePort(), router: await freePort(), haproxy: await freePort() };
  const httpPort = await freePort();
  const tcpRange = await freePortRange(tcpPorts);
  const env = {
    MANTICORE_STORE_PATH: path.join(stateDir, 'state.db'),
    MANTICORE_SCHEDULER_STATE_DIR: path.join(stateDir, 'scheduler'),
    MANTICORE_ROUTER_RUN_DIR: path.join(stateDir, 'haproxy'),
    MANTICORE_FRONTEND_PORT: String(frontendPort),
    MANTICORE_HTTP_PORT: String(httpPort),
    MANTICORE_TCP_PORT_RANGE_START: String(tcpRange.start),
    MANTICORE_TCP_PORT_RANGE_END: String(tcpRange.end),
    MANTICORE_CONTROLLER_STATUS_PORT: String(statusPorts.controller),
    MANTICORE_ROUTER_STATUS_PORT: String(statusPorts.router),
    MANTICORE_HAPROXY_STATS_PORT: String(statusPorts.haproxy),
    MANTICORE_LOG_LEVEL: 'warn',
  };
  return { env, api: `http://127.0.0.1:${frontendPort}`, httpPort, tcpRange, statusPorts };
}

/** Waits until the front end answers; a failure carries Manticore's output. */
export async function waitForFrontend(api: string, instance: ManticoreProcess): Promise<void> {
  await waitFor('the front end', async () => (await httpRequest(`${api}/healthz`)).status === 200, 30_000, 50).catch((error: Error) => {
    throw new Error(`${error.message}\n${instance.output()}`);
  });
}

/** Ctrl-C, as a user would stop it, and waits for it to exit; nothing when it has already exited. */
export async function stopManticore(instance: ManticoreProcess | undefined): Promise<void> {
  if (instance && instance.child.exitCode === null) {
    instance.child.kill('SIGINT');
    await instance.exited;
  }
}
