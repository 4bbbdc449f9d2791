import { setTimeout as sleep } from 'node:timers/promises';
import { waitFor } from '../../test/support/wait.js';
import { BenchCluster } from './cluster.js';
import { cpuSeconds, PeakMemory, residentMiB } from './process-stats.js';
import { ResultBuilder } from './report.js';
import type { BenchContext, Scenario } from './scenario.js';
import { percentile } from './stats.js';

/** Ports Nomad hands out per node (its default dynamic range, 20000–32000) and per `sdl` session. */
const NOMAD_PORTS_PER_NODE = 12_000;
const PORTS_PER_SESSION = 9;
/** No reconcile for this long (above controller.routerStaleSeconds, 30 s) means the controller has settled. */
const SETTLED_AFTER_MS = 35_000;
/** Session records written at once while filling the cluster. */
const CREATE_CONCURRENCY = 64;
/** Sessions created one at a time on the full cluster, each timed from its create until Ready. */
const LATE_SESSIONS = 5;

/**
 * Scale and quiet: the cluster filled with sessions, then left alone. A controller that polls, resyncs on
 * a timer or walks every session per event shows up as CPU here; one that writes what did not change shows
 * up as registrations and status writes after its restart.
 */
export const scaleScenario: Scenario = {
  name: 'scale',
  async run(context: BenchContext) {
    const sessions = Number(process.env.BENCH_SCALE_SESSIONS ?? (context.quick ? 200 : 10_000));
    const quietSeconds = context.quick ? 5 : 60;
    const result = new ResultBuilder('scale', 'Scale and quiet', {
      sessions,
      template: 'sdl',
      quietSeconds,
      router: 'agent with a recording data plane (HAProxy is measured in the routing scenario)',
    });
    const cluster = await BenchCluster.start({
      workDir: context.workDir,
      log: context.log,
      nomadNodes: Math.ceil(((sessions + LATE_SESSIONS) * PORTS_PER_SESSION) / NOMAD_PORTS_PER_NODE) + 1,
      tcpPorts: { start: 30_000, end: 30_000 + sessions + LATE_SESSIONS - 1 },
      limits: { maxSessions: sessions + LATE_SESSIONS, maxStarting: 1_000 },
      router: 'recording',
      frontend: false,
    });
    try {
      const controllerPid = cluster.controller!.pid!;
      const peak = new PeakMemory(controllerPid);
      const startedAt = performance.now();
      await createSessions(cluster, sessions);
      await cluster.untilReady(sessions, 30 * 60_000, context.quick ? 200 : 1_000);
      result.figure('fillSeconds', `${sessions} sessions created and Ready`, (performance.now() - startedAt) / 1000, 's');
      const peakWhileFilling = peak.stop();
      result.figure('controllerPeakRssMiB', 'controller peak resident memory while filling', peakWhileFilling, 'MiB');

      // Whatever follows the last Ready (the queue draining, late watch events) is not "quiet" yet.
      await settle(cluster, context.quick ? 3_000 : SETTLED_AFTER_MS);
      const readyRss = residentMiB(controllerPid);
      // Beside the resident memory, what V8 holds: it must stay within the heap limit Node derives from the
      // container's memory (about half of the job file's 512 MB).
      const heapUsed = (await cluster.controllerMetric('manticore_nodejs_heap_size_used_bytes')) / 2 ** 20;
      const quiet = await measureQuiet(cluster, controllerPid, quietSeconds);
      result.figure('controllerRssMiB', `controller resident memory with ${sessions} Ready`, readyRss, 'MiB');
      result.figure('controllerHeapUsedMiB', `controller V8 heap in use with ${sessions} Ready`, heapUsed, 'MiB');
      result.figure('quietCpuPercent', `controller CPU over ${quietSeconds} s with no changes`, quiet.cpuPercent, '% of a core');
      result.figure('quietStoreWrites', `store writes in those ${quietSeconds} s (heartbeats)`, quiet.storeWrites, '');
      result.figure('quietReconciles', `reconciles in those ${quietSeconds} s`, quiet.reconciles, '');

      const restart = await measureRestart(cluster, sessions);
      result.figure('restartConfirmSeconds', `restart until all ${sessions} reconciled`, restart.confirmSeconds, 's');
      for (const [name, seconds] of Object.entries(restart.milestones)) {
        if (seconds !== undefined) result.figure(`restart${name[0]!.toUpperCase()}${name.slice(1)}Seconds`, MILESTONES[name as keyof typeof MILESTONES].label, seconds, 's');
      }
      result.figure('restartRegistrations', 'Nomad registrations after the restart', restart.registrations, '');
      result.figure('restartStatusWrites', 'status writes after the restart', restart.statusWrites, '');
      result.figure('restartRssMiB', 'restarted controller resident memory', restart.rssMiB, 'MiB');

      const late = await measureLateSessions(cluster);
      result.figure('lateCreateToReadyP50', `one more session with ${sessions} Ready: create→Ready p50 of ${LATE_SESSIONS}`, percentile(late, 50), 'ms');
      result.figure('lateCreateToReadyMax', `one more session with ${sessions} Ready: create→Ready max of ${LATE_SESSIONS}`, Math.max(...late), 'ms');

      result.target('rss', 'controller resident memory (peak)', Math.max(peakWhileFilling, readyRss, restart.rssMiB), 'max', 512, 'MiB');
      result.target('quietCpu', 'controller CPU when nothing changes', quiet.cpuPercent, 'max', 2, '% of a core');
      result.target('restartSeconds', `restart confirms all ${sessions}`, restart.confirmSeconds, 'max', 15, 's');
      result.target('restartRegistrations', 'Nomad registrations after a restart', restart.registrations, 'max', 0, '');
      result.target('restartStatusWrites', 'status writes after a restart', restart.statusWrites, 'max', 0, '');
      return result.build();
    } finally {
      await cluster.stop();
    }
  },
};

