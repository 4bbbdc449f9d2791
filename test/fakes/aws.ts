import * as ec2 from '@aws-sdk/client-ec2';
import {
  AuthorizeSecurityGroupIngressCommand,
  DescribeSecurityGroupRulesCommand,
  EC2Client,
  RevokeSecurityGroupIngressCommand,
  type AuthorizeSecurityGroupIngressCommandInput,
  type DescribeSecurityGroupRulesCommandInput,
  type RevokeSecurityGroupIngressCommandInput,
  type SecurityGroupRule,
} from '@aws-sdk/client-ec2';
import * as elb from '@aws-sdk/client-elastic-load-balancing';
import {
  ConfigureHealthCheckCommand,
  CreateLoadBalancerListenersCommand,
  DeleteLoadBalancerListenersCommand,
  DescribeLoadBalancersCommand as DescribeClassicCommand,
  ElasticLoadBalancingClient,
  type ConfigureHealthCheckCommandInput,
  type CreateLoadBalancerListenersCommandInput,
  type DeleteLoadBalancerListenersCommandInput,
  type HealthCheck,
  type Listener as ClassicListener,
} from '@aws-sdk/client-elastic-load-balancing';
import * as elbv2 from '@aws-sdk/client-elastic-load-balancing-v2';
import type {
  CreateListenerCommandInput,
  CreateTargetGroupCommandInput,
  DescribeListenersCommandInput,
  DescribeTargetGroupsCommandInput,
  Listener,
  ModifyTargetGroupCommandInput,
  RegisterTargetsCommandInput,
  Tag,
  TargetGroup,
} from '@aws-sdk/client-elastic-load-balancing-v2';
import { mockClient } from 'aws-sdk-client-mock';
import { seededRandom } from '../support/random.js';

/** The part of aws-sdk-client-mock's stub the model uses (its own types tie each command to one client). */
interface Stub {
  on(command: unknown): { callsFake(fn: (input: never) => Promise<object>): unknown };
  /** The stubbed `send`: a fake is given the command's input alone, its options are read from the call. */
  readonly send: { readonly lastCall: { readonly args: readonly unknown[] } | null };
  restore(): void;
}

/**
 * A stateful in-memory model of the AWS APIs Manticore calls (ELBv2, Classic ELB, EC2 security-group
 * rules), plugged into the real SDK v3 clients with aws-sdk-client-mock; its refusals reach the caller as
 * those clients raise them (`sdkError`). It keeps the documented rules that matter here: listener quotas
 * (TooManyListeners), one listener per port (DuplicateListener), target group names unique
 * (DuplicateTargetGroupName), target groups a listener still uses cannot be deleted (ResourceInUse),
 * DescribeTargetGroups' filters (a load balancer's, or names that must all exist: TargetGroupNotFound),
 * duplicate rules (InvalidPermission.Duplicate) and the rule quota. Knobs: `throttleRate` (the chance that
 * any call is throttled, from a seeded random source), `consistencyDelayMs` (a new listener shows in
 * describe calls only this long after its creation, on the model's clock), `holdAnswers` (a command's answers
 * wait until released). A call's `abortSignal` is honoured as the SDK honours it: one that fired before the
 * call is sent sends nothing, one that fires while the answer is on its way rejects the call, and the change
 * AWS received stands.
 */
export class AwsModel {
  /** Calls per command name, throttled ones included. */
  readonly calls = new Map<string, number>();
  throttled = 0;
  /** Calls their callers aborted: before sending (these never reached the model) or while the answer was on its way. */
  abandoned = 0;
  /** Listeners created (calls that succeeded). */
  listenersCreated = 0;
  throttleRate = 0;
  consistencyDelayMs = 0;
  private readonly nlbs = new Map<string, Nlb>();
  private readonly classics = new Map<string, Classic>();
  private readonly targetGroups = new Map<string, TargetGroup & { Targets: Array<{ Id: string; Port?: number }> }>();
  private readonly tags = new Map<string, Tag[]>();
  private readonly groups = new Map<string, SecurityGroupRule[]>();
  private readonly stubs: Stub[] = [];
  /** Commands whose answers wait, until the promise resolves. */
  private readonly heldAnswers = new Map<string, Promise<void>>();
  private sequence = 0;
  /** A seeded source, so a throttling storm is the same on every run. */
  private readonly random: () => number;

  constructor(
    private readonly now: () => number,
    seed = 42,
  ) {
    this.random = seededRandom(seed);
  }

