import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import YAML from 'yaml';
import { encodeRecord } from '../../controller/api/schemas.js';
import type { SessionStatus } from '../../controller/api/types.js';
import { loadConfig } from '../../controller/config/config.js';
import { FencedWriter, type StoreWriter } from '../../controller/controller/fenced-writer.js';
import { Keys } from '../../controller/controller/keys.js';
import { nextStatus } from '../../controller/controller/status.js';
import { ConsulStore } from '../../controller/store/consul-store.js';
import { MAX_TXN_OPS } from '../../controller/store/store.js';
import { CREATE_BODY, createSessions } from './frontend-client.js';
import { BenchChild } from './frontend-processes.js';
import { repoRoot } from './paths.js';
import { openStreams, withTimeout, type StatusStream } from './frontend-streams.js';
import { mintTokens, newJwtSettings, writeLines, type JwtSettings } from './frontend-tokens.js';
import { cpuSeconds, PeakMemory, residentMiB } from './process-stats.js';
import { ResultBuilder, type ScenarioResult } from './report.js';
import type { BenchContext, Scenario } from './scenario.js';
import { percentile } from './stats.js';
import { combineRounds, failedRequests, runWrk, type WrkOptions, type WrkResult } from './wrk.js';

/** The load's sizes: the full run `make bench` judges, and the quick pass that checks the harness. */
interface Sizes {
  readonly connections: number;
  readonly warmupSeconds: number;
  /** Each load runs this many rounds of `roundSeconds`, interleaved with the other loads' rounds. */
  readonly rounds: number;
  readonly roundSeconds: number;
  /** Sessions (each of its own user) the status reads go over. */
  readonly readSessions: number;
  /** Users whose tokens the warm-up and the measured creates take in turn (split among the rounds): each create a new user while they last. */
  readonly warmupCreateUsers: number;
  readonly createUsers: number;
  /** Sessions, each of its own user, with one open status stream each. */
  readonly streams: number;
  /** Status writes in flight at once: the controller's default reconcile concurrency (controller.workers). */
  readonly writeConcurrency: number;
  readonly deliveryTimeoutMs: number;
}

/** Status writes in flight at once: as many as the controller's reconciles (its default `controller.workers`). */
const DEFAULT_WORKERS = loadConfig(undefined, {}).controller.workers;

const FULL: Sizes = {
  connections: 50,
  warmupSeconds: 3,
  rounds: 5,
  roundSeconds: 2,
  readSessions: 1000,
  warmupCreateUsers: 50_000,
  createUsers: 150_000,
  streams: 5000,
  writeConcurrency: DEFAULT_WORKERS,
  deliveryTimeoutMs: 30_000,
};

const QUICK: Sizes = {
  connections: 50,
  warmupSeconds: 1,
  rounds: 2,
  roundSeconds: 1,
  readSessions: 100,
  warmupCreateUsers: 10_000,
  createUsers: 20_000,
  streams: 200,
  writeConcurrency: DEFAULT_WORKERS,
  deliveryTimeoutMs: 10_000,
};

/** Set-up requests (creating the sessions to read and to stream) in flight at once. */
const SETUP_CONCURRENCY = 50;
/** Streams being connected at once. */
const OPEN_CONCURRENCY = 100;
/** Limits raised so far beyond the load that neither the per-user session limit nor the rate limit refuses anything. */
const UNLIMITED = 1_000_000;
/** Descriptors a process needs besides one per stream (its listeners, the store, logs, libraries). */
const SPARE_DESCRIPTORS = 500;

/** wrk's request hook over the requests a script's init() formatted, in turn. */
const ROUND_ROBIN = `
function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end
`;

/**
 * Reads `GET /api/v1/sessions/{id}` by its owner, going round the sessions of the file (a session id and its
 * owner's token a line). The requests are formatted once, so wrk spends its time sending them.
 */
const READ_SCRIPT = `
local requests = {}
local next_request = 0
function init(args)
  for line in io.lines(args[1]) do
    local id, token = line:match("^(%S+) (%S+)$")
    requests[#requests + 1] = wrk.format("GET", "/api/v1/sessions/" .. id, { ["Authorization"] = "Bearer " .. token })
  end
end
${ROUND_ROBIN}`;

