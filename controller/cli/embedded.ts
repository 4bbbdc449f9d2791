import fs from 'node:fs';
import path from 'node:path';
import { loadTemplates } from '../api/templates.js';
import type { ManticoreConfig } from '../config/config.js';
import type { Logger } from '../util/log.js';
import { Controller } from '../controller/controller.js';
import { Keys } from '../controller/keys.js';
import { Frontend } from '../frontend/server.js';
import { RouterAgent } from '../router/agent.js';
import { HaproxyDataPlane } from '../router/data-plane.js';
import { HaproxyProcess } from '../router/haproxy-process.js';
import { HaproxyRuntime } from '../router/haproxy-runtime.js';
import { HaproxySupervisor } from '../router/haproxy-supervisor.js';
import { LocalScheduler } from '../scheduler/local-scheduler.js';
import { EmbeddedStore } from '../store/embedded-store.js';

export interface RunningManticore {
  readonly frontendUrl: string;
  /** What to tell the person who started it. */
  readonly banner: string;
  stop(): Promise<void>;
}

/**
 * Starts the embedded default: every part in this process except HAProxy, which runs as a child.
 * If any part fails to start, the parts already started are stopped again before the error is thrown.
 */
export async function startEmbedded(config: ManticoreConfig, log: Logger): Promise<RunningManticore> {
  const stack: Array<{ name: string; stop: () => Promise<void> }> = [];
  const stopAll = async (): Promise<void> => {
    for (const { name, stop } of stack.splice(0).reverse()) {
      try {
        await stop();
      } catch (error) {
        log.error({ err: error, part: name }, 'stopping failed');
      }
    }
  };
  try {
    const templates = loadTemplates(config.templates.dir);
    const keys = new Keys(config.store.prefix);

    fs.mkdirSync(path.dirname(path.resolve(config.store.path)), { recursive: true });
    const store = EmbeddedStore.open(config.store.path, { log: log.child({ component: 'store' }) });
    stack.push({ name: 'store', stop: () => store.close() });

    const scheduler = new LocalScheduler({
      stateDir: config.scheduler.stateDir,
      workDir: path.resolve(config.scheduler.workDir),
      log: log.child({ component: 'scheduler' }),
      restart: {
        attempts: config.scheduler.restart.attempts,
        intervalMs: config.scheduler.restart.intervalSeconds * 1000,
        delayMs: config.scheduler.restart.delaySeconds * 1000,
      },
    });
    await scheduler.start();
    stack.push({ name: 'scheduler', stop: () => scheduler.close() });

    const runDir = path.resolve(config.router.runDir);
    // The supervisor needs the process and the process reports its death to the supervisor.
    let supervisor: HaproxySupervisor | undefined;
    const haproxy = new HaproxyProcess({
      binary: config.router.haproxyBinary,
      runDir,
      template: fs.readFileSync(config.router.configTemplate, 'utf8'),
      values: {
        httpBind: `${config.router.http.host}:${config.router.http.port}`,
        tcpBind: `${config.router.tcp.host}:${config.router.tcp.portRangeStart}-${config.router.tcp.portRangeEnd}`,
        maxconn: config.router.maxconn,
      },
      log: log.child({ component: 'haproxy' }),
      onUnexpectedExit: () => supervisor?.restartSoon(),
    });
    await haproxy.start();
    stack.push({ name: 'haproxy', stop: () => haproxy.stop() });
    const dataPlane = new HaproxyDataPlane({ runtime: new HaproxyRuntime(haproxy.adminSocket), runDir, log: log.child({ component: 'data-plane' }) });
    supervisor = new HaproxySupervisor(haproxy, dataPlane, log.child({ component: 'haproxy-supervisor' }));
    stack.push({ name: 'haproxy-supervisor', stop: async () => supervisor?.stop() });

    const router = new RouterAgent({
      store,
      keys,
      name: config.router.name,
      dataPlane,
      heartbeatMs: config.router.heartbeatSeconds * 1000,
      log,
    });
    await router.start();
    stack.push({ name: 'router', stop: () => router.stop() });

    const controller = new Controller({
      store,
      scheduler,
      keys,
      templates,
      addressing: config.public,
      tcpPortRange: { start: config.router.tcp.portRangeStart, end: config.router.tcp.portRangeEnd },
      workers: config.controller.workers,
      retryBaseMs: config.controller.retryBaseMs,
      retryMaxMs: config.controller.retryMaxMs,
      rateLimitPerSecond: config.controller.rateLimitPerSecond,
      rateLimitBurst: config.controller.rateLimitBurst,
      routerStaleMs: config.controller.routerStaleSeconds * 1000,
      log,
    });
    await controller.start();
    stack.push({ name: 'controller', stop: () => controller.stop() });

    const frontend = new Frontend({ store, keys, templates, backend: scheduler.kind, bodyLimitBytes: config.frontend.bodyLimitBytes, log });
    const frontendUrl = await frontend.start(config.frontend.host, config.frontend.port);
    stack.push({ name: 'frontend', stop: () => frontend.stop() });

    const { http, tcp } = config.router;
    const banner = [
      '',
      `Manticore is running (embedded default).`,
      `  API:        ${frontendUrl}/api/v1/templates`,
      `  sessions:   http://<token>.${config.public.domain}:${config.public.httpPort}/ via HAProxy on ${http.host}:${http.port}`,
      `  TCP ports:  ${tcp.host}:${tcp.portRangeStart}-${tcp.portRangeEnd}`,
      `  try:        curl -s -XPOST ${frontendUrl}/api/v1/sessions -H 'content-type: application/json' -d '{"template":"demo"}'`,
      `  Ctrl-C stops everything.`,
      '',
    ].join('\n');
    log.info({ frontendUrl, http: `${http.host}:${http.port}` }, 'manticore is running');
    return { frontendUrl, banner: `${banner}\n`, stop: stopAll };
  } catch (error) {
    await stopAll();
    throw error;
  }
}
