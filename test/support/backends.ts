import http from 'node:http';
import net from 'node:net';
import { WebSocketServer } from 'ws';

/** Loopback servers standing in for session workloads behind HAProxy. */

export interface Backend {
  readonly address: string;
  readonly server: http.Server | net.Server;
}

/**
 * An HTTP server answering `<name> <url>` (with the X-Forwarded-Proto it was sent, as `x-seen-proto`), and a
 * websocket echo that prefixes `<name>:`.
 */
export async function httpBackend(name: string): Promise<Backend & { wss: WebSocketServer }> {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'text/plain');
    res.setHeader('x-seen-proto', req.headers['x-forwarded-proto'] ?? '');
    // The loosest policy a workload's page may ask for: browsers would send its whole URL to other sites.
    res.setHeader('referrer-policy', 'unsafe-url');
    res.end(`${name} ${req.url}`);
  });
  const wss = new WebSocketServer({ server });
  wss.on('connection', (socket) => socket.on('message', (data) => socket.send(`${name}:${String(data)}`)));
  const port = await listen(server);
  return { address: `127.0.0.1:${port}`, server, wss };
}

/** A plain TCP server that sends back every byte it gets. */
export async function tcpEchoBackend(): Promise<Backend> {
  const server = net.createServer((socket) => socket.pipe(socket));
  const port = await listen(server);
  return { address: `127.0.0.1:${port}`, server };
}

/** Listens on an OS-chosen loopback port; resolves with it. */
export function listen(server: http.Server | net.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port));
  });
}

/** Closes a server and every connection it holds. */
export function closeServer(server: http.Server | net.Server): Promise<void> {
  if ('closeAllConnections' in server) server.closeAllConnections();
  return new Promise((resolve) => server.close(() => resolve()));
}
