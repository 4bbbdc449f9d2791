import crypto from 'node:crypto';
import {
  CreateListenerCommand,
  CreateTargetGroupCommand,
  DeleteListenerCommand,
  DeleteTargetGroupCommand,
  DescribeListenersCommand,
  DescribeLoadBalancersCommand,
  DescribeTagsCommand,
  DescribeTargetGroupsCommand,
  ModifyTargetGroupCommand,
  RegisterTargetsCommand,
  type ElasticLoadBalancingV2Client,
  type Listener,
  type TargetGroup,
} from '@aws-sdk/client-elastic-load-balancing-v2';
import { wireCode, type HealthCheckSpec, type ListenerSpec, type LoadBalancerProvider, type LoadBalancerSnapshot, type ObservedListener } from './provider.js';

/** The tag that marks what Manticore created; its value is the marker of this installation (its store prefix). */
export const ownerTagKey = 'manticore:owner';
/** DescribeTags takes at most 20 ARNs. */
const tagBatch = 20;
/** What AWS answers for a listener or target group that does not exist. */
const goneCodes = new Set(['ListenerNotFound', 'TargetGroupNotFound']);

/** What the names of an installation's target groups for one load balancer start with (the port follows). */
export function targetGroupPrefix(marker: string, loadBalancer: string): string {
  return `mc-${crypto.createHash('sha256').update(`${marker}\0${loadBalancer}`).digest('hex').slice(0, 6)}-`;
}

export interface NlbOptions {
  readonly client: ElasticLoadBalancingV2Client;
  readonly name: string;
  /** Tag value that says "ours" (one Manticore installation's marker). */
  readonly marker: string;
  /** The HAProxy edge instances every target group holds. */
  readonly instanceIds: readonly string[];
  readonly healthCheck: HealthCheckSpec;
}

interface Identity {
  readonly arn: string;
  readonly vpcId: string;
  readonly dnsName: string;
}

/**
 * A Network Load Balancer (ELBv2): each listener forwards to a target group of its own that holds the
 * edge instances on the target port. Listeners and target groups carry the owner tag; target groups are
 * also named after the marker and the load balancer (`mc-<hash>-<port>`), so ours are told from the
 * region's others by name before their tags are read.
 */
export class NlbProvider implements LoadBalancerProvider {
  readonly type = 'nlb' as const;
  readonly name: string;
  private identity: Identity | undefined;
  /** Whether a listener or target group carries our tag, by ARN (tags of an ARN are read once). */
  private readonly ownedArns = new Map<string, boolean>();
  /** Our target groups by listener port, as last seen or created (those no listener uses are seen only on a resync). */
  private targetGroups = new Map<number, TargetGroup>();
  private readonly namePrefix: string;

  constructor(private readonly options: NlbOptions) {
    this.name = options.name;
    this.namePrefix = targetGroupPrefix(options.marker, options.name);
  }

  async dnsName(): Promise<string> {
    return (await this.loadIdentity()).dnsName;
  }

