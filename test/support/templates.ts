import type { SessionTemplate } from '../../controller/api/types.js';

/** A task script that exits with code 3 at once, every time it is started. */
export const EXIT_3 = 'process.exit(3)';
/** A task script that runs until it is stopped. */
export const RUN_FOREVER = 'setInterval(() => {}, 60000)';

/**
 * A small template whose tasks each run a Node.js script (by absolute path, as raw_exec wants it), on both
 * backends, for restart and failure behaviour. Port labels are allocated but the scripts listen on nothing.
 */
export function commandTemplate(tasks: Array<{ name: string; script: string; ports?: string[] }>): SessionTemplate {
  return {
    apiVersion: 'manticore/v1',
    kind: 'SessionTemplate',
    metadata: { name: 'commands' },
    spec: {
      parameters: [],
      services: [],
      backends: {
        embedded: {
          tasks: tasks.map(({ name, script, ports = [] }) => ({ name, command: process.execPath, args: ['-e', script], ports })),
        },
        nomad: {
          networkMode: 'host',
          tasks: tasks.map(({ name, script, ports = [] }) => ({
            name,
            driver: 'raw_exec',
            config: { command: process.execPath, args: ['-e', script] },
            ports: Object.fromEntries(ports.map((label) => [label, 0])),
            resources: { cpu: 50, memoryMB: 32 },
          })),
        },
      },
    },
  };
}
