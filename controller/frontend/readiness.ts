import type { Store } from '../store/store.js';
import { systemClock, type Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';

/** How long a check waits for the store: under the job file's 2 s check timeout, so the check gets the reason. */
const READ_LIMIT_MS = 1_000;

/**
 * Whether the store answers this front end now, for `/readyz`: without it the front end cannot create,
 * delete or keep a session alive (a keepalive that fails lets the session expire), so its users are better
 * sent to a replica that reaches its store. Asked by a read of one key; checks that come while a read is on
 * its way share it, so a slow store is not sent a pile of them.
 */
export class StoreReadiness {
  private reading: Promise<string | undefined> | undefined;
  /** The last problem logged, so an outage is logged once when it starts and once when it ends. */
  private problem: string | undefined;

  constructor(
    private readonly store: Store,
    private readonly key: string,
    private readonly log: Logger,
    private readonly clock: Clock = systemClock,
  ) {}

  /**
   * Why the store cannot be used now, or undefined when it answered. An agent that hangs (accepts and never
   * answers) is reported after READ_LIMIT_MS, not after the store's own timeouts and retries (tens of
   * seconds), which would leave every check timing out with no reason and nothing logged.
   */
  check(): Promise<string | undefined> {
    this.reading ??= this.store
      .get(this.key)
      .then(
        () => undefined,
        (error: unknown) => (error instanceof Error ? error.message : String(error)),
      )
      .finally(() => (this.reading = undefined));
    let timer: unknown;
    const late = new Promise<string>((resolve) => {
      timer = this.clock.setTimeout(() => resolve(`the store did not answer a read of ${this.key} within ${READ_LIMIT_MS} ms`), READ_LIMIT_MS);
    });
    return Promise.race([this.reading, late]).then((problem) => {
      this.clock.clearTimeout(timer);
      this.noteChange(problem);
      return problem;
    });
  }

  private noteChange(problem: string | undefined): void {
    if ((problem === undefined) === (this.problem === undefined)) return;
    if (problem === undefined) this.log.info({ was: this.problem }, 'the store answers again: ready');
    else this.log.warn({ problem, key: this.key }, 'the store does not answer: not ready (/readyz answers 503) until it does');
    this.problem = problem;
  }
}