  async describe(resync: boolean, term: AbortSignal): Promise<LoadBalancerSnapshot> {
    const { client } = this.options;
    const identity = await this.loadIdentity(term);
    const listeners: Listener[] = [];
    let marker: string | undefined;
    do {
      const page = await client.send(new DescribeListenersCommand({ LoadBalancerArn: identity.arn, PageSize: 400, ...(marker ? { Marker: marker } : {}) }), { abortSignal: term });
      listeners.push(...(page.Listeners ?? []));
      marker = page.NextMarker;
    } while (marker);
    // A pass reads the target groups this load balancer's listeners use (one page: it has at most a few hundred
    // listeners). Ours that no listener uses are known from this process's own calls; the resync also reads the
    // region's (other teams' too, a page per 400) for those it does not know: one made by a process that stopped
    // before making its listener, or whose listener was deleted by hand.
    const groups: TargetGroup[] = [];
    do {
      const scope = resync ? {} : { LoadBalancerArn: identity.arn };
      const page = await client.send(new DescribeTargetGroupsCommand({ ...scope, PageSize: 400, ...(marker ? { Marker: marker } : {}) }), { abortSignal: term });
      groups.push(...(page.TargetGroups ?? []).filter((group) => group.TargetGroupName?.startsWith(this.namePrefix)));
      marker = page.NextMarker;
    } while (marker);
    await this.loadOwnership([...listeners.map((listener) => listener.ListenerArn!), ...groups.map((group) => group.TargetGroupArn!)], term);

    const targetGroups = new Map(resync ? [] : this.targetGroups);
    for (const group of groups) {
      const port = Number(group.TargetGroupName!.slice(this.namePrefix.length));
      if (this.ownedArns.get(group.TargetGroupArn!) === true && Number.isInteger(port)) targetGroups.set(port, group);
    }
    this.targetGroups = targetGroups;
    // ARNs are never reused, so what was deleted (by hand too) is forgotten: the ARNs seen now, and our groups, are kept.
    const current = new Set([...listeners.map((listener) => listener.ListenerArn!), ...[...groups, ...targetGroups.values()].map((group) => group.TargetGroupArn!)]);
    for (const arn of [...this.ownedArns.keys()]) if (!current.has(arn)) this.ownedArns.delete(arn);
    const byArn = new Map([...targetGroups.values()].map((group) => [group.TargetGroupArn!, group]));
    const observed = new Map<number, ObservedListener>();
    for (const listener of listeners) {
      const forward = listener.DefaultActions?.find((action) => action.Type === 'forward');
      const group = forward?.TargetGroupArn === undefined ? undefined : byArn.get(forward.TargetGroupArn);
      const certificateArn = listener.Certificates?.[0]?.CertificateArn;
      observed.set(listener.Port!, {
        id: listener.ListenerArn!,
        port: listener.Port!,
        protocol: listener.Protocol === 'TLS' ? 'TLS' : 'TCP',
        targetPort: group?.Port ?? 0,
        ...(certificateArn === undefined ? {} : { certificateArn }),
        owned: this.ownedArns.get(listener.ListenerArn!) === true,
      });
    }
    const drift = [...targetGroups.values()].filter((group) => !sameHealthCheck(group, this.options.healthCheck)).map((group) => group.TargetGroupArn!);
    return {
      dnsName: identity.dnsName,
      listeners: observed,
      helpers: new Map([...targetGroups].map(([port, group]) => [port, { id: group.TargetGroupArn!, targetPort: group.Port! }])),
      healthCheckDrift: drift,
    };
  }

  async createListener(spec: ListenerSpec, term: AbortSignal): Promise<void> {
    try {
      await this.makeListener(spec, term);
    } catch (error) {
      // The target group this process knew for the port was deleted (by hand) since: it is made again.
      if (wireCode(error) !== 'TargetGroupNotFound') throw error;
      await this.makeListener(spec, term);
    }
  }

  async deleteListener(listener: ObservedListener, term: AbortSignal): Promise<void> {
    await this.forgettingGone(listener.id, () => this.options.client.send(new DeleteListenerCommand({ ListenerArn: listener.id }), { abortSignal: term }));
    this.forget(listener.id);
  }

  async deleteHelper(id: string, term: AbortSignal): Promise<void> {
    await this.forgettingGone(id, () => this.options.client.send(new DeleteTargetGroupCommand({ TargetGroupArn: id }), { abortSignal: term }));
    this.forget(id);
  }

  async repairHealthCheck(id: string, term: AbortSignal): Promise<void> {
    const answer = await this.forgettingGone(id, () =>
      this.options.client.send(new ModifyTargetGroupCommand({ TargetGroupArn: id, ...healthCheckFields(this.options.healthCheck) }), { abortSignal: term }),
    );
    // A group no listener uses is not read again before the resync: what it is now comes from this answer.
    const modified = answer.TargetGroups?.[0];
    for (const [port, group] of this.targetGroups) if (group.TargetGroupArn === id && modified !== undefined) this.targetGroups.set(port, modified);
  }

