import path from 'node:path';
import { compileValidators } from '../api/schemas.js';
import { loadTemplates } from '../api/templates.js';
import type { ManticoreConfig, RouterTlsConfig } from '../config/config.js';
import type { Logger } from '../util/log.js';
import { Controller } from '../controller/controller.js';
import { Keys } from '../controller/keys.js';
import { LeaderElection, SoleLeader, type Leadership } from '../controller/leader.js';
import { ReplicaHeartbeat } from '../controller/replica-heartbeat.js';
import { controllerProbes } from '../controller/status-server.js';
import { StatusServer } from '../metrics/status-server.js';
import type { LifecyclePolicy } from '../controller/lifecycle.js';
import { createAuthenticator } from '../frontend/auth.js';
import { Frontend } from '../frontend/server.js';
import { RouterAgent } from '../router/agent.js';
import { HaproxyDataPlane } from '../router/data-plane.js';
import { EdgeTls, haproxyCertificateLoader, type EdgeTlsOptions } from '../router/edge-tls.js';
import { readConfigTemplate, runPaths, type HaproxyConfigValues } from '../router/haproxy-config.js';
import { HaproxyProcess } from '../router/haproxy-process.js';
import { HaproxyRuntime } from '../router/haproxy-runtime.js';
import { HaproxySupervisor } from '../router/haproxy-supervisor.js';
import { exportRouterReadiness, routerProbes } from '../router/status-server.js';
import { LocalScheduler } from '../scheduler/local-scheduler.js';
import type { LockService } from '../store/lock.js';
import type { Store } from '../store/store.js';
import { createScheduler, createStore, createTaskLogs } from './backends.js';
import { loginName } from './client/commands.js';
import type { ProcessKiller } from './shutdown.js';

/** The parts one process can run; `manticore up` runs all three, a cluster deployment one per process. */
export type Role = 'controller' | 'frontend' | 'router';
export const allRoles: readonly Role[] = ['router', 'controller', 'frontend'];

export interface RunningManticore {
  /** The front end's address, when this process runs it. */
  readonly frontendUrl?: string;
  /** What to tell the person who started it. */
  readonly banner: string;
  stop(): Promise<void>;
}

/** Parts started so far, stopped in reverse order; a failure to stop one does not keep the others running. */
class StartedParts {
  private readonly parts: Array<{ name: string; stop: () => Promise<void> }> = [];
  /** Rejects once a stop is requested. */
  private readonly stopRequested: Promise<never>;

  constructor(
    private readonly log: Logger,
    stopSignal: AbortSignal | undefined,
    private readonly killer: ProcessKiller | undefined,
  ) {
    this.stopRequested = new Promise<never>((_resolve, reject) => {
      const requested = (): void => reject(new Error('stopped while starting'));
      if (stopSignal?.aborted) requested();
      else stopSignal?.addEventListener('abort', requested, { once: true });
    });
    // Rejecting while no start is being waited for is no failure.
    this.stopRequested.catch(() => undefined);
  }

  /** `kill`, for a part that starts processes: what a stop cut short does to them (see ProcessKiller). */
  add(name: string, stop: () => Promise<void>, kill?: () => void): void {
    this.parts.push({ name, stop });
    if (kill !== undefined) this.killer?.add(name, kill);
  }

  /**
   * Waits for a part to start, or throws as soon as a stop is requested: a part waiting for a store that does
   * not answer yet may wait for ever. Add the part before it starts, so that it is stopped too (its stop
   * allows for a start under way).
   */
  until<T>(starting: Promise<T>): Promise<T> {
    return Promise.race([starting, this.stopRequested]);
  }

  async stopAll(): Promise<void> {
    for (const { name, stop } of this.parts.splice(0).reverse()) {
      try {
        await stop();
      } catch (error) {
        this.log.error({ err: error, part: name }, 'stopping failed');
      }
    }
  }
}

/**
 * Starts the given roles in this process over the configured store and scheduler (embedded, or Consul
 * and Nomad): the router with its local HAProxy (a child process), the controller, the front end.
 * If any part fails to start, or `stopSignal` aborts before all have started, the parts already started are
 * stopped again before the error is thrown. `killer` is given the child processes as they start.
 */