async function createSessions(cluster: BenchCluster, count: number): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: CREATE_CONCURRENCY }, async () => {
      while (next < count) {
        const n = next++;
        await cluster.createSession(`scale${String(n).padStart(6, '0')}`);
      }
    }),
  );
}

/**
 * Waits until the controller has stopped working: its queue empty and no reconcile for longer than the
 * longest requeue a reconcile asks for (a session seen waiting for routers is looked at again after
 * `controller.routerStaleSeconds`, 30 s, even once Ready). What follows is "no changes".
 */
async function settle(cluster: BenchCluster, settledAfterMs: number): Promise<void> {
  let last = -1;
  let stillSince = 0;
  await waitFor(
    'the controller to settle',
    async () => {
      const reconciles = await cluster.controllerMetric('manticore_reconcile_duration_seconds_count');
      const depth = await cluster.controllerMetric('manticore_workqueue_depth');
      if (reconciles !== last || depth > 0) {
        last = reconciles;
        stillSince = performance.now();
      }
      return performance.now() - stillSince > settledAfterMs;
    },
    10 * 60_000,
    500,
  );
}

interface QuietFigures {
  readonly cpuPercent: number;
  readonly storeWrites: number;
  readonly reconciles: number;
}

async function measureQuiet(cluster: BenchCluster, pid: number, seconds: number): Promise<QuietFigures> {
  const reconcilesBefore = await cluster.controllerMetric('manticore_reconcile_duration_seconds_count');
  const indexBefore = await cluster.storeIndex();
  const cpuBefore = cpuSeconds(pid);
  const startedAt = performance.now();
  await sleep(seconds * 1000);
  const cpu = cpuSeconds(pid) - cpuBefore;
  const elapsed = (performance.now() - startedAt) / 1000;
  return {
    cpuPercent: (cpu / elapsed) * 100,
    storeWrites: (await cluster.storeIndex()) - indexBefore,
    reconciles: (await cluster.controllerMetric('manticore_reconcile_duration_seconds_count')) - reconcilesBefore,
  };
}

interface RestartFigures {
  readonly confirmSeconds: number;
  /** Seconds from the start to each milestone the controller logged. */
  readonly milestones: RestartMilestones;
  readonly registrations: number;
  readonly statusWrites: number;
  readonly rssMiB: number;
}

