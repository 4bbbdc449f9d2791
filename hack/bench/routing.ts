import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Logger } from '../../controller/util/log.js';
import { ResultBuilder, type ScenarioResult } from './report.js';
import { ConfigurableHttpProxy, startBackend, Teardown, type Backend } from './routing-peers.js';
import { RouteProbe } from './routing-probe.js';
import { RouterStack, type SessionRoute } from './routing-stack.js';
import type { BenchContext, Scenario } from './scenario.js';
import { percentile } from './stats.js';
import { combineRounds, failedRequests, runWrk, type WrkResult } from './wrk.js';

/**
 * Scenario 3, the routing data plane (ARCHITECTURE §6 and §12):
 * 1. Throughput: the same wrk load, spread over every session hostname, against the trivial workload
 *    directly, through Manticore's HAProxy (routes applied from the store by the router agent) and through
 *    JupyterHub's configurable-http-proxy holding the same routes.
 * 2. Churn: while wrk loads a stable set of routes through HAProxy, new sessions' routes are written to the
 *    store and later deleted at a steady pace; wrk must see no failure, and a probe measures how long each
 *    new route takes from the router seeing its record to the first request it serves.
 */

export interface Sizes {
  /** Live session routes during the throughput runs (and kept during churn). */
  readonly routes: number;
  readonly connections: number;
  /** Each path is loaded `rounds` times `roundSeconds`, its runs interleaved with the other paths' runs. */
  readonly rounds: number;
  readonly roundSeconds: number;
  /** Load on each path before its first round, not measured. */
  readonly warmupSeconds: number;
  /** Routes among `routes` that wrk loads during churn. */
  readonly stableRoutes: number;
  /** Routes added and removed during churn. */
  readonly churnRoutes: number;
  readonly churnSeconds: number;
}

const FULL: Sizes = { routes: 1000, connections: 50, rounds: 5, roundSeconds: 2, warmupSeconds: 3, stableRoutes: 500, churnRoutes: 1000, churnSeconds: 30 };
const QUICK: Sizes = { routes: 50, connections: 50, rounds: 2, roundSeconds: 1, warmupSeconds: 1, stableRoutes: 25, churnRoutes: 50, churnSeconds: 2 };

/** The sizes of a run; BENCH_ROUTING_ROUTES sets how many routes are live (wrk loads half of them during churn). */
export function sizesFor(quick: boolean, env: NodeJS.ProcessEnv = process.env): Sizes {
  const sizes = quick ? QUICK : FULL;
  const given = env.BENCH_ROUTING_ROUTES;
  if (given === undefined) return sizes;
  const routes = Number(given);
  if (!Number.isInteger(routes) || routes < 2) throw new Error(`BENCH_ROUTING_ROUTES must be a whole number of routes, at least 2 (got "${given}")`);
  return { ...sizes, routes, stableRoutes: Math.floor(routes / 2) };
}

/** How often the probe asks for a route not yet live. */
const PROBE_INTERVAL_MS = 1;
/**
 * CPU priority (nice increment) of the parts that stand for other machines while the churn latency is measured:
 * wrk (the users) and the workload it loads. On this one small machine they would otherwise take the CPU the
 * router host's processes (HAProxy, router agent) need in production; at a lower priority they still use all
 * the CPU those leave idle, so the load is as heavy as the machine allows.
 */
const REMOTE_NICENESS = 10;

/** A new route not seen by the router, or not serving, this long after its write counts as never live. */
const LIVE_DEADLINE_MS = 5_000;

/**
 * wrk's request hook: every request goes to the next hostname of the file named by the script's argument,
 * in turn. The requests are formatted once in init, so the load generator costs the same on every path.
 */
const HOSTS_SCRIPT = `
local requests = {}
local count = 0
local turn = 0

function init(args)
  for host in io.lines(args[1]) do
    count = count + 1
    requests[count] = wrk.format("GET", "/", { Host = host })
  end
  if count == 0 then error("no hostnames in " .. args[1]) end
end

function request()
  turn = turn % count + 1
  return requests[turn]
end
`;

export const routingScenario: Scenario = { name: 'routing', run };