export async function startManticore(
  config: ManticoreConfig,
  log: Logger,
  roles: readonly Role[] = allRoles,
  stopSignal?: AbortSignal,
  killer?: ProcessKiller,
): Promise<RunningManticore> {
  const parts = new StartedParts(log, stopSignal, killer);
  try {
    compileValidators();
    const templates = loadTemplates(config.templates.dir);
    // Before anything starts: an unreadable public key stops start-up with a ValidationError naming it.
    const authenticator = roles.includes('frontend') ? createAuthenticator(config.auth) : undefined;
    // Likewise an unreadable HAProxy template and unusable certificate files, named in the error. The
    // certificate is installed now, for the HAProxy started below.
    const haproxyTemplate = roles.includes('router') ? readConfigTemplate(config.router.configTemplate) : undefined;
    const { tls } = config.router;
    const edgeTls = roles.includes('router') && tls !== undefined ? new EdgeTls(edgeTlsOptions(config, tls, path.resolve(config.router.runDir), log)) : undefined;
    if (edgeTls !== undefined) {
      await edgeTls.install();
      parts.add('edge certificate', async () => edgeTls.stop());
    }
    const keys = new Keys(config.store.prefix);
    const { store, locks } = createStore(config, log);
    parts.add('store', () => store.close());
    const lines: string[] = [];

    if (haproxyTemplate !== undefined) {
      const routerStatus = await startRouter(config, haproxyTemplate, store, keys, edgeTls, parts, log);
      if (routerStatus !== undefined) lines.push(`  router:     ${routerStatus}/status`);
      const { http, tcp } = config.router;
      const listener = tls ? `${http.host}:${tls.port} (HTTPS; :${http.port} redirects)` : `${http.host}:${http.port}`;
      lines.push(
        `  sessions:   ${config.public.httpScheme}://<token>.${config.public.domain}:${config.public.httpPort}/ via HAProxy on ${listener}`,
        `  TCP ports:  ${tcp.host}:${tcp.portRangeStart}-${tcp.portRangeEnd}${tls?.tcp ? ' (TLS)' : ''}`,
      );
    }
    if (roles.includes('controller') && config.aws) {
      lines.push(`  AWS:        ${config.aws.loadBalancers.map((balancer) => `${balancer.name} (${balancer.type}, ${balancer.listenerQuota} listeners)`).join(', ')}`);
    }
    if (roles.includes('controller')) {
      const scheduler = createScheduler(config, log);
      parts.add('scheduler', () => scheduler.close(), scheduler instanceof LocalScheduler ? () => scheduler.kill() : undefined);
      await parts.until(scheduler.start());
      // Loaded only when used: the AWS SDK clients alone add some 80 MB to the resident memory of every process that loads them.
      const loadBalancers =
        config.aws === undefined
          ? undefined
          : (await import('../loadbalancer/aws.js')).createExposer({
              aws: config.aws,
              marker: config.store.prefix,
              tcpPortRange: { start: config.router.tcp.portRangeStart, end: config.router.tcp.portRangeEnd },
              // With TLS at HAProxy the load balancer passes TCP through to the HTTPS listener.
              httpTargetPort: config.router.tls?.port ?? config.router.http.port,
              log,
            });
      // Session endpoints name the load balancers' DNS names: they are known before anyone is admitted.
      await loadBalancers?.start();
      const leadership = leadershipFor(config, store, locks, keys, log);
      const controller = new Controller({
        store,
        scheduler,
        keys,
        templates,
        addressing: config.public,
        tcpPortRange: { start: config.router.tcp.portRangeStart, end: config.router.tcp.portRangeEnd },
        limits: config.limits,
        policy: lifecyclePolicy(config),
        capacityRetryMs: config.lifecycle.capacityRetrySeconds * 1000,
        orphanSweepMs: config.controller.orphanSweepSeconds * 1000,
        orphanGracePeriodMs: config.controller.orphanGracePeriodSeconds * 1000,
        workers: config.controller.workers,
        retryBaseMs: config.controller.retryBaseMs,
        retryMaxMs: config.controller.retryMaxMs,
        rateLimitPerSecond: config.controller.rateLimitPerSecond,
        rateLimitBurst: config.controller.rateLimitBurst,
        routerStaleMs: config.controller.routerStaleSeconds * 1000,
        log,
        leadership,
        ...(loadBalancers === undefined ? {} : { loadBalancers }),
      });
      // Stopping drains the workers and then releases the leader key, so a standby takes over at once.
      parts.add('controller', () => controller.stop());
      const heartbeat = new ReplicaHeartbeat({ store, keys, leadership, intervalMs: config.controller.heartbeatSeconds * 1000, log: log.child({ component: 'replica-heartbeat' }) });
      heartbeat.start();
      // Withdrawn before the controller stops, so the list never shows a replica that is going away.
      parts.add('replica-heartbeat', () => heartbeat.stop());
      await parts.until(controller.start());
      if (config.controller.statusPort !== 0) {
        const status = new StatusServer('controller', controllerProbes(controller), log);
        const address = await listenOn('controller.statusPort', config.controller.statusHost, config.controller.statusPort, status.start(config.controller.statusHost, config.controller.statusPort));
        parts.add('controller-status', () => status.stop());
        lines.push(`  controller: ${address}/status`);
      }
    }
    let frontendUrl: string | undefined;
    if (roles.includes('frontend')) {
      const taskLogs = createTaskLogs(config, log);
      parts.add('task logs', async () => taskLogs.close());
      const frontend = new Frontend({
        store,
        keys,
        templates,
        backend: config.scheduler.backend,
        bodyLimitBytes: config.frontend.bodyLimitBytes,
        trustedProxies: config.frontend.trustedProxies,
        sessionsPerUser: config.limits.sessionsPerUser,
        activityWriteIntervalMs: config.idle.activityWriteIntervalSeconds * 1000,
        expiry: lifecyclePolicy(config),
        log,
        authenticator,
        rateLimit: config.frontend.rateLimit,
        logs: { source: taskLogs.logs, streamsPerUser: config.frontend.logs.streamsPerUser },
        statusStreamsPerUser: config.frontend.statusStreamsPerUser,
        v2: { address: config.frontend.v2 },
        cluster: { replicaStaleMs: config.controller.heartbeatSeconds * 3000, routerStaleMs: config.controller.routerStaleSeconds * 1000 },
      });
      parts.add('frontend', () => frontend.stop());
      frontendUrl = await parts.until(listenOn('frontend.port', config.frontend.host, config.frontend.port, frontend.start(config.frontend.host, config.frontend.port)));
      lines.unshift(`  web page:   ${frontendUrl}/`, `  API:        ${frontendUrl}/api/v1/openapi.json`);
      // Named as the caller: an anonymous curl is a new user each time, who could never read or delete the session made.
      const caller = config.auth.mode === 'jwt' ? 'Authorization: Bearer <JWT>' : `X-Manticore-User: ${loginName() ?? 'me'}`;
      lines.push(
        `  try:        curl -s -XPOST ${frontendUrl}/api/v1/sessions -H '${caller}' -H 'content-type: application/json' -d '{"template":"demo"}'`,
      );
    }
    const banner = [
      '',
      `Manticore is running: ${roles.join(', ')} (store: ${config.store.backend}, scheduler: ${config.scheduler.backend}).`,
      ...lines,
      '  Ctrl-C stops everything it started.',
      '',
      '',
    ].join('\n');
    log.info({ roles, frontendUrl }, 'manticore is running');
    return { ...(frontendUrl === undefined ? {} : { frontendUrl }), banner, stop: () => parts.stopAll() };
  } catch (error) {
    await parts.stopAll();
    throw error;
  }
}

