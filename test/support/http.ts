import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import type { LookupFunction } from 'node:net';
import WebSocket from 'ws';

/**
 * Resolves `*.localhost` to 127.0.0.1 the way browsers and curl do, so tests can use the session URLs
 * exactly as users get them. Any other name is refused: tests never leave loopback.
 */
export const loopbackLookup: LookupFunction = (hostname, options, callback) => {
  if (hostname !== 'localhost' && !hostname.endsWith('.localhost') && hostname !== '127.0.0.1') {
    callback(Object.assign(new Error(`refusing to resolve ${hostname} in tests`), { code: 'ENOTFOUND' }), '', 4);
    return;
  }
  if ((options as { all?: boolean }).all) {
    (callback as unknown as (error: null, addresses: Array<{ address: string; family: number }>) => void)(null, [
      { address: '127.0.0.1', family: 4 },
    ]);
  } else {
    callback(null, '127.0.0.1', 4);
  }
};

export interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** Requests `url` (http or https; for https, `ca` is the only CA trusted and the URL's host is the name verified). */
export function httpRequest(
  url: string,
  options: { method?: string; headers?: Record<string, string>; body?: string; agent?: http.Agent; signal?: AbortSignal; ca?: string | Buffer } = {},
): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const { agent, signal, ca } = options;
    const client = url.startsWith('https:') ? https : http;
    const request = client.request(url, { method: options.method ?? 'GET', headers: options.headers, lookup: loopbackLookup, agent, signal, ...(ca === undefined ? {} : { ca }) }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: response.headers, body }));
    });
    request.on('error', reject);
    request.end(options.body);
  });
}

/** Sends a JSON body and parses the JSON answer. */
export async function jsonRequest<T = unknown>(
  url: string,
  method: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: T; headers: http.IncomingHttpHeaders }> {
  const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
  const answer = await httpRequest(url, {
    method,
    // With a length, as clients send it: Node sends a DELETE body with neither a length nor chunking.
    headers: payload === undefined ? headers : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)), ...headers },
    body: payload,
  });
  return { status: answer.status, headers: answer.headers, body: (answer.body ? JSON.parse(answer.body) : undefined) as T };
}

/** Opens a websocket at `url`, sends `message` and resolves with the first reply (wss: trusting only `ca`). */
export function websocketEcho(url: string, message: string, ca?: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { lookup: loopbackLookup, handshakeTimeout: 5000, ...(ca === undefined ? {} : { ca }) });
    socket.once('open', () => socket.send(message));
    socket.once('message', (data) => {
      resolve(data.toString());
      socket.close();
    });
    socket.once('error', reject);
    socket.once('unexpected-response', (_request, response) => reject(new Error(`websocket upgrade refused: HTTP ${response.statusCode}`)));
  });
}

/**
 * Connects to a TCP endpoint (`tcp://host:port`, or `tls://host:port` verified for that host against `ca`
 * only), reads the first line, sends `line` and reads the reply line.
 */
export function tcpConversation(url: string, line: string, ca?: string | Buffer): Promise<{ greeting: string; reply: string }> {
  const { protocol, hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const address = { host: hostname === 'localhost' ? '127.0.0.1' : hostname, port: Number(port) };
    const socket = protocol === 'tls:' ? tls.connect({ ...address, servername: hostname, ...(ca === undefined ? {} : { ca }) }) : net.connect(address);
    let buffer = '';
    const lines: string[] = [];
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      for (let end = buffer.indexOf('\n'); end >= 0; end = buffer.indexOf('\n')) {
        lines.push(buffer.slice(0, end));
        buffer = buffer.slice(end + 1);
        if (lines.length === 1) socket.write(`${line}\n`);
        if (lines.length === 2) {
          socket.end();
          resolve({ greeting: lines[0]!, reply: lines[1]! });
        }
      }
    });
    socket.on('error', reject);
    socket.on('close', () => reject(new Error(`connection to ${url} closed after ${lines.length} line(s)`)));
  });
}

/** Resolves with how a TCP connection attempt ended when no data arrives: "refused", "closed" or "open". */
export function tcpProbe(host: string, port: number): Promise<'refused' | 'closed' | 'open'> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    let connected = false;
    socket.on('connect', () => {
      connected = true;
      // A routed port would be held open by its backend; an unrouted one is closed by HAProxy at once.
      socket.setTimeout(2000, () => {
        socket.destroy();
        resolve('open');
      });
    });
    socket.on('error', () => resolve(connected ? 'closed' : 'refused'));
    socket.on('close', () => resolve(connected ? 'closed' : 'refused'));
  });
}