/**
 * SIGTERM to the controller and a new one started: how long until it has reconciled every session, and
 * what it wrote doing so (a status whose ModifyIndex moved was written; a registration leaves an evaluation).
 */
async function measureRestart(cluster: BenchCluster, sessions: number): Promise<RestartFigures> {
  const indexesBefore = new Map((await cluster.statuses()).map((entry) => [entry.key, entry.modifyIndex]));
  const registrationsBefore = await cluster.registrations();
  await cluster.stopController();
  const startedAt = performance.now();
  const startedAtEpochMs = Date.now();
  // At info the restarted controller logs its start-up milestones (and little else when nothing changed).
  const child = cluster.startController('info');
  // What was last seen goes into the failure, which otherwise could not tell a slow catch-up from a busy queue.
  let lastSeen = 'no answer from the controller';
  await waitFor(
    `the restarted controller to reconcile all ${sessions} sessions`,
    async () => {
      const reconciles = await cluster.controllerMetric('manticore_reconcile_duration_seconds_count');
      const depth = await cluster.controllerMetric('manticore_workqueue_depth');
      lastSeen = `${reconciles} reconciles, ${depth} queued, ${Math.round(performance.now() - startedAt)} ms after the start`;
      return reconciles >= sessions && depth === 0;
    },
    120_000,
    50,
  ).catch((error: unknown) => {
    throw new Error(`${(error as Error).message} (last seen: ${lastSeen})`, { cause: error });
  });
  const confirmSeconds = (performance.now() - startedAt) / 1000;
  // Writes triggered by the reconciles land a moment later: give them time to show.
  await sleep(2_000);
  const after = await cluster.statuses();
  return {
    confirmSeconds,
    milestones: restartMilestones(cluster.roleLog('controller'), startedAtEpochMs),
    registrations: (await cluster.registrations()) - registrationsBefore,
    statusWrites: after.filter((entry) => indexesBefore.get(entry.key) !== entry.modifyIndex).length,
    rssMiB: residentMiB(child.pid!),
  };
}

/**
 * What a user waits for on a full cluster: sessions created one at a time, each timed from its create until
 * its stored status says Ready. Every watch then re-lists a prefix of 10,000 records to see each step.
 */
async function measureLateSessions(cluster: BenchCluster): Promise<number[]> {
  const latencies: number[] = [];
  for (let n = 0; n < LATE_SESSIONS; n++) {
    const id = `latesession${n}`;
    const startedAt = performance.now();
    await cluster.createSession(id);
    await waitFor(`late session ${id} Ready`, async () => (await cluster.status(id))?.phase === 'Ready', 60_000, 10);
    latencies.push(performance.now() - startedAt);
    // Its own stragglers (heartbeat requeues, watch echoes) are not the next one's wait.
    await sleep(1_000);
  }
  return latencies;
}

/** Where a restart's time goes: the controller's own log lines that end each stage of its start. */
const MILESTONES = {
  synced: { message: 'caches synced; competing for leadership', label: 'restart: caches synced' },
  leading: { message: 'leading: reconciling every session', label: 'restart: leading' },
  caughtUp: { message: 'caches caught up with the store; reconciling', label: 'restart: caught up with the store, reconciling' },
} as const;

type RestartMilestones = { readonly [name in keyof typeof MILESTONES]: number | undefined };

/** The seconds from `sinceEpochMs` to the first line of each milestone logged after it (undefined if none). */
function restartMilestones(log: string, sinceEpochMs: number): RestartMilestones {
  const seen = new Map<string, number>();
  for (const line of log.split('\n')) {
    if (!line.startsWith('{')) continue;
    const { msg, time } = JSON.parse(line) as { msg?: string; time?: string };
    const at = time === undefined ? NaN : Date.parse(time);
    if (msg !== undefined && at >= sinceEpochMs && !seen.has(msg)) seen.set(msg, (at - sinceEpochMs) / 1000);
  }
  return { synced: seen.get(MILESTONES.synced.message), leading: seen.get(MILESTONES.leading.message), caughtUp: seen.get(MILESTONES.caughtUp.message) };
}
