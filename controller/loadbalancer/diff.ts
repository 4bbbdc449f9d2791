/**
 * The decisions of the AWS side, as pure functions: what should exist, compared with what a describe
 * showed, gives the calls to make. No I/O here.
 */
import type { ListenerSpec, LoadBalancerSnapshot, ObservedListener } from './provider.js';
import { ruleKey, type IngressRule, type ObservedRule } from './security-groups.js';

export type ListenerAction =
  | { readonly kind: 'create'; readonly spec: ListenerSpec }
  | { readonly kind: 'delete'; readonly listener: ObservedListener }
  | { readonly kind: 'deleteHelper'; readonly port: number; readonly id: string }
  | { readonly kind: 'repairHealthCheck'; readonly id: string };

export interface ListenerDiff {
  readonly actions: readonly ListenerAction[];
  /** Wanted ports on which someone else's listener sits: never touched, reported. */
  readonly conflicts: readonly number[];
}

/** Whether the observed listener is ours and is the one wanted. */
export function matches(spec: ListenerSpec, observed: ObservedListener | undefined): boolean {
  return (
    observed !== undefined &&
    observed.owned &&
    observed.protocol === spec.protocol &&
    observed.targetPort === spec.targetPort &&
    (spec.protocol === 'TLS' ? observed.certificateArn === spec.certificateArn : true)
  );
}

/**
 * One load balancer: wanted listeners missing are created; ours that are not wanted, or differ from what
 * is wanted, are deleted (a changed one is created again once its deletion shows); helpers (target groups)
 * of ours that no listener of ours uses and that serve no wanted port, or serve it toward another target
 * port, are deleted; drifted health checks are set again. Listeners without our marker are never in the
 * actions.
 */
export function diffListeners(desired: ReadonlyMap<number, ListenerSpec>, snapshot: LoadBalancerSnapshot): ListenerDiff {
  const actions: ListenerAction[] = [];
  const conflicts: number[] = [];
  const staleHelpers = new Map(
    [...snapshot.helpers].filter(([port, helper]) => desired.get(port)?.targetPort !== helper.targetPort && snapshot.listeners.get(port)?.owned !== true),
  );
  for (const [port, spec] of desired) {
    const observed = snapshot.listeners.get(port);
    // A helper is named after its port (and AWS names are unique): toward a new target port, the listener is
    // created once the old helper is gone, or its new helper could not be made.
    if (observed === undefined) {
      if (!staleHelpers.has(port)) actions.push({ kind: 'create', spec });
    } else if (!observed.owned) conflicts.push(port);
    else if (!matches(spec, observed)) actions.push({ kind: 'delete', listener: observed });
  }
  for (const [port, observed] of snapshot.listeners) {
    if (observed.owned && !desired.has(port)) actions.push({ kind: 'delete', listener: observed });
  }
  for (const [port, { id }] of staleHelpers) actions.push({ kind: 'deleteHelper', port, id });
  for (const id of snapshot.healthCheckDrift) actions.push({ kind: 'repairHealthCheck', id });
  return { actions, conflicts };
}

/**
 * The port ranges to open for these ports: runs of consecutive ports, and where there are more runs than
 * `maxRanges`, the runs separated by the smallest gaps merged (the largest gaps stay closed), so a group
 * stays within its rule quota. `maxRanges: 1` opens one range from the lowest port to the highest.
 */
export function compactRanges(ports: Iterable<number>, maxRanges: number): Array<{ from: number; to: number }> {
  const sorted = [...new Set(ports)].sort((a, b) => a - b);
  if (sorted.length === 0) return [];
  const gaps: Array<{ after: number; size: number }> = [];
  for (let i = 1; i < sorted.length; i++) if (sorted[i]! - sorted[i - 1]! > 1) gaps.push({ after: i - 1, size: sorted[i]! - sorted[i - 1]! });
  // Keep the largest gaps as breaks between ranges (ties: the lower ports first, for a stable answer).
  const breaks = new Set(
    [...gaps]
      .sort((a, b) => b.size - a.size || a.after - b.after)
      .slice(0, Math.max(0, maxRanges - 1))
      .map((gap) => gap.after),
  );
  const ranges: Array<{ from: number; to: number }> = [];
  let from = sorted[0]!;
  for (let i = 0; i < sorted.length; i++) {
    if (i === sorted.length - 1 || breaks.has(i)) {
      ranges.push({ from, to: sorted[i]! });
      from = sorted[i + 1]!;
    }
  }
  return ranges;
}

/** Every range from every CIDR. */
export function desiredRules(ranges: ReadonlyArray<{ from: number; to: number }>, cidrs: readonly string[]): IngressRule[] {
  return ranges.flatMap(({ from, to }) => cidrs.map((cidr) => ({ fromPort: from, toPort: to, cidr })));
}

export interface RuleDiff {
  readonly authorize: readonly IngressRule[];
  readonly revoke: readonly ObservedRule[];
}

/**
 * Our rules (`observed`, only those that carry our marker) against the wanted ones. A wanted rule that
 * someone else's rule repeats (same ports and CIDR) is open already and is not authorized: AWS refuses ours
 * as a duplicate whatever its description, so it would never show, and ours no longer wanted, which close
 * only once every new one shows, would stay open.
 */
export function diffRules(desired: readonly IngressRule[], observed: readonly ObservedRule[], others: readonly IngressRule[]): RuleDiff {
  const have = new Set([...observed, ...others].map(ruleKey));
  const want = new Set(desired.map(ruleKey));
  const seen = new Set<string>();
  // A rule of ours that is there twice (made by hand with our description) is one too many.
  const revoke = observed.filter((rule) => {
    const key = ruleKey(rule);
    const extra = !want.has(key) || seen.has(key);
    seen.add(key);
    return extra;
  });
  return { authorize: desired.filter((rule) => !have.has(ruleKey(rule))), revoke };
}

/**
 * The unwanted rules of ours (`revoke`) that can close now: those whose ports in use all stay open through
 * a rule that stays (ours not revoked, anyone else's) for the same CIDR. One whose replacement does not show
 * yet waits for it; the others go at once, even while new rules keep coming.
 */
export function closableNow(revoke: readonly ObservedRule[], observed: readonly ObservedRule[], others: readonly IngressRule[], openPorts: readonly number[]): ObservedRule[] {
  const revoked = new Set(revoke.map((rule) => rule.id));
  const staying = [...observed.filter((rule) => !revoked.has(rule.id)), ...others];
  const covered = (port: number, cidr: string): boolean => staying.some((rule) => rule.cidr === cidr && rule.fromPort <= port && port <= rule.toPort);
  return revoke.filter((rule) => openPorts.every((port) => port < rule.fromPort || port > rule.toPort || covered(port, rule.cidr)));
}
