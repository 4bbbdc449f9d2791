/**
 * The side effects on one AWS load balancer, behind a small interface: the exposer decides what should
 * exist and calls these; a provider (NLB or Classic ELB) knows how AWS spells it.
 */

/** TCP passes bytes through; TLS terminates TLS at the load balancer with a certificate. */
export type ListenerProtocol = 'TCP' | 'TLS';

/** A listener as Manticore wants it: a public port forwarded to a port of the HAProxy edge instances. */
export interface ListenerSpec {
  readonly port: number;
  readonly protocol: ListenerProtocol;
  readonly targetPort: number;
  readonly certificateArn?: string;
}

/** A listener as a describe call showed it. */
export interface ObservedListener extends ListenerSpec {
  /** What the provider needs to delete it (an ARN on NLB, the port on Classic ELB). */
  readonly id: string;
  /** Carries Manticore's marker (NLB: the owner tag; Classic ELB: a port Manticore manages). */
  readonly owned: boolean;
}

/** Health checks toward HAProxy's monitor URI. */
export interface HealthCheckSpec {
  readonly port: number;
  readonly path: string;
  readonly intervalSeconds: number;
  readonly timeoutSeconds: number;
  readonly healthyThreshold: number;
  readonly unhealthyThreshold: number;
}

/** One describe of a load balancer: everything the exposer diffs against. */
export interface LoadBalancerSnapshot {
  readonly dnsName: string;
  /** Every listener, by port, whoever made it. */
  readonly listeners: ReadonlyMap<number, ObservedListener>;
  /** Manticore's helper resources by the port they serve (NLB target groups), whether or not a listener uses them. */
  readonly helpers: ReadonlyMap<number, string>;
  /** Resources of ours whose health check differs from the configured one (to be set again). */
  readonly healthCheckDrift: readonly string[];
}

export interface LoadBalancerProvider {
  /** The load balancer's name in AWS (also its name in the pool and in claims). */
  readonly name: string;
  readonly type: 'nlb' | 'classic';
  describe(): Promise<LoadBalancerSnapshot>;
  createListener(spec: ListenerSpec): Promise<void>;
  deleteListener(listener: ObservedListener): Promise<void>;
  /** Removes a helper resource (`helpers`) that no listener of ours needs any more. */
  deleteHelper(id: string): Promise<void>;
  /** Sets the configured health check on a resource named in `healthCheckDrift`. */
  repairHealthCheck(id: string): Promise<void>;
}

/** How a failed AWS call is handled. */
export type FailureKind = 'throttled' | 'transient' | 'quota' | 'done' | 'error';

const throttlingCodes = new Set([
  'Throttling',
  'ThrottlingException',
  'RequestLimitExceeded',
  'TooManyRequestsException',
  'RequestThrottled',
  'RequestThrottledException',
  'SlowDown',
  'PriorRequestNotComplete',
]);
const quotaCodes = new Set(['TooManyListeners', 'TooManyTargetGroups', 'TooManyTargets', 'TooManyTags', 'RulesPerSecurityGroupLimitExceeded']);
/** What a repeated call answers once the first one took effect: the wanted state holds already. */
const alreadyDoneCodes = new Set([
  'DuplicateListener',
  'ListenerNotFound',
  'ListenerNotFoundException',
  'TargetGroupNotFound',
  'TargetGroupNotFoundException',
  'InvalidPermission.Duplicate',
  'InvalidPermission.NotFound',
  'InvalidSecurityGroupRuleId.NotFound',
]);

/** Sorts an SDK v3 error by its code (the exception's name) and HTTP status. */
export function classify(error: unknown): FailureKind {
  const { name, $metadata } = (error ?? {}) as { name?: string; $metadata?: { httpStatusCode?: number } };
  const status = $metadata?.httpStatusCode;
  if (name !== undefined && throttlingCodes.has(name)) return 'throttled';
  if (status === 429) return 'throttled';
  if (name !== undefined && quotaCodes.has(name)) return 'quota';
  if (name !== undefined && alreadyDoneCodes.has(name)) return 'done';
  if ((status !== undefined && status >= 500) || name === 'TimeoutError' || name === 'ECONNRESET' || name === 'InternalFailure' || name === 'ServiceUnavailable') {
    return 'transient';
  }
  return 'error';
}

/** The error's code for logs and messages. */
export function errorCode(error: unknown): string {
  return (error as { name?: string })?.name ?? 'Error';
}
