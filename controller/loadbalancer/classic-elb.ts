import {
  ConfigureHealthCheckCommand,
  CreateLoadBalancerListenersCommand,
  DeleteLoadBalancerListenersCommand,
  DescribeLoadBalancersCommand,
  type ElasticLoadBalancingClient,
  type HealthCheck,
  type LoadBalancerDescription,
} from '@aws-sdk/client-elastic-load-balancing';
import type { HealthCheckSpec, ListenerSpec, LoadBalancerProvider, LoadBalancerSnapshot, ObservedListener } from './provider.js';

export interface ClassicElbOptions {
  readonly client: ElasticLoadBalancingClient;
  readonly name: string;
  /**
   * Classic listeners carry no tags, so ownership is by port: the public TCP range on the load balancers
   * it is given, and the fixed listener's port on the one carrying it; any other listener is never touched.
   */
  readonly ownsPort: (port: number) => boolean;
  readonly healthCheck: HealthCheckSpec;
}

/**
 * A Classic ELB: a listener per port to the same port of the instances registered with the load balancer
 * (the HAProxy edge nodes, registered by the operator), and one health check for the whole load balancer.
 * Every listener is TCP (SSL with a certificate): a Classic HTTP listener would not pass websocket upgrades.
 */
export class ClassicElbProvider implements LoadBalancerProvider {
  readonly type = 'classic' as const;
  readonly name: string;

  constructor(private readonly options: ClassicElbOptions) {
    this.name = options.name;
  }

  async dnsName(): Promise<string> {
    return (await this.find()).DNSName!;
  }

  async describe(_resync: boolean, term: AbortSignal): Promise<LoadBalancerSnapshot> {
    const found = await this.find(term);
    const listeners = new Map<number, ObservedListener>();
    for (const { Listener: listener } of found.ListenerDescriptions ?? []) {
      if (listener?.LoadBalancerPort === undefined) continue;
      const port = listener.LoadBalancerPort;
      const tls = listener.Protocol?.toUpperCase() === 'SSL' || listener.Protocol?.toUpperCase() === 'HTTPS';
      listeners.set(port, {
        id: String(port),
        port,
        protocol: tls ? 'TLS' : 'TCP',
        // An HTTP(S) listener is not the TCP passthrough Manticore wants: seen as a different target, it is replaced.
        targetPort: listener.InstanceProtocol?.toUpperCase() === 'TCP' ? (listener.InstancePort ?? 0) : 0,
        ...(listener.SSLCertificateId === undefined ? {} : { certificateArn: listener.SSLCertificateId }),
        owned: this.options.ownsPort(port),
      });
    }
    const drift = sameHealthCheck(found.HealthCheck, this.options.healthCheck) ? [] : [this.name];
    return { dnsName: found.DNSName!, listeners, helpers: new Map(), healthCheckDrift: drift };
  }

  /** Everything a Classic ELB is (listeners and health check included) comes in one answer. */
  private async find(term?: AbortSignal): Promise<LoadBalancerDescription> {
    const answer = await this.options.client.send(new DescribeLoadBalancersCommand({ LoadBalancerNames: [this.name] }), { abortSignal: term });
    const found = answer.LoadBalancerDescriptions?.[0];
    if (found === undefined) throw new Error(`classic load balancer ${this.name} not found`);
    return found;
  }

  async createListener(spec: ListenerSpec, term: AbortSignal): Promise<void> {
    await this.options.client.send(
      new CreateLoadBalancerListenersCommand({
        LoadBalancerName: this.name,
        Listeners: [
          {
            Protocol: spec.protocol === 'TLS' ? 'SSL' : 'TCP',
            LoadBalancerPort: spec.port,
            InstanceProtocol: 'TCP',
            InstancePort: spec.targetPort,
            ...(spec.certificateArn === undefined ? {} : { SSLCertificateId: spec.certificateArn }),
          },
        ],
      }),
      { abortSignal: term },
    );
  }

  async deleteListener(listener: ObservedListener, term: AbortSignal): Promise<void> {
    await this.options.client.send(new DeleteLoadBalancerListenersCommand({ LoadBalancerName: this.name, LoadBalancerPorts: [listener.port] }), { abortSignal: term });
  }

  deleteHelper(id: string): Promise<void> {
    return Promise.reject(new Error(`classic load balancer ${this.name} has no helper resources (asked to delete ${id})`));
  }

  async repairHealthCheck(_id: string, term: AbortSignal): Promise<void> {
    await this.options.client.send(new ConfigureHealthCheckCommand({ LoadBalancerName: this.name, HealthCheck: healthCheckOf(this.options.healthCheck) }), { abortSignal: term });
  }
}

function healthCheckOf(check: HealthCheckSpec): HealthCheck {
  return {
    Target: `HTTP:${check.port}${check.path}`,
    Interval: check.intervalSeconds,
    Timeout: check.timeoutSeconds,
    HealthyThreshold: check.healthyThreshold,
    UnhealthyThreshold: check.unhealthyThreshold,
  };
}

function sameHealthCheck(actual: HealthCheck | undefined, check: HealthCheckSpec): boolean {
  const wanted = healthCheckOf(check);
  return (Object.keys(wanted) as Array<keyof HealthCheck>).every((field) => actual?.[field] === wanted[field]);
}
