import path from 'node:path';
import { createLogger } from '../../controller/util/log.js';
import { ConsulDouble } from './consul.js';
import { NomadDouble } from './nomad.js';

/**
 * `make dev-cluster`: the Consul and Nomad API doubles in the foreground, for trying the cluster backends
 * on a machine where neither agent can be installed. Test infrastructure, never a production backend.
 * Nomad's raw_exec tasks run with the repository as their working directory.
 */
async function main(): Promise<void> {
  const log = createLogger((process.env.MANTICORE_LOG_LEVEL as 'info' | undefined) ?? 'info');
  const consul = await ConsulDouble.start({ host: '127.0.0.1', port: Number(process.env.CONSUL_PORT ?? 8500), log: log.child({ component: 'consul-double' }) });
  const nomad = await NomadDouble.start({
    host: '127.0.0.1',
    port: Number(process.env.NOMAD_PORT ?? 4646),
    workDir: path.resolve(__dirname, '../../..'),
    log: log.child({ component: 'nomad-double' }),
  });
  process.stdout.write(
    `Consul API double: ${consul.address}\nNomad API double:  ${nomad.address}\n` +
      `export CONSUL_HTTP_ADDR=${consul.address} NOMAD_ADDR=${nomad.address}\nCtrl-C stops both.\n`,
  );
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await Promise.all([consul.stop(), nomad.stop()]);
}

main().catch((error: unknown) => {
  process.stderr.write(`dev-cluster: ${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
});
