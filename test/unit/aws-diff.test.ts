import assert from 'node:assert/strict';
import type { RouteRecord } from '../../controller/api/types.js';
import { PortAllocator } from '../../controller/controller/claims.js';
import type { CachedRecord } from '../../controller/controller/informer.js';
import { closableNow, compactRanges, desiredRules, diffListeners, diffRules, type ListenerAction } from '../../controller/loadbalancer/diff.js';
import { classify, type FailureKind, type ListenerSpec, type LoadBalancerSnapshot, type ObservedListener } from '../../controller/loadbalancer/provider.js';
import { sdkError, type AwsService } from '../fakes/aws.js';

const tcp = (port: number): ListenerSpec => ({ port, protocol: 'TCP', targetPort: port });
const seen = (port: number, owned: boolean, change: Partial<ObservedListener> = {}): ObservedListener => ({ ...tcp(port), id: `arn-${port}`, owned, ...change });

/** Helpers are [port, id, target port (by default the port, as for a session's)]. */
function snapshot(listeners: ObservedListener[], helpers: Array<[number, string, number?]> = [], drift: string[] = []): LoadBalancerSnapshot {
  return {
    dnsName: 'lb.example',
    listeners: new Map(listeners.map((listener) => [listener.port, listener])),
    helpers: new Map(helpers.map(([port, id, targetPort = port]) => [port, { id, targetPort }])),
    healthCheckDrift: drift,
  };
}

const summary = (action: ListenerAction): string =>
  action.kind === 'create' ? `create ${action.spec.port}` : action.kind === 'delete' ? `delete ${action.listener.port}` : `${action.kind} ${action.id}`;

describe('AWS: the listener diff', () => {
  it('creates what is missing, deletes ours that are not wanted, and never touches a listener it did not create', () => {
    const desired = new Map([20001, 20002, 20003].map((port) => [port, tcp(port)]));
    const diff = diffListeners(desired, snapshot([seen(20002, true), seen(20003, false), seen(20009, true), seen(443, false)]));
    assert.deepEqual(diff.actions.map(summary), ['create 20001', 'delete 20009']);
    assert.deepEqual(diff.conflicts, [20003]);
  });

  it('replaces a listener of ours that was changed (protocol, target, certificate): deleted now, created once that shows', () => {
    const desired = new Map([[20001, { ...tcp(20001), protocol: 'TLS' as const, certificateArn: 'arn:cert' }]]);
    assert.deepEqual(diffListeners(desired, snapshot([seen(20001, true)])).actions.map((action) => action.kind), ['delete']);
    assert.deepEqual(diffListeners(desired, snapshot([seen(20001, true, { protocol: 'TLS', certificateArn: 'arn:cert' })])).actions, []);
  });

  it('deletes target groups of ours that serve nothing wanted, once no listener of ours uses them, and repairs drifted health checks', () => {
    const desired = new Map([[20001, tcp(20001)]]);
    const diff = diffListeners(desired, snapshot([seen(20001, true), seen(20002, true)], [[20001, 'tg-1'], [20002, 'tg-2'], [20003, 'tg-3']], ['tg-1']));
    assert.deepEqual(diff.actions.map(summary), ['delete 20002', 'deleteHelper tg-3', 'repairHealthCheck tg-1']);
  });

  it('moves a listener to a new target port through a new target group: the old one (same name) goes first, once no listener of ours uses it', () => {
    // The fixed HTTP listener on 80, toward HAProxy's HTTPS port 8443 now that router.tls is on (8080 before).
    const desired = new Map([[80, { port: 80, protocol: 'TCP' as const, targetPort: 8443 }]]);
    const steps = [
      snapshot([seen(80, true, { targetPort: 8080 })], [[80, 'tg-8080', 8080]]),
      snapshot([], [[80, 'tg-8080', 8080]]),
      snapshot([]),
      snapshot([seen(80, true, { targetPort: 8443 })], [[80, 'tg-8443', 8443]]),
    ];
    assert.deepEqual(
      steps.map((step) => diffListeners(desired, step).actions.map(summary)),
      [['delete 80'], ['deleteHelper tg-8080'], ['create 80'], []],
    );
  });
});

