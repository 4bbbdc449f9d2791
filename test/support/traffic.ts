import net from 'node:net';

/** One TCP round trip: connect to host:port, send a line, expect the same line back (the `echo` template's service). */
export function echo(host: string, port: number, timeoutMs = 5_000): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const line = `ping ${port} ${Math.random()}\n`;
    const socket = net.connect({ host, port });
    let received = '';
    const fail = (error: Error): void => {
      socket.destroy();
      reject(new Error(`${host}:${port}: ${error.message}`));
    };
    socket.setTimeout(timeoutMs, () => fail(new Error(`no answer within ${timeoutMs} ms`)));
    socket.once('connect', () => socket.write(line));
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString();
      if (received === line) {
        socket.end();
        resolve();
      }
    });
    socket.once('error', fail);
    socket.once('close', () => fail(new Error(received === '' ? 'closed without an answer' : `answered ${JSON.stringify(received)}`)));
  });
}

export interface TrafficCounts {
  readonly ok: number;
  readonly failed: number;
  /** The first few failures, for the assertion message. */
  readonly failures: readonly string[];
}

/**
 * Echo round trips through one router, round-robin over the ports `targets` returns (read again on each
 * pass, so sessions can come and go), from a few workers with a short pause between round trips, counting
 * successes and failures until stopped.
 */
export class TrafficLoop {
  private ok = 0;
  private failed = 0;
  private readonly failures: string[] = [];
  private running = true;
  private readonly workers: Promise<void>[];

  constructor(
    readonly host: string,
    private readonly targets: () => readonly number[],
    workers = 2,
    // Each round trip leaves sockets in TIME_WAIT for a minute: a modest rate keeps loopback's ports free.
    private readonly pauseMs = 50,
  ) {
    this.workers = Array.from({ length: workers }, (_, n) => this.work(n, workers));
  }

  /** The counts so far. */
  get counts(): TrafficCounts {
    return { ok: this.ok, failed: this.failed, failures: [...this.failures] };
  }

  /** Stops after the round trips in flight and returns the counts. */
  async stop(): Promise<TrafficCounts> {
    this.running = false;
    await Promise.all(this.workers);
    return this.counts;
  }

  private async work(worker: number, workers: number): Promise<void> {
    let next = worker;
    while (this.running) {
      const ports = this.targets();
      if (ports.length > 0) {
        const port = ports[next % ports.length]!;
        next += workers;
        try {
          await echo(this.host, port);
          this.ok += 1;
        } catch (error) {
          this.failed += 1;
          if (this.failures.length < 10) this.failures.push(`${new Date().toISOString()} ${(error as Error).message}`);
        }
      }
      await new Promise((resolve) => setTimeout(resolve, this.pauseMs));
    }
  }
}

/** Checks every port once through `host`; resolves with the ports that did not answer. */
export async function unreachable(host: string, ports: readonly number[]): Promise<number[]> {
  const results = await Promise.all(ports.map((port) => echo(host, port, 2_000).then(() => undefined, () => port)));
  return results.filter((port): port is number => port !== undefined);
}
