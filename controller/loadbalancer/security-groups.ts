import {
  AuthorizeSecurityGroupIngressCommand,
  DescribeSecurityGroupRulesCommand,
  RevokeSecurityGroupIngressCommand,
  type EC2Client,
  type SecurityGroupRule,
} from '@aws-sdk/client-ec2';

/** An ingress rule as Manticore wants it: TCP ports from one CIDR. */
export interface IngressRule {
  readonly fromPort: number;
  readonly toPort: number;
  readonly cidr: string;
}

/** An ingress rule of ours as a describe call showed it. */
export interface ObservedRule extends IngressRule {
  readonly id: string;
}

/** The rule description that marks a rule as Manticore's (rules made by anyone else never carry it). */
export function ruleMarker(marker: string): string {
  return `manticore:${marker}`;
}

export const ruleKey = (rule: IngressRule): string => `${rule.fromPort}-${rule.toPort} ${rule.cidr}`;

/** One describe of a group's TCP ingress rules from CIDRs. */
export interface GroupRules {
  /** Those that carry our marker. */
  readonly owned: readonly ObservedRule[];
  /** Everyone else's, for their ports and CIDR only. */
  readonly others: readonly IngressRule[];
}

/**
 * One security group's ingress rules through EC2. Only rules whose description is Manticore's marker are
 * revoked; of the rules anyone else made only the ports and CIDR are read (AWS refuses a rule of ours that
 * repeats one of them). Every call is made within `term`, as a load balancer's are (see LoadBalancerProvider).
 */
export class SecurityGroupRules {
  private readonly description: string;

  constructor(
    private readonly client: EC2Client,
    readonly groupId: string,
    marker: string,
  ) {
    this.description = ruleMarker(marker);
  }

  async describe(term: AbortSignal): Promise<GroupRules> {
    const rules: SecurityGroupRule[] = [];
    let token: string | undefined;
    do {
      const page = await this.client.send(
        new DescribeSecurityGroupRulesCommand({ Filters: [{ Name: 'group-id', Values: [this.groupId] }], MaxResults: 1000, ...(token ? { NextToken: token } : {}) }),
        { abortSignal: term },
      );
      rules.push(...(page.SecurityGroupRules ?? []));
      token = page.NextToken;
    } while (token);
    const owned: ObservedRule[] = [];
    const others: IngressRule[] = [];
    for (const rule of rules) {
      const cidr = rule.CidrIpv4 ?? rule.CidrIpv6;
      if (rule.IsEgress === true || rule.IpProtocol !== 'tcp' || !cidr) continue;
      const ingress = { fromPort: rule.FromPort!, toPort: rule.ToPort!, cidr };
      if (rule.Description === this.description) owned.push({ id: rule.SecurityGroupRuleId!, ...ingress });
      else others.push(ingress);
    }
    return { owned, others };
  }

  async authorize(rule: IngressRule, term: AbortSignal): Promise<void> {
    const v6 = rule.cidr.includes(':');
    await this.client.send(
      new AuthorizeSecurityGroupIngressCommand({
        GroupId: this.groupId,
        IpPermissions: [
          {
            IpProtocol: 'tcp',
            FromPort: rule.fromPort,
            ToPort: rule.toPort,
            ...(v6 ? { Ipv6Ranges: [{ CidrIpv6: rule.cidr, Description: this.description }] } : { IpRanges: [{ CidrIp: rule.cidr, Description: this.description }] }),
          },
        ],
      }),
      { abortSignal: term },
    );
  }

  async revoke(rule: ObservedRule, term: AbortSignal): Promise<void> {
    await this.client.send(new RevokeSecurityGroupIngressCommand({ GroupId: this.groupId, SecurityGroupRuleIds: [rule.id] }), { abortSignal: term });
  }
}
