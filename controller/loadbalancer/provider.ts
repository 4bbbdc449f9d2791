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

/** A helper resource of ours (an NLB target group) and the port of the edge instances it forwards to. */
export interface ObservedHelper {
  readonly id: string;
  readonly targetPort: number;
}

/** One describe of a load balancer: everything the exposer diffs against. */
export interface LoadBalancerSnapshot {
  readonly dnsName: string;
  /** Every listener, by port, whoever made it. */
  readonly listeners: ReadonlyMap<number, ObservedListener>;
  /** Manticore's helper resources by the port they serve (NLB target groups), whether or not a listener uses them. */
  readonly helpers: ReadonlyMap<number, ObservedHelper>;
  /** Resources of ours whose health check differs from the configured one (to be set again). */
  readonly healthCheckDrift: readonly string[];
}

/**
 * The calls of a load balancer. Each change and describe is made within `term`: once it aborts (the leadership
 * term ended) no call is sent, and one on its way is abandoned (its promise rejects; AWS may still apply it).
 */
export interface LoadBalancerProvider {
  /** The load balancer's name in AWS (also its name in the pool and in claims). */
  readonly name: string;
  readonly type: 'nlb' | 'classic';
  /** The load balancer's DNS name, from one call: what every replica needs at start-up, leading or not. */
  dnsName(): Promise<string>;
  /**
   * What the load balancer holds. `resync`: the slow resync's describe, which also looks for helpers of ours
   * that nothing uses and this process did not make (an NLB's region-wide target group listing).
   */
  describe(resync: boolean, term: AbortSignal): Promise<LoadBalancerSnapshot>;
  createListener(spec: ListenerSpec, term: AbortSignal): Promise<void>;
  deleteListener(listener: ObservedListener, term: AbortSignal): Promise<void>;
  /** Removes a helper resource (`helpers`) that no listener of ours needs any more. */
  deleteHelper(id: string, term: AbortSignal): Promise<void>;
  /** Sets the configured health check on a resource named in `healthCheckDrift`. */
  repairHealthCheck(id: string, term: AbortSignal): Promise<void>;
}

/** How a failed AWS call is handled. */
export type FailureKind = 'throttled' | 'transient' | 'quota' | 'done' | 'error';

/** The codes AWS throttles with (the SDK v3's own throttling codes, compared without the `Exception` suffix). */
const throttlingCodes = new Set([
  'Throttling',
  'Throttled',
  'RequestLimitExceeded',
  'TooManyRequests',
  'RequestThrottled',
  'SlowDown',
  'BandwidthLimitExceeded',
  'ProvisionedThroughputExceeded',
  'PriorRequestNotComplete',
]);
const quotaCodes = new Set(['TooManyListeners', 'TooManyTargetGroups', 'TooManyTargets', 'TooManyTags', 'RulesPerSecurityGroupLimitExceeded']);
/** What a repeated call answers once the first one took effect: the wanted state holds already. */
const alreadyDoneCodes = new Set([
  'DuplicateListener',
  'ListenerNotFound',
  'TargetGroupNotFound',
  'InvalidPermission.Duplicate',
  'InvalidPermission.NotFound',
  'InvalidSecurityGroupRuleId.NotFound',
]);
const transientCodes = new Set(['TimeoutError', 'ECONNRESET', 'InternalFailure', 'ServiceUnavailable']);

/**
 * Sorts an SDK v3 error by its code and HTTP status. The SDK names an error its service model declares
 * after its exception class (ELBv2's `TooManyListeners` is raised as `TooManyListenersException`) and
 * any other after the code on the wire (Classic ELB's `TooManyListeners`; EC2 declares none:
 * `InvalidPermission.Duplicate`), so both are compared by the wire code.
 */
export function classify(error: unknown): FailureKind {
  if (isThrottling(error)) return 'throttled';
  const code = wireCode(error);
  const status = (error as SdkErrorShape | undefined)?.$metadata?.httpStatusCode;
  if (quotaCodes.has(code)) return 'quota';
  if (alreadyDoneCodes.has(code)) return 'done';
  if ((status !== undefined && status >= 500) || transientCodes.has(code)) return 'transient';
  return 'error';
}

/**
 * Whether AWS refused the call for the request rate: a throttling code, HTTP 429, or an error the service
 * model marks as throttling. Whatever its HTTP status: EC2 throttles with 503.
 */
export function isThrottling(error: unknown): boolean {
  const { $metadata, $retryable } = (error ?? {}) as SdkErrorShape;
  return throttlingCodes.has(wireCode(error)) || $metadata?.httpStatusCode === 429 || $retryable?.throttling === true;
}

/** What an SDK v3 error carries besides its name. */
interface SdkErrorShape {
  readonly $metadata?: { readonly httpStatusCode?: number };
  readonly $retryable?: { readonly throttling?: boolean };
}

/** The code on the wire: the error's name without the `Exception` its class name adds. */
export function wireCode(error: unknown): string {
  return (error as { name?: string } | undefined)?.name?.replace(/Exception$/, '') ?? '';
}

/** The error's code for logs and messages. */
export function errorCode(error: unknown): string {
  return (error as { name?: string })?.name ?? 'Error';
}
