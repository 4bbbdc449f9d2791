import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { StatusServer, type StatusProbes } from '../../controller/metrics/status-server.js';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import { silentLogger } from '../../controller/util/log.js';
import { testFrontend } from '../support/frontend.js';

// Compiled to dist/test/unit/: three levels up is the repository root.
const guide = fs.readFileSync(path.resolve(__dirname, '../../../docs/operations.md'), 'utf8');

/** The metrics table of the guide's Monitoring section: each name (labels dropped) with its kind, and the families named by a prefix. */
function documentedMetrics(): { kinds: Map<string, string>; families: string[] } {
  const section = guide.slice(guide.indexOf('## Monitoring'), guide.indexOf('\n## ', guide.indexOf('## Monitoring') + 1));
  const kinds = new Map<string, string>();
  const families: string[] = [];
  for (const row of section.split('\n').filter((line) => line.startsWith('| `manticore_'))) {
    const [metrics = '', kind = ''] = row.split('|').slice(1).map((cell) => cell.trim());
    const names = [...metrics.matchAll(/`(manticore_[a-z_*]+)/g)].map((match) => match[1]!);
    const rowKinds = kind.split(',').map((part) => part.trim());
    names.forEach((name, i) => {
      if (name.endsWith('*')) families.push(name.slice(0, -1));
      // The kinds go with the last names in order, the first one also with the names before ("gauge, histogram" of three).
      else kinds.set(name, rowKinds[Math.max(0, i - (names.length - rowKinds.length))]!);
    });
  }
  return { kinds, families };
}

/** The metric families a `/metrics` answer declares, with their types. */
function exported(text: string): Map<string, string> {
  return new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((match) => [match[1]!, match[2]!]));
}

describe('metrics and the operator guide', () => {
  const probes: StatusProbes = { ready: () => true, status: () => ({}) };
  const stops: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const stop of stops.splice(0).reverse()) await stop();
  });

  it("each process's /metrics declares every metric of docs/operations.md with its kind, and nothing the guide does not name", async () => {
    const store = EmbeddedStore.open(':memory:');
    stops.push(() => store.close());
    const frontend = testFrontend(store);
    stops.push(() => frontend.stop());
    const scrapes: Array<[string, string]> = [['frontend', `${await frontend.start('127.0.0.1', 0)}/metrics`]];
    for (const server of ['controller', 'router'] as const) {
      const status = new StatusServer(server, probes, silentLogger());
      stops.push(() => status.stop());
      scrapes.push([server, `${await status.start('127.0.0.1', 0)}/metrics`]);
    }
    const { kinds, families } = documentedMetrics();
    assert.ok(kinds.size > 10 && families.length === 2, `the guide's table was not read: ${[...kinds.keys()].join(', ')}`);
    for (const [server, url] of scrapes) {
      const answer = await fetch(url);
      assert.equal(answer.status, 200, server);
      const types = exported(await answer.text());
      for (const [name, kind] of kinds) assert.equal(types.get(name), kind, `${server}: ${name} is documented as a ${kind}`);
      for (const family of families) assert.ok([...types.keys()].some((name) => name.startsWith(family)), `${server}: no ${family}* metric`);
      const undocumented = [...types.keys()].filter((name) => !kinds.has(name) && !families.some((family) => name.startsWith(family)));
      assert.deepEqual(undocumented, [], `${server} exports metrics the guide does not list`);
    }
  });
});
