import fs from 'node:fs';
import path from 'node:path';
import type { Session } from '../../controller/api/types.js';
import { describeSessionFlow } from './session-flow.js';

/** Process ids of the session's tasks, as the local scheduler recorded them. */
function taskPids(stateDir: string, session: Session): Record<string, number> {
  const file = path.join(stateDir, 'scheduler/allocs', session.status.allocationId!, 'pids.json');
  return JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, number>;
}

describeSessionFlow({
  name: 'the embedded default',
  runsDocker: false,
  configFile: 'manifests/examples/embedded.yaml',
  setUp: async () => ({}),
  tearDown: async () => undefined,
  killCoreTask: async (stateDir, session) => {
    process.kill(taskPids(stateDir, session).core!, 'SIGKILL');
  },
  ownTaskPids: (stateDir, session) => Object.values(taskPids(stateDir, session)),
});
