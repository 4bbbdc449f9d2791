import type { Condition, ConditionStatus, Endpoint, Phase, SessionEvent, SessionStatus, WorkloadFailure } from '../api/types.js';

/** The conditions a session's status carries, in the order they are reported. */
const conditionTypes = ['Admitted', 'Scheduled', 'Healthy', 'Routed', 'Exposed', 'Ready', 'IdleWarning'] as const;
export type ConditionType = (typeof conditionTypes)[number] | 'Valid';

export interface ConditionInput {
  readonly type: ConditionType;
  readonly status: ConditionStatus;
  readonly reason: string;
  readonly message: string;
}

export const maxEvents = 20;
/** Messages can quote what went wrong (an unreadable record, a task's output); the schema caps their length. */
const maxMessageLength = 2048;

const clip = (message: string): string => (message.length > maxMessageLength ? `${message.slice(0, maxMessageLength - 1)}…` : message);

export interface StatusInput {
  readonly phase: Phase;
  readonly observedGeneration: number;
  readonly conditions: readonly ConditionInput[];
  readonly endpoints: Record<string, Endpoint>;
  readonly jobId?: string;
  readonly allocationId?: string;
  readonly queuePosition?: number;
  readonly estimatedStartAt?: string;
  readonly admittedAt?: string;
  readonly readyAt?: string;
  readonly expiresAt?: string;
  readonly failedAt?: string;
  readonly failures?: readonly WorkloadFailure[];
}

/** The optional fields copied as given; absent ones are dropped from the status. */
const optionalFields = ['queuePosition', 'estimatedStartAt', 'admittedAt', 'readyAt', 'expiresAt', 'failedAt', 'jobId', 'allocationId'] as const;

/**
 * Builds the next status from what the reconciler decided and the previous status: a condition keeps its
 * lastTransitionTime while its status is unchanged, and every transition (a phase change, a condition
 * changing status or reason) is appended to the bounded event history. The result is equal to the previous
 * status whenever nothing changed, so callers can skip the write.
 */
export function nextStatus(previous: SessionStatus | undefined, input: StatusInput, now: string): SessionStatus {
  const events: SessionEvent[] = [...(previous?.events ?? [])];
  const conditions: Condition[] = input.conditions.map(({ message, ...rest }) => ({ ...rest, message: clip(message) })).map((condition) => {
    const before = previous?.conditions.find((c) => c.type === condition.type);
    const transitioned = before === undefined || before.status !== condition.status;
    // News for the history: a condition that starts out True, one whose status flips, every new reason on
    // Ready (why the session is not serving), and a new reason while True (a warning that now says otherwise).
    const newsworthy =
      before === undefined
        ? condition.status === 'True'
        : transitioned || (before.reason !== condition.reason && (condition.type === 'Ready' || condition.status === 'True'));
    if (newsworthy) {
      events.push({ time: now, reason: condition.reason, message: clip(`${condition.type}=${condition.status}: ${condition.message}`) });
    }
    return {
      type: condition.type,
      status: condition.status,
      reason: condition.reason,
      message: condition.message,
      lastTransitionTime: transitioned ? now : before.lastTransitionTime,
    };
  });
  if (previous?.phase !== input.phase) {
    events.push({ time: now, reason: `Phase${input.phase}`, message: `phase is now ${input.phase}` });
  }
  const status: SessionStatus = {
    phase: input.phase,
    observedGeneration: input.observedGeneration,
    conditions,
    endpoints: input.endpoints,
    events: events.slice(-maxEvents),
  };
  for (const field of optionalFields) {
    const value = input[field];
    if (value !== undefined) (status as unknown as Record<string, unknown>)[field] = value;
  }
  if (input.failures !== undefined && input.failures.length > 0) status.failures = input.failures.map((failure) => ({ ...failure, message: clip(failure.message) }));
  return status;
}

/** The status shown for a session the controller has not reconciled yet. */
export function pendingStatus(): SessionStatus {
  return { phase: 'Pending', observedGeneration: 0, conditions: [], endpoints: {}, events: [] };
}

export function sameStatus(a: SessionStatus | undefined, b: SessionStatus): boolean {
  return a !== undefined && JSON.stringify(a) === JSON.stringify(b);
}
