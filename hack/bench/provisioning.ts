import { randomBytes } from 'node:crypto';
import http from 'node:http';
import os from 'node:os';
import { loadTemplates } from '../../controller/api/templates.js';
import type { RouteRecord, SessionRecord, SessionStatus } from '../../controller/api/types.js';
import { renderJobFor } from '../../controller/cli/render-job.js';
import { loadConfig } from '../../controller/config/config.js';
import { freePortRange } from '../../test/support/ports.js';
import { BenchCluster, Doubles, keys } from './cluster.js';
import { repoRoot } from './paths.js';
import { ResultBuilder } from './report.js';
import type { BenchContext, Scenario } from './scenario.js';
import { percentile } from './stats.js';

/** Nomad double nodes: each offers 12,000 dynamic ports, 9 per `sdl` session. */
const NOMAD_NODES = 2;

/**
 * Provisioning: sessions created through the front end by concurrent clients, until all are Ready, against
 * the floor — the bare API calls that work needs (spec, job registration, routes, status) made by a minimal
 * script against the same doubles with the same concurrency.
 */
export const provisioningScenario: Scenario = {
  name: 'provisioning',
  async run(context: BenchContext) {
    const sessions = Number(process.env.BENCH_PROVISIONING_SESSIONS ?? (context.quick ? 50 : 1_000));
    const clients = context.quick ? 10 : 50;
    const result = new ResultBuilder('provisioning', 'Provisioning', {
      sessions,
      clients,
      template: 'sdl',
      doubles: 'Consul and Nomad API doubles; simulated Docker allocations healthy when placed',
      router: 'manticore router with HAProxy',
    });

    const floorSeconds = await measureFloor(sessions, clients);
    result.figure('floorSeconds', `floor: the bare API calls for ${sessions} sessions`, floorSeconds, 's');

    const run = await measureProduct(context, sessions, clients);
    result.figure('createsPerSecond', 'accepted creates per second', run.accepted / run.createSeconds, '/s');
    result.figure('refused', 'creates refused', run.refused, '');
    result.figure('allReadySeconds', `all ${sessions} Ready (from the first create)`, run.allReadySeconds, 's');
    result.figure('createToReadyP50', 'create→Ready p50', run.createToReadyMs.p50, 'ms');
    result.figure('createToReadyP99', 'create→Ready p99', run.createToReadyMs.p99, 'ms');
    result.figure('storeWritesPerSession', 'store writes per session (all processes, a shared transaction once; the floor makes 3)', run.perSession.storeWrites, '');
    result.figure('registrationsPerSession', 'Nomad registrations per session', run.perSession.registrations, '');
    result.figure('reconcilesPerSession', 'reconciles per session', run.perSession.reconciles, '');
    for (const [name, seconds] of run.cpuSeconds) {
      result.figure(`cpuPerSession_${name.replace(/\W+/g, '_')}`, `CPU per session: ${name}`, (seconds * 1_000) / run.accepted, 'ms');
    }
    const cpuTotal = [...run.cpuSeconds.values()].reduce((sum, seconds) => sum + seconds, 0);
    result.figure('cpuPerSession', 'CPU per session: all of them', (cpuTotal * 1_000) / run.accepted, 'ms');
    result.figure('cpuBusy', `CPU used of the ${os.cpus().length} cores, first create to all Ready seen`, (100 * cpuTotal) / (run.busySeconds * os.cpus().length), '%');
    for (const stage of run.stagesMs) {
      result.figure(`${stage.from}To${stage.to}P50`, `${stage.from}→${stage.to} p50`, stage.p50, 'ms');
      result.figure(`${stage.from}To${stage.to}P99`, `${stage.from}→${stage.to} p99`, stage.p99, 'ms');
    }
    result.ratio('readyOverFloor', 'all Ready time / floor time', run.allReadySeconds / floorSeconds);
    result.target('readyOverFloor', 'all Ready within 3× the floor', run.allReadySeconds / floorSeconds, 'max', 3, '×');
    result.target('createToReadyP99', 'create→Ready p99', run.createToReadyMs.p99, 'max', 1_000, 'ms');
    return result.build();
  },
};

/** Runs `count` tasks with `concurrency` of them in flight at once. */
async function pool(count: number, concurrency: number, task: (n: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) await task(next++);
    }),
  );
}

/** One HTTP request with a JSON body on a keep-alive agent; rejects on anything but a 2xx. */
function send(agent: http.Agent, url: string, method: string, body: unknown, headers: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const request = http.request(url, { method, agent, headers: { 'content-type': 'application/json', 'content-length': data.length, ...headers } }, (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (text += chunk));
      response.on('end', () => {
        if (response.statusCode! >= 200 && response.statusCode! < 300) resolve(text);
        else reject(new Error(`${method} ${url}: HTTP ${response.statusCode}: ${text.slice(0, 300)}`));
      });
    });
    request.on('error', (error) => reject(new Error(`${method} ${url}: ${error.message}`)));
    request.end(data);
  });
}

/**
 * The floor: for each session the writes the work cannot do without — its spec, its Nomad job (the very
 * body the controller registers), its routes and its Ready status — with the same concurrency, no watches,
 * no reads, no waiting for anything.
 */
