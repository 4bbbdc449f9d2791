import { EC2Client } from '@aws-sdk/client-ec2';
import { ElasticLoadBalancingClient } from '@aws-sdk/client-elastic-load-balancing';
import { ElasticLoadBalancingV2Client } from '@aws-sdk/client-elastic-load-balancing-v2';
import type { AwsConfig } from '../config/config.js';
import { instrumentAwsClient, type MiddlewareHost } from '../metrics/aws.js';
import { systemClock, type Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import { ClassicElbProvider } from './classic-elb.js';
import { Exposer } from './exposer.js';
import { NlbProvider } from './nlb.js';
import type { HealthCheckSpec, LoadBalancerProvider } from './provider.js';
import { SecurityGroupRules } from './security-groups.js';

export interface ExposerSettings {
  readonly aws: AwsConfig;
  /** Marks what this installation creates (its store prefix): tags on NLB resources, rule descriptions. */
  readonly marker: string;
  readonly tcpPortRange: { readonly start: number; readonly end: number };
  /** HAProxy's HTTP port on the edge instances, where the fixed HTTP listener forwards. */
  readonly httpTargetPort: number;
  readonly log: Logger;
  readonly clock?: Clock;
  /** Random numbers for backoff jitter (tests make them repeatable). */
  readonly random?: () => number;
}

/** The client, with its calls counted in the backend metrics. */
function instrumented<C>(client: C): C {
  instrumentAwsClient(client as unknown as MiddlewareHost);
  return client;
}

/**
 * The exposer for the configured pool, over the AWS SDK v3 clients with the default credential chain
 * and region (or the configured region). Nothing is called until `start()`.
 */
export function createExposer(settings: ExposerSettings): Exposer {
  const { aws, marker, tcpPortRange, httpTargetPort } = settings;
  const region = aws.region === undefined ? {} : { region: aws.region };
  const log = settings.log.child({ component: 'aws' });
  const healthCheck: HealthCheckSpec = aws.healthCheck;
  let elbv2: ElasticLoadBalancingV2Client | undefined;
  let elb: ElasticLoadBalancingClient | undefined;
  // The fixed listener's port is ours only where it listens: the same port on another load balancer is someone else's.
  const ownsClassicPort = (balancer: string, port: number): boolean =>
    (port >= tcpPortRange.start && port <= tcpPortRange.end) || (port === aws.httpListener?.port && balancer === aws.httpListener.loadBalancer);
  const pool = aws.loadBalancers.map((balancer) => {
    let provider: LoadBalancerProvider;
    if (balancer.type === 'nlb') {
      elbv2 ??= instrumented(new ElasticLoadBalancingV2Client(region));
      provider = new NlbProvider({ client: elbv2, name: balancer.name, marker, instanceIds: aws.edgeInstanceIds ?? [], healthCheck });
    } else {
      elb ??= instrumented(new ElasticLoadBalancingClient(region));
      provider = new ClassicElbProvider({ client: elb, name: balancer.name, ownsPort: (port) => ownsClassicPort(balancer.name, port), healthCheck });
    }
    return { provider, listenerQuota: balancer.listenerQuota, retired: balancer.retired, ...(balancer.dnsName === undefined ? {} : { dnsName: balancer.dnsName }) };
  });
  const ec2 = aws.securityGroups.groupIds.length > 0 ? instrumented(new EC2Client(region)) : undefined;
  const http = aws.httpListener;
  return new Exposer({
    pool,
    securityGroups: aws.securityGroups.groupIds.map((groupId) => new SecurityGroupRules(ec2!, groupId, marker)),
    cidrs: aws.securityGroups.cidrs,
    maxRanges: aws.securityGroups.maxRanges,
    ...(http === undefined
      ? {}
      : {
          httpListener: {
            loadBalancer: http.loadBalancer,
            spec: {
              port: http.port,
              protocol: http.certificateArn === undefined ? 'TCP' : 'TLS',
              targetPort: httpTargetPort,
              ...(http.certificateArn === undefined ? {} : { certificateArn: http.certificateArn }),
            },
          },
        }),
    ...(aws.tcpTls === undefined ? {} : { tcpCertificateArn: aws.tcpTls.certificateArn }),
    clock: settings.clock ?? systemClock,
    log,
    resyncMs: aws.resyncSeconds * 1000,
    confirmMs: aws.confirmSeconds * 1000,
    batchMs: 250,
    expectationTimeoutMs: 60_000,
    retryBaseMs: aws.retryBaseMs,
    retryMaxMs: aws.retryMaxMs,
    concurrency: aws.concurrency,
    ...(settings.random === undefined ? {} : { random: settings.random }),
  });
}
