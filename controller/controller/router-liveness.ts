import type { RouterHeartbeat } from '../api/types.js';
import type { Cache, CachedRecord } from './informer.js';

/** A router heard from within the stale time, and when it turns stale unless it heartbeats again. */
export interface LiveRouter extends RouterHeartbeat {
  readonly staleAt: number;
}

/**
 * Which routers are alive, judged by when this process sees their heartbeats arrive (the record's store
 * index moving) on its own clock, not by the time a router stamps in them: routers run on other hosts, and
 * a clock some minutes off would have a live router counted gone (sessions Ready before it serves them) or
 * a dead one counted alive (every new session held waiting for it). Only the heartbeats already stored when
 * this process starts watching are of unknown age: each counts as old as its stamp says, or as new if the
 * stamp is in the future, so a router that died before a restart is not waited for, and one whose clock is
 * behind is counted alive from its next heartbeat on.
 */
export class RouterLiveness {
  /** When each router's record was last seen to change, on this process's clock. */
  private readonly seenAt = new Map<string, number>();
  private watching = false;

  constructor(
    private readonly routers: Cache<CachedRecord<RouterHeartbeat>>,
    synced: Promise<void>,
    private readonly now: () => number,
    private readonly staleMs: number,
  ) {
    // Ends with the cache, when the informer stops.
    routers.changes.subscribe(({ id, previous, current }) => {
      if (current === undefined) this.seenAt.delete(id);
      else if (previous === undefined && !this.watching) this.seenAt.set(id, Math.min(this.now(), stampOf(current)));
      else if (previous?.entry.modifyIndex !== current.entry.modifyIndex) this.seenAt.set(id, this.now());
    });
    void synced.then(() => (this.watching = true));
  }

  /** The readable heartbeats of the routers heard from within the stale time. */
  live(): LiveRouter[] {
    const cutoff = this.now() - this.staleMs;
    const live: LiveRouter[] = [];
    for (const [id, seenAt] of this.seenAt) {
      const heartbeat = this.routers.get(id)?.value;
      if (heartbeat !== undefined && seenAt >= cutoff) live.push({ ...heartbeat, staleAt: seenAt + this.staleMs + 1 });
    }
    return live;
  }
}

/** An unreadable record has no stamp to go by: it counts as not alive until its next change. */
function stampOf(record: CachedRecord<RouterHeartbeat>): number {
  return record.value === undefined ? Number.NEGATIVE_INFINITY : Date.parse(record.value.heartbeatAt);
}
