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

/**
 * Keeps HAProxy's two map files equal to the latest route table, in the background. HAProxy serves from
 * its live maps; the files only matter when it starts or reloads, and the data plane resyncs the live maps
 * after either. Their durable rewrite (the whole table rendered and fsynced: tens of ms, hundreds on a busy
 * disk) therefore never delays a route going live. One write runs at a time, and contents passed meanwhile
 * replace any still waiting, so a burst of changes costs one or two writes. A failed write is retried.
 */
export class MapFileWriter {
  private pending: MapContents | undefined;
  private writing = false;
  private retryTimer: NodeJS.Timeout | undefined;
  /** The text last written to each file, to skip writes that change nothing. */
  private readonly written = new Map<string, string>();
  /** Bumped when `written` is forgotten, so a write already running does not record its text afterwards. */
  private generation = 0;
  private waiters: Array<{ readonly resolve: () => void; readonly reject: (error: unknown) => void }> = [];

  constructor(
    private readonly files: { readonly hosts: string; readonly ports: string },
    private readonly log: Logger,
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

  /** Resolves once the files hold the latest contents passed; rejects if that write failed (it is retried). */
  flush(): Promise<void> {
    if (this.pending === undefined && !this.writing) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private pump(): void {
    if (this.writing || this.retryTimer !== undefined || this.pending === undefined) return;
    const contents = this.pending;
    this.pending = undefined;
    this.writing = true;
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
