import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { AuthorizeSecurityGroupIngressCommand, EC2Client } from '@aws-sdk/client-ec2';
import { CreateLoadBalancerListenersCommand, ElasticLoadBalancingClient } from '@aws-sdk/client-elastic-load-balancing';
import { CreateListenerCommand, DescribeLoadBalancersCommand, DescribeTargetGroupsCommand, ElasticLoadBalancingV2Client, type DescribeTargetGroupsCommandInput } from '@aws-sdk/client-elastic-load-balancing-v2';
import * as FakeTimers from '@sinonjs/fake-timers';
import YAML from 'yaml';
import type { SessionStatus } from '../../controller/api/types.js';
import { PortAllocator } from '../../controller/controller/claims.js';
import { loadConfig } from '../../controller/config/config.js';
import { createExposer } from '../../controller/loadbalancer/aws.js';
import type { ClaimBook, Exposer } from '../../controller/loadbalancer/exposer.js';
import { ownerTagKey, targetGroupPrefix } from '../../controller/loadbalancer/nlb.js';
import { ruleMarker } from '../../controller/loadbalancer/security-groups.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import type { Store } from '../../controller/store/store.js';
import { AwsModel, sdkError, type AwsService } from '../fakes/aws.js';
import {
  capturingLogger,
  condition,
  ControllerHarness,
  controllerClock,
  createSession,
  keys,
  laggingWatch,
  requestDeletion,
  routesOf,
  standbyLeadership,
  statusOf,
  testLog,
} from '../support/controller-harness.js';
import { FakeScheduler } from '../support/fake-scheduler.js';
import { waitFor } from '../support/wait.js';

const group = 'sg-0123456789abcdef0';
const marker = 'manticore/';
const minute = 60_000;
/** Temporary directories of this kind there before this file ran (another run's are not this one's to answer for). */
const tempDirsBefore = new Set(fs.readdirSync(os.tmpdir()).filter((name) => name.startsWith('manticore-aws-')));

interface World {
  readonly h: ControllerHarness;
  readonly model: AwsModel;
  /** The leader's exposer. */
  exposer: Exposer;
  readonly awsClock: FakeTimers.Clock;
}

/** The AWS section of a configuration file, through the real loader (schema defaults and cross-field checks). */
function awsConfig(aws: Record<string, unknown>, router: Record<string, unknown> = {}): NonNullable<ReturnType<typeof loadConfig>['aws']> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-aws-'));
  try {
    const file = path.join(dir, 'config.yaml');
    fs.writeFileSync(file, YAML.stringify({ router: { tcp: { portRangeStart: 20000, portRangeEnd: 20199 }, ...router }, aws: { region: 'us-east-1', ...aws } }));
    return loadConfig(file, {}).aws!;
  } finally {
    // The configuration is read at once: nothing needs the file afterwards.
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** A seeded source of jitter, so backoff delays are the same on every run. */
function seeded(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state / 2 ** 31;
  };
}

/** An exposer over the model for this configuration, on the AWS clock, as `createExposer` builds it. */
async function startExposer(aws: Record<string, unknown>, awsClock: FakeTimers.Clock): Promise<Exposer> {
  const exposer = createExposer({
    aws: awsConfig(aws),
    marker,
    tcpPortRange: { start: 20000, end: 20199 },
    httpTargetPort: 8080,
    log: testLog,
    clock: controllerClock(awsClock),
    random: seeded(7),
  });
  await exposer.start();
  return exposer;
}

async function setUp(options: {
  aws: Record<string, unknown>;
  model: (model: AwsModel) => void;
  maxSessions?: number;
}): Promise<World> {
  // The AWS side runs on its own fake clock: backoff, confirmation describes and resyncs move only when the test ticks it.
  const awsClock = FakeTimers.createClock(Date.now());
  const model = new AwsModel(() => awsClock.now).install();
  options.model(model);
  const exposer = await startExposer(options.aws, awsClock);
  const h = new ControllerHarness(EmbeddedStore.open(':memory:'), new FakeScheduler(), {
    ports: { start: 20000, end: 20199 },
    limits: { maxSessions: options.maxSessions ?? 200, maxStarting: 200 },
    workers: 8,
    loadBalancers: exposer,
  });
  await h.start();
  return { h, model, exposer, awsClock };
}

async function tearDown(world: World | undefined): Promise<void> {
  if (!world) return;
  await world.h.stop();
  // A pass in flight may still make calls: they must reach the model, never the real AWS.
  await world.exposer.whenIdle();
  world.model.restore();
}

/**
 * Turns of the event loop until the controller has no reconcile waiting or running. At least one turn: the
 * store commits writes and delivers watch steps on later turns (setImmediate), which a wait made of
 * promises alone would never let run, leaving the controller waiting for echoes that never come.
 */
async function controllerIdle(world: World): Promise<void> {
  do await new Promise<void>((resolve) => setImmediate(resolve));
  while (world.h.controller.queue.length > 0 || world.h.controller.queue.inFlight > 0);
}

/**
 * Lets both worlds move: AWS time advances in small steps, each followed by the exposer's passes and the
 * reconciles they cause, and every registered workload is brought up, until `done` holds.
 */
async function settle<T>(world: World, what: string, done: () => Promise<T | undefined | false>, timeoutMs = 60_000, stepMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let port = 31000;
  for (;;) {
    for (const id of world.h.scheduler.workloadIds()) {
      const workload = world.h.scheduler.workload(id);
      if (workload && workload.allocation === undefined) world.h.scheduler.run(id, { http: `127.0.0.1:${port++}`, broker: `127.0.0.1:${port++}`, tcp: `127.0.0.1:${port++}` });
    }
    const value = await done();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    world.awsClock.tick(stepMs);
    await world.exposer.whenIdle();
    await controllerIdle(world);
  }
}

async function statuses(world: World, ids: readonly string[]): Promise<SessionStatus[]> {
  return Promise.all(ids.map(async (id) => (await statusOf(world.h.store, id)) ?? ({ phase: 'Pending' } as SessionStatus)));
}

const count = (all: SessionStatus[], phase: string): number => all.filter((status) => status.phase === phase).length;

async function createMany(world: World, n: number, from = 0): Promise<string[]> {
  const base = Date.now() - 10 * minute;
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push(await createSession(world.h.store, { owner: `user${from + i}`, createdAt: base + (from + i) * 1000 }));
  return ids;
}

