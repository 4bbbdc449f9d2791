#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { ValidationError } from '../api/schemas.js';
import { loadConfig } from '../config/config.js';
import { createLogger } from '../util/log.js';
import { startEmbedded } from './embedded.js';

const usage = `Usage: manticore <command> [options]

Commands:
  up [--config FILE]        run Manticore on the embedded default: store, local scheduler, HAProxy router,
                            controller and front end in one process (Ctrl-C stops everything it started)
  check-config [--config FILE]
                            load and validate the configuration and templates, print the result, and exit

Options:
  -c, --config FILE         configuration file (YAML, see crds/config.yaml); environment overrides apply
  -h, --help                show this help
`;

/** Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad configuration. */
async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } },
    });
  } catch (error) {
    process.stderr.write(`manticore: ${(error as Error).message}\n\n${usage}`);
    return 2;
  }
  const [command, ...rest] = parsed.positionals;
  if (parsed.values.help || command === undefined) {
    process.stdout.write(usage);
    return command === undefined && !parsed.values.help ? 2 : 0;
  }
  if (rest.length > 0) {
    process.stderr.write(`manticore: unexpected argument "${rest[0]}"\n`);
    return 2;
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
        process.stdout.write(`${JSON.stringify({ config, templates: [...templates.keys()] }, null, 2)}\n`);
        return 0;
      } catch (error) {
        process.stderr.write(`manticore: ${(error as Error).message}\n`);
        return 2;
      }
    }
    case 'up': {
      const log = createLogger(config.log.level);
      let running;
      try {
        running = await startEmbedded(config, log);
      } catch (error) {
        log.fatal({ err: error }, 'start-up failed');
        process.stderr.write(`manticore: start-up failed: ${(error as Error).message}\n`);
        return error instanceof ValidationError ? 2 : 1;
      }
      process.stdout.write(running.banner);
      await new Promise<void>((resolve) => {
        const shutdown = (signal: NodeJS.Signals): void => {
          log.info({ signal }, 'shutting down');
          process.off('SIGINT', shutdown);
          process.off('SIGTERM', shutdown);
          resolve();
        };
        process.on('SIGINT', shutdown);
        process.on('SIGTERM', shutdown);
      });
      await running.stop();
      return 0;
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