async function measureFloor(sessions: number, clients: number): Promise<number> {
  const config = loadConfig(undefined, {});
  const template = loadTemplates(`${repoRoot}/manifests/templates`).get('sdl')!;
  const doubles = await Doubles.start(NOMAD_NODES);
  const agent = new http.Agent({ keepAlive: true, maxSockets: clients });
  try {
    const startedAt = performance.now();
    await pool(sessions, clients, async (n) => {
      const id = `floor${n}`;
      const record: SessionRecord = { metadata: { id, owner: `floor-${n}`, createdAt: new Date().toISOString(), generation: 1 }, spec: { template: 'sdl', parameters: {} } };
      await send(agent, `${doubles.consulAddress}/v1/kv/${keys.session(id)}?cas=0`, 'PUT', record);
      await send(agent, `${doubles.nomadAddress}/v1/jobs`, 'PUT', renderJobFor(config, template, {}));
      const route: RouteRecord = {
        sessionId: id,
        hosts: ['broker', 'file', 'log', 'policy', 'ws-server', 'store', 'python', 'hmi'].map((service) => ({ service, token: randomBytes(16).toString('hex'), backend: '127.0.0.1:20000' })),
        ports: [{ service: 'tcp', port: 30_000 + n, backend: '127.0.0.1:20001' }],
      };
      await send(agent, `${doubles.consulAddress}/v1/kv/${keys.route(id)}`, 'PUT', route);
      const status: SessionStatus = { phase: 'Ready', observedGeneration: 1, conditions: [], endpoints: {}, readyAt: new Date().toISOString(), events: [] };
      await send(agent, `${doubles.consulAddress}/v1/kv/${keys.status(id)}`, 'PUT', status);
    });
    return (performance.now() - startedAt) / 1000;
  } finally {
    agent.destroy();
    await doubles.stop();
  }
}

/** When a session passed each stage, from its record and its status events (epoch ms). */
interface Timeline {
  readonly created: number;
  readonly admitted: number;
  readonly placed: number;
  readonly ready: number;
}

const STAGES: ReadonlyArray<readonly [keyof Timeline, keyof Timeline]> = [
  ['created', 'admitted'],
  ['admitted', 'placed'],
  ['placed', 'ready'],
];

function timeline(created: number, status: SessionStatus): Timeline {
  const at = (reason: string): number => Date.parse(status.events.find((event) => event.reason === reason)?.time ?? '') || Number.NaN;
  return { created, admitted: at('PhaseStarting'), placed: at('Placed'), ready: Date.parse(status.readyAt!) };
}

interface ProductRun {
  readonly accepted: number;
  readonly refused: number;
  readonly createSeconds: number;
  readonly allReadySeconds: number;
  readonly createToReadyMs: { readonly p50: number; readonly p99: number };
  /** CPU seconds each process used from the first create until all were seen Ready. */
  readonly cpuSeconds: ReadonlyMap<string, number>;
  /** From the first create until all were seen Ready (read every second, so up to a second late). */
  readonly busySeconds: number;
  /** The work done per session: store writes (all processes), Nomad registrations, reconciles. */
  readonly perSession: { readonly storeWrites: number; readonly registrations: number; readonly reconciles: number };
  /** Where the time went: percentiles of each stage across the sessions. */
  readonly stagesMs: ReadonlyArray<{ readonly from: string; readonly to: string; readonly p50: number; readonly p99: number }>;
}

async function measureProduct(context: BenchContext, sessions: number, clients: number): Promise<ProductRun> {
  const cluster = await BenchCluster.start({
    workDir: context.workDir,
    log: context.log,
    nomadNodes: NOMAD_NODES,
    tcpPorts: await freePortRange(sessions),
    limits: { maxSessions: sessions, maxStarting: sessions },
    router: 'haproxy',
    frontend: true,
  });
  const agent = new http.Agent({ keepAlive: true, maxSockets: clients });
  try {
    const indexBefore = await cluster.storeIndex();
    let accepted = 0;
    let refused = 0;
    const cpuBefore = cluster.cpuSeconds();
    const firstCreate = Date.now();
    const startedAt = performance.now();
    await pool(sessions, clients, async (n) => {
      try {
        await send(agent, `${cluster.frontendUrl}/api/v1/sessions`, 'POST', { template: 'sdl' }, { 'x-manticore-user': `bench-user-${n}` });
        accepted += 1;
      } catch (error) {
        refused += 1;
        context.log.warn({ err: error }, 'a create was refused');
      }
    });
    const createSeconds = (performance.now() - startedAt) / 1000;
    // The figures come from the times the statuses record; the end is looked for once a second.
    await cluster.untilReady(accepted, 10 * 60_000, 1_000);
    const busySeconds = (performance.now() - startedAt) / 1000;
    const cpuSeconds = new Map([...cluster.cpuSeconds()].map(([name, seconds]) => [name, seconds - (cpuBefore.get(name) ?? 0)]));
    const work = {
      storeWrites: (await cluster.storeIndex()) - indexBefore,
      registrations: await cluster.registrations(),
      reconciles: await cluster.controllerMetric('manticore_reconcile_duration_seconds_count'),
    };
    const created = new Map((await cluster.sessions()).map((record) => [record.metadata.id, Date.parse(record.metadata.createdAt)]));
    const timelines = (await cluster.statuses()).map((entry) => timeline(created.get(entry.key.slice(keys.statuses.length))!, entry.status));
    const latencies = timelines.map((stages) => stages.ready - stages.created);
    return {
      accepted,
      refused,
      createSeconds,
      allReadySeconds: (Math.max(...timelines.map((stages) => stages.ready)) - firstCreate) / 1000,
      createToReadyMs: { p50: percentile(latencies, 50), p99: percentile(latencies, 99) },
      cpuSeconds,
      busySeconds,
      perSession: { storeWrites: work.storeWrites / accepted, registrations: work.registrations / accepted, reconciles: work.reconciles / accepted },
      stagesMs: STAGES.map(([from, to]) => {
        const spans = timelines.map((stages) => stages[to] - stages[from]);
        return { from, to, p50: percentile(spans, 50), p99: percentile(spans, 99) };
      }),
    };
  } finally {
    agent.destroy();
    await cluster.stop();
  }
}
