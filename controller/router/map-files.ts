import { writeFileAtomic } from '../util/files.js';
import type { Logger } from '../util/log.js';
import { renderMap } from './haproxy-config.js';

/** What the two map files should hold: key → value for each. */
export interface MapContents {
  readonly hosts: ReadonlyMap<string, string>;
  readonly ports: ReadonlyMap<string, string>;
}

/** Wait before writing again after a failed write. */
const RETRY_MS = 1_000;
/** Default least time between the starts of two writes. */
const MIN_INTERVAL_MS = 1_000;

/**
 * Keeps HAProxy's two map files equal to the latest route table, in the background. HAProxy serves from
 * its live maps; the files only matter when it starts or reloads, and the data plane resyncs the live maps
 * after either. Their durable rewrite (the whole table rendered and fsynced: tens of ms, hundreds on a busy
 * disk) therefore never delays a route going live. One write runs at a time, at most one a second by
 * default, and contents passed meanwhile replace any still waiting: under steady churn the files cost one
 * render and fsync a second (rendering 10,000 routes takes ~30 ms of CPU), and may lag the live maps by
 * about that long, which a restart's resync covers. A failed write is retried; flush() writes at once.
 */
export class MapFileWriter {
  private pending: MapContents | undefined;
  private writing = false;
  private retryTimer: NodeJS.Timeout | undefined;
  /** Set while waiting out the least interval before the next write. */
  private intervalTimer: NodeJS.Timeout | undefined;
  private lastStartedAt = Number.NEGATIVE_INFINITY;
  /** A flush is waiting: write without waiting out the interval. */
  private urgent = false;
  /** The text last written to each file, to skip writes that change nothing. */
  private readonly written = new Map<string, string>();
  /** Bumped when `written` is forgotten, so a write already running does not record its text afterwards. */
  private generation = 0;
  private waiters: Array<{ readonly resolve: () => void; readonly reject: (error: unknown) => void }> = [];

  constructor(
    private readonly files: { readonly hosts: string; readonly ports: string },
    private readonly log: Logger,
    private readonly minIntervalMs = MIN_INTERVAL_MS,
  ) {}

  /** Writes `contents` soon. With `rewrite`, files are written even if our last write already held this text. */
  write(contents: MapContents, rewrite = false): void {
    if (rewrite) {
      this.written.clear();
      this.generation++;
    }
    this.pending = contents;
    this.pump();
  }

  /** Writes at once and resolves when the files hold the latest contents passed; rejects if that write failed (it is retried). */
  flush(): Promise<void> {
    if (this.pending === undefined && !this.writing) return Promise.resolve();
    const flushed = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    this.urgent = true;
    clearTimeout(this.intervalTimer);
    this.intervalTimer = undefined;
    this.pump();
    return flushed;
  }

  private pump(): void {
    if (this.writing || this.retryTimer !== undefined || this.intervalTimer !== undefined || this.pending === undefined) return;
    const wait = this.lastStartedAt + this.minIntervalMs - Date.now();
    if (wait > 0 && !this.urgent) {
      this.intervalTimer = setTimeout(() => {
        this.intervalTimer = undefined;
        this.pump();
      }, wait);
      this.intervalTimer.unref();
      return;
    }
    const contents = this.pending;
    this.pending = undefined;
    this.writing = true;
    this.lastStartedAt = Date.now();
    this.writeBoth(contents).then(
      () => {
        this.writing = false;
        if (this.pending === undefined) this.settle((waiter) => waiter.resolve());
        this.pump();
      },
      (error: unknown) => {
        this.writing = false;
        this.pending ??= contents;
        this.log.error({ err: error, retryInMs: RETRY_MS }, 'writing the HAProxy map files failed; HAProxy serves the routes, but would not load them if it restarted now');
        this.settle((waiter) => waiter.reject(error));
        this.retryTimer = setTimeout(() => {
          this.retryTimer = undefined;
          this.pump();
        }, RETRY_MS);
        // A retry pending must not keep a stopping process alive.
        this.retryTimer.unref();
      },
    );
  }

  private settle(notify: (waiter: MapFileWriter['waiters'][number]) => void): void {
    this.urgent = false;
    this.waiters.splice(0).forEach(notify);
  }

  private async writeBoth(contents: MapContents): Promise<void> {
    // Rendering the whole table costs a few ms of CPU: let the apply that asked for this write, and the next
    // change waiting behind it, go first.
    await new Promise((resolve) => setImmediate(resolve));
    await this.writeFile(this.files.hosts, contents.hosts);
    await this.writeFile(this.files.ports, contents.ports);
  }

  private async writeFile(file: string, entries: ReadonlyMap<string, string>): Promise<void> {
    const text = renderMap(entries);
    if (this.written.get(file) === text) return;
    const generation = this.generation;
    await writeFileAtomic(file, text);
    if (generation === this.generation) this.written.set(file, text);
  }
}
