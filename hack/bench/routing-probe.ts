import http from 'node:http';
import { performance } from 'node:perf_hooks';

const REQUEST_TIMEOUT_MS = 2_000;

/**
 * Asks HAProxy for a hostname over and over until it is routed, as a user given a fresh session URL would:
 * an unknown host is answered 404 at once, a routed one 200 by the workload. Connections are kept alive
 * (HAProxy looks the route up on every request), so a poll costs one round trip and no handshake.
 */
export class RouteProbe {
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 32 });

  constructor(
    private readonly port: number,
    private readonly intervalMs: number,
  ) {}

  /** performance.now() when `host` first answered 200, or undefined if it had not by `deadline` (a performance.now() time). */
  async firstSuccess(host: string, deadline: number): Promise<number | undefined> {
    while (performance.now() < deadline) {
      if ((await this.status(host)) === 200) return performance.now();
      await new Promise((resolve) => setTimeout(resolve, this.intervalMs));
    }
    return undefined;
  }

  close(): void {
    this.agent.destroy();
  }

  /** The status of one GET, or 0 when the request failed (reset, timeout), which the caller retries like a 404. */
  private status(host: string): Promise<number> {
    return new Promise((resolve) => {
      const request = http.get({ host: '127.0.0.1', port: this.port, path: '/', headers: { host }, agent: this.agent }, (response) => {
        response.resume();
        response.once('end', () => resolve(response.statusCode ?? 0));
        response.once('error', () => resolve(0));
      });
      request.setTimeout(REQUEST_TIMEOUT_MS, () => request.destroy(new Error('probe timed out')));
      request.once('error', () => resolve(0));
    });
  }
}
