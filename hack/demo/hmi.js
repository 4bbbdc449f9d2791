'use strict';
/*
 * DEMO stand-in for the SDL Generic HMI — NOT the Generic HMI. It serves one small page on
 * NOMAD_PORT_http that shows where Core's services are (BROKER_URL, CORE_TCP_HOST, CORE_TCP_PORT: the
 * session's public addresses, handed in by the template) and, from the browser, connects to the broker
 * websocket and shows what it echoes. GET /healthz answers 200 for health checks.
 * Plain CommonJS, no build step; runs unchanged under the local scheduler or Nomad.
 */
const http = require('node:http');

const { fail, required, requiredPort } = require('./environment.js').environment('demo hmi');

const host = required('NOMAD_IP_http');
const port = requiredPort('NOMAD_PORT_http');
const brokerUrl = required('BROKER_URL');
const coreTcpHost = required('CORE_TCP_HOST');
const coreTcpPort = required('CORE_TCP_PORT');
const hmiType = process.env.HMI_TYPE || 'generic';

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

/** JSON that is safe inside a <script> element (no "</script>" can end it early). */
function scriptJson(value) {
  return JSON.stringify(value).replace(/</g, '\\u003c');
}

const page = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Manticore demo HMI</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 48rem; }
  dt { font-weight: bold; } dd { margin: 0 0 .5rem 0; font-family: monospace; }
  #log { border: 1px solid #ccc; padding: .5rem; min-height: 6rem; font-family: monospace; white-space: pre-wrap; }
</style>
</head>
<body>
<h1>Manticore demo HMI</h1>
<p>A demo stand-in for the SDL Generic HMI (type <code>${escapeHtml(hmiType)}</code>).</p>
<dl>
  <dt>Core broker (websocket)</dt><dd id="broker">${escapeHtml(brokerUrl)}</dd>
  <dt>Core TCP transport</dt><dd id="tcp">${escapeHtml(coreTcpHost)}:${escapeHtml(coreTcpPort)}</dd>
  <dt>Broker connection</dt><dd id="status">connecting…</dd>
</dl>
<form id="send"><input id="message" value="hello core" autocomplete="off"> <button>Send</button></form>
<h2>Echoes</h2>
<div id="log"></div>
<script>
  const brokerUrl = ${scriptJson(brokerUrl)};
  const status = document.getElementById('status');
  const log = document.getElementById('log');
  const socket = new WebSocket(brokerUrl);
  socket.addEventListener('open', () => { status.textContent = 'connected'; });
  socket.addEventListener('close', () => { status.textContent = 'closed'; });
  socket.addEventListener('error', () => { status.textContent = 'error'; });
  socket.addEventListener('message', (event) => { log.textContent += String(event.data) + '\\n'; });
  document.getElementById('send').addEventListener('submit', (event) => {
    event.preventDefault();
    if (socket.readyState === WebSocket.OPEN) socket.send(document.getElementById('message').value);
  });
</script>
</body>
</html>
`;

const server = http.createServer((request, response) => {
  const url = new URL(request.url || '/', 'http://hmi');
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    response.writeHead(405, { allow: 'GET, HEAD' }).end();
    return;
  }
  if (url.pathname === '/healthz') {
    response.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' }).end(request.method === 'HEAD' ? undefined : 'ok\n');
    return;
  }
  if (url.pathname === '/' || url.pathname === '/index.html') {
    response
      .writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' })
      .end(request.method === 'HEAD' ? undefined : page);
    return;
  }
  response.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found\n');
});
server.on('error', (error) => fail(`http server on ${host}:${port}: ${error.message}`));
server.listen(port, host, () => process.stdout.write(`demo hmi (${hmiType}): http on ${host}:${port}, broker ${brokerUrl}\n`));

function shutdown(signal) {
  process.stdout.write(`demo hmi: ${signal}, shutting down\n`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.once('SIGTERM', () => shutdown('SIGTERM'));
process.once('SIGINT', () => shutdown('SIGINT'));