  addNlb(name: string, listenerQuota = 50): void {
    const id = this.next();
    this.nlbs.set(name, { arn: `arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/${name}/${id}`, dnsName: `${name}-${id}.elb.us-east-1.amazonaws.com`, quota: listenerQuota, listeners: [] });
  }

  addClassic(name: string, listenerQuota = 100): void {
    this.classics.set(name, { dnsName: `${name}-${this.next()}.us-east-1.elb.amazonaws.com`, quota: listenerQuota, listeners: [], healthCheck: { Target: 'TCP:80', Interval: 30, Timeout: 5, HealthyThreshold: 10, UnhealthyThreshold: 2 } });
  }

  addSecurityGroup(groupId: string): void {
    this.groups.set(groupId, []);
  }

  /** Someone else's listener (no tags), as an operator would add by hand. */
  addForeignListener(loadBalancer: string, port: number): void {
    const nlb = this.nlbs.get(loadBalancer);
    if (nlb) nlb.listeners.push({ listener: { ListenerArn: `${nlb.arn.replace(':loadbalancer/', ':listener/')}/${this.next()}`, Port: port, Protocol: 'TCP', DefaultActions: [] }, visibleAt: 0 });
    else this.classics.get(loadBalancer)!.listeners.push({ Protocol: 'TCP', LoadBalancerPort: port, InstanceProtocol: 'TCP', InstancePort: port });
  }

  /** Someone else's ingress rule. */
  addForeignRule(groupId: string, fromPort: number, toPort: number, cidr: string, description = 'office'): void {
    this.groups.get(groupId)!.push({ SecurityGroupRuleId: `sgr-${this.next()}`, GroupId: groupId, IsEgress: false, IpProtocol: 'tcp', FromPort: fromPort, ToPort: toPort, CidrIpv4: cidr, Description: description });
  }

  /** An operator deletes a listener by hand. */
  deleteListenerByHand(loadBalancer: string, port: number): void {
    const nlb = this.nlbs.get(loadBalancer);
    if (nlb) nlb.listeners = nlb.listeners.filter((entry) => entry.listener.Port !== port);
    else this.classics.get(loadBalancer)!.listeners = this.classics.get(loadBalancer)!.listeners.filter((listener) => listener.LoadBalancerPort !== port);
  }

  /** A target group that nothing uses, as someone else (or a Manticore that crashed before its listener) made it. */
  addTargetGroup(name: string, port: number, tags: Tag[] = []): void {
    this.createTargetGroup({ Name: name, Protocol: 'TCP', Port: port, VpcId: 'vpc-0123456789abcdef0', TargetType: 'instance', Tags: tags });
  }

  /** An operator deletes a target group by hand (one no listener uses: AWS refuses the others). */
  deleteTargetGroupByHand(name: string): void {
    const group = this.targetGroup(name)!;
    this.deleteTargetGroup(group.TargetGroupArn!);
  }

  /** Listener ports of a load balancer, as AWS holds them (visible or not yet). */
  listenerPorts(loadBalancer: string): number[] {
    const nlb = this.nlbs.get(loadBalancer);
    const ports = nlb ? nlb.listeners.map((entry) => entry.listener.Port!) : this.classics.get(loadBalancer)!.listeners.map((listener) => listener.LoadBalancerPort!);
    return ports.sort((a, b) => a - b);
  }

  /** How many listeners on that port the load balancer has (a duplicate would show as 2). */
  listenersOnPort(loadBalancer: string, port: number): number {
    return this.listenerPorts(loadBalancer).filter((candidate) => candidate === port).length;
  }

  targetGroupNames(): string[] {
    return [...this.targetGroups.values()].map((group) => group.TargetGroupName!).sort();
  }

  targetGroup(name: string): (TargetGroup & { Targets: Array<{ Id: string; Port?: number }> }) | undefined {
    return [...this.targetGroups.values()].find((group) => group.TargetGroupName === name);
  }

  classicHealthCheck(name: string): HealthCheck {
    return this.classics.get(name)!.healthCheck;
  }

  rules(groupId: string): SecurityGroupRule[] {
    return [...this.groups.get(groupId)!];
  }

  callCount(): number {
    return [...this.calls.values()].reduce((sum, count) => sum + count, 0);
  }