describe('AWS: security-group ranges and rules', () => {
  it('compacts ports into runs, merging across the smallest gaps beyond the budget', () => {
    assert.deepEqual(compactRanges([5, 1, 2, 3, 9, 10, 30], 10), [{ from: 1, to: 3 }, { from: 5, to: 5 }, { from: 9, to: 10 }, { from: 30, to: 30 }]);
    assert.deepEqual(compactRanges([1, 2, 3, 5, 9, 10, 30], 2), [{ from: 1, to: 10 }, { from: 30, to: 30 }]);
    assert.deepEqual(compactRanges([1, 30, 7], 1), [{ from: 1, to: 30 }]);
    assert.deepEqual(compactRanges([], 5), []);
  });

  it('authorizes missing rules and revokes ours that are no longer wanted (or doubled)', () => {
    const desired = desiredRules([{ from: 1, to: 3 }], ['0.0.0.0/0', '::/0']);
    const diff = diffRules(desired, [
      { id: 'a', fromPort: 1, toPort: 3, cidr: '0.0.0.0/0' },
      { id: 'b', fromPort: 1, toPort: 3, cidr: '0.0.0.0/0' },
      { id: 'c', fromPort: 7, toPort: 7, cidr: '::/0' },
    ], []);
    assert.deepEqual(diff.authorize, [{ fromPort: 1, toPort: 3, cidr: '::/0' }]);
    assert.deepEqual(diff.revoke.map((rule) => rule.id), ['b', 'c']);
  });

  it('takes a wanted rule that someone else made identically as open: AWS would refuse ours as a duplicate', () => {
    // An operator opened the HTTP listener's port, and 0-65535 to the office; the sessions on 20001-20002 ended.
    const desired = desiredRules([{ from: 80, to: 80 }, { from: 8080, to: 8080 }], ['0.0.0.0/0']);
    const others = [
      { fromPort: 80, toPort: 80, cidr: '0.0.0.0/0' },
      { fromPort: 0, toPort: 65535, cidr: '10.0.0.0/8' },
      { fromPort: 0, toPort: 65535, cidr: '0.0.0.0/0' },
    ];
    const diff = diffRules(desired, [{ id: 'a', fromPort: 20001, toPort: 20002, cidr: '0.0.0.0/0' }], others);
    // A wider rule is no duplicate: AWS adds ours for 8080.
    assert.deepEqual(diff.authorize, [{ fromPort: 8080, toPort: 8080, cidr: '0.0.0.0/0' }]);
    assert.deepEqual(diff.revoke.map((rule) => rule.id), ['a']);
  });
});

describe('AWS: error classification', () => {
  it('closes a rule of ours once every port in use it opens is open through a rule that stays, for the same CIDR', () => {
    const rule = (id: string, fromPort: number, toPort: number, cidr = '0.0.0.0/0') => ({ id, fromPort, toPort, cidr });
    // 20001-20003 makes way for 20001 and 20003 (20002 ended); 20003's new rule does not show yet.
    const observed = [rule('old', 20001, 20003), rule('new', 20001, 20001), rule('gone', 20005, 20005), rule('v6', 20001, 20003, '::/0')];
    const revoke = [observed[0]!, observed[2]!];
    assert.deepEqual(closableNow(revoke, observed, [], [20001, 20003]).map((closable) => closable.id), ['gone']);
    assert.deepEqual(closableNow(revoke, observed, [{ fromPort: 20003, toPort: 20003, cidr: '0.0.0.0/0' }], [20001, 20003]).map((closable) => closable.id), ['old', 'gone']);
  });

  it('tells throttling, transient, quota and already-done errors apart, named as each SDK v3 client raises them', () => {
    const cases: Array<[AwsService, string, number, FailureKind]> = [
      ['elbv2', 'Throttling', 400, 'throttled'],
      ['elbv2', 'PriorRequestNotComplete', 400, 'throttled'],
      ['ec2', 'RequestLimitExceeded', 503, 'throttled'],
      ['elbv2', 'ThrottlingException', 400, 'throttled'],
      ['elbv2', 'TooManyRequestsException', 400, 'throttled'],
      ['elbv2', 'ThrottledException', 400, 'throttled'],
      ['elbv2', 'BandwidthLimitExceeded', 400, 'throttled'],
      ['elbv2', 'InternalFailure', 500, 'transient'],
      ['ec2', 'ServiceUnavailable', 503, 'transient'],
      ['elbv2', 'TooManyListeners', 400, 'quota'],
      ['elbv2', 'TooManyTargetGroups', 400, 'quota'],
      ['elb', 'TooManyListeners', 400, 'quota'],
      ['ec2', 'RulesPerSecurityGroupLimitExceeded', 400, 'quota'],
      ['elbv2', 'DuplicateListener', 400, 'done'],
      ['elbv2', 'ListenerNotFound', 400, 'done'],
      ['elb', 'DuplicateListener', 400, 'done'],
      ['ec2', 'InvalidPermission.Duplicate', 400, 'done'],
      ['elbv2', 'DuplicateTargetGroupName', 400, 'error'],
      ['elb', 'LoadBalancerNotFound', 400, 'error'],
      ['ec2', 'AccessDenied', 403, 'error'],
    ];
    for (const [service, code, status, kind] of cases) {
      const error = sdkError(service, code, 'x', status);
      assert.equal(classify(error), kind, `${service} ${code}, raised as ${error.name}`);
    }
    assert.equal(sdkError('elbv2', 'TooManyListeners', 'x', 400).name, 'TooManyListenersException');
  });
});