/** Replicas on Consul elect a leader; the embedded store is held by this process alone, which always leads. */
function leadershipFor(config: ManticoreConfig, store: Store, locks: LockService | undefined, keys: Keys, log: Logger): Leadership {
  if (locks === undefined) return new SoleLeader();
  const { ttlSeconds, lockDelaySeconds } = config.controller.leaderElection;
  return new LeaderElection({ store, locks, key: keys.leader, ttlSeconds, lockDelaySeconds, log });
}

/** The lifecycle settings of the configuration, in the controller's units. */
function lifecyclePolicy({ lifecycle, idle }: ManticoreConfig): LifecyclePolicy {
  return {
    startTimeoutMs: lifecycle.startTimeoutSeconds * 1000,
    maxLifetimeMs: lifecycle.maxLifetimeSeconds * 1000,
    maxRestarts: lifecycle.maxRestarts,
    restartWindowMs: lifecycle.restartWindowSeconds * 1000,
    restartBackoffMs: lifecycle.restartBackoffSeconds * 1000,
    failedRetentionMs: lifecycle.failedRetentionSeconds * 1000,
    idleTimeoutMs: idle.timeoutSeconds * 1000,
    idleMaxTimeoutMs: idle.maxTimeoutSeconds * 1000,
    idleWarningMs: idle.warningSeconds * 1000,
  };
}

/**
 * Starts a local HAProxy (restarted if it dies), the agent that keeps its routes equal to the store's and,
 * with router.tls, has the installed edge certificate follow its files; returns the router's status server
 * address when it has one.
 */