  /**
   * Holds the answers to calls of a command (`elbv2:CreateTargetGroup`) until the returned function is called:
   * each call takes effect when it arrives, as in AWS, and only its answer waits.
   */
  holdAnswers(name: string): () => void {
    let release!: () => void;
    this.heldAnswers.set(name, new Promise<void>((resolve) => (release = resolve)));
    return () => {
      this.heldAnswers.delete(name);
      release();
    };
  }

  /** Answers every call of the three SDK clients from this model until `restore()`. */
  install(): this {
    const handle = <I>(stub: Stub, service: AwsService, command: unknown, name: string, fn: (input: I) => object): void => {
      stub.on(command).callsFake(async (input: I) => {
        // Read before any await: the stub's last call is this one.
        const signal = (stub.send.lastCall?.args[1] as { abortSignal?: AbortSignal } | undefined)?.abortSignal;
        if (signal?.aborted === true) {
          this.abandoned += 1;
          throw abortError(signal);
        }
        this.calls.set(name, (this.calls.get(name) ?? 0) + 1);
        let answer: () => object;
        try {
          if (this.throttleRate > 0 && this.random() < this.throttleRate) {
            this.throttled += 1;
            throw new Refusal(services[service].throttling, 'Rate exceeded', 400);
          }
          const output = fn(input);
          answer = () => output;
        } catch (error) {
          const raised = error instanceof Refusal ? sdkError(service, error.code, error.message, error.status) : error;
          answer = () => {
            throw raised;
          };
        }
        const held = this.heldAnswers.get(name);
        if (held !== undefined) await this.answerUnlessAborted(held, signal);
        return answer();
      });
    };
    const v2 = mockClient(elbv2.ElasticLoadBalancingV2Client) as unknown as Stub;
    handle(v2, 'elbv2', elbv2.DescribeLoadBalancersCommand, 'elbv2:DescribeLoadBalancers', (input: { Names?: string[] }) => this.describeNlbs(input.Names ?? []));
    handle(v2, 'elbv2', elbv2.DescribeListenersCommand, 'elbv2:DescribeListeners', (input: DescribeListenersCommandInput) => this.describeListeners(input));
    handle(v2, 'elbv2', elbv2.DescribeTargetGroupsCommand, 'elbv2:DescribeTargetGroups', (input: DescribeTargetGroupsCommandInput) => this.describeTargetGroups(input));
    handle(v2, 'elbv2', elbv2.DescribeTagsCommand, 'elbv2:DescribeTags', (input: { ResourceArns?: string[] }) => ({
      TagDescriptions: (input.ResourceArns ?? []).map((arn) => ({ ResourceArn: arn, Tags: this.tags.get(arn) ?? [] })),
    }));
    handle(v2, 'elbv2', elbv2.CreateTargetGroupCommand, 'elbv2:CreateTargetGroup', (input: CreateTargetGroupCommandInput) => this.createTargetGroup(input));
    handle(v2, 'elbv2', elbv2.RegisterTargetsCommand, 'elbv2:RegisterTargets', (input: RegisterTargetsCommandInput) => this.registerTargets(input));
    handle(v2, 'elbv2', elbv2.ModifyTargetGroupCommand, 'elbv2:ModifyTargetGroup', (input: ModifyTargetGroupCommandInput) => this.modifyTargetGroup(input));
    handle(v2, 'elbv2', elbv2.DeleteTargetGroupCommand, 'elbv2:DeleteTargetGroup', (input: { TargetGroupArn?: string }) => this.deleteTargetGroup(input.TargetGroupArn!));
    handle(v2, 'elbv2', elbv2.CreateListenerCommand, 'elbv2:CreateListener', (input: CreateListenerCommandInput) => this.createListener(input));
    handle(v2, 'elbv2', elbv2.DeleteListenerCommand, 'elbv2:DeleteListener', (input: { ListenerArn?: string }) => this.deleteListener(input.ListenerArn!));

    const classic = mockClient(ElasticLoadBalancingClient) as unknown as Stub;
    handle(classic, 'elb', DescribeClassicCommand, 'elb:DescribeLoadBalancers', (input: { LoadBalancerNames?: string[] }) => this.describeClassics(input.LoadBalancerNames ?? []));
    handle(classic, 'elb', CreateLoadBalancerListenersCommand, 'elb:CreateLoadBalancerListeners', (input: CreateLoadBalancerListenersCommandInput) => this.createClassicListeners(input));
    handle(classic, 'elb', DeleteLoadBalancerListenersCommand, 'elb:DeleteLoadBalancerListeners', (input: DeleteLoadBalancerListenersCommandInput) => this.deleteClassicListeners(input));
    handle(classic, 'elb', ConfigureHealthCheckCommand, 'elb:ConfigureHealthCheck', (input: ConfigureHealthCheckCommandInput) => this.configureHealthCheck(input));

    const rules = mockClient(EC2Client) as unknown as Stub;
    handle(rules, 'ec2', DescribeSecurityGroupRulesCommand, 'ec2:DescribeSecurityGroupRules', (input: DescribeSecurityGroupRulesCommandInput) => this.describeRules(input));
    handle(rules, 'ec2', AuthorizeSecurityGroupIngressCommand, 'ec2:AuthorizeSecurityGroupIngress', (input: AuthorizeSecurityGroupIngressCommandInput) => this.authorize(input));
    handle(rules, 'ec2', RevokeSecurityGroupIngressCommand, 'ec2:RevokeSecurityGroupIngress', (input: RevokeSecurityGroupIngressCommandInput) => this.revoke(input));
    this.stubs.push(v2, classic, rules);
    return this;
  }

