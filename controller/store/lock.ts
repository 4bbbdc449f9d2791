/**
 * Leases and locks for leader election, shaped after Consul sessions: a session lives while it is renewed
 * within its TTL; a key acquired with a session is locked until the session releases it or ends. When a
 * session ends without releasing (TTL expiry, destroy), the keys it held cannot be acquired again for its
 * lock-delay, so a holder that did not notice it lost the lease has time to stop.
 *
 * Only the Consul store offers this. The embedded store is one process that holds its file exclusively,
 * so it is always the leader and needs no lease (see SoleLeader in controller/leader.ts).
 */
export interface LeaseOptions {
  /** Shown in Consul's session list. */
  readonly name: string;
  /** MIN_SESSION_TTL_SECONDS to MAX_SESSION_TTL_SECONDS. */
  readonly ttlSeconds: number;
  /** 0 to MAX_LOCK_DELAY_SECONDS. */
  readonly lockDelaySeconds: number;
}

export interface LockService {
  /** Creates a session that releases its locks when it ends; returns its id. */
  createSession(options: LeaseOptions): Promise<string>;
  /** Restarts the session's TTL; false when the session no longer exists. */
  renewSession(id: string): Promise<boolean>;
  /** Ends the session; its locks are released and their lock-delay starts. Ending a missing session succeeds. */
  destroySession(id: string): Promise<void>;
  /**
   * Locks `key` for `session` and sets its value. False when another session holds it, or while the key is
   * in its lock-delay. Re-acquiring a key the session already holds succeeds.
   */
  acquire(key: string, value: string, session: string): Promise<boolean>;
  /** Unlocks `key` (its value becomes empty) if `session` holds it; false otherwise. No lock-delay follows. */
  release(key: string, session: string): Promise<boolean>;
}

/** Consul's bounds (session TTLs 10 s to 24 h; lock-delays are capped at 60 s). */
export const MIN_SESSION_TTL_SECONDS = 10;
export const MAX_SESSION_TTL_SECONDS = 86_400;
export const MAX_LOCK_DELAY_SECONDS = 60;
