import { ConsulDouble } from '../../test/fakes/consul.js';

/**
 * The store of the routing benchmark: the Consul API double, as its own process on a loopback port (the
 * cluster layout, where the router agent on an edge host watches a Consul elsewhere). It prints
 * `{"address":"http://…"}` on one line once it listens and stops on SIGTERM.
 */
async function main(): Promise<void> {
  const consul = await ConsulDouble.start({ host: '127.0.0.1' });
  process.stdout.write(`${JSON.stringify({ address: consul.address })}\n`);
  await new Promise<void>((resolve) => process.once('SIGTERM', resolve));
  await consul.stop();
}

main().catch((error: unknown) => {
  process.stderr.write(`routing-consul: ${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
});