async function run(context: BenchContext): Promise<ScenarioResult> {
  const sizes = sizesFor(context.quick);
  const { log, workDir } = context;
  const result = new ResultBuilder('routing', 'Routing data plane', { ...sizes, probeIntervalMs: PROBE_INTERVAL_MS, wrkThreads: 1, churnLoadNiceness: REMOTE_NICENESS });
  const teardown = new Teardown(log);
  try {
    const backend = await startBackend();
    teardown.add('benchmark backend', () => backend.child.stop());
    // New sessions run their own workloads: the churned routes lead to one that wrk does not load, so that the
    // probe measures the route going live, not its place in the queue of a workload saturated by wrk.
    const freshBackend = await startBackend();
    teardown.add('backend of the churned routes', () => freshBackend.child.stop());
    const stack = await RouterStack.start(workDir, log);
    teardown.add('router stack', () => stack.stop());
    const chp = await ConfigurableHttpProxy.start();
    teardown.add('configurable-http-proxy', () => chp.stop());

    const routes = Array.from({ length: sizes.routes }, () => stack.newRoute(backend.address));
    await stack.putAll(routes);
    await chp.addRoutes(routes.map((route) => route.host), `http://${backend.address}`);
    log.info({ routes: routes.length }, 'routes live in HAProxy and configurable-http-proxy');

    const hostsFile = await writeHosts(workDir, 'hosts.txt', routes);
    await measureThroughput(result, sizes, hostsFile, { direct: backend.port, haproxy: stack.httpPort, chp: chp.port }, log);
    const stableFile = await writeHosts(workDir, 'stable-hosts.txt', routes.slice(0, sizes.stableRoutes));
    await measureChurn(result, sizes, stableFile, stack, { loaded: backend, fresh: freshBackend }, log);
    return result.build();
  } finally {
    await teardown.run();
  }
}

async function writeHosts(workDir: string, name: string, routes: readonly SessionRoute[]): Promise<string> {
  const file = path.join(workDir, name);
  await fs.writeFile(file, `${routes.map((route) => route.host).join('\n')}\n`);
  return file;
}

function load(port: number, sizes: Sizes, durationSeconds: number, hostsFile: string, niceness = 0): Promise<WrkResult> {
  return runWrk({ url: `http://127.0.0.1:${port}/`, connections: sizes.connections, durationSeconds, threads: 1, script: HOSTS_SCRIPT, scriptArgs: [hostsFile], niceness });
}

const PATHS = [
  { key: 'direct', label: 'direct to the backend' },
  { key: 'haproxy', label: "through Manticore's HAProxy" },
  { key: 'chp', label: 'through configurable-http-proxy' },
] as const;

type PathKey = (typeof PATHS)[number]['key'];

/**
 * Each path is loaded in rounds interleaved with the other paths' (direct, HAProxy, configurable-http-proxy,
 * direct, …), so that other work on the machine, which comes and goes, weighs on the three alike.
 */
async function measureThroughput(result: ResultBuilder, sizes: Sizes, hostsFile: string, ports: Record<PathKey, number>, log: Logger): Promise<void> {
  for (const { key } of PATHS) await load(ports[key], sizes, sizes.warmupSeconds, hostsFile);
  const rounds: Record<PathKey, WrkResult[]> = { direct: [], haproxy: [], chp: [] };
  for (let round = 0; round < sizes.rounds; round++) {
    for (const { key } of PATHS) rounds[key].push(await load(ports[key], sizes, sizes.roundSeconds, hostsFile));
  }
  const measured = {} as Record<PathKey, WrkResult>;
  for (const { key, label } of PATHS) {
    const path = (measured[key] = combineRounds(rounds[key]));
    const failed = failedRequests(path);
    log.info({ path: key, requestsPerSecond: Math.round(path.requestsPerSecond), failed }, 'throughput measured');
    result
      .figure(`${key}.requestsPerSecond`, `${label}: requests/s`, path.requestsPerSecond, 'req/s')
      .figure(`${key}.latencyP50`, `${label}: latency p50`, path.latencyP50Ms, 'ms')
      .figure(`${key}.latencyP99`, `${label}: latency p99`, path.latencyP99Ms, 'ms')
      .figure(`${key}.failed`, `${label}: failed requests`, failed, '');
  }
  const rate = (key: PathKey): number => measured[key].requestsPerSecond;
  result
    .ratio('chpToDirect', 'configurable-http-proxy / direct', rate('chp') / rate('direct'))
    .target('haproxyToChp', 'HAProxy / configurable-http-proxy throughput', rate('haproxy') / rate('chp'), 'min', 4, '×')
    .target('haproxyToDirect', 'HAProxy / direct throughput', rate('haproxy') / rate('direct'), 'min', 0.5, '×');
}

