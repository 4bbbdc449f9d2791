import http from 'node:http';
import { performance } from 'node:perf_hooks';

/** A session as its stream shows it: only what the bench looks at. */
interface StreamedSession {
  readonly status?: { readonly queuePosition?: number };
}

/** A stream waiting for the event that shows one queue position. */
interface Awaited {
  readonly position: number;
  readonly resolve: (arrivedAt: number) => void;
  readonly reject: (error: Error) => void;
}

/**
 * One open `GET /api/v1/sessions/{id}/events` stream (server-sent events), read with node:http as plain
 * text, the way the web page's EventSource reads it: frames end with a blank line, `event: session`
 * frames carry the session JSON.
 */
export class StatusStream {
  /** Resolves at the first `session` event (the state on connect); rejects if the stream fails first. */
  readonly opened: Promise<void>;
  private buffer = '';
  private awaited: Awaited | undefined;
  private failure: Error | undefined;
  private markOpened!: () => void;
  private failOpen!: (error: Error) => void;
  private readonly request: http.ClientRequest;

  constructor(
    readonly url: string,
    token: string,
    agent: http.Agent,
  ) {
    this.opened = new Promise((resolve, reject) => {
      this.markOpened = resolve;
      this.failOpen = reject;
    });
    this.request = http.get(url, { agent, headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' } }, (response) => {
      if (response.statusCode !== 200) {
        this.fail(new Error(`GET ${url} answered ${response.statusCode}`));
        response.resume();
        return;
      }
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => this.receive(chunk));
      response.on('end', () => this.fail(new Error(`the stream ${url} ended`)));
    });
    this.request.on('error', (error) => this.fail(new Error(`the stream ${url} failed: ${error.message}`, { cause: error })));
  }

  /**
   * Resolves with the time (performance.now()) at which the next event showing `position` as the session's
   * queue position arrives; rejects if the stream fails first.
   */
  arrivalOf(position: number): Promise<number> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => (this.awaited = { position, resolve, reject }));
  }

  close(): void {
    this.fail(new Error(`the stream ${this.url} was closed`));
    this.request.destroy();
  }

  private receive(chunk: string): void {
    const arrivedAt = performance.now();
    this.buffer += chunk;
    for (let end = this.buffer.indexOf('\n\n'); end >= 0; end = this.buffer.indexOf('\n\n')) {
      const frame = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      this.frame(frame, arrivedAt);
    }
  }

  private frame(frame: string, arrivedAt: number): void {
    let event = 'message';
    const data: string[] = [];
    for (const line of frame.split('\n')) {
      if (line.startsWith('event:')) event = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
    }
    // Comments (the heartbeat) have neither.
    if (data.length === 0) return;
    if (event !== 'session') {
      this.fail(new Error(`the stream ${this.url} sent "${event}": ${data.join('\n')}`));
      return;
    }
    let session: StreamedSession;
    try {
      session = JSON.parse(data.join('\n')) as StreamedSession;
    } catch (error) {
      this.fail(new Error(`the stream ${this.url} sent a session that is not JSON: ${(error as Error).message}`, { cause: error }));
      return;
    }
    this.markOpened();
    if (this.awaited !== undefined && session.status?.queuePosition === this.awaited.position) {
      this.awaited.resolve(arrivedAt);
      this.awaited = undefined;
    }
  }

  private fail(error: Error): void {
    if (this.failure !== undefined) return;
    this.failure = error;
    this.failOpen(error);
    this.awaited?.reject(error);
    this.awaited = undefined;
  }
}

/** A stream that has not shown its first event this long after the request is counted as failed. */
const OPEN_TIMEOUT_MS = 15_000;

/**
 * Opens one stream per target, `concurrency` connections being set up at a time (a burst of thousands of
 * connects would overflow the server's listen backlog and measure SYN retries instead), each counted as
 * open once its first event arrived. On failure no further stream is opened and every one opened so far
 * is closed.
 */
export async function openStreams(
  api: string,
  targets: readonly { readonly id: string; readonly token: string }[],
  concurrency: number,
  agent: http.Agent,
): Promise<StatusStream[]> {
  const streams: StatusStream[] = [];
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < targets.length && !failed; i = next++) {
      const { id, token } = targets[i]!;
      const stream = new StatusStream(`${api}/api/v1/sessions/${id}/events`, token, agent);
      streams.push(stream);
      try {
        await withTimeout(stream.opened, OPEN_TIMEOUT_MS, `the stream ${stream.url} showed no event`);
      } catch (error) {
        failed = true;
        throw error;
      }
    }
  };
  const outcomes = await Promise.allSettled(Array.from({ length: Math.min(concurrency, targets.length) }, worker));
  const rejected = outcomes.find((outcome): outcome is PromiseRejectedResult => outcome.status === 'rejected');
  if (rejected !== undefined) {
    for (const stream of streams) stream.close();
    throw new Error(`opening ${targets.length} streams failed after ${streams.length}: ${(rejected.reason as Error).message}`, { cause: rejected.reason });
  }
  return streams;
}

/** `promise`, or an error saying `what` once `ms` have passed. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
