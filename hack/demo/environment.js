'use strict';
/*
 * Reading the demo programs' environment: a missing or malformed variable ends the program with a message
 * on stderr and exit code 1, so a scheduler reports a clear task failure.
 */

function environment(program) {
  function fail(message) {
    process.stderr.write(`${program}: ${message}\n`);
    process.exit(1);
  }
  function required(name) {
    const value = process.env[name];
    if (value === undefined || value === '') fail(`required environment variable ${name} is not set`);
    return value;
  }
  function requiredPort(name) {
    const raw = required(name);
    const port = Number(raw);
    if (!Number.isInteger(port) || port < 1 || port > 65535) fail(`${name}=${raw} is not a TCP port`);
    return port;
  }
  return { fail, required, requiredPort };
}

module.exports = { environment };