/** When a churned route is written and deleted, in ms after the churn load started. */
interface CycleTimes {
  readonly addAt: number;
  readonly deleteAt: number;
}

/**
 * Adds spread evenly from 10% to 75% of the window, each route deleted 15% of the window after its add, so
 * adds and deletes overlap at a steady pace and all are done before the load ends.
 */
function churnSchedule(sizes: Sizes): CycleTimes[] {
  const windowMs = sizes.churnSeconds * 1000;
  const first = 0.1 * windowMs;
  const step = (0.65 * windowMs) / Math.max(1, sizes.churnRoutes - 1);
  return Array.from({ length: sizes.churnRoutes }, (_, i) => ({ addAt: first + i * step, deleteAt: first + i * step + 0.15 * windowMs }));
}

interface CycleOutcome {
  /** Router saw the record → first 200 through HAProxy answered; absent when the route never served. */
  readonly seenToLiveMs?: number;
  /** Store write issued → first 200 answered. */
  readonly writeToLiveMs?: number;
}

function sleepUntil(time: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, time - performance.now())));
}

/**
 * Writes a new session's routes, probes from the moment the router sees them until they serve, and deletes
 * them when the schedule says. Probing starts only then because no route can serve earlier, and polls made
 * before would only take CPU from the router beside the probe.
 */
async function routeCycle(stack: RouterStack, probe: RouteProbe, route: SessionRoute, start: number, times: CycleTimes): Promise<CycleOutcome> {
  await sleepUntil(start + times.addAt);
  const writtenAt = performance.now();
  await stack.put(route);
  const seenAt = await stack.seen(route, LIVE_DEADLINE_MS);
  const liveAt = seenAt === undefined ? undefined : await probe.firstSuccess(route.host, writtenAt + LIVE_DEADLINE_MS);
  await sleepUntil(start + times.deleteAt);
  await stack.delete(route);
  return seenAt === undefined || liveAt === undefined ? {} : { seenToLiveMs: liveAt - seenAt, writeToLiveMs: liveAt - writtenAt };
}

async function measureChurn(
  result: ResultBuilder,
  sizes: Sizes,
  stableFile: string,
  stack: RouterStack,
  backends: { readonly loaded: Backend; readonly fresh: Backend },
  log: Logger,
): Promise<void> {
  os.setPriority(backends.loaded.child.pid, REMOTE_NICENESS);
  const probe = new RouteProbe(stack.httpPort, PROBE_INTERVAL_MS);
  const start = performance.now();
  const [wrk, cycles] = await Promise.allSettled([
    load(stack.httpPort, sizes, sizes.churnSeconds, stableFile, REMOTE_NICENESS),
    Promise.all(churnSchedule(sizes).map((times) => routeCycle(stack, probe, stack.newRoute(backends.fresh.address), start, times))),
  ]).finally(() => probe.close());
  // Both settle first, so a failed churn never leaves wrk running past the scenario.
  if (wrk.status === 'rejected') throw wrk.reason;
  if (cycles.status === 'rejected') throw cycles.reason;

  const seen = cycles.value.flatMap((cycle) => cycle.seenToLiveMs ?? []);
  const written = cycles.value.flatMap((cycle) => cycle.writeToLiveMs ?? []);
  log.info({ routes: cycles.value.length, live: seen.length, stableErrors: wrk.value.errors }, 'churn measured');
  result
    .figure('churn.stable.requestsPerSecond', 'churn: stable routes requests/s', wrk.value.requestsPerSecond, 'req/s')
    .figure('churn.seenToLive.p50', 'churn: router saw route → first success p50', percentile(seen, 50), 'ms')
    .figure('churn.seenToLive.max', 'churn: router saw route → first success max', Math.max(...seen), 'ms')
    .figure('churn.writeToLive.p99', 'churn: store write → first success p99', percentile(written, 99), 'ms')
    // Other work on the machine delays every hop of a route going live: the load says how busy it was.
    .figure('churn.loadAverage', 'churn: machine load average (1 min) at the end', os.loadavg()[0]!, '')
    .target('churn.stable.failed', 'churn: failed requests on stable routes', failedRequests(wrk.value), 'max', 0, '')
    .target('churn.neverLive', `churn: new routes not serving within ${LIVE_DEADLINE_MS / 1000} s`, cycles.value.length - seen.length, 'max', 0, '')
    .target('churn.seenToLive.p99', 'churn: router saw route → first success p99', percentile(seen, 99), 'max', 50, 'ms');
}
