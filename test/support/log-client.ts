import http from 'node:http';

/** One server-sent event of a log stream. */
export interface LogStreamEvent {
  readonly id?: string;
  readonly event: string;
  readonly data: Record<string, unknown>;
}

/**
 * A client of a followed task log (`GET /api/v1/sessions/{id}/logs?follow=true`) on a raw socket: every
 * event as parsed, the text of the log events, and a way to stop reading (back-pressure).
 */
export class LogClient {
  readonly events: LogStreamEvent[] = [];
  status = 0;
  /** Everything received, as text. */
  body = '';
  /** Bytes received. */
  received = 0;
  ended = false;
  private buffer = '';
  private response: http.IncomingMessage | undefined;
  private readonly request: http.ClientRequest;

  constructor(url: string, headers: Record<string, string>, options: { paused?: boolean; keepBody?: boolean; agent?: http.Agent } = {}) {
    const keepBody = options.keepBody ?? true;
    this.request = http.get(url, { headers, ...(options.agent ? { agent: options.agent } : {}) }, (response) => {
      this.response = response;
      this.status = response.statusCode ?? 0;
      if (options.paused) response.pause();
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => {
        this.received += Buffer.byteLength(chunk);
        if (keepBody) this.parse(chunk);
      });
      response.on('end', () => (this.ended = true));
      response.on('close', () => (this.ended = true));
    });
    this.request.on('error', () => (this.ended = true));
  }

  /** The text of every log event so far. */
  get text(): string {
    return this.events.filter((event) => event.event === 'log').map((event) => String(event.data.text)).join('');
  }

  /** The id of the last event that had one (what an EventSource sends back as Last-Event-ID). */
  get lastId(): string | undefined {
    return this.events.filter((event) => event.id !== undefined).at(-1)?.id;
  }

  resume(): void {
    this.response?.resume();
  }

  close(): void {
    this.request.destroy();
  }

  private parse(chunk: string): void {
    this.body += chunk;
    this.buffer += chunk;
    for (let end = this.buffer.indexOf('\n\n'); end >= 0; end = this.buffer.indexOf('\n\n')) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const fields: Record<string, string> = {};
      for (const line of block.split('\n')) if (!line.startsWith(':')) fields[line.slice(0, line.indexOf(':'))] = line.slice(line.indexOf(':') + 2);
      if (fields.event !== undefined) this.events.push({ ...(fields.id === undefined ? {} : { id: fields.id }), event: fields.event, data: JSON.parse(fields.data ?? '{}') as Record<string, unknown> });
    }
  }
}