describe('port allocator with a load-balancer pool', () => {
  const claim = (id: string, port: number, loadBalancer?: string): RouteRecord => ({ sessionId: id, hosts: [], ports: [{ service: 'tcp', port, ...(loadBalancer ? { loadBalancer } : {}) }] });
  const cached = (id: string, value: RouteRecord | undefined): CachedRecord<RouteRecord> | undefined => value && { id, entry: { key: id, createIndex: 1, modifyIndex: 1 }, value };
  const observe = (allocator: PortAllocator, id: string, record: RouteRecord | undefined, previous?: RouteRecord): void =>
    allocator.observe({ id, previous: cached(id, previous), current: cached(id, record) });

  /** An allocator whose load balancers were described with no listener. */
  const described = (start: number, end: number, pool: Array<{ name: string; listenerQuota: number }>): PortAllocator => {
    const allocator = new PortAllocator(start, end, pool);
    for (const { name } of pool) allocator.setListeners(name, new Set());
    return allocator;
  };

  it('hands out ports only with a load balancer below its quota, spreading over the pool, and says why when full', () => {
    const allocator = described(20000, 20099, [{ name: 'a', listenerQuota: 2 }, { name: 'b', listenerQuota: 2 }]);
    const got = ['s1', 's2', 's3', 's4'].map((id) => allocator.reserve(id)!);
    assert.deepEqual(got.map((assignment) => assignment.loadBalancer).sort(), ['a', 'a', 'b', 'b']);
    assert.equal(allocator.reserve('s5'), undefined);
    assert.deepEqual(allocator.room(), { free: 0, reason: 'NoListenerCapacity', message: 'every load balancer is at its listener quota (a 2, b 2)' });
    allocator.release('s1', got[0]!.port);
    assert.equal(allocator.room().free, 1);
  });

  it('counts listeners it did not make against the quota and never puts a port where one already listens', () => {
    const allocator = described(20000, 20001, [{ name: 'a', listenerQuota: 3 }, { name: 'b', listenerQuota: 1 }]);
    allocator.setListeners('a', new Set([443, 20000]));
    observe(allocator, 'x', claim('x', 20001, 'b'));
    assert.equal(allocator.room().free, 0, 'the one port not claimed is listened on');
    assert.equal(allocator.reserve('y'), undefined, '20000 is taken on a by someone else, and b is full');
    allocator.setListeners('a', new Set([443]));
    assert.deepEqual(allocator.reserve('y'), { port: 20000, loadBalancer: 'a' });
  });

  it('hands out a port freed by an ended session only once no load balancer of the pool listens on it any more', () => {
    const allocator = described(20000, 20000, [{ name: 'a', listenerQuota: 2 }, { name: 'b', listenerQuota: 2 }]);
    observe(allocator, 'x', claim('x', 20000, 'a'));
    allocator.setListeners('a', new Set([20000]));
    observe(allocator, 'x', undefined, claim('x', 20000, 'a'));
    // a's listener on 20000, still being deleted, forwards to HAProxy's port 20000, which would route it to the new owner.
    assert.equal(allocator.reserve('y'), undefined, 'the old address still reaches the port');
    assert.deepEqual(allocator.room(), {
      free: 0,
      reason: 'NoFreePort',
      message: "all 1 public TCP ports are in use (1 of them by an ended session's listener still being removed)",
    });
    allocator.setListeners('a', new Set());
    assert.equal(allocator.reserve('y')?.port, 20000);
  });

  it('gives a load balancer no port before a describe shows its listeners, and says when one may make room', () => {
    const allocator = new PortAllocator(20000, 20009, [{ name: 'a', listenerQuota: 2 }]);
    assert.equal(allocator.reserve('x'), undefined, 'its listeners (a fixed one, those from before a restart) are not known yet');
    assert.equal(allocator.setListeners('a', new Set([80])), true, 'the first sighting');
    assert.equal(allocator.reserve('x')?.loadBalancer, 'a');
    assert.equal(allocator.reserve('y'), undefined, 'the fixed listener holds the other slot');
    assert.equal(allocator.setListeners('a', new Set([80, 443])), false);
    assert.equal(allocator.setListeners('a', new Set([80])), true, 'a listener gone');
  });

  it('learns assignments from the routes cache, and reassigns a port claimed without a load balancer', () => {
    const allocator = described(20000, 20009, [{ name: 'a', listenerQuota: 1 }, { name: 'b', listenerQuota: 1 }]);
    observe(allocator, 'x', claim('x', 20003, 'a'));
    assert.deepEqual([...allocator.claimedPorts('a')], [20003]);
    observe(allocator, 'y', claim('y', 20004));
    assert.equal(allocator.reassign('y', 20004), 'b');
    assert.equal(allocator.reassign('z', 20005), undefined, 'only the owner of a port reassigns it');
    observe(allocator, 'x', undefined, claim('x', 20003, 'a'));
    assert.deepEqual([...allocator.claimedPorts('a')], []);
  });
});
