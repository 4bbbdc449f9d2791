import WebSocket from 'ws';
import { waitFor } from './wait.js';

export interface V2Message {
  readonly type: string;
  readonly data: Record<string, unknown>;
}

/** A v2 client's job websocket: every message it received, in order, and how it was closed. */
export class V2Socket {
  readonly messages: V2Message[] = [];
  closed: { code: number; reason: string } | undefined;

  private constructor(private readonly socket: WebSocket) {
    socket.on('message', (data) => this.messages.push(JSON.parse(data.toString()) as V2Message));
    socket.on('close', (code, reason) => (this.closed = { code, reason: reason.toString() }));
  }

  /** Opens `url`; resolves once the upgrade succeeded (the server may still close it at once). */
  static open(url: string): Promise<V2Socket> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url, { handshakeTimeout: 5000 });
      // Listening from the start: the server may send and close before 'open' is handled.
      const client = new V2Socket(socket);
      socket.once('open', () => resolve(client));
      socket.once('error', reject);
      socket.once('unexpected-response', (_request, response) => reject(new Error(`websocket upgrade refused: HTTP ${response.statusCode}`)));
    });
  }

  /** The types received so far, in order. */
  get types(): string[] {
    return this.messages.map((message) => message.type);
  }

  /** Waits until `count` messages have arrived and returns the last of them. */
  async nth(count: number, timeoutMs?: number): Promise<V2Message> {
    await waitFor(`message ${count} (have ${this.types.join(', ') || 'none'})`, () => this.messages.length >= count, timeoutMs);
    return this.messages[count - 1]!;
  }

  /** Waits until a message of `type` follows the first `after` messages and returns it. */
  next(type: string, after: number, timeoutMs?: number): Promise<V2Message> {
    return waitFor(`a ${type} message after message ${after}`, () => this.messages.slice(after).find((message) => message.type === type), timeoutMs);
  }

  async whenClosed(timeoutMs?: number): Promise<{ code: number; reason: string }> {
    return waitFor('the socket to close', () => this.closed, timeoutMs);
  }

  send(message: unknown): void {
    this.socket.send(JSON.stringify(message));
  }

  close(): void {
    this.socket.close();
  }
}
