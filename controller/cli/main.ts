#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { ValidationError } from '../api/schemas.js';
import { loadConfig, redactSecrets } from '../config/config.js';
import { clientUsage, runClientCommand, type ClientCommand } from './client/commands.js';
import { createLogger } from '../util/log.js';
import { ProcessKiller, listenForStop, stopWithin } from './shutdown.js';
import { allRoles, startManticore } from './up.js';

const usage = `Usage: manticore <command> [options]

Commands:
  up [--config FILE]        run every part in one process: router (with its local HAProxy), controller and
                            front end, over the configured store and scheduler (the embedded default:
                            a local file and local processes); Ctrl-C stops everything it started
  controller | frontend | router [--config FILE]
                            run one part alone, as a cluster deployment does (manifests/nomad/)
  config-reference          print the configuration reference (every field, type, default and environment
                            variable; docs/configuration.md is this output)
  check-config [--config FILE]
                            load and validate the configuration, templates, the HAProxy template, the
                            JWT public keys and (with router.tls) the certificate files, print the
                            result (secrets as "<set>"), and exit
  render-job --template NAME [--param NAME=VALUE ...] [--config FILE]
                            print the Nomad job (register request body) a new session of that template
                            and those parameters would get, for \`nomad job plan\` or inspection

Options:
  -c, --config FILE         configuration file (YAML, see crds/config.yaml); environment overrides apply
  -h, --help                show this help

${clientUsage}`;

const clientCommands: readonly ClientCommand[] = ['sessions', 'templates', 'limits', 'status'];

function isClientCommand(arg: string | undefined): arg is ClientCommand {
  return clientCommands.includes(arg as ClientCommand);
}

/** Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad configuration. */
async function main(argv: string[]): Promise<number> {
  if (isClientCommand(argv[0])) {
    const interrupted = new AbortController();
    process.once('SIGINT', () => interrupted.abort());
    // A reader that stops reading (`| head`, `| grep -q`) closes the pipe: what was printed stands, and a
    // follow stops as on Ctrl-C, rather than the process dying on the write's EPIPE.
    process.stdout.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code !== 'EPIPE') throw error;
      interrupted.abort();
    });
    return runClientCommand(argv[0], argv.slice(1), { stdout: process.stdout, stderr: process.stderr, env: process.env, signal: interrupted.signal });
  }
  // `manticore -o json sessions list`: the client commands take their options after them.
  const client = argv.findIndex(isClientCommand);
  if (client > 0 && argv[0]!.startsWith('-') && !argv.slice(0, client).some((arg) => arg === '-h' || arg === '--help')) {
    const reordered = [...argv.slice(client), ...argv.slice(0, client)].join(' ');
    process.stderr.write(`manticore: options go after the command, as in: manticore ${reordered}\n(see: manticore ${argv[client]} --help)\n`);
    return 2;
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        help: { type: 'boolean', short: 'h' },
        template: { type: 'string', short: 't' },
        param: { type: 'string', short: 'p', multiple: true },
      },
    });
  } catch (error) {
    process.stderr.write(`manticore: ${(error as Error).message}\n(see: manticore --help)\n`);
    return 2;
  }
  const [command, ...rest] = parsed.positionals;
  if (parsed.values.help) {
    process.stdout.write(usage);
    return 0;
  }
  if (command === undefined) {
    process.stderr.write(`manticore: a command is needed\n\n${usage}`);
    return 2;
  }
  if (rest.length > 0) {
    process.stderr.write(`manticore: unexpected argument "${rest[0]}"\n`);
    return 2;
  }
  if (command !== 'render-job' && (parsed.values.template !== undefined || parsed.values.param !== undefined)) {
    process.stderr.write('manticore: --template and --param belong to render-job\n');
    return 2;
  }
  if (command === 'config-reference') {
    const { renderConfigReference } = await import('../config/reference.js');
    process.stdout.write(renderConfigReference());
    return 0;
  }
  let config;
  try {
    config = loadConfig(parsed.values.config);
  } catch (error) {
    if (error instanceof ValidationError) {
      process.stderr.write(`manticore: ${error.message}\n`);
      return 2;
    }
    throw error;
  }
  switch (command) {
    case 'check-config': {
      const { loadTemplates } = await import('../api/templates.js');
      try {
        const templates = loadTemplates(config.templates.dir);
        (await import('../router/haproxy-config.js')).readConfigTemplate(config.router.configTemplate);
        // The front end's JWT public keys, read and parsed as its start-up does.
        (await import('../frontend/auth.js')).createAuthenticator(config.auth);
        // The router's certificate files, when this machine has them as configured (an edge node, or one machine).
        const tls = config.router.tls;
        const certificate = tls === undefined ? undefined : await (await import('../router/edge-tls.js')).loadEdgeCertificate(tls, config.public.domain);
        const edgeCertificate =
          certificate === undefined
            ? {}
            : { edgeCertificate: { subject: certificate.subject, names: certificate.names, notAfter: new Date(certificate.notAfter).toISOString(), warnings: certificate.warnings } };
        process.stdout.write(`${JSON.stringify({ config: redactSecrets(config), templates: [...templates.keys()], ...edgeCertificate }, null, 2)}\n`);
        return 0;
      } catch (error) {
        process.stderr.write(`manticore: ${(error as Error).message}\n`);
        return 2;
      }
    }
    case 'render-job': {
      const { loadTemplates } = await import('../api/templates.js');
      const { renderJobFor, parseParams, UsageError } = await import('./render-job.js');
      try {
        if (parsed.values.template === undefined) throw new UsageError('render-job needs --template NAME');
        const templates = loadTemplates(config.templates.dir);
        const template = templates.get(parsed.values.template);
        if (template === undefined) {
          throw new UsageError(`unknown template "${parsed.values.template}" (known: ${[...templates.keys()].join(', ')})`);
        }
        const job = renderJobFor(config, template, parseParams(parsed.values.param ?? []));
        process.stdout.write(`${JSON.stringify(job, null, 2)}\n`);
        return 0;
      } catch (error) {
        if (error instanceof UsageError || error instanceof ValidationError) {
          process.stderr.write(`manticore: ${error.message}\n`);
          return 2;
        }
        throw error;
      }
    }
    case 'up':
    case 'controller':
    case 'frontend':
    case 'router': {
      const log = createLogger(config.log.level, config.log.format);
      // Listened for before start-up, which can wait long (for a store that does not answer yet): a signal
      // then stops what has started so far (HAProxy, sessions' processes) as it stops everything later.
      const stop = listenForStop();
      const killer = new ProcessKiller();
      const starting = startManticore(config, log, command === 'up' ? allRoles : [command], stop.requested, killer);
      try {
        const running = await Promise.race([starting, stop.received.then(() => undefined)]);
        if (running !== undefined) process.stdout.write(running.banner);
      } catch (error) {
        stop.dispose();
        log.fatal({ err: error }, 'start-up failed');
        process.stderr.write(`manticore: start-up failed: ${(error as Error).message}\n`);
        return error instanceof ValidationError ? 2 : 1;
      }
      const signal = await stop.received;
      // A start-up the signal cut short stops what it had started, then throws: no failure here.
      const stopAll = (): Promise<void> => starting.then((running) => running.stop(), () => undefined);
      const code = await stopWithin(stopAll, config.shutdown.graceSeconds * 1000, signal, log);
      // Cut short: whatever still holds the event loop must not keep the process alive, nor its children outlive it.
      if (code !== 0) {
        killer.killAll(log);
        process.exit(code);
      }
      return code;
    }
    default:
      process.stderr.write(`manticore: unknown command "${command}"\n\n${usage}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`manticore: ${(error as Error).stack ?? String(error)}\n`);
    process.exitCode = 1;
  },
);
