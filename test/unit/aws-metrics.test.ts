import assert from 'node:assert/strict';
import { DescribeLoadBalancersCommand, ElasticLoadBalancingV2Client } from '@aws-sdk/client-elastic-load-balancing-v2';
import type { Counter } from 'prom-client';
import { awsOutcome, instrumentAwsClient, type MiddlewareHost } from '../../controller/metrics/aws.js';
import { registry } from '../../controller/metrics/metrics.js';
import { abortError, sdkError, type AwsService } from '../fakes/aws.js';

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
    // Throttling is its own outcome whatever the service calls it and whatever HTTP status carries it.
    const throttled: Array<[AwsService, string, number]> = [
      ['elbv2', 'Throttling', 400],
      ['elb', 'Throttling', 400],
      ['ec2', 'RequestLimitExceeded', 503],
      ['elbv2', 'ThrottlingException', 400],
      ['elbv2', 'TooManyRequestsException', 400],
      ['elbv2', 'ThrottledException', 400],
      ['elbv2', 'SlowDown', 503],
      ['elbv2', 'AnyCode', 429],
    ];
    for (const [service, code, status] of throttled) assert.equal(awsOutcome(sdkError(service, code, 'Rate exceeded', status)), 'throttled', `${service} ${code} ${status}`);
    assert.equal(awsOutcome(sdkError('elbv2', 'TooManyListeners', 'x', 400)), 'client_error', 'a quota is no throttling');
    assert.equal(awsOutcome({ $fault: 'client', $metadata: { httpStatusCode: 400 } }), 'client_error');
    assert.equal(awsOutcome({ $fault: 'server', $metadata: { httpStatusCode: 503 } }), 'server_error');
    assert.equal(awsOutcome({ $metadata: {} }), 'unreachable');
    const abandoned = new AbortController();
    abandoned.abort();
    assert.equal(awsOutcome(abortError(abandoned.signal)), 'aborted', 'a call abandoned by its caller');
  });
});
