import path from 'node:path';
import { silentLogger } from '../../controller/util/log.js';
import { ConsulDouble } from '../fakes/consul.js';
import { NomadDouble } from '../fakes/nomad.js';
import { describeSessionFlow } from './session-flow.js';

let consul: ConsulDouble | undefined;
let nomad: NomadDouble | undefined;

describeSessionFlow({
  name: 'Consul and Nomad (API doubles)',
  runsDocker: true,
  configFile: 'manifests/examples/cluster-dev.yaml',
  setUp: async () => {
    consul = await ConsulDouble.start({ port: 0, log: silentLogger() });
    nomad = await NomadDouble.start({ port: 0, workDir: path.resolve(__dirname, '../../..'), log: silentLogger() });
    return { CONSUL_HTTP_ADDR: consul.address, NOMAD_ADDR: nomad.address };
  },
  tearDown: async () => {
    await nomad?.stop();
    await consul?.stop();
  },
  killCoreTask: async (_stateDir, session) => {
    nomad!.killTask(session.status.allocationId!, 'core', 'SIGKILL');
  },
  // Nomad runs the tasks: they outlive a Manticore restart, as they should.
  ownTaskPids: () => undefined,
});
