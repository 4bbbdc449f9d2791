import type { Logger } from '../util/log.js';
import type { HaproxyDataPlane } from './data-plane.js';
import type { HaproxyProcess } from './haproxy-process.js';

/**
 * Restarts a local HAProxy that died (a crash, an operator's kill -9) and brings its live maps back in line
 * with the routes: the restarted HAProxy loads the map files, and a resync re-applies the latest table on
 * top, covering any change that reached only the dead process. Restart attempts back off from 500 ms to 30 s.
 */
export class HaproxySupervisor {
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private stopped = false;

  constructor(
    private readonly haproxy: HaproxyProcess,
    private readonly dataPlane: HaproxyDataPlane,
    private readonly log: Logger,
  ) {}

  /** Call when HAProxy exited without being asked to. */
  restartSoon(): void {
    if (this.stopped || this.timer) return;
    const delay = Math.min(500 * 2 ** this.failures, 30_000);
    this.log.warn({ restartInMs: delay }, 'haproxy died; restarting it');
    this.timer = setTimeout(() => void this.restart(), delay);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  private async restart(): Promise<void> {
    this.timer = undefined;
    if (this.stopped) return;
    try {
      // After a failed resync HAProxy is running already: only the resync is tried again.
      await this.dataPlane.replaceWorker(async () => {
        if (!this.haproxy.running) await this.haproxy.start();
      });
      this.failures = 0;
      this.log.info('haproxy restarted with every route');
    } catch (error) {
      this.failures += 1;
      this.log.error({ err: error, failures: this.failures }, 'restarting haproxy failed');
      this.restartSoon();
    }
  }
}