async function deleteAll(world: World, ids: readonly string[]): Promise<void> {
  for (const id of ids) if (await world.h.store.get(keys.session(id))) await requestDeletion(world.h.store, id);
}

/** The rules of ours in the group. */
const ourRules = (model: AwsModel): number => model.rules(group).filter((rule) => rule.Description === ruleMarker(marker)).length;

/** Whether every port is opened (for every CIDR) by some rule of ours. */
function portsOpened(model: AwsModel, ports: readonly number[]): boolean {
  const rules = model.rules(group).filter((rule) => rule.Description === ruleMarker(marker));
  return ports.every((port) => ['0.0.0.0/0', '::/0'].every((cidr) => rules.some((rule) => (rule.CidrIpv4 ?? rule.CidrIpv6) === cidr && rule.FromPort! <= port && port <= rule.ToPort!)));
}

describe('AWS load balancers: a pool of listeners in front of the TCP ports', function () {
  this.timeout(180_000);
  let world: World | undefined;
  afterEach(async () => {
    await tearDown(world);
    world = undefined;
  });

  it('two NLBs of 50 listeners and 120 sessions: 100 exposed across both, 20 wait and start as others end; all gone at the end, nothing else touched', async () => {
    world = await setUp({
      aws: { loadBalancers: [{ name: 'lb-a', type: 'nlb' }, { name: 'lb-b', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0', 'i-0123456789abcdef1'], securityGroups: { groupIds: [group] } },
      model: (model) => {
        model.addNlb('lb-a');
        model.addNlb('lb-b');
        model.addSecurityGroup(group);
        model.addForeignRule(group, 22, 22, '10.0.0.0/8');
      },
    });
    const w = world;
    const ids = await createMany(w, 120);
    const all = await settle(w, '100 Ready and 20 Waiting', async () => {
      const all = await statuses(w, ids);
      return count(all, 'Ready') === 100 && count(all, 'Waiting') === 20 ? all : undefined;
    });
    const waiting = ids.filter((_, n) => all[n]!.phase === 'Waiting');
    assert.deepEqual(waiting, ids.slice(100), 'the last 20 created wait, first come first served');
    assert.deepEqual(waiting.map((_, n) => all[100 + n]!.queuePosition), Array.from({ length: 20 }, (_, n) => n + 1));
    assert.equal(condition(all[119], 'Admitted'), 'False/NoListenerCapacity');
    assert.match(all[119]!.conditions[0]!.message, /listener quota \(lb-a 50, lb-b 50\)/);
    assert.deepEqual([w.model.listenerPorts('lb-a').length, w.model.listenerPorts('lb-b').length], [50, 50]);
    const readyPorts: number[] = [];
    for (const [n, id] of ids.slice(0, 100).entries()) {
      const claim = (await routesOf(w.h.store, id))!;
      const port = claim.ports[0]!;
      readyPorts.push(port.port);
      assert.ok(port.loadBalancer === 'lb-a' || port.loadBalancer === 'lb-b');
      assert.ok(w.model.listenerPorts(port.loadBalancer!).includes(port.port));
      assert.equal(condition(all[n], 'Exposed'), 'True/ListenerReady');
      assert.match(all[n]!.endpoints.tcp!.url, new RegExp(`^tcp://${port.loadBalancer}-[0-9a-f]+\\.elb\\.us-east-1\\.amazonaws\\.com:${port.port}$`));
    }
    assert.equal(new Set(readyPorts).size, 100, 'one port per session');
    await settle(w, 'security-group rules for every port in use', async () => portsOpened(w.model, readyPorts));
    assert.ok(ourRules(w.model) <= 40, `${ourRules(w.model)} rules: at most 20 ranges per CIDR`);
    assert.equal(w.model.targetGroupNames().length, 100);
    assert.deepEqual(w.model.targetGroup(w.model.targetGroupNames()[0]!)!.Targets.map((target) => target.Id), ['i-0123456789abcdef0', 'i-0123456789abcdef1']);
    const callsToExpose = w.model.callCount();

    // 20 sessions end: the 20 waiting ones take their listener slots.
    await deleteAll(w, ids.slice(0, 20));
    await settle(w, 'the waiting sessions Ready', async () => {
      const later = await statuses(w, ids.slice(100));
      return count(later, 'Ready') === 20;
    });
    assert.deepEqual([w.model.listenerPorts('lb-a').length, w.model.listenerPorts('lb-b').length], [50, 50]);

    await deleteAll(w, ids);
    await settle(w, 'no listener, target group or rule of ours left', async () => {
      const gone = await Promise.all(ids.map(async (id) => (await w.h.store.get(keys.session(id))) === undefined));
      return gone.every(Boolean) && w.model.listenerPorts('lb-a').length === 0 && w.model.listenerPorts('lb-b').length === 0 && w.model.targetGroupNames().length === 0 && ourRules(w.model) === 0;
    });
    assert.deepEqual(
      w.model.rules(group).map((rule) => `${rule.FromPort}-${rule.ToPort} ${rule.CidrIpv4} ${rule.Description}`),
      ['22-22 10.0.0.0/8 office'],
      'the rule Manticore did not make is untouched',
    );
    assert.equal(w.model.calls.get('elbv2:CreateListener'), 120, 'one listener creation per session port');
    console.log(`      AWS calls: ${callsToExpose} to expose 100 sessions; ${w.model.callCount()} in all (${JSON.stringify(Object.fromEntries(w.model.calls))})`);
  });

  it('a throttling storm slows it down without losing or duplicating anything', async () => {
    world = await setUp({
      aws: { loadBalancers: [{ name: 'lb-a', type: 'nlb', listenerQuota: 10 }, { name: 'lb-b', type: 'nlb', listenerQuota: 10 }], edgeInstanceIds: ['i-0123456789abcdef0'], securityGroups: { groupIds: [group] }, retryBaseMs: 500, retryMaxMs: 8000 },
      model: (model) => {
        model.addNlb('lb-a');
        model.addNlb('lb-b');
        model.addSecurityGroup(group);
      },
    });
    const w = world;
    w.model.throttleRate = 0.5;
    const ids = await createMany(w, 30);
    await settle(w, '20 Ready and 10 Waiting through the storm', async () => {
      const all = await statuses(w, ids);
      return count(all, 'Ready') === 20 && count(all, 'Waiting') === 10;
    }, 120_000);
    assert.ok(w.model.throttled > 20, `${w.model.throttled} calls were throttled`);
    for (const balancer of ['lb-a', 'lb-b']) {
      const ports = w.model.listenerPorts(balancer);
      assert.equal(ports.length, 10);
      assert.equal(new Set(ports).size, ports.length, 'no port has two listeners');
    }
    await deleteAll(w, ids);
    await settle(w, 'everything gone through the storm', async () => {
      const gone = await Promise.all(ids.map(async (id) => (await w.h.store.get(keys.session(id))) === undefined));
      return gone.every(Boolean) && w.model.listenerPorts('lb-a').length === 0 && w.model.listenerPorts('lb-b').length === 0 && w.model.targetGroupNames().length === 0 && ourRules(w.model) === 0;
    }, 120_000);
    assert.equal(w.model.listenersCreated, 20, 'each of the 20 admitted ports got exactly one listener');
    console.log(`      throttling storm: ${w.model.throttled} of ${w.model.callCount()} calls throttled; every session served once, nothing left`);
  });

  it('recreates a listener deleted by hand, at the next resync', async () => {
    world = await setUp({
      aws: { loadBalancers: [{ name: 'lb-a', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0'], resyncSeconds: 60 },
      model: (model) => model.addNlb('lb-a'),
    });
    const w = world;
    const [id] = await createMany(w, 1);
    await settle(w, 'Ready', async () => (await statusOf(w.h.store, id!))?.phase === 'Ready');
    const port = (await routesOf(w.h.store, id!))!.ports[0]!.port;
    w.model.deleteListenerByHand('lb-a', port);
    await settle(w, 'the listener recreated', async () => w.model.listenerPorts('lb-a').includes(port), 30_000, 5_000);
    assert.equal(w.model.listenersOnPort('lb-a', port), 1);
    assert.equal(w.model.calls.get('elbv2:CreateListener'), 2);
  });

  it('keeps every assignment across a controller restart: same addresses, no listener made again', async () => {
    world = await setUp({
      aws: { loadBalancers: [{ name: 'lb-a', type: 'nlb' }, { name: 'lb-b', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0'] },
      model: (model) => {
        model.addNlb('lb-a');
        model.addNlb('lb-b');
      },
    });
    const w = world;
    const ids = await createMany(w, 4);
    const before = await settle(w, 'four Ready', async () => {
      const all = await statuses(w, ids);
      return count(all, 'Ready') === 4 ? all : undefined;
    });
    await w.h.restartController();
    w.awsClock.tick(10_000);
    await settle(w, 'a pass after the restart', async () => {
      await w.exposer.whenIdle();
      return w.model.calls.get('elbv2:DescribeListeners')! > 4;
    });
    const after = await statuses(w, ids);
    assert.deepEqual(after.map((status) => status.endpoints), before.map((status) => status.endpoints));
    assert.equal(w.model.calls.get('elbv2:CreateListener'), 4);
  });

  it('counts the listeners a load balancer has from before a restart: a waiting session is not given a slot the fixed listener holds', async () => {
    world = await setUp({
      aws: { loadBalancers: [{ name: 'lb-a', type: 'nlb', listenerQuota: 3 }], edgeInstanceIds: ['i-0123456789abcdef0'], httpListener: { port: 80 } },
      model: (model) => model.addNlb('lb-a', 3),
    });
    const w = world;
    const ids = await createMany(w, 3);
    await settle(w, 'two Ready beside the fixed listener, one waiting', async () => {
      const all = await statuses(w, ids);
      return count(all, 'Ready') === 2 && count(all, 'Waiting') === 1;
    });
    const describes = w.model.calls.get('elbv2:DescribeListeners')!;
    await w.h.restartController();
    await settle(w, 'a pass after the restart, and the sessions looked at again', async () => {
      await w.exposer.whenIdle();
      return w.model.calls.get('elbv2:DescribeListeners')! > describes && w.h.controller.queue.idle;
    });
    const after = await statuses(w, ids);
    assert.deepEqual(after.map((status) => status.phase), ['Ready', 'Ready', 'Waiting']);
    assert.equal(w.model.calls.get('elbv2:CreateListener'), 3, 'no listener asked for beyond the quota');
  });

  it('a new leader changes nothing in AWS before its caches show what the store holds: a port its predecessor just claimed is not taken for a stray listener', async () => {
    const aws = { loadBalancers: [{ name: 'lb-a', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0'] };
    world = await setUp({ aws, model: (model) => model.addNlb('lb-a') });
    const w = world;
    // A standby with an exposer of its own, whose routes watch lags its sessions watch (each prefix has its own).
    const routesWatch = laggingWatch(w.h.store, keys.routes);
    let readsOfRoutes = 0;
    const lagging: Store = {
      ...routesWatch.store,
      prefixIndex: (prefix) => {
        if (prefix === keys.routes) readsOfRoutes += 1;
        return w.h.store.prefixIndex(prefix);
      },
    };
    const standbyTerm = standbyLeadership();
    const standbyExposer = await startExposer(aws, w.awsClock);
    const standby = await w.h.startController(lagging, standbyTerm.leadership, standbyExposer);
    routesWatch.hold();
    const [id] = await createMany(w, 1);
    await settle(w, 'Ready through the first leader', async () => (await statusOf(w.h.store, id!))?.phase === 'Ready');
    const port = (await routesOf(w.h.store, id!))!.ports[0]!.port;
    await w.h.controller.stop();
    w.h.controller = standby;
    w.exposer = standbyExposer;
    const readsBefore = readsOfRoutes;
    standbyTerm.lead();
    // Either the term reads the store to catch up, or (acting on its caches as they are) its exposer starts.
    await waitFor('the new term reading the store, or its exposer started', () => readsOfRoutes > readsBefore || standbyExposer.active);
    // Time for the passes of an exposer that started: a resync, confirmations, backoffs.
    for (let step = 0; step < 20; step++) {
      w.awsClock.tick(1_000);
      await standbyExposer.whenIdle();
    }
    assert.deepEqual(w.model.listenerPorts('lb-a'), [port], 'the listener of a session still claimed is not deleted');
    routesWatch.release();
    await settle(w, 'the new leader at work', async () => {
      await standbyExposer.whenIdle();
      return standby.routes.cache.get(id!) !== undefined && standby.queue.idle;
    });
    assert.deepEqual(w.model.listenerPorts('lb-a'), [port]);
    assert.equal(w.model.calls.get('elbv2:CreateListener'), 1, 'made once');
  });

  it('waits for a new listener to show in describe calls without creating it twice (eventual consistency)', async () => {
    world = await setUp({
      aws: { loadBalancers: [{ name: 'lb-a', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0'] },
      model: (model) => {
        model.addNlb('lb-a');
        model.consistencyDelayMs = 20_000;
      },
    });
    const w = world;
    const [id] = await createMany(w, 1);
    const starting = await settle(w, 'created, not yet seen', async () => {
      const status = await statusOf(w.h.store, id!);
      return w.model.calls.get('elbv2:CreateListener') === 1 && condition(status, 'Healthy') === 'True/Healthy' ? status : undefined;
    });
    assert.equal(condition(starting, 'Exposed'), 'False/CreatingListener');
    assert.equal(starting.phase, 'Starting');
    await settle(w, 'Ready once the listener shows', async () => (await statusOf(w.h.store, id!))?.phase === 'Ready');
    assert.ok(w.model.calls.get('elbv2:DescribeListeners')! >= 5, 'it looked again while waiting');
    assert.equal(w.model.calls.get('elbv2:CreateListener'), 1, 'created once');
  });

  it('a listener quota lower than configured: AWS refuses, the quota is lowered and later sessions wait', async () => {
    world = await setUp({
      aws: { loadBalancers: [{ name: 'lb-a', type: 'nlb', listenerQuota: 4 }], edgeInstanceIds: ['i-0123456789abcdef0'] },
      model: (model) => model.addNlb('lb-a', 2),
    });
    const w = world;
    const ids = await createMany(w, 3);
    await settle(w, 'two Ready, one refused', async () => {
      const all = await statuses(w, ids);
      return count(all, 'Ready') === 2 && all.some((status) => condition(status, 'Exposed') === 'False/ListenerRetrying');
    });
    const [late] = await createMany(w, 1, 3);
    const waiting = await settle(w, 'the next session waits', async () => {
      const status = await statusOf(w.h.store, late!);
      return status?.phase === 'Waiting' ? status : undefined;
    });
    assert.equal(condition(waiting, 'Admitted'), 'False/NoListenerCapacity');
  });

  it('Classic ELB: a listener per port and the health check toward HAProxy; a listener it does not own is left alone', async () => {
    world = await setUp({
      aws: {
        loadBalancers: [{ name: 'classic-a', type: 'classic' }],
        httpListener: { port: 443, certificateArn: 'arn:aws:acm:us-east-1:123456789012:certificate/abc' },
        securityGroups: { groupIds: [group], cidrs: ['0.0.0.0/0'] },
      },
      model: (model) => {
        model.addClassic('classic-a');
        model.addForeignListener('classic-a', 8443);
        model.addSecurityGroup(group);
        model.addForeignRule(group, 20000, 20199, '192.168.0.0/16');
      },
    });
    const w = world;
    const ids = await createMany(w, 3);
    await settle(w, 'three Ready', async () => count(await statuses(w, ids), 'Ready') === 3);
    const ports = await Promise.all(ids.map(async (id) => (await routesOf(w.h.store, id))!.ports[0]!.port));
    assert.deepEqual(w.model.listenerPorts('classic-a'), [...ports, 443, 8443].sort((a, b) => a - b));
    assert.equal(w.model.classicHealthCheck('classic-a').Target, 'HTTP:8080/haproxy-health');
    await deleteAll(w, ids);
    await settle(w, 'only the fixed and the foreign listener left', async () => w.model.listenerPorts('classic-a').join() === '443,8443');
    await settle(w, 'only the fixed rule and the foreign one left', async () => ourRules(w.model) === 2);
    assert.ok(w.model.rules(group).some((rule) => rule.Description === 'office' && rule.CidrIpv4 === '192.168.0.0/16'));
  });
});

/** Ports claimed by hand on one load balancer, for an exposer run without a controller. */
class HandClaims implements ClaimBook {
  readonly ports = new Set<number>();
  constructor(private readonly loadBalancer: string) {}
  claimedPorts(loadBalancer: string): ReadonlySet<number> {
    return loadBalancer === this.loadBalancer ? this.ports : new Set();
  }
  allClaimedPorts(): number[] {
    return [...this.ports];
  }
  setListeners(): boolean {
    return false;
  }
  lowerQuota(): void {}
}

describe('AWS load balancers: the exposer on its own, on a fake clock', () => {
  // The model answers without I/O, so tickAsync lets every pass finish before the next timer fires.
  let clock: FakeTimers.Clock;
  let model: AwsModel;
  let logged: ReturnType<typeof capturingLogger>;
  const leading: Exposer[] = [];
  beforeEach(() => {
    clock = FakeTimers.createClock(Date.now());
    logged = capturingLogger();
    model = new AwsModel(() => clock.now).install();
    model.addNlb('lb-a');
  });
  afterEach(() => {
    for (const exposer of leading.splice(0)) exposer.pause();
    model.restore();
  });

  /** An exposer as `createExposer` builds it for this configuration, started (as every replica starts it). */
  async function started(aws: Record<string, unknown>, claims: ClaimBook, httpTargetPort = 8080, router: Record<string, unknown> = {}): Promise<Exposer> {
    const exposer = createExposer({ aws: awsConfig(aws, router), marker, tcpPortRange: { start: 20000, end: 20199 }, httpTargetPort, log: logged.log, clock: controllerClock(clock), random: seeded(7) });
    exposer.bind(claims);
    await exposer.start();
    return exposer;
  }

  /** The same, leading. */
  async function lead(aws: Record<string, unknown>, claims: ClaimBook, httpTargetPort = 8080, router: Record<string, unknown> = {}): Promise<Exposer> {
    const exposer = await started(aws, claims, httpTargetPort, router);
    exposer.resume();
    leading.push(exposer);
    return exposer;
  }

  it('start-up reads only each load balancer\'s DNS name (one call each, on standbys too); the full describe waits for leadership', async () => {
    model.addNlb('lb-b');
    model.addClassic('classic-a');
    const claims = new HandClaims('lb-a');
    claims.ports.add(20001);
    const aws = { loadBalancers: [{ name: 'lb-a', type: 'nlb' }, { name: 'lb-b', type: 'nlb' }, { name: 'classic-a', type: 'classic' }], edgeInstanceIds: ['i-0123456789abcdef0'] };
    await lead(aws, claims);
    await clock.tickAsync(10_000);
    model.calls.clear();
    const standby = await started(aws, new HandClaims('lb-a'));
    assert.deepEqual(Object.fromEntries(model.calls), { 'elbv2:DescribeLoadBalancers': 2, 'elb:DescribeLoadBalancers': 1 });
    assert.match(standby.dnsName('lb-b')!, /^lb-b-[0-9a-f]+\.elb\.us-east-1\.amazonaws\.com$/);
    assert.match(standby.dnsName('classic-a')!, /^classic-a-[0-9a-f]+\.us-east-1\.elb\.amazonaws\.com$/);
  });

  /** What the exposer said at warn level or above. */
  const complaints = (): string[] => logged.lines.filter((line) => line.level >= 40).map((line) => line.msg);
  const abandonedSaid = (): boolean => logged.lines.some((line) => line.level === 20 && line.msg === 'AWS call abandoned: the leadership term ended');

  it('a call on its way when the term ends is abandoned, quietly: the rest of the change is not sent, nor tried again', async () => {
    const claims = new HandClaims('lb-a');
    claims.ports.add(20001);
    const release = model.holdAnswers('elbv2:CreateTargetGroup');
    const exposer = await lead({ loadBalancers: [{ name: 'lb-a', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0'] }, claims);
    await clock.tickAsync(1_000);
    assert.equal(model.calls.get('elbv2:CreateTargetGroup'), 1, 'the target group for 20001 is on its way');
    model.calls.clear();
    exposer.pause();
    // AWS answers after all: the answer is no one's any more.
    release();
    await clock.tickAsync(10 * minute);
    await exposer.whenIdle();
    assert.deepEqual(Object.fromEntries(model.calls), {}, 'AWS calls sent after the term ended');
    assert.equal(model.abandoned, 1, 'the call on its way was not abandoned');
    assert.deepEqual(complaints(), []);
    assert.ok(abandonedSaid(), 'the abandon is not logged at debug level');
  });

  it('a pass of an ended term sends nothing in the next one: the new term starts from a fresh describe', async () => {
    const claims = new HandClaims('lb-a');
    claims.ports.add(20001);
    claims.ports.add(20002);
    const release = model.holdAnswers('elbv2:CreateTargetGroup');
    const exposer = await lead({ loadBalancers: [{ name: 'lb-a', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0'], concurrency: 1 }, claims);
    await clock.tickAsync(1_000);
    assert.equal(model.calls.get('elbv2:CreateTargetGroup'), 1, 'the target group for 20001 is on its way, 20002\'s next');
    exposer.pause();
    // Both sessions ended under another leader; then this replica leads again.
    claims.ports.clear();
    exposer.resume();
    release();
    await clock.tickAsync(10 * minute);
    assert.equal(model.listenersCreated, 0, 'listeners the ended term planned were made in the new one');
    assert.deepEqual([model.listenerPorts('lb-a'), model.targetGroupNames()], [[], []], 'the target group AWS made for the abandoned call is found and removed');
    assert.deepEqual(complaints(), []);
  });

  it('a new term trusts no change of the last that it has not seen: a listener made then, and deleted under another leader, is made again at once', async () => {
    const claims = new HandClaims('lb-a');
    claims.ports.add(20001);
    const aws = { loadBalancers: [{ name: 'lb-a', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0'] };
    const exposer = await lead(aws, claims);
    // Made, and the term ends before a describe shows it.
    await clock.tickAsync(100);
    assert.equal(model.listenersCreated, 1);
    exposer.pause();
    // Under another leader its session ended and the listener went; a new session has the port again.
    model.deleteListenerByHand('lb-a', 20001);
    exposer.resume();
    await clock.tickAsync(1_000);
    assert.deepEqual(model.listenerPorts('lb-a'), [20001], 'the new term took the listener for one still on its way');
  });

  it('a new term waits out no backoff of the last: a listener AWS refused then is made as soon as the new term finds room', async () => {
    model.addNlb('lb-b', 1);
    model.addForeignListener('lb-b', 20005);
    const claims = new HandClaims('lb-b');
    claims.ports.add(20001);
    const exposer = await lead({ loadBalancers: [{ name: 'lb-b', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0'] }, claims);
    await clock.tickAsync(100);
    assert.equal(model.calls.get('elbv2:CreateListener'), 1, 'refused for the quota, and backing off');
    exposer.pause();
    // Room made while another leader led.
    model.deleteListenerByHand('lb-b', 20005);
    exposer.resume();
    await clock.tickAsync(1_000);
    assert.deepEqual(model.listenerPorts('lb-b'), [20001], 'the new term waited out the backoff of the last');
  });

  it('as many calls on their way as the concurrency allows share the term\'s signal without a listener-leak warning', async () => {
    const warnings: string[] = [];
    const onWarning = (warning: Error): void => {
      if (warning.name === 'MaxListenersExceededWarning') warnings.push(warning.message);
    };
    process.on('warning', onWarning);
    try {
      const claims = new HandClaims('lb-a');
      for (let port = 20001; port <= 20012; port++) claims.ports.add(port);
      const release = model.holdAnswers('elbv2:CreateTargetGroup');
      await lead({ loadBalancers: [{ name: 'lb-a', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0'], concurrency: 12 }, claims);
      await clock.tickAsync(1_000);
      assert.equal(model.calls.get('elbv2:CreateTargetGroup'), 12, 'twelve calls on their way at once');
      release();
      await clock.tickAsync(1_000);
      assert.deepEqual(warnings, []);
      assert.equal(model.listenerPorts('lb-a').length, 12);
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('moves the fixed HTTP listener to HAProxy\'s new port after a restart (router.tls turned on: 8080 → 8443), through a new target group', async () => {
    const aws = { loadBalancers: [{ name: 'lb-a', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0'], httpListener: { port: 80 } };
    const targetGroups = (): string[] => model.targetGroupNames().map((name) => `${name.replace(/^mc-[0-9a-f]+-/, '')} → ${model.targetGroup(name)!.Port}`);
    const before = await lead(aws, new HandClaims('lb-a'), 8080);
    await clock.tickAsync(10_000);
    before.pause();
    assert.deepEqual([model.listenerPorts('lb-a'), targetGroups()], [[80], ['80 → 8080']]);

    await lead(aws, new HandClaims('lb-a'), 8443);
    await clock.tickAsync(30_000);
    assert.deepEqual([model.listenerPorts('lb-a'), targetGroups()], [[80], ['80 → 8443']]);
    assert.deepEqual(model.targetGroup(model.targetGroupNames()[0]!)!.Targets, [{ Id: 'i-0123456789abcdef0', Port: 8443 }]);
  });

  it('a load balancer retired from the pool: the listeners and target groups of ours on it go, a listener of someone else\'s stays, and its sessions move', async () => {
    model.addNlb('lb-b');
    const edge = { edgeInstanceIds: ['i-0123456789abcdef0'] };
    // Two sessions' ports on lb-a, as the store holds them.
    const claimsOn = (exposer: Exposer): PortAllocator => {
      const allocator = new PortAllocator(20000, 20199, exposer.pool);
      for (const [id, port] of [['s1', 20001], ['s2', 20002]] as const) {
        allocator.observe({ id, previous: undefined, current: { id, entry: { key: id, createIndex: 1, modifyIndex: 1 }, value: { sessionId: id, hosts: [], ports: [{ service: 'tcp', port, loadBalancer: 'lb-a' }] } } });
      }
      return allocator;
    };
    const pool = [{ name: 'lb-a', type: 'nlb' }, { name: 'lb-b', type: 'nlb' }];
    const before = await lead({ loadBalancers: pool, ...edge }, new HandClaims('lb-a'));
    before.bind(claimsOn(before));
    model.addForeignListener('lb-a', 20005);
    await clock.tickAsync(10_000);
    before.pause();
    assert.deepEqual([model.listenerPorts('lb-a'), model.targetGroupNames().length], [[20001, 20002, 20005], 2]);

    const after = await lead({ loadBalancers: [{ ...pool[0], retired: true }, pool[1]], ...edge }, new HandClaims('lb-b'));
    const allocator = claimsOn(after);
    after.bind(allocator);
    assert.deepEqual(after.pool.map((member) => member.name), ['lb-b'], 'no new port goes to it');
    await clock.tickAsync(10_000);
    assert.deepEqual([model.listenerPorts('lb-a'), model.targetGroupNames()], [[20005], []]);
    assert.equal(allocator.reassign('s1', 20001), 'lb-b', 'its sessions are given a load balancer of the pool');
  });

  it('health checks ask the router\'s /readyz when its status server is reachable: an edge that cannot apply routes gets no traffic', async () => {
    model.addClassic('classic-a');
    const claims = new HandClaims('lb-a');
    claims.ports.add(20001);
    await lead({ loadBalancers: [{ name: 'lb-a', type: 'nlb' }, { name: 'classic-a', type: 'classic' }], edgeInstanceIds: ['i-0123456789abcdef0'] }, claims, 8080, { statusHost: '0.0.0.0', statusPort: 8405 });
    await clock.tickAsync(10_000);
    const group = model.targetGroup(model.targetGroupNames()[0]!)!;
    assert.deepEqual([group.HealthCheckProtocol, group.HealthCheckPort, group.HealthCheckPath], ['HTTP', '8405', '/readyz']);
    assert.equal(model.classicHealthCheck('classic-a').Target, 'HTTP:8405/readyz');
  });

  it('closes the ports of ended sessions although an operator\'s rule already opens the HTTP listener\'s port (a duplicate to AWS)', async () => {
    model.addSecurityGroup(group);
    model.addForeignRule(group, 80, 80, '0.0.0.0/0', 'http from anywhere');
    const claims = new HandClaims('lb-a');
    claims.ports.add(20001).add(20002);
    const exposer = await lead(
      { loadBalancers: [{ name: 'lb-a', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0'], httpListener: { port: 80 }, securityGroups: { groupIds: [group], cidrs: ['0.0.0.0/0'] } },
      claims,
    );
    const rules = (): string[] => model.rules(group).map((rule) => `${rule.FromPort}-${rule.ToPort} ${rule.Description === ruleMarker(marker) ? 'ours' : rule.Description}`).sort();
    await clock.tickAsync(10_000);
    assert.deepEqual(rules(), ['20001-20002 ours', '80-80 http from anywhere', '8080-8080 ours']);

    claims.ports.clear();
    exposer.claimsChanged('lb-a');
    await clock.tickAsync(10_000);
    assert.deepEqual(rules(), ['80-80 http from anywhere', '8080-8080 ours']);
  });

  it('Classic ELB: the fixed listener\'s port is ours only on the load balancer that carries it; a listener on that port elsewhere is left alone', async () => {
    model.addClassic('classic-a');
    model.addClassic('classic-b');
    model.addForeignListener('classic-b', 443);
    await lead({ loadBalancers: [{ name: 'classic-a', type: 'classic' }, { name: 'classic-b', type: 'classic' }], httpListener: { port: 443, loadBalancer: 'classic-a' } }, new HandClaims('classic-a'));
    await clock.tickAsync(10_000);
    assert.deepEqual([model.listenerPorts('classic-a'), model.listenerPorts('classic-b')], [[443], [443]]);
    assert.equal(model.calls.get('elb:DeleteLoadBalancerListeners'), undefined);
  });

  it('closes the ports of ended sessions while others keep starting: its rules never pile up to the group\'s quota', async () => {
    model.addSecurityGroup(group);
    const claims = new HandClaims('lb-a');
    const exposer = await lead({ loadBalancers: [{ name: 'lb-a', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0'], securityGroups: { groupIds: [group], cidrs: ['0.0.0.0/0'] } }, claims);
    // A session starts every second and the oldest of five ends: each change opens one range and makes another unwanted.
    let most = 0;
    for (let i = 0; i < 80; i++) {
      claims.ports.add(20000 + 2 * i);
      claims.ports.delete(20000 + 2 * (i - 5));
      exposer.claimsChanged('lb-a');
      await clock.tickAsync(1_000);
      most = Math.max(most, ourRules(model));
    }
    assert.ok(most <= 7, `${most} rules of ours at once for 5 ports in use`);
    await clock.tickAsync(5_000);
    assert.deepEqual(model.rules(group).map((rule) => `${rule.FromPort}-${rule.ToPort}`).sort(), [...claims.ports].map((port) => `${port}-${port}`).sort());
  });

  it('an NLB pass reads only the target groups its listeners use, however many the region holds; a resync finds the ones of ours nothing uses', async () => {
    const ours = (port: number): string => `${targetGroupPrefix(marker, 'lb-a')}${port}`;
    // Other teams' target groups, and one of ours that a leader made before it died without making its listener.
    for (let i = 0; i < 1000; i++) model.addTargetGroup(`other-team-${i}`, 8080);
    model.addTargetGroup(ours(20009), 20009, [{ Key: ownerTagKey, Value: marker }]);
    const claims = new HandClaims('lb-a');
    claims.ports.add(20001);
    const exposer = await lead({ loadBalancers: [{ name: 'lb-a', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0'] }, claims);
    await clock.tickAsync(10_000);
    assert.deepEqual(model.listenerPorts('lb-a'), [20001]);
    assert.deepEqual([model.targetGroup(ours(20001)) !== undefined, model.targetGroup(ours(20009))], [true, undefined], 'the leftover of ours goes at the first pass');

    // Sessions start and end.
    model.calls.clear();
    for (const port of [20002, 20003, 20004]) {
      claims.ports.add(port);
      exposer.claimsChanged('lb-a');
      await clock.tickAsync(5_000);
    }
    claims.ports.delete(20001);
    exposer.claimsChanged('lb-a');
    await clock.tickAsync(10_000);
    assert.deepEqual(model.listenerPorts('lb-a'), [20002, 20003, 20004]);
    assert.equal(model.targetGroup(ours(20001)), undefined, 'the target group of an ended session goes without waiting for a resync');
    assert.equal(model.targetGroupNames().length, 1003, 'the other teams\' target groups are left alone');
    const passes = model.calls.get('elbv2:DescribeListeners')!;
    console.log(`      1000 other target groups: ${passes} passes made ${model.callCount()} AWS calls, ${model.calls.get('elbv2:DescribeTargetGroups')} of them DescribeTargetGroups`);
    assert.equal(model.calls.get('elbv2:DescribeTargetGroups'), passes, 'one page of target groups a pass: those lb-a uses');

    // The resync reads the region's target groups (1003: three pages of 400) to find ours that nothing uses.
    model.calls.clear();
    await clock.tickAsync(300_000);
    assert.deepEqual([model.calls.get('elbv2:DescribeListeners'), model.calls.get('elbv2:DescribeTargetGroups')], [1, 3]);
  });

  it('a listener and target group of ours deleted by hand are made again at the next pass; a target group already gone is not asked to be deleted again and again', async () => {
    const ours = (port: number): string => `${targetGroupPrefix(marker, 'lb-a')}${port}`;
    const claims = new HandClaims('lb-a');
    claims.ports.add(20001).add(20002);
    const exposer = await lead({ loadBalancers: [{ name: 'lb-a', type: 'nlb' }], edgeInstanceIds: ['i-0123456789abcdef0'] }, claims);
    await clock.tickAsync(10_000);
    // An operator deletes 20001's listener and target group; then 20002's session ends, and once its listener
    // is gone the operator deletes its target group too, before Manticore does.
    model.deleteListenerByHand('lb-a', 20001);
    model.deleteTargetGroupByHand(ours(20001));
    claims.ports.delete(20002);
    exposer.claimsChanged('lb-a');
    await clock.tickAsync(1_000);
    assert.ok(!model.listenerPorts('lb-a').includes(20002), 'the pass ran: 20002\'s listener is deleted');
    model.deleteTargetGroupByHand(ours(20002));
    model.calls.clear();
    await clock.tickAsync(240_000);
    assert.deepEqual([model.listenerPorts('lb-a'), model.targetGroupNames()], [[20001], [ours(20001)]], '20001 exposed again, before the resync');
    assert.deepEqual(model.targetGroup(ours(20001))!.Targets, [{ Id: 'i-0123456789abcdef0', Port: 20001 }]);
    assert.ok((model.calls.get('elbv2:DeleteTargetGroup') ?? 0) <= 1, `the target group gone already is asked for ${model.calls.get('elbv2:DeleteTargetGroup')} times, not once at most`);
  });
});

describe('AWS model: refusals as the SDK v3 clients raise them', () => {
  it('raises each code as the real client does from the error response AWS sends (same class, name and status)', async () => {
    // The next answer of a loopback server that stands in for AWS (calls are made one at a time).
    let body = '';
    const server = http.createServer((request, response) => {
      request.resume().on('end', () => response.writeHead(400, { 'content-type': 'text/xml' }).end(body));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const settings = { endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, region: 'us-east-1', credentials: { accessKeyId: 'a', secretAccessKey: 'b' }, maxAttempts: 1 };
      const elbv2 = new ElasticLoadBalancingV2Client(settings);
      const elb = new ElasticLoadBalancingClient(settings);
      const ec2 = new EC2Client(settings);
      const calls: Record<AwsService, () => Promise<unknown>> = {
        elbv2: () => elbv2.send(new CreateListenerCommand({ LoadBalancerArn: 'arn', DefaultActions: [] })),
        elb: () => elb.send(new CreateLoadBalancerListenersCommand({ LoadBalancerName: 'lb', Listeners: [] })),
        ec2: () => ec2.send(new AuthorizeSecurityGroupIngressCommand({ GroupId: 'sg' })),
      };
      const cases: Array<[AwsService, string]> = [
        ['elbv2', 'TooManyListeners'],
        ['elbv2', 'DuplicateListener'],
        ['elbv2', 'DuplicateTargetGroupName'],
        ['elbv2', 'ResourceInUse'],
        ['elbv2', 'Throttling'],
        ['elb', 'TooManyListeners'],
        ['elb', 'DuplicateListener'],
        ['elb', 'LoadBalancerNotFound'],
        ['ec2', 'InvalidPermission.Duplicate'],
        ['ec2', 'RequestLimitExceeded'],
      ];
      for (const [service, code] of cases) {
        const error = `<Error><Type>Sender</Type><Code>${code}</Code><Message>refused</Message></Error>`;
        body = service === 'ec2' ? `<Response><Errors>${error}</Errors><RequestID>r</RequestID></Response>` : `<ErrorResponse>${error}<RequestId>r</RequestId></ErrorResponse>`;
        const real = (await calls[service]().then(
          () => assert.fail(`${service} ${code}: expected an error`),
          (thrown: unknown) => thrown,
        )) as Error & { $metadata: { httpStatusCode?: number } };
        const modelled = sdkError(service, code, 'refused', 400) as Error & { $metadata: { httpStatusCode?: number } };
        assert.equal(Object.getPrototypeOf(modelled), Object.getPrototypeOf(real), `${service} ${code}: ${modelled.constructor.name}, not ${real.constructor.name}`);
        assert.deepEqual([modelled.name, modelled.message, modelled.$metadata.httpStatusCode], [real.name, real.message, real.$metadata.httpStatusCode], `${service} ${code}`);
      }
    } finally {
      server.close();
    }
  });

  it('honours an abort signal as the real client does: nothing sent once it fired, AbortError while the answer is on its way, and none of the SDK\'s own retries after it', async () => {
    let requests = 0;
    let answer: (request: http.IncomingMessage, response: http.ServerResponse) => void = () => undefined;
    const server = http.createServer((request, response) => {
      requests += 1;
      answer(request, response);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const describe = new DescribeLoadBalancersCommand({ Names: ['lb-a'] });
    const raised = (call: Promise<unknown>): Promise<Error & { $metadata?: object }> => call.then(() => assert.fail('expected an error'), (thrown: Error & { $metadata?: object }) => thrown);
    const shape = (error: Error & { $metadata?: object }): unknown[] => [error.name, error.message, (error.cause as Error | undefined)?.name, error.$metadata];
    const fired = new AbortController();
    fired.abort();
    let real: { before: Error; onTheWay: Error };
    try {
      // The SDK's default of 3 attempts.
      const client = new ElasticLoadBalancingV2Client({ endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, region: 'us-east-1', credentials: { accessKeyId: 'a', secretAccessKey: 'b' } });
      const before = await raised(client.send(describe, { abortSignal: fired.signal }));
      assert.equal(requests, 0, 'sent although its signal had fired');
      const onTheWay = new AbortController();
      answer = () => onTheWay.abort();
      real = { before, onTheWay: await raised(client.send(describe, { abortSignal: onTheWay.signal })) };
      assert.equal(requests, 1);

      // Aborted once a throttled attempt failed, before the SDK tries again: its error, and no other attempt.
      requests = 0;
      const betweenAttempts = new AbortController();
      answer = (request, response) =>
        request.resume().on('end', () => response.writeHead(400, { 'content-type': 'text/xml' }).end('<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>r</RequestId></ErrorResponse>'));
      client.middlewareStack.add(
        (next) => async (args) => {
          try {
            return await next(args);
          } catch (error) {
            betweenAttempts.abort();
            throw error;
          }
        },
        { step: 'deserialize', priority: 'high', name: 'abortOnFailure' },
      );
      assert.equal((await raised(client.send(describe, { abortSignal: betweenAttempts.signal }))).name, 'Throttling');
      assert.equal(requests, 1, 'the SDK tried again after the abort');
      client.destroy();
    } finally {
      server.closeAllConnections();
      server.close();
    }

    const model = new AwsModel(() => 0).install();
    try {
      model.addNlb('lb-a');
      const client = new ElasticLoadBalancingV2Client({ region: 'us-east-1' });
      const received = (): number => model.calls.get('elbv2:DescribeLoadBalancers') ?? 0;
      const before = await raised(client.send(describe, { abortSignal: fired.signal }));
      assert.equal(received(), 0, 'the model received a call whose signal had fired');
      const release = model.holdAnswers('elbv2:DescribeLoadBalancers');
      const onTheWay = new AbortController();
      const call = client.send(describe, { abortSignal: onTheWay.signal });
      onTheWay.abort();
      const modelled = { before, onTheWay: await raised(call) };
      release();
      assert.equal(received(), 1);
      assert.equal(model.abandoned, 2);
      assert.deepEqual(shape(modelled.before), shape(real.before));
      assert.deepEqual(shape(modelled.onTheWay), shape(real.onTheWay));
    } finally {
      model.restore();
    }
  });

  it('DescribeTargetGroups filters as AWS does: by a load balancer\'s listeners, or by names that must all exist; pages of 1 to 400', async () => {
    const model = new AwsModel(() => Date.now()).install();
    try {
      model.addNlb('lb-a');
      for (const name of ['web', 'other-team-a', 'other-team-b']) model.addTargetGroup(name, 8080);
      const client = new ElasticLoadBalancingV2Client({ region: 'us-east-1' });
      const names = async (input: DescribeTargetGroupsCommandInput): Promise<string[]> => ((await client.send(new DescribeTargetGroupsCommand(input))).TargetGroups ?? []).map((found) => found.TargetGroupName!);
      const balancer = (await client.send(new DescribeLoadBalancersCommand({ Names: ['lb-a'] }))).LoadBalancers![0]!.LoadBalancerArn!;
      const [web] = (await client.send(new DescribeTargetGroupsCommand({ Names: ['web'] }))).TargetGroups!;
      await client.send(new CreateListenerCommand({ LoadBalancerArn: balancer, Port: 80, Protocol: 'TCP', DefaultActions: [{ Type: 'forward', TargetGroupArn: web!.TargetGroupArn! }] }));

      assert.deepEqual(await names({ LoadBalancerArn: balancer }), ['web'], 'only the target groups its listeners use');
      assert.deepEqual(await names({ Names: ['other-team-b', 'web'] }), ['other-team-b', 'web']);
      await assert.rejects(names({ Names: ['other-team-a', 'nobody'] }), { name: 'TargetGroupNotFoundException' });
      await assert.rejects(names({ Names: ['web'], LoadBalancerArn: balancer }), { name: 'ValidationError' });
      await assert.rejects(names({ PageSize: 401 }), { name: 'ValidationError' });
      const first = await client.send(new DescribeTargetGroupsCommand({ PageSize: 2 }));
      const rest = await client.send(new DescribeTargetGroupsCommand({ PageSize: 2, Marker: first.NextMarker! }));
      assert.deepEqual([first.TargetGroups!.length, rest.TargetGroups!.length, rest.NextMarker], [2, 1, undefined]);
      assert.deepEqual(first.TargetGroups![0]!.LoadBalancerArns, [balancer]);
    } finally {
      model.restore();
    }
  });
});

describe('AWS load balancers: temporary files', () => {
  it('leaves none of its temporary directories behind', () => {
    const left = fs.readdirSync(os.tmpdir()).filter((name) => name.startsWith('manticore-aws-') && !tempDirsBefore.has(name));
    assert.deepEqual(left, []);
  });
});
