'use strict';
/*
 * DEMO stand-in for SDL Core — NOT SDL Core. It lets the embedded default (`make run`, the `demo` template)
 * prove every route kind end to end without Docker:
 *   - a websocket server (Core's "broker" service) on NOMAD_PORT_broker that echoes every message;
 *   - a TCP server (Core's TCP transport for SDL apps) on NOMAD_PORT_tcp that greets with one line,
 *     `manticore demo core <CORE_VERSION>`, then echoes every line it receives.
 * Like Core, it logs what apps send it, on stdout, one timestamped line each (what a session's owner
 * watches in the log view while their app talks to it); a note that it is a stand-in goes to stderr.
 * It reads the same Nomad runtime variables a real task gets, so it runs unchanged under the local
 * scheduler or Nomad. Plain CommonJS, no build step.
 */
const net = require('node:net');
const { WebSocketServer } = require('ws');

/** A longer line than this without a newline is not a line-based client: drop the connection. */
const MAX_LINE_BYTES = 64 * 1024;

const { fail, required, requiredPort } = require('./environment.js').environment('demo core');

const version = required('CORE_VERSION');
const brokerHost = required('NOMAD_IP_broker');
const brokerPort = requiredPort('NOMAD_PORT_broker');
const tcpHost = required('NOMAD_IP_tcp');
const tcpPort = requiredPort('NOMAD_PORT_tcp');

/** Longer messages are logged cut to this many characters. */
const MAX_LOGGED_CHARS = 200;

function log(line) {
  process.stdout.write(`${new Date().toISOString()} ${line}\n`);
}

function logged(text) {
  return text.length > MAX_LOGGED_CHARS ? `${text.slice(0, MAX_LOGGED_CHARS)}… (${text.length} characters)` : text;
}

process.stderr.write(`demo core ${version}: a demo stand-in for SDL Core, not SDL Core\n`);

const broker = new WebSocketServer({ host: brokerHost, port: brokerPort });
broker.on('connection', (socket, request) => {
  const peer = `${request.socket.remoteAddress}:${request.socket.remotePort}`;
  socket.on('message', (data, isBinary) => {
    log(isBinary ? `broker ${peer}: binary message of ${data.length} bytes` : `broker ${peer}: ${logged(data.toString())}`);
    socket.send(data, { binary: isBinary });
  });
  // A client that vanishes mid-message must not take the demo down.
  socket.on('error', () => socket.terminate());
});
broker.on('error', (error) => fail(`websocket server on ${brokerHost}:${brokerPort}: ${error.message}`));
broker.on('listening', () => process.stdout.write(`demo core ${version}: websocket echo on ${brokerHost}:${brokerPort}\n`));

const tcpSockets = new Set();
const tcp = net.createServer((socket) => {
  tcpSockets.add(socket);
  socket.on('close', () => tcpSockets.delete(socket));
  // Health checks connect and reset at once; that is not an error worth dying for.
  socket.on('error', () => socket.destroy());
  socket.write(`manticore demo core ${version}\n`);
  const peer = `${socket.remoteAddress}:${socket.remotePort}`;
  let buffered = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk) => {
    buffered += chunk;
    let newline;
    while ((newline = buffered.indexOf('\n')) !== -1) {
      const line = buffered.slice(0, newline + 1);
      log(`tcp ${peer}: ${logged(line.replace(/\r?\n$/, ''))}`);
      socket.write(line);
      buffered = buffered.slice(newline + 1);
    }
    if (Buffer.byteLength(buffered) > MAX_LINE_BYTES) socket.destroy();
  });
});
tcp.on('error', (error) => fail(`tcp server on ${tcpHost}:${tcpPort}: ${error.message}`));
tcp.listen(tcpPort, tcpHost, () => process.stdout.write(`demo core ${version}: tcp echo on ${tcpHost}:${tcpPort}\n`));

function shutdown(signal) {
  process.stdout.write(`demo core: ${signal}, shutting down\n`);
  for (const client of broker.clients) client.close(1001, 'core shutting down');
  for (const socket of tcpSockets) socket.destroy();
  let open = 2;
  const closed = () => {
    open -= 1;
    if (open === 0) process.exit(0);
  };
  broker.close(closed);
  tcp.close(closed);
  // Clients that do not answer the close handshake must not hold the exit up.
  setTimeout(() => process.exit(0), 1000).unref();
}
process.once('SIGTERM', () => shutdown('SIGTERM'));
process.once('SIGINT', () => shutdown('SIGINT'));
