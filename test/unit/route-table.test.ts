import assert from 'node:assert/strict';
import type { RouteRecord } from '../../controller/api/types.js';
import { LiveRouteTable } from '../../controller/router/route-table.js';

function routes(token: string, port: number, backend: string | undefined): RouteRecord {
  return { sessionId: `session-${token}`, hosts: [{ service: 'hmi', token, backend }], ports: [{ service: 'tcp', port, backend }] };
}

describe('the live route table', () => {
  it('serves what records claim and names exactly the routes whose backend changed', () => {
    const live = new LiveRouteTable();
    live.set('stored', 'a', routes('aaa', 20001, '10.0.0.1:1'));
    live.set('stored', 'b', routes('bbb', 20002, '10.0.0.2:1'));
    assert.deepEqual(live.takeChanges(), { hosts: new Set(['aaa', 'bbb']), ports: new Set([20001, 20002]) });

    live.set('stored', 'a', routes('aaa', 20001, '10.0.0.1:1'));
    live.set('stored', 'b', routes('bbb', 20003, '10.0.0.2:1'));
    assert.deepEqual(live.takeChanges(), { hosts: new Set(), ports: new Set([20002, 20003]) }, 'the same routes again change nothing');
    assert.deepEqual([...live.table.ports], [[20001, '10.0.0.1:1'], [20003, '10.0.0.2:1']]);

    live.set('stored', 'a', routes('aaa', 20001, undefined));
    assert.deepEqual(live.takeChanges(), { hosts: new Set(['aaa']), ports: new Set([20001]) }, 'a route without a workload address is not served');
    assert.equal(live.table.hosts.has('aaa'), false);
    live.set('stored', 'b', undefined);
    assert.deepEqual(live.table, { hosts: new Map(), ports: new Map() });
  });

  it('gives a contested token or port to a stored record over a kept one, else to the last claim, and back when it goes', () => {
    const live = new LiveRouteTable();
    live.set('kept', 'old', routes('aaa', 20001, '10.0.0.9:1'));
    live.set('stored', 'new', routes('aaa', 20001, '10.0.0.1:1'));
    live.set('kept', 'older', routes('aaa', 20001, '10.0.0.8:1'));
    assert.equal(live.table.hosts.get('aaa'), '10.0.0.1:1', 'stored wins whatever the order');
    live.set('stored', 'newer', routes('aaa', 20001, '10.0.0.2:1'));
    assert.equal(live.table.ports.get(20001), '10.0.0.2:1', 'the later stored claim wins');
    live.takeChanges();
    live.set('stored', 'newer', undefined);
    assert.equal(live.table.ports.get(20001), '10.0.0.1:1');
    live.set('stored', 'new', undefined);
    assert.equal(live.table.ports.get(20001), '10.0.0.8:1', 'then the last kept claim');
    assert.deepEqual(live.takeChanges(), { hosts: new Set(['aaa']), ports: new Set([20001]) });
  });

  it('puts back changes whose apply failed, to go out with the next', () => {
    const live = new LiveRouteTable();
    live.set('stored', 'a', routes('aaa', 20001, '10.0.0.1:1'));
    const failed = live.takeChanges();
    live.set('stored', 'b', routes('bbb', 20002, '10.0.0.2:1'));
    live.restore(failed);
    assert.deepEqual(live.takeChanges(), { hosts: new Set(['bbb', 'aaa']), ports: new Set([20002, 20001]) });
  });
});