async function startRouter(config: ManticoreConfig, template: string, store: Store, keys: Keys, edgeTls: EdgeTls | undefined, parts: StartedParts, log: Logger): Promise<string | undefined> {
  const runDir = path.resolve(config.router.runDir);
  // The supervisor needs the process and the process reports its death to the supervisor.
  let supervisor: HaproxySupervisor | undefined;
  const haproxy = new HaproxyProcess({
    binary: config.router.haproxyBinary,
    runDir,
    template,
    values: haproxyValues(config),
    log: log.child({ component: 'haproxy' }),
    onUnexpectedExit: () => supervisor?.restartSoon(),
  });
  await haproxy.start();
  parts.add('haproxy', () => haproxy.stop(), () => haproxy.kill());
  const runtime = new HaproxyRuntime(haproxy.adminSocket);
  const dataPlane = new HaproxyDataPlane({ runtime, runDir, log: log.child({ component: 'data-plane' }) });
  // A reload (the fallback when the runtime API does not take a certificate) loads the maps from their files.
  const reload = (): Promise<void> => dataPlane.replaceWorker(() => haproxy.reload(haproxy.currentConfig ?? haproxy.renderConfig()));
  edgeTls?.watch(haproxyCertificateLoader(runtime, reload, log.child({ component: 'edge-tls' })));
  // Run after the router stops and before HAProxy does: the map files hold the last table for the next start.
  parts.add('haproxy map files', () => dataPlane.flush());
  supervisor = new HaproxySupervisor(haproxy, dataPlane, log.child({ component: 'haproxy-supervisor' }));
  parts.add('haproxy-supervisor', async () => supervisor?.stop());
  const router = new RouterAgent({
    store,
    keys,
    name: config.router.name,
    dataPlane,
    heartbeatMs: config.router.heartbeatSeconds * 1000,
    storeLossGraceMs: config.router.storeLossGracePeriodSeconds * 1000,
    log,
  });
  parts.add('router', () => router.stop());
  await parts.until(router.start());
  if (config.router.statusPort !== 0) {
    // Started once the agent's first table is live.
    const probes = routerProbes(router, haproxy, edgeTls);
    const status = new StatusServer('router', probes, log);
    const address = await listenOn('router.statusPort', config.router.statusHost, config.router.statusPort, status.start(config.router.statusHost, config.router.statusPort));
    const unexport = exportRouterReadiness(config.router.name, probes);
    parts.add('router-status', async () => {
      unexport();
      await status.stop();
    });
    return address;
  }
  return undefined;
}

/** The placeholder values of the HAProxy template for this configuration. */
export function haproxyValues(config: ManticoreConfig): Omit<HaproxyConfigValues, 'runDir'> {
  const { http, tcp, tls, haproxyStats, maxconn } = config.router;
  const publicHttps = config.public.httpScheme === 'https' ? config.public.httpPort : (tls?.port ?? 443);
  return {
    httpBind: `${http.host}:${http.port}`,
    tcpBind: `${tcp.host}:${tcp.portRangeStart}-${tcp.portRangeEnd}`,
    maxconn,
    ...(haproxyStats.port === 0 ? {} : { statsBind: `${haproxyStats.host}:${haproxyStats.port}` }),
    ...(tls === undefined
      ? {}
      : {
          httpsBind: `${http.host}:${tls.port}`,
          // Redirects name the port users reach HTTPS on (a load balancer's may differ from HAProxy's).
          httpsPortSuffix: publicHttps === 443 ? '' : `:${publicHttps}`,
          tcpTls: tls.tcp,
          ...(tls.hstsMaxAgeSeconds > 0 ? { hstsMaxAge: tls.hstsMaxAgeSeconds } : {}),
        }),
  };
}

/** The edge certificate's settings for this configuration. */
function edgeTlsOptions(config: ManticoreConfig, tls: RouterTlsConfig, runDir: string, log: Logger): EdgeTlsOptions {
  return {
    files: { certFile: tls.certFile, ...(tls.keyFile === undefined ? {} : { keyFile: tls.keyFile }) },
    domain: config.public.domain,
    router: config.router.name,
    installedPath: runPaths(runDir).tlsCertificate,
    expiryWarningMs: tls.expiryWarningDays * 86_400_000,
    log,
  };
}

/** A listener's start; an address it cannot listen on is said so in terms of the setting that chose it. */
async function listenOn<T>(setting: string, host: string, port: number, started: Promise<T>): Promise<T> {
  try {
    return await started;
  } catch (error) {
    const address = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') throw new Error(`${setting}: ${address} is already in use (by another Manticore, or another program); stop it, or set another port`, { cause: error });
    if (code === 'EACCES') throw new Error(`${setting}: this user may not listen on ${address} (ports below 1024 need root or CAP_NET_BIND_SERVICE); set another port`, { cause: error });
    if (code === 'EADDRNOTAVAIL') throw new Error(`${setting}: ${host} is not an address of this machine`, { cause: error });
    throw error;
  }
}