  /** A listener on the port toward a target group of ours, made unless known, holding the edge instances. */
  private async makeListener(spec: ListenerSpec, term: AbortSignal): Promise<void> {
    const { client, instanceIds, marker } = this.options;
    const identity = await this.loadIdentity(term);
    const tags = [
      { Key: ownerTagKey, Value: marker },
      { Key: 'manticore:port', Value: String(spec.port) },
    ];
    let group = this.targetGroups.get(spec.port);
    if (group === undefined || group.Port !== spec.targetPort) {
      // Creating a target group that exists with the same settings answers the existing one.
      const created = await client.send(
        new CreateTargetGroupCommand({
          Name: `${this.namePrefix}${spec.port}`,
          Protocol: 'TCP',
          Port: spec.targetPort,
          VpcId: identity.vpcId,
          TargetType: 'instance',
          ...healthCheckFields(this.options.healthCheck),
          Tags: tags,
        }),
        { abortSignal: term },
      );
      group = created.TargetGroups![0]!;
      this.ownedArns.set(group.TargetGroupArn!, true);
      this.targetGroups.set(spec.port, group);
    }
    const arn = group.TargetGroupArn!;
    await this.forgettingGone(arn, () => client.send(new RegisterTargetsCommand({ TargetGroupArn: arn, Targets: instanceIds.map((Id) => ({ Id, Port: spec.targetPort })) }), { abortSignal: term }));
    const created = await this.forgettingGone(arn, () =>
      client.send(
        new CreateListenerCommand({
          LoadBalancerArn: identity.arn,
          Protocol: spec.protocol,
          Port: spec.port,
          ...(spec.certificateArn === undefined ? {} : { Certificates: [{ CertificateArn: spec.certificateArn }] }),
          DefaultActions: [{ Type: 'forward', TargetGroupArn: arn }],
          Tags: tags,
        }),
        { abortSignal: term },
      ),
    );
    const listenerArn = created.Listeners?.[0]?.ListenerArn;
    if (listenerArn !== undefined) this.ownedArns.set(listenerArn, true);
  }

  /**
   * Makes a call about a resource of ours; when AWS answers that it does not exist (someone deleted it), it is
   * forgotten, so that the next pass does not count on it, and the error goes on to the caller.
   */
  private async forgettingGone<T>(arn: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (error) {
      if (goneCodes.has(wireCode(error))) this.forget(arn);
      throw error;
    }
  }

  /** Drops a listener or target group from what this process knows (deleted, or found gone). */
  private forget(arn: string): void {
    this.ownedArns.delete(arn);
    for (const [port, group] of this.targetGroups) if (group.TargetGroupArn === arn) this.targetGroups.delete(port);
  }

  /** The load balancer's ARN, VPC and DNS name: looked up once, they never change (at start-up, outside any term). */
  private async loadIdentity(term?: AbortSignal): Promise<Identity> {
    if (this.identity) return this.identity;
    const answer = await this.options.client.send(new DescribeLoadBalancersCommand({ Names: [this.name] }), { abortSignal: term });
    const found = answer.LoadBalancers?.[0];
    if (found === undefined) throw new Error(`network load balancer ${this.name} not found`);
    if (found.Type !== undefined && found.Type !== 'network') throw new Error(`load balancer ${this.name} is of type ${found.Type}, not network`);
    this.identity = { arn: found.LoadBalancerArn!, vpcId: found.VpcId!, dnsName: found.DNSName! };
    return this.identity;
  }

  /** Reads the tags of ARNs not seen before (ARNs are never reused, so once is enough). */
  private async loadOwnership(arns: readonly string[], term: AbortSignal): Promise<void> {
    const unknown = arns.filter((arn) => !this.ownedArns.has(arn));
    for (let i = 0; i < unknown.length; i += tagBatch) {
      const batch = unknown.slice(i, i + tagBatch);
      const answer = await this.options.client.send(new DescribeTagsCommand({ ResourceArns: batch }), { abortSignal: term });
      for (const arn of batch) {
        const tags = answer.TagDescriptions?.find((description) => description.ResourceArn === arn)?.Tags ?? [];
        this.ownedArns.set(arn, tags.some((tag) => tag.Key === ownerTagKey && tag.Value === this.options.marker));
      }
    }
  }
}

function healthCheckFields(check: HealthCheckSpec): Pick<
  TargetGroup,
  'HealthCheckProtocol' | 'HealthCheckPort' | 'HealthCheckPath' | 'HealthCheckIntervalSeconds' | 'HealthCheckTimeoutSeconds' | 'HealthyThresholdCount' | 'UnhealthyThresholdCount'
> {
  return {
    HealthCheckProtocol: 'HTTP',
    HealthCheckPort: String(check.port),
    HealthCheckPath: check.path,
    HealthCheckIntervalSeconds: check.intervalSeconds,
    HealthCheckTimeoutSeconds: check.timeoutSeconds,
    HealthyThresholdCount: check.healthyThreshold,
    UnhealthyThresholdCount: check.unhealthyThreshold,
  };
}

function sameHealthCheck(group: TargetGroup, check: HealthCheckSpec): boolean {
  const wanted = healthCheckFields(check);
  return (Object.keys(wanted) as Array<keyof typeof wanted>).every((field) => group[field] === wanted[field]);
}