  restore(): void {
    for (const stub of this.stubs.splice(0)) stub.restore();
  }

  private describeNlbs(names: string[]): object {
    return {
      LoadBalancers: names.map((name) => {
        const nlb = this.nlbs.get(name);
        if (nlb === undefined) throw new Refusal('LoadBalancerNotFound', `One or more load balancers not found: ${name}`, 400);
        return { LoadBalancerArn: nlb.arn, LoadBalancerName: name, DNSName: nlb.dnsName, Type: 'network', VpcId: 'vpc-0123456789abcdef0' };
      }),
    };
  }

  private describeListeners(input: DescribeListenersCommandInput): object {
    const nlb = this.nlbByArn(input.LoadBalancerArn!);
    const visible = nlb.listeners.filter((entry) => entry.visibleAt <= this.now()).map((entry) => entry.listener);
    return page(visible, input.Marker, input.PageSize, 'Listeners');
  }

  /**
   * Without a filter, every target group of the region (other teams' too); otherwise one of: those a load
   * balancer's listeners forward to (`LoadBalancerArn`), or the named ones (`Names`, `TargetGroupArns`),
   * where a single one missing fails the whole call with TargetGroupNotFound. Paginated, 1–400 a page.
   */
  private describeTargetGroups(input: DescribeTargetGroupsCommandInput): object {
    const filters = [input.LoadBalancerArn, input.Names, input.TargetGroupArns].filter((filter) => filter !== undefined);
    if (filters.length > 1) throw new Refusal('ValidationError', 'A load balancer ARN, target group names and target group ARNs cannot be specified at the same time', 400);
    if (input.PageSize !== undefined && (input.PageSize < 1 || input.PageSize > 400)) {
      throw new Refusal('ValidationError', `1 validation error detected: Value '${input.PageSize}' at 'pageSize' failed to satisfy constraint: Member must have value between 1 and 400`, 400);
    }
    const all = [...this.targetGroups.values()];
    const named = (wanted: readonly string[], key: 'TargetGroupName' | 'TargetGroupArn'): TargetGroup[] =>
      wanted.map((value) => {
        const group = all.find((candidate) => candidate[key] === value);
        if (group === undefined) throw new Refusal('TargetGroupNotFound', `One or more target groups not found`, 400);
        return group;
      });
    const groups =
      input.LoadBalancerArn !== undefined ? all.filter((group) => this.usedBy(group.TargetGroupArn!).includes(input.LoadBalancerArn!))
      : input.Names !== undefined ? named(input.Names, 'TargetGroupName')
      : input.TargetGroupArns !== undefined ? named(input.TargetGroupArns, 'TargetGroupArn')
      : all;
    return page(groups.map((group) => ({ ...stripTargets(group), LoadBalancerArns: this.usedBy(group.TargetGroupArn!) })), input.Marker, input.PageSize, 'TargetGroups');
  }

  /** The load balancers whose listeners, as describe calls show them, forward to a target group. */
  private usedBy(targetGroupArn: string): string[] {
    return [...this.nlbs.values()]
      .filter((nlb) => nlb.listeners.some((entry) => entry.visibleAt <= this.now() && entry.listener.DefaultActions?.some((action) => action.TargetGroupArn === targetGroupArn)))
      .map((nlb) => nlb.arn);
  }