/** Creates a session as each user of the file (a token a line) in turn, with the body given as the second argument. */
const CREATE_SCRIPT = `
local requests = {}
local next_request = 0
function init(args)
  for token in io.lines(args[1]) do
    requests[#requests + 1] = wrk.format("POST", nil, { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }, args[2])
  end
end
${ROUND_ROBIN}`;

export const frontendScenario: Scenario = {
  name: 'frontend',
  async run(context: BenchContext): Promise<ScenarioResult> {
    const sizes = context.quick ? QUICK : FULL;
    checkDescriptorLimit(sizes.streams);
    const jwt = newJwtSettings();
    const result = new ResultBuilder('frontend', 'Front end: API loads against a constant route, and status streams', parameters(sizes));
    await measureRequests(context, sizes, jwt, result);
    await measureStreams(context, sizes, jwt, result);
    return result.build();
  },
};

function parameters(sizes: Sizes): Record<string, number | string> {
  return {
    connections: sizes.connections,
    wrkThreads: 1,
    warmupSeconds: sizes.warmupSeconds,
    rounds: `${sizes.rounds} of ${sizes.roundSeconds} s per load, interleaved (ceiling, reads, creates, ceiling, …)`,
    readSessions: `${sizes.readSessions} sessions of ${sizes.readSessions} users, each read by its owner`,
    createUsers: `${sizes.createUsers} users, a share of them each round (warm-up: ${sizes.warmupCreateUsers} others), one create each while they last`,
    streams: `${sizes.streams} sessions of ${sizes.streams} users, one status stream each`,
    statusWrites: `one per session, ${sizes.writeConcurrency} reconciles at a time (controller.workers), through a leader's fenced writer`,
    auth: 'JWT (HS256 bearer tokens signed before the run)',
    limits: `limits.sessionsPerUser ${UNLIMITED}, frontend.rateLimit ${UNLIMITED}/s burst ${UNLIMITED}: raised so that neither refuses the load`,
    stores: 'loads: embedded store (SQLite file in the scratch directory); streams: Consul API double (test/fakes, its own process)',
    openFilesLimit: openFilesLimit(),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Request loads: ceiling, status reads and creates on one front end over the embedded store.

async function measureRequests(context: BenchContext, sizes: Sizes, jwt: JwtSettings, result: ResultBuilder): Promise<void> {
  const frontend = await startFrontend(context, 'front end (embedded store)', { backend: 'embedded', path: path.join(context.workDir, 'state.db') }, jwt);
  try {
    result.figure('rssIdle', 'front end resident memory at start', megabytes(residentMiB(frontend.child.pid)), 'MB');
    const readFile = await prepareReads(context, frontend.api, sizes, jwt);
    const warmupUsers = path.join(context.workDir, 'warmup-users.txt');
    await writeLines(warmupUsers, mintTokens(jwt, 'warmup-', sizes.warmupCreateUsers));
    // Every round of creates has users of its own: wrk starts each run at the top of its file.
    const usersPerRound = Math.floor(sizes.createUsers / sizes.rounds);
    const roundUsers: string[] = [];
    for (let round = 0; round < sizes.rounds; round++) {
      roundUsers.push(path.join(context.workDir, `create-users-${round}.txt`));
      await writeLines(roundUsers[round]!, mintTokens(jwt, `creator-${round}-`, usersPerRound));
    }

    const ceilingLoad: Load = { url: `${frontend.api}/healthz` };
    const readLoad: Load = { url: `${frontend.api}/api/v1/sessions`, script: READ_SCRIPT, scriptArgs: [readFile] };
    const createLoad = (users: string): Load => ({ url: `${frontend.api}/api/v1/sessions`, script: CREATE_SCRIPT, scriptArgs: [users, CREATE_BODY] });
    const [ceiling, reads, creates] = await measureInterleaved(context, frontend.child, sizes, [
      { name: 'ceiling', warmup: ceilingLoad, round: () => ceilingLoad },
      { name: 'reads', warmup: readLoad, round: () => readLoad },
      { name: 'creates', warmup: createLoad(warmupUsers), round: (round) => createLoad(roundUsers[round]!) },
    ]);

    reportLoad(result, 'ceiling', 'ceiling (GET /healthz)', ceiling!);
    reportLoad(result, 'reads', 'status reads (GET /api/v1/sessions/{id})', reads!);
    reportCreates(result, creates!, usersPerRound);
    const createsRatio = acceptedPerSecond(creates.wrk) / ceiling.wrk.requestsPerSecond;
    const readsRatio = reads.wrk.requestsPerSecond / ceiling.wrk.requestsPerSecond;
    result.ratio('createsVsCeiling', 'accepted creates / ceiling', createsRatio).ratio('readsVsCeiling', 'status reads / ceiling', readsRatio);
    result.target('createsShare', 'accepted creates / ceiling', createsRatio, 'min', 0.25, '×');
    result.target('readsShare', 'status reads / ceiling', readsRatio, 'min', 0.5, '×');
  } finally {
    await frontend.child.stop();
  }
}

/** Creates the sessions the reads go over; returns the file of `id token` lines for the read script. */
async function prepareReads(context: BenchContext, api: string, sizes: Sizes, jwt: JwtSettings): Promise<string> {
  const tokens = mintTokens(jwt, 'reader-', sizes.readSessions);
  const ids = await createSessions(api, tokens, SETUP_CONCURRENCY);
  const file = path.join(context.workDir, 'reads.txt');
  await writeLines(file, ids.map((id, i) => `${id} ${tokens[i]}`));
  context.log.info({ sessions: ids.length }, 'sessions to read created');
  return file;
}

/** What wrk sends for one load (the connections, threads and duration are the scenario's). */
type Load = Omit<WrkOptions, 'connections' | 'durationSeconds' | 'threads'>;

interface LoadSpec {
  readonly name: string;
  readonly warmup: Load;
  /** The load of round `round` (0-based). */
  readonly round: (round: number) => Load;
}

interface LoadOutcome {
  /** The rounds taken together. */
  readonly wrk: WrkResult;
  readonly rounds: readonly WrkResult[];
  /** CPU seconds the front end used during the measured rounds. */
  readonly cpuSeconds: number;
}

/**
 * A warm-up of each load, then each load in rounds interleaved with the others' (ceiling, reads, creates,
 * ceiling, …), with the front end's CPU during its rounds: other work on the machine, which comes and goes,
 * weighs on every load alike, as in the routing scenario.
 */
async function measureInterleaved(context: BenchContext, frontend: BenchChild, sizes: Sizes, specs: readonly LoadSpec[]): Promise<LoadOutcome[]> {
  const common = { connections: sizes.connections, threads: 1 };
  for (const spec of specs) await runWrk({ ...spec.warmup, ...common, durationSeconds: sizes.warmupSeconds });
  const rounds = specs.map((): WrkResult[] => []);
  const cpu = specs.map(() => 0);
  for (let round = 0; round < sizes.rounds; round++) {
    for (const [n, spec] of specs.entries()) {
      const cpuBefore = cpuSeconds(frontend.pid);
      rounds[n]!.push(await runWrk({ ...spec.round(round), ...common, durationSeconds: sizes.roundSeconds }));
      cpu[n]! += cpuSeconds(frontend.pid) - cpuBefore;
    }
  }
  return specs.map((spec, n) => {
    const outcome: LoadOutcome = { wrk: combineRounds(rounds[n]!), rounds: rounds[n]!, cpuSeconds: cpu[n]! };
    const { wrk } = outcome;
    context.log.info({ load: spec.name, requestsPerSecond: Math.round(wrk.requestsPerSecond), p99Ms: wrk.latencyP99Ms, errors: wrk.errors, frontendCpuSeconds: outcome.cpuSeconds }, 'load measured');
    return outcome;
  });
}

function reportLoad(result: ResultBuilder, key: string, label: string, outcome: LoadOutcome): void {
  const { wrk } = outcome;
  result
    .figure(`${key}Rps`, `${label}: requests/s`, wrk.requestsPerSecond, 'req/s')
    .figure(`${key}P50`, `${label}: p50`, wrk.latencyP50Ms, 'ms')
    .figure(`${key}P99`, `${label}: p99`, wrk.latencyP99Ms, 'ms')
    .figure(`${key}Errors`, `${label}: errors`, failedRequests(wrk), '');
  reportCpu(result, key, label, outcome);
}

/** `usersPerRound`: the users each round's creates took in turn (a user is created for again once they run out). */
function reportCreates(result: ResultBuilder, outcome: LoadOutcome, usersPerRound: number): void {
  const { wrk } = outcome;
  const label = 'creates (POST /api/v1/sessions)';
  const distinctUsers = outcome.rounds.reduce((sum, round) => sum + Math.min(round.requests - round.errors.status, usersPerRound), 0);
  result
    .figure('createsRps', `${label}: accepted/s`, acceptedPerSecond(wrk), 'req/s')
    .figure('createsP50', `${label}: p50`, wrk.latencyP50Ms, 'ms')
    .figure('createsP99', `${label}: p99`, wrk.latencyP99Ms, 'ms')
    .figure('createsRefused', `${label}: refused (not 2xx)`, wrk.errors.status, '')
    .figure('createsErrors', `${label}: socket errors`, failedRequests(wrk) - wrk.errors.status, '')
    .figure('createsDistinctUsers', `${label}: distinct users`, distinctUsers, '');
  reportCpu(result, 'creates', label, outcome);
}

/**
 * The front end's CPU: how much of a core it got (another process on the machine takes its share, and the
 * requests per second with it), and what one request cost it, which such sharing does not change.
 */
function reportCpu(result: ResultBuilder, key: string, label: string, { wrk, cpuSeconds: used }: LoadOutcome): void {
  result
    .figure(`${key}Cores`, `${label}: front end CPU`, used / wrk.durationSeconds, 'cores')
    .figure(`${key}CpuPerRequest`, `${label}: front end CPU per request`, (used * 1e6) / wrk.requests, 'µs');
}

/** Creates answered 2xx per second; wrk counts every other answer as a status error. */
function acceptedPerSecond(wrk: WrkResult): number {
  return (wrk.requests - wrk.errors.status) / wrk.durationSeconds;
}

// ---------------------------------------------------------------------------------------------------------
// Status streams: a front end over Consul (the double), the controller's status writes going in beside it.

async function measureStreams(context: BenchContext, sizes: Sizes, jwt: JwtSettings, result: ResultBuilder): Promise<void> {
  const { child: consul, match } = await BenchChild.start({
    name: 'the Consul API double',
    args: [path.join(repoRoot, 'dist/test/fakes/dev-cluster.js')],
    // Port 0: the OS chooses (the Nomad double it also starts is not used).
    env: { ...childEnvironment(), CONSUL_PORT: '0', NOMAD_PORT: '0', MANTICORE_LOG_LEVEL: 'warn' },
    ready: /Consul API double: (http:\/\/[\d.]+:\d+)\n/,
  });
  const consulAddress = match[1]!;
  const writer = new ConsulStore({ address: consulAddress, log: context.log.child({ role: 'status-writer' }) });
  const agent = new http.Agent({ keepAlive: false });
  let frontend: { child: BenchChild; api: string } | undefined;
  let streams: StatusStream[] = [];
  try {
    frontend = await startFrontend(context, 'front end (Consul store)', { backend: 'consul', consul: { address: consulAddress } }, jwt);
    const keys = new Keys('manticore/');
    const tokens = mintTokens(jwt, 'watcher-', sizes.streams);
    const ids = await createSessions(frontend.api, tokens, SETUP_CONCURRENCY);
    // Every session waits in line, as the controller shows it, one place behind where the change puts it.
    const waiting = ids.map((_, i) => waitingStatus(undefined, i + 2));
    await writeInitialStatuses(writer, keys, ids, waiting);
    result.figure('rssSessions', `front end resident memory with ${sizes.streams} sessions, no stream`, megabytes(residentMiB(frontend.child.pid)), 'MB');

    const memory = new PeakMemory(frontend.child.pid, 100);
    const openedAt = performance.now();
    streams = await openStreams(frontend.api, ids.map((id, i) => ({ id, token: tokens[i]! })), OPEN_CONCURRENCY, agent);
    const openSeconds = (performance.now() - openedAt) / 1000;
    context.log.info({ streams: streams.length, openSeconds }, 'streams open');
    const delivery = await deliverChanges(await leaderWriter(writer, keys), keys, ids, waiting, streams, sizes);
    const peak = memory.stop();
    reportStreams(result, sizes, openSeconds, delivery, megabytes(peak));
  } finally {
    for (const stream of streams) stream.close();
    agent.destroy();
    await writer.close();
    await frontend?.child.stop();
    await consul.stop();
  }
}

/** A Waiting status at `position`, built as the controller builds it (the same conditions and history). */
function waitingStatus(previous: SessionStatus | undefined, position: number): SessionStatus {
  const message = `${position - 1} session(s) ahead in the waiting list`;
  return nextStatus(
    previous,
    {
      phase: 'Waiting',
      observedGeneration: 1,
      conditions: [
        { type: 'Admitted', status: 'False', reason: 'Queued', message },
        { type: 'Ready', status: 'False', reason: 'Queued', message },
      ],
      endpoints: {},
      queuePosition: position,
    },
    new Date().toISOString(),
  );
}

/** Set-up: the statuses before the change, written in transactions of the most operations Consul allows. */
async function writeInitialStatuses(writer: ConsulStore, keys: Keys, ids: readonly string[], statuses: readonly SessionStatus[]): Promise<void> {
  for (let start = 0; start < ids.length; start += MAX_TXN_OPS) {
    const operations = ids.slice(start, start + MAX_TXN_OPS).map((id, i) => ({ verb: 'put' as const, key: keys.status(id), value: encodeRecord('session-status', statuses[start + i]) }));
    if (!(await writer.transaction(operations))) throw new Error(`writing the initial statuses ${start}–${start + operations.length - 1} failed`);
  }
}

interface Delivery {
  /** Per stream: from its status write being sent to its event arriving, for the streams that got it. */
  readonly latenciesMs: readonly number[];
  readonly undelivered: number;
  /** From the first write being sent to the last one answered. */
  readonly writeSpanMs: number;
  /** From the first write being sent to the last stream having its change. */
  readonly allDeliveredMs: number;
}

/**
 * The status writes' path out of a leading controller: a lease on the leader key, and its fenced writer,
 * which sends the writes of one moment together in transactions (fenced-writer.ts).
 */
async function leaderWriter(store: ConsulStore, keys: Keys): Promise<StoreWriter> {
  const session = await store.createSession({ name: 'bench-leader', ttlSeconds: 300, lockDelaySeconds: 0 });
  if (!(await store.acquire(keys.leader, '{}', session))) throw new Error('the benchmark could not take the leader key');
  return new FencedWriter(store, () => ({ verb: 'check-session', key: keys.leader, session }));
}

/**
 * Moves every session one place up the waiting list, one status write each as the leading controller writes
 * them (`writeConcurrency` reconciles at a time, through its fenced writer), and times each stream from its
 * session's write to the event showing it.
 */
async function deliverChanges(writer: StoreWriter, keys: Keys, ids: readonly string[], before: readonly SessionStatus[], streams: readonly StatusStream[], sizes: Sizes): Promise<Delivery> {
  const arrivedAt: number[] = [];
  const arrivals = streams.map((stream, i) =>
    stream.arrivalOf(i + 1).then(
      (at) => void (arrivedAt[i] = at),
      () => undefined,
    ),
  );
  const sentAt: number[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < ids.length; i = next++) {
      const value = encodeRecord('session-status', waitingStatus(before[i], i + 1));
      sentAt[i] = performance.now();
      await writer.put(keys.status(ids[i]!), value);
    }
  };
  await Promise.all(Array.from({ length: sizes.writeConcurrency }, worker));
  const writesDoneAt = performance.now();
  await withTimeout(Promise.all(arrivals), sizes.deliveryTimeoutMs, 'not every stream showed its change').catch(() => undefined);
  const latenciesMs = arrivedAt.flatMap((at, i) => (at === undefined ? [] : [at - sentAt[i]!]));
  const firstSent = Math.min(...sentAt);
  const delivered = latenciesMs.length;
  return {
    latenciesMs,
    undelivered: ids.length - delivered,
    writeSpanMs: writesDoneAt - firstSent,
    allDeliveredMs: delivered === ids.length ? Math.max(...arrivedAt) - firstSent : Number.NaN,
  };
}

function reportStreams(result: ResultBuilder, sizes: Sizes, openSeconds: number, delivery: Delivery, peakMB: number): void {
  const { latenciesMs } = delivery;
  const max = delivery.undelivered > 0 ? Number.POSITIVE_INFINITY : Math.max(...latenciesMs);
  result
    .figure('streamsOpenSeconds', `${sizes.streams} streams: time to open all`, openSeconds, 's')
    .figure('statusWriteSpan', `${sizes.streams} status writes: first sent to last answered`, delivery.writeSpanMs, 'ms')
    .figure('deliveryP50', 'status change delivery per stream (write sent → event): p50', percentile(latenciesMs, 50), 'ms')
    .figure('deliveryP99', 'status change delivery per stream: p99', percentile(latenciesMs, 99), 'ms')
    .figure('deliveryMax', 'status change delivery per stream: max', max, 'ms')
    .figure('deliveryAll', 'first write sent → every stream has its change', delivery.allDeliveredMs, 'ms')
    .figure('undelivered', 'streams without their change', delivery.undelivered, '')
    .figure('rssStreams', `front end resident memory with ${sizes.streams} streams (peak)`, peakMB, 'MB');
  result.target('deliveryMax', 'every stream has its change within (max per stream)', max, 'max', 1000, 'ms');
  result.target('rssStreams', `front end resident memory with ${sizes.streams} streams`, peakMB, 'max', 300, 'MB');
}

// ---------------------------------------------------------------------------------------------------------
// The front end as its own process.

/**
 * `manticore frontend` over the given store, with JWT auth, the OS choosing its port, and the limits raised
 * out of the way; resolves once it serves, with its address.
 */
async function startFrontend(context: BenchContext, name: string, store: Record<string, unknown>, jwt: JwtSettings): Promise<{ child: BenchChild; api: string }> {
  const config = {
    store,
    frontend: { host: '127.0.0.1', port: 0, rateLimit: { requestsPerSecond: UNLIMITED, burst: UNLIMITED } },
    limits: { sessionsPerUser: UNLIMITED },
    auth: { mode: 'jwt', jwt: { secret: jwt.secret, issuer: jwt.issuer } },
    templates: { dir: path.join(repoRoot, 'manifests/templates') },
    log: { level: 'warn', format: 'json' },
  };
  const file = path.join(context.workDir, `${name.replace(/\W+/g, '-')}.yaml`);
  fs.writeFileSync(file, YAML.stringify(config));
  const { child, match } = await BenchChild.start({
    name,
    args: [path.join(repoRoot, 'dist/controller/cli/main.js'), 'frontend', '--config', file],
    env: childEnvironment(),
    ready: /web page: +(http:\/\/127\.0\.0\.1:\d+)\//,
  });
  context.log.info({ frontend: name, pid: child.pid, api: match[1] }, 'front end started');
  return { child, api: match[1]! };
}

/** This environment without the variables that override a Manticore configuration file (or Consul/Nomad addresses). */
function childEnvironment(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^(MANTICORE_|CONSUL_|NOMAD_)/.test(name)));
}

/** The soft limit on open files, which every child inherits: each stream holds one descriptor on either side. */
function openFilesLimit(): number {
  const match = /^Max open files\s+(\d+|unlimited)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
  return match === null || match[1] === 'unlimited' ? Number.POSITIVE_INFINITY : Number(match[1]);
}

function checkDescriptorLimit(streams: number): void {
  const limit = openFilesLimit();
  if (streams + SPARE_DESCRIPTORS > limit) {
    throw new Error(`${streams} streams need about ${streams + SPARE_DESCRIPTORS} open files in the front end and in the bench, but the limit is ${limit}; raise it (ulimit -n)`);
  }
}

/** /proc reports kibibytes; the targets are in megabytes. */
function megabytes(mebibytes: number): number {
  return (mebibytes * 2 ** 20) / 1e6;
}
