import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * The trivial workload behind every path of the routing benchmark: a plain Node `http` server answering a
 * short body on loopback. Run as its own process (`node routing-backend.js`) so that its CPU is not the
 * benchmark's; it prints `{"port":N}` on one line once it listens and runs until it is signalled.
 */

const BODY = 'ok\n';

const server = http.createServer((_request, response) => {
  response.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(BODY) });
  response.end(BODY);
});
// Proxies keep idle connections to the workload for a while; Node's 5 s default would cut some mid-run.
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: (server.address() as AddressInfo).port })}\n`);
});
process.once('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
