import type { Subscription } from 'rxjs';
import { encodeRecord, parseRecord } from '../api/schemas.js';
import type { ControllerHeartbeat } from '../api/types.js';
import type { Store } from '../store/store.js';
import type { Logger } from '../util/log.js';
import type { Keys } from './keys.js';
import type { Leadership } from './leader.js';

export interface ReplicaHeartbeatOptions {
  readonly store: Store;
  readonly keys: Keys;
  readonly leadership: Leadership;
  readonly intervalMs: number;
  readonly log: Logger;
}

/**
 * Tells operators (`manticore status`, `GET /api/v1/cluster`) which controller replicas run and which one
 * leads: each replica rewrites `controllers/<host>-<pid>` every interval and at once when it wins or loses
 * the lead, and deletes it when it stops. A replica that died leaves a record whose heartbeat ages; readers
 * call it stale after three intervals, and the leader removes records stale for an hour.
 */
const removeStaleAfterMs = 3_600_000;

export class ReplicaHeartbeat {
  private readonly key: string;
  private readonly startedAt = new Date().toISOString();
  private timer: NodeJS.Timeout | undefined;
  private subscription: Subscription | undefined;
  /** The write on its way, if any; beats meanwhile set `due`, and one more write of the latest state follows. */
  private writing: Promise<void> | undefined;
  private due = false;
  private stopped = false;

  constructor(private readonly options: ReplicaHeartbeatOptions) {
    const { host, pid } = options.leadership.identity;
    this.key = options.keys.controller(host, pid);
  }

  start(): void {
    this.subscription = this.options.leadership.leading$.subscribe(() => this.beat());
    this.timer = setInterval(() => this.beat(), this.options.intervalMs);
    this.timer.unref();
  }

  /** Withdraws the record, so the replica disappears from the list at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.subscription?.unsubscribe();
    await this.writing;
    await this.options.store.delete(this.key).catch((error: unknown) => this.options.log.warn({ err: error, key: this.key }, 'could not withdraw the controller heartbeat'));
  }

  /**
   * One write at a time, so an older heartbeat never lands after a newer one. Beats while a write is on its
   * way (a store slow or not answering) make one more write, of the state when it is sent: queued beats
   * would pile up for as long as the store hangs, be written out of date, and hold up stop().
   */
  private beat(): void {
    this.due = true;
    this.writing ??= this.writeWhileDue();
  }

  private async writeWhileDue(): Promise<void> {
    while (this.due && !this.stopped) {
      this.due = false;
      await this.write();
    }
    this.writing = undefined;
  }

  private async write(): Promise<void> {
    const { identity, leading } = this.options.leadership;
    const record: ControllerHeartbeat = { host: identity.host, pid: identity.pid, startedAt: this.startedAt, heartbeatAt: new Date().toISOString(), leading };
    try {
      await this.options.store.put(this.key, encodeRecord('controller-heartbeat', record));
      if (record.leading) await this.removeLongDead();
    } catch (error) {
      this.options.log.warn({ err: error, key: this.key }, 'could not write the controller heartbeat');
    }
  }

  /** Records of replicas that died without withdrawing them; a few keys, listed only by the leader. */
  private async removeLongDead(): Promise<void> {
    const { store, keys, log } = this.options;
    const { entries } = await store.list(keys.controllers);
    for (const entry of entries) {
      let heartbeatAt: number;
      let problem: string | undefined;
      try {
        heartbeatAt = Date.parse(parseRecord<ControllerHeartbeat>('controller-heartbeat', entry.value).heartbeatAt);
      } catch (error) {
        // A live replica writes its own again within an interval.
        heartbeatAt = Number.NEGATIVE_INFINITY;
        problem = (error as Error).message;
      }
      if (Date.now() - heartbeatAt < removeStaleAfterMs) continue;
      if (!(await store.delete(entry.key, { cas: entry.modifyIndex }))) continue;
      if (problem === undefined) log.info({ key: entry.key }, 'removed the heartbeat of a controller replica gone for an hour');
      else log.warn({ key: entry.key, problem }, 'removed an unreadable controller heartbeat');
    }
  }
}
