import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Subscription } from 'rxjs';
import type { Session } from '../api/types.js';
import type { Authenticator, Identity } from './identity.js';
import type { SessionService } from './sessions.js';
import type { StreamCounts } from './stream-limit.js';

/** A comment line this often keeps proxies (HAProxy's `timeout server`, load balancers) from closing an idle stream. */
export const heartbeatMs = 15_000;

/** Status streams (these and the v2 job sockets) one user may hold open in one process, unless configured. */
export const DEFAULT_STATUS_STREAMS_PER_USER = 20;

/** setTimeout holds at most 2^31−1 ms; a later time is waited for in steps. */
const maxTimerDelayMs = 2 ** 31 - 1;

/** Why a stream opened with a bearer token ends when the token does: the client must get a new one. */
export const tokenExpiredReason = 'the bearer token has expired; authenticate again';

/**
 * Calls `end` with tokenExpiredReason once the caller's credentials expire (a bearer token's exp), so a
 * stream is never served on a token the front end would now refuse; returns what cancels it. Never calls
 * `end` before returning, even for credentials that expired meanwhile.
 */
export function endOnExpiry(identity: Identity, now: () => number, end: (reason: string) => void): () => void {
  const at = identity.expiresAt;
  if (at === undefined) return () => undefined;
  let timer: NodeJS.Timeout;
  const wait = (): void => {
    timer = setTimeout(() => (now() >= at ? end(tokenExpiredReason) : wait()), Math.min(Math.max(0, at - now()), maxTimerDelayMs));
    timer.unref();
  };
  wait();
  return () => clearTimeout(timer);
}

/**
 * `GET /api/v1/sessions/{id}/events`: the session's status as server-sent events. On connect and on every
 * change: `event: session` with the Session JSON (as `GET /api/v1/sessions/{id}` answers it); once the
 * session is gone: `event: gone` and the end of the stream. Fed from the process's shared caches (one
 * store watch per process, however many streams). A slow client never makes memory grow: while its
 * socket is backed up, only the latest state is kept and sent when it drains. Each user may hold only so
 * many status streams open (`streams`, shared with the v2 job sockets); beyond that the answer is 429. A
 * stream opened with a bearer token ends (`event: closing`) when the token expires.
 */
export function registerEvents(app: FastifyInstance, sessions: SessionService, auth: Authenticator, streams: StreamCounts, now: () => number): void {
  const open = new Set<EventStream>();
  // Streams never end on their own; the server must end them to close.
  app.addHook('preClose', (done) => {
    for (const stream of open) stream.end('the server is shutting down');
    done();
  });

  app.get<{ Params: { id: string } }>('/api/v1/sessions/:id/events', async (request, reply) => {
    const identity = auth.identify(request, reply);
    // Reading it first answers 404 for a missing session or someone else's, like every other route.
    const session = await sessions.show(identity, request.params.id);
    const release = streams.acquire(identity.user);
    const response = beginResponse(reply, eventStreamHeaders);
    if (response === undefined) {
      release();
      return;
    }
    const stream = new EventStream(response, () => {
      open.delete(stream);
      release();
      cancelExpiry();
    });
    open.add(stream);
    const cancelExpiry = endOnExpiry(identity, now, (reason) => stream.end(reason));
    stream.follow(sessions.watch(request.params.id, session).subscribe((latest) => stream.send(latest)));
  });
}

/** The headers of a server-sent event stream. */
export const eventStreamHeaders: OutgoingHttpHeaders = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache, no-transform',
  connection: 'keep-alive',
  // Proxies that buffer responses (nginx) must pass events through as they come.
  'x-accel-buffering': 'no',
};

/**
 * Takes the response over from fastify and begins it (200) with these headers and those set on the reply (a
 * cookie). Undefined when the client left while the answer was being prepared (its 'close' has come and
 * gone, so nothing may wait for it), and for a HEAD request, which is answered with the headers alone: a
 * response to HEAD has no body, so its headers would otherwise wait for a first write that never goes out.
 */
export function beginResponse(reply: FastifyReply, headers: OutgoingHttpHeaders): ServerResponse | undefined {
  reply.hijack();
  if (reply.raw.destroyed) return undefined;
  reply.raw.writeHead(200, { ...(reply.getHeaders() as OutgoingHttpHeaders), ...headers });
  if (reply.request.method === 'HEAD') {
    reply.raw.end();
    return undefined;
  }
  return reply.raw;
}

class EventStream {
  private subscription: Subscription | undefined;
  private readonly heartbeat: NodeJS.Timeout;
  /** The latest state not yet written because the socket was backed up. */
  private pending: Session | undefined | null = null;
  private ended = false;

  constructor(
    private readonly response: ServerResponse,
    private readonly onEnd: () => void,
  ) {
    this.heartbeat = setInterval(() => this.write(': keepalive\n\n'), heartbeatMs);
    this.heartbeat.unref();
    response.on('close', () => this.end());
    response.on('drain', () => this.flush());
  }

  follow(subscription: Subscription): void {
    if (this.ended) subscription.unsubscribe();
    else this.subscription = subscription;
  }

  send(session: Session | undefined): void {
    if (this.ended) return;
    if (this.response.writableNeedDrain) {
      this.pending = session;
      return;
    }
    this.writeState(session);
  }

  end(reason?: string): void {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.heartbeat);
    this.subscription?.unsubscribe();
    if (reason !== undefined && !this.response.writableEnded) this.response.write(`event: closing\ndata: ${JSON.stringify({ reason })}\n\n`);
    if (!this.response.writableEnded) this.response.end();
    this.onEnd();
  }

  private flush(): void {
    if (this.pending === null || this.ended) return;
    const latest = this.pending;
    this.pending = null;
    this.writeState(latest);
  }

  private writeState(session: Session | undefined): void {
    if (session === undefined) {
      this.write('event: gone\ndata: {}\n\n');
      this.end();
      return;
    }
    this.write(`event: session\ndata: ${JSON.stringify(session)}\n\n`);
  }

  private write(chunk: string): void {
    if (!this.ended && !this.response.writableEnded) this.response.write(chunk);
  }
}
