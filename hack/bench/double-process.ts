import { silentLogger } from '../../controller/util/log.js';
import { ConsulDouble } from '../../test/fakes/consul.js';
import { NomadDouble } from '../../test/fakes/nomad.js';
import { repoRoot } from './paths.js';

/**
 * One API double in a process of its own (`double-process.js consul` or `double-process.js nomad NODES`),
 * so that at 10,000 sessions the doubles' work (serializing long lists) neither shares an event loop with
 * the other double nor with the benchmark's own clients. Prints `{"address": …}` once listening; SIGTERM
 * stops it. Nomad's simulated Docker tasks run as soon as they are placed.
 */
async function main(): Promise<void> {
  const [kind, nodes] = process.argv.slice(2);
  let stop: () => Promise<void>;
  let address: string;
  if (kind === 'consul') {
    const consul = await ConsulDouble.start({ log: silentLogger() });
    ({ address } = consul);
    stop = () => consul.stop();
  } else if (kind === 'nomad') {
    const nomad = await startNomadDouble(Number(nodes ?? 1));
    ({ address } = nomad);
    stop = () => nomad.stop();
  } else {
    throw new Error(`usage: double-process consul | nomad NODES (got ${JSON.stringify(kind)})`);
  }
  process.stdout.write(`${JSON.stringify({ address })}\n`);
  process.once('SIGTERM', () => void stop().then(() => process.exit(0)));
}

/** The Nomad double with `count` large nodes, its simulated Docker tasks running as soon as they are placed. */
function startNomadDouble(count: number): Promise<NomadDouble> {
  const nodes = Array.from({ length: count }, (_, n) => ({ name: `bench-${n + 1}`, cpu: 1_000_000, memoryMB: 4_000_000, diskMB: 10_000_000 }));
  return NomadDouble.start({ workDir: repoRoot, log: silentLogger(), nodes, dockerStartMs: 0 });
}

if (require.main === module) {
  main().catch((error: unknown) => {
    process.stderr.write(`double-process: ${(error as Error).stack ?? String(error)}\n`);
    process.exitCode = 1;
  });
}
