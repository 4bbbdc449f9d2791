import assert from 'node:assert/strict';
import { DescribeLoadBalancersCommand, ElasticLoadBalancingV2Client } from '@aws-sdk/client-elastic-load-balancing-v2';
import type { Counter } from 'prom-client';
import { awsOutcome, instrumentAwsClient, type MiddlewareHost } from '../../controller/metrics/aws.js';
import { registry } from '../../controller/metrics/metrics.js';

async function awsCalls(operation: string, outcome: string): Promise<number> {
  const counter = registry.getSingleMetric('manticore_backend_requests_total') as Counter;
  const { values } = await counter.get();
  return values.find((value) => value.labels.backend === 'aws' && value.labels.operation === operation && value.labels.outcome === outcome)?.value ?? 0;
}

describe('AWS calls in the metrics', () => {
  it('counts each command a real SDK v3 client sends, by name and outcome', async () => {
    const client = new ElasticLoadBalancingV2Client({
      region: 'us-east-1',
      credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'not-a-secret' },
      maxAttempts: 1,
      // No network in tests: the request fails where the connection would be made.
      requestHandler: { handle: async () => Promise.reject(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })) },
    });
    instrumentAwsClient(client as unknown as MiddlewareHost);
    const before = await awsCalls('DescribeLoadBalancersCommand', 'unreachable');
    await assert.rejects(client.send(new DescribeLoadBalancersCommand({ Names: ['edge'] })), /ECONNREFUSED/);
    assert.equal(await awsCalls('DescribeLoadBalancersCommand', 'unreachable'), before + 1);
    client.destroy();
  });

  it('tells throttling and other refusals from AWS failing and from no answer', () => {
    assert.equal(awsOutcome({ $fault: 'client', $metadata: { httpStatusCode: 400 } }), 'client_error');
    assert.equal(awsOutcome({ $fault: 'server', $metadata: { httpStatusCode: 503 } }), 'server_error');
    assert.equal(awsOutcome({ $metadata: {} }), 'unreachable');
  });
});
