import assert from 'node:assert/strict';
import { DescribeLoadBalancersCommand, ElasticLoadBalancingV2Client } from '@aws-sdk/client-elastic-load-balancing-v2';
import * as FakeTimers from '@sinonjs/fake-timers';
import { mockClient } from 'aws-sdk-client-mock';
import sinon from 'sinon';
import { Exposer } from '../../controller/loadbalancer/exposer.js';
import { NlbProvider } from '../../controller/loadbalancer/nlb.js';
import { sdkError } from '../fakes/aws.js';
import { controllerClock, testLog } from '../support/controller-harness.js';

describe('AWS exposer start-up', () => {
  it('replicas restarted together retry a throttled start-up each at its own random time within the backoff, not in step', async () => {
    const clock = FakeTimers.createClock(0);
    // AWS throttles each replica's first two reads, as when a rollout restarts them all at once.
    const calls = new Map<unknown, number[]>();
    const elbv2 = mockClient(ElasticLoadBalancingV2Client);
    elbv2.on(DescribeLoadBalancersCommand).callsFake(async (_input: unknown, getClient: () => unknown) => {
      const made = calls.get(getClient()) ?? [];
      calls.set(getClient(), [...made, clock.now]);
      if (made.length < 2) throw sdkError('elbv2', 'Throttling', 'Rate exceeded', 400);
      return { LoadBalancers: [{ LoadBalancerArn: 'arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/lb-a/1', DNSName: 'lb-a.elb.example.com', Type: 'network', VpcId: 'vpc-1' }] };
    });
    try {
      const draws = [0.1, 0.5, 0.9];
      const clients = draws.map(() => new ElasticLoadBalancingV2Client({ region: 'us-east-1' }));
      const replicas = draws.map(
        (draw, n) =>
          new Exposer({
            pool: [{ provider: new NlbProvider({ client: clients[n]!, name: 'lb-a', marker: 'manticore/', instanceIds: [], healthCheck: { port: 8080, path: '/haproxy-health', intervalSeconds: 10, timeoutSeconds: 5, healthyThreshold: 3, unhealthyThreshold: 3 } }), listenerQuota: 50 }],
            securityGroups: [],
            cidrs: [],
            maxRanges: 20,
            clock: controllerClock(clock),
            log: testLog,
            resyncMs: 300_000,
            confirmMs: 2_000,
            batchMs: 250,
            expectationTimeoutMs: 60_000,
            retryBaseMs: 1_000,
            retryMaxMs: 60_000,
            concurrency: 4,
            random: sinon.stub<[], number>().returns(draw),
          }),
      );
      const started = Promise.all(replicas.map((replica) => replica.start()));
      await clock.tickAsync(10_000);
      await started;
      // Full jitter: the n-th retry waits a draw of [0, 1 s × 2^(n-1)).
      assert.deepEqual(
        clients.map((client) => calls.get(client)),
        [
          [0, 100, 300],
          [0, 500, 1_500],
          [0, 900, 2_700],
        ],
      );
      assert.deepEqual(
        replicas.map((replica) => replica.dnsName('lb-a')),
        draws.map(() => 'lb-a.elb.example.com'),
      );
    } finally {
      elbv2.restore();
    }
  });
});