  private createTargetGroup(input: CreateTargetGroupCommandInput): object {
    const existing = [...this.targetGroups.values()].find((group) => group.TargetGroupName === input.Name);
    if (existing) {
      if (existing.Port !== input.Port || existing.Protocol !== input.Protocol) throw new Refusal('DuplicateTargetGroupName', `A target group with the same name '${input.Name}' exists, but with different settings`, 400);
      return { TargetGroups: [stripTargets(existing)] };
    }
    const arn = `arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/${input.Name}/${this.next()}`;
    const { Tags, ...settings } = input;
    this.targetGroups.set(arn, { ...settings, TargetGroupArn: arn, TargetGroupName: input.Name!, Targets: [] } as TargetGroup & { Targets: [] });
    this.tags.set(arn, Tags ?? []);
    return { TargetGroups: [stripTargets(this.targetGroups.get(arn)!)] };
  }

  private registerTargets(input: RegisterTargetsCommandInput): object {
    const group = this.targetGroups.get(input.TargetGroupArn!);
    if (!group) throw new Refusal('TargetGroupNotFound', `target group ${input.TargetGroupArn} not found`, 400);
    for (const target of input.Targets ?? []) {
      if (!group.Targets.some((existing) => existing.Id === target.Id && existing.Port === target.Port)) group.Targets.push({ Id: target.Id!, ...(target.Port === undefined ? {} : { Port: target.Port }) });
    }
    return {};
  }

  private modifyTargetGroup(input: ModifyTargetGroupCommandInput): object {
    const group = this.targetGroups.get(input.TargetGroupArn!);
    if (!group) throw new Refusal('TargetGroupNotFound', `target group ${input.TargetGroupArn} not found`, 400);
    Object.assign(group, input);
    return { TargetGroups: [stripTargets(group)] };
  }

  private deleteTargetGroup(arn: string): object {
    const used = [...this.nlbs.values()].some((nlb) => nlb.listeners.some((entry) => entry.listener.DefaultActions?.some((action) => action.TargetGroupArn === arn)));
    if (used) throw new Refusal('ResourceInUse', `Target group '${arn}' is currently in use by a listener or a rule`, 400);
    this.targetGroups.delete(arn);
    this.tags.delete(arn);
    return {};
  }

  private createListener(input: CreateListenerCommandInput): object {
    const nlb = this.nlbByArn(input.LoadBalancerArn!);
    if (nlb.listeners.some((entry) => entry.listener.Port === input.Port)) throw new Refusal('DuplicateListener', 'A listener already exists on this port for this load balancer', 400);
    if (nlb.listeners.length >= nlb.quota) throw new Refusal('TooManyListeners', `You've reached the limit on the number of listeners per load balancer`, 400);
    for (const action of input.DefaultActions ?? []) {
      if (action.TargetGroupArn && !this.targetGroups.has(action.TargetGroupArn)) throw new Refusal('TargetGroupNotFound', `target group ${action.TargetGroupArn} not found`, 400);
    }
    const arn = `${nlb.arn.replace(':loadbalancer/', ':listener/')}/${this.next()}`;
    const listener: Listener = { ListenerArn: arn, LoadBalancerArn: nlb.arn, Port: input.Port!, Protocol: input.Protocol!, DefaultActions: input.DefaultActions!, ...(input.Certificates ? { Certificates: input.Certificates } : {}) };
    nlb.listeners.push({ listener, visibleAt: this.now() + this.consistencyDelayMs });
    this.listenersCreated += 1;
    this.tags.set(arn, input.Tags ?? []);
    return { Listeners: [listener] };
  }

  private deleteListener(arn: string): object {
    for (const nlb of this.nlbs.values()) {
      const before = nlb.listeners.length;
      nlb.listeners = nlb.listeners.filter((entry) => entry.listener.ListenerArn !== arn);
      if (nlb.listeners.length < before) {
        this.tags.delete(arn);
        return {};
      }
    }
    throw new Refusal('ListenerNotFound', `listener ${arn} not found`, 400);
  }

  private describeClassics(names: string[]): object {
    return {
      LoadBalancerDescriptions: names.map((name) => {
        const lb = this.classics.get(name);
        if (lb === undefined) throw new Refusal('LoadBalancerNotFound', `There is no ACTIVE Load Balancer named '${name}'`, 400);
        return { LoadBalancerName: name, DNSName: lb.dnsName, ListenerDescriptions: lb.listeners.map((listener) => ({ Listener: listener, PolicyNames: [] })), HealthCheck: lb.healthCheck };
      }),
    };
  }

