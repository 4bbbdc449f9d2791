import type { SessionSpec, WorkloadFailure } from '../api/types.js';
import type { ConditionInput } from './status.js';

/** The operator's lifecycle settings, in milliseconds (0 turns a limit off where noted). */
export interface LifecyclePolicy {
  readonly startTimeoutMs: number;
  /** 0: no cap. */
  readonly maxLifetimeMs: number;
  readonly maxRestarts: number;
  readonly restartWindowMs: number;
  readonly restartBackoffMs: number;
  readonly failedRetentionMs: number;
  /** 0: sessions never expire for idleness. Sessions that ask for no timeout of their own get this one. */
  readonly idleTimeoutMs: number;
  /** The longest idle timeout a session may ask for (`spec.idle.timeoutSeconds`); 0: no limit, "never" included. */
  readonly idleMaxTimeoutMs: number;
  readonly idleWarningMs: number;
}

/** The longest wait before a failed workload is replaced, however often it failed. */
const maxRestartDelayMs = 5 * 60_000;

export type ExpiryReason = 'IdleTimeout' | 'MaxLifetime';

/** When a session ends unless something happens first, and when it is warned. */
export interface Expiry {
  readonly at: number;
  readonly warnAt: number;
  readonly reason: ExpiryReason;
}

/** The part of the policy that decides when a session expires (all a front end needs). */
export type ExpiryPolicy = Pick<LifecyclePolicy, 'idleTimeoutMs' | 'idleMaxTimeoutMs' | 'idleWarningMs' | 'maxLifetimeMs'>;

/**
 * The expiry policy one session runs under: its own idle timeout (`spec.idle.timeoutSeconds`) held to the
 * operator's current maximum, else the operator's. The front end refuses a timeout beyond the maximum, but a
 * record written to the store directly, or created before the maximum was lowered, is not failed for it: it
 * gets the maximum (and one asking "never" (0) gets the maximum too while there is one).
 */
export function sessionExpiryPolicy(policy: ExpiryPolicy, spec: SessionSpec): ExpiryPolicy {
  const requested = spec.idle?.timeoutSeconds;
  if (requested === undefined) return policy;
  const max = policy.idleMaxTimeoutMs;
  const requestedMs = requested * 1000;
  const idleTimeoutMs = max === 0 ? requestedMs : requestedMs === 0 ? max : Math.min(requestedMs, max);
  return { ...policy, idleTimeoutMs };
}

/**
 * Why a session may not ask for this idle timeout, or undefined when it may: within the operator's maximum
 * (0, never, only when there is none), and longer than the warning, so the whole warning comes before the end.
 */
export function idleTimeoutProblem(policy: ExpiryPolicy, timeoutSeconds: number): string | undefined {
  const warning = policy.idleWarningMs / 1000;
  const max = policy.idleMaxTimeoutMs / 1000;
  const allowed = timeoutSeconds === 0 ? max === 0 : timeoutSeconds > warning && (max === 0 || timeoutSeconds <= max);
  if (allowed) return undefined;
  return max === 0
    ? `must be above ${warning} (idle.warningSeconds), or 0 for never`
    : `must be above ${warning} (idle.warningSeconds) and at most ${max} (idle.maxTimeoutSeconds)`;
}

/**
 * The session's end, computed only from stored times (first Ready, last activity), so every replica and
 * every restart agrees: the idle deadline moves with activity, the lifetime cap does not; the earlier wins.
 */
export function expiryOf(policy: ExpiryPolicy, readyAt: number, lastActivityAt: number | undefined): Expiry | undefined {
  const candidates: Array<{ from: number; at: number; reason: ExpiryReason }> = [];
  const idleFrom = Math.max(readyAt, lastActivityAt ?? readyAt);
  if (policy.idleTimeoutMs > 0) candidates.push({ from: idleFrom, at: idleFrom + policy.idleTimeoutMs, reason: 'IdleTimeout' });
  if (policy.maxLifetimeMs > 0) candidates.push({ from: readyAt, at: readyAt + policy.maxLifetimeMs, reason: 'MaxLifetime' });
  const first = candidates.sort((a, b) => a.at - b.at)[0];
  if (first === undefined) return undefined;
  // A limit no longer than the warning (a stored record, or a warning raised since) is warned from its start.
  return { at: first.at, reason: first.reason, warnAt: Math.max(first.at - policy.idleWarningMs, first.from) };
}

/** `IdleWarning` from the warning time on, with the time left; the message is stable so the status is not rewritten. */
export function idleWarningCondition(expiry: Expiry, now: number): ConditionInput {
  const at = new Date(expiry.at).toISOString();
  if (now < expiry.warnAt) {
    return { type: 'IdleWarning', status: 'False', reason: 'Active', message: `the session runs until ${at} unless it stays idle` };
  }
  const left = `${Math.round((expiry.at - expiry.warnAt) / 1000)} s`;
  return expiry.reason === 'IdleTimeout'
    ? { type: 'IdleWarning', status: 'True', reason: 'Idle', message: `no activity: the session will be deleted at ${at} (in ${left}) unless there is activity` }
    : { type: 'IdleWarning', status: 'True', reason: 'MaxLifetime', message: `the session reaches its maximum lifetime and will be deleted at ${at} (in ${left})` };
}

/** The failures that still count: those within the restart window. */
export function recentFailures(policy: LifecyclePolicy, failures: readonly WorkloadFailure[], now: number): WorkloadFailure[] {
  return failures.filter((failure) => now - Date.parse(failure.time) < policy.restartWindowMs);
}

/** Backoff before replacing a failed workload: the base, doubling with each failure in the window. */
export function restartDelayMs(policy: LifecyclePolicy, failuresInWindow: number): number {
  return Math.min(policy.restartBackoffMs * 2 ** Math.max(0, failuresInWindow - 1), maxRestartDelayMs);
}

/**
 * A duration as a short phrase for messages: seconds under 2 min, minutes under 2 h, else hours, with what is
 * left over after the whole unit given too (150 s is "2 min 30 s"), so a limit reads as exactly what it is.
 */
export function formatSeconds(ms: number): string {
  const seconds = Math.round(ms / 1000);
  if (seconds < 120) return `${seconds} s`;
  const [unit, size] = seconds < 7200 ? ['min', 60] : ['h', 3600];
  const rest = seconds % size;
  const parts = [`${Math.floor(seconds / size)} ${unit}`];
  if (rest >= 60) parts.push(`${Math.floor(rest / 60)} min`);
  if (rest % 60 > 0) parts.push(`${rest % 60} s`);
  return parts.join(' ');
}