  private createClassicListeners(input: CreateLoadBalancerListenersCommandInput): object {
    const lb = this.classics.get(input.LoadBalancerName!)!;
    for (const listener of input.Listeners ?? []) {
      const existing = lb.listeners.find((candidate) => candidate.LoadBalancerPort === listener.LoadBalancerPort);
      if (existing) {
        if (JSON.stringify(existing) !== JSON.stringify(listener)) throw new Refusal('DuplicateListener', 'A listener already exists for this port with different settings', 400);
        continue;
      }
      if (lb.listeners.length >= lb.quota) throw new Refusal('TooManyListeners', 'Too many listeners', 400);
      lb.listeners.push({ ...listener });
    }
    return {};
  }

  private deleteClassicListeners(input: DeleteLoadBalancerListenersCommandInput): object {
    const lb = this.classics.get(input.LoadBalancerName!)!;
    lb.listeners = lb.listeners.filter((listener) => !(input.LoadBalancerPorts ?? []).includes(listener.LoadBalancerPort!));
    return {};
  }

  private configureHealthCheck(input: ConfigureHealthCheckCommandInput): object {
    this.classics.get(input.LoadBalancerName!)!.healthCheck = { ...input.HealthCheck! };
    return { HealthCheck: input.HealthCheck };
  }

  private describeRules(input: DescribeSecurityGroupRulesCommandInput): object {
    const groupIds = input.Filters?.find((filter) => filter.Name === 'group-id')?.Values ?? [];
    const rules = groupIds.flatMap((groupId) => {
      const rules = this.groups.get(groupId);
      if (rules === undefined) throw new Refusal('InvalidGroup.NotFound', `The security group '${groupId}' does not exist`, 400);
      return rules;
    });
    const start = input.NextToken ? Number(input.NextToken) : 0;
    const size = input.MaxResults ?? 1000;
    const next = start + size < rules.length ? { NextToken: String(start + size) } : {};
    return { SecurityGroupRules: rules.slice(start, start + size), ...next };
  }

  private authorize(input: AuthorizeSecurityGroupIngressCommandInput): object {
    const rules = this.groups.get(input.GroupId!)!;
    const added: SecurityGroupRule[] = [];
    for (const permission of input.IpPermissions ?? []) {
      const sources: Array<Pick<SecurityGroupRule, 'CidrIpv4' | 'CidrIpv6' | 'Description'>> = [
        ...(permission.IpRanges ?? []).map((range) => ({ CidrIpv4: range.CidrIp!, Description: range.Description })),
        ...(permission.Ipv6Ranges ?? []).map((range) => ({ CidrIpv6: range.CidrIpv6!, Description: range.Description })),
      ];
      for (const source of sources) {
        const cidr = source.CidrIpv4 ?? source.CidrIpv6;
        const duplicate = [...rules, ...added].some(
          (rule) => rule.IpProtocol === permission.IpProtocol && rule.FromPort === permission.FromPort && rule.ToPort === permission.ToPort && (rule.CidrIpv4 ?? rule.CidrIpv6) === cidr,
        );
        if (duplicate) throw new Refusal('InvalidPermission.Duplicate', `the specified rule "peer: ${cidr}, TCP, from port: ${permission.FromPort}, to port: ${permission.ToPort}, ALLOW" already exists`, 400);
        added.push({ SecurityGroupRuleId: `sgr-${this.next()}`, GroupId: input.GroupId!, IsEgress: false, IpProtocol: permission.IpProtocol!, FromPort: permission.FromPort!, ToPort: permission.ToPort!, ...source });
      }
    }
    const family = (rule: SecurityGroupRule): string => (rule.CidrIpv6 ? 'v6' : 'v4');
    for (const kind of ['v4', 'v6']) {
      if ([...rules, ...added].filter((rule) => family(rule) === kind).length > 60) throw new Refusal('RulesPerSecurityGroupLimitExceeded', 'The maximum number of rules per security group has been reached.', 400);
    }
    rules.push(...added);
    return { Return: true, SecurityGroupRules: added };
  }

  private revoke(input: RevokeSecurityGroupIngressCommandInput): object {
    const rules = this.groups.get(input.GroupId!)!;
    for (const id of input.SecurityGroupRuleIds ?? []) {
      const index = rules.findIndex((rule) => rule.SecurityGroupRuleId === id);
      if (index < 0) throw new Refusal('InvalidSecurityGroupRuleId.NotFound', `The security group rule ID '${id}' does not exist`, 400);
      rules.splice(index, 1);
    }
    return { Return: true };
  }

  /** Waits for a held answer; a caller that aborts meanwhile gets the SDK's AbortError instead. */
  private answerUnlessAborted(held: Promise<void>, signal: AbortSignal | undefined): Promise<void> {
    if (signal === undefined) return held;
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        this.abandoned += 1;
        reject(abortError(signal));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      void held.then(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      });
    });
  }

  private nlbByArn(arn: string): Nlb {
    const nlb = [...this.nlbs.values()].find((candidate) => candidate.arn === arn);
    if (!nlb) throw new Refusal('LoadBalancerNotFound', `load balancer ${arn} not found`, 400);
    return nlb;
  }

  private next(): string {
    this.sequence += 1;
    return this.sequence.toString(16).padStart(8, '0');
  }

}

interface Nlb {
  readonly arn: string;
  readonly dnsName: string;
  readonly quota: number;
  listeners: Array<{ listener: Listener; visibleAt: number }>;
}

interface Classic {
  readonly dnsName: string;
  readonly quota: number;
  listeners: ClassicListener[];
  healthCheck: HealthCheck;
}

/** A refusal as the service answers it on the wire, before a client turns it into an exception. */
class Refusal extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

export type AwsService = 'elbv2' | 'elb' | 'ec2';

interface ExceptionOptions {
  readonly message: string;
  readonly $fault: 'client' | 'server';
  readonly $metadata: { readonly httpStatusCode: number };
}
/** A modelled exception class: it names itself. */
type ModelledException = new (options: ExceptionOptions) => Error;
/** A service's base exception: named by the code. */
type BaseException = new (options: ExceptionOptions & { readonly name: string }) => Error;

/**
 * Per service: its SDK package (with the exception classes of the errors its model declares), the base
 * exception it raises any other error as, the code it throttles with, and the declared errors whose class
 * is not named `<code>Exception`.
 */
const services: Record<AwsService, { sdk: object; base: BaseException; throttling: string; renamed?: Readonly<Record<string, string>> }> = {
  elbv2: { sdk: elbv2, base: elbv2.ElasticLoadBalancingV2ServiceException, throttling: 'Throttling' },
  elb: { sdk: elb, base: elb.ElasticLoadBalancingServiceException, throttling: 'Throttling', renamed: { LoadBalancerNotFound: 'AccessPointNotFoundException' } },
  ec2: { sdk: ec2, base: ec2.EC2ServiceException, throttling: 'RequestLimitExceeded' },
};

/**
 * An error as that service's SDK v3 client raises it: one the service model declares as its exception
 * class (ELBv2 `TooManyListeners` → `TooManyListenersException`), any other as the service's base exception
 * named by the code (throttling; Classic ELB's `TooManyListeners`; every EC2 error).
 */
export function sdkError(service: AwsService, code: string, message: string, status: number): Error {
  const { sdk, base, renamed } = services[service];
  const options: ExceptionOptions = { message, $fault: status >= 500 ? 'server' : 'client', $metadata: { httpStatusCode: status } };
  const modelled = (sdk as Record<string, unknown>)[renamed?.[code] ?? `${code}Exception`] as ModelledException | undefined;
  return modelled === undefined ? new base({ name: code, ...options }) : new modelled(options);
}

/**
 * What an SDK v3 client raises for a call whose abort signal fired, before it was sent or while its answer was
 * on the way (its HTTP handler's error, as its retry step passes it on).
 */
export function abortError(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  const options = reason instanceof Error ? { cause: reason } : {};
  const message = reason instanceof Error || reason === undefined ? 'Request aborted' : String(reason);
  return Object.assign(new Error(message, options), { name: 'AbortError', $metadata: { attempts: 1, totalRetryDelay: 0 } });
}

function stripTargets(group: TargetGroup & { Targets?: unknown }): TargetGroup {
  const { Targets: _targets, ...rest } = group;
  return rest;
}

function page<T>(items: T[], marker: string | undefined, pageSize: number | undefined, field: string): object {
  const start = marker ? Number(marker) : 0;
  const size = pageSize ?? 100;
  return { [field]: items.slice(start, start + size), ...(start + size < items.length ? { NextMarker: String(start + size) } : {}) };
}
