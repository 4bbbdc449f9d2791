import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sinon from 'sinon';
import { HaproxyDataPlane, type RouteTable } from '../../controller/router/data-plane.js';
import { parseMap } from '../../controller/router/haproxy-config.js';
import type { HaproxyRuntime, MapEntry } from '../../controller/router/haproxy-runtime.js';
import { capturingLogger } from '../support/controller-harness.js';

interface Worker {
  readonly pid: number;
  readonly started: number;
  /** Map file → key → value, as this worker holds them. */
  readonly maps: Map<string, Map<string, string>>;
}

/**
 * HAProxy's admin socket as the data plane uses it, one worker answering at a time, each with maps of its
 * own. A reload brings up a worker with empty maps (the map files lagged). `show info` can be held, to land
 * a heartbeat's check anywhere in a reload.
 */
class FakeAdminSocket {
  worker: Worker = { pid: 100, started: 1_700_000_000, maps: new Map() };
  mapReads = 0;
  private held: Promise<Worker> | undefined;

  reload(): Worker {
    this.worker = { pid: this.worker.pid + 1, started: this.worker.started + 60, maps: new Map() };
    return this.worker;
  }

  /** Holds the next `show info` until the returned function says which worker answered it. */
  holdNextInfo(): (answeredBy: Worker) => void {
    let release!: (answeredBy: Worker) => void;
    this.held = new Promise((resolve) => (release = resolve));
    return release;
  }

  routes(worker: Worker, file: string): Record<string, string> {
    return Object.fromEntries(worker.maps.get(file) ?? []);
  }

  readonly runtime = {
    showInfo: async (): Promise<Record<string, string>> => {
      const held = this.held;
      this.held = undefined;
      const worker = held ? await held : this.worker;
      return { Name: 'HAProxy', Pid: String(worker.pid), Start_time_sec: String(worker.started) };
    },
    showMap: async (file: string): Promise<MapEntry[]> => {
      this.mapReads++;
      return [...this.map(file)].map(([key, value], i) => ({ ref: `0x${i}`, key, value }));
    },
    addMapEntries: async (file: string, entries: ReadonlyArray<readonly [string, string]>): Promise<void> => {
      for (const [key, value] of entries) this.map(file).set(key, value);
    },
    setMap: async (file: string, key: string, value: string): Promise<void> => void this.map(file).set(key, value),
    delMapEntries: async (file: string, keys: readonly string[]): Promise<void> => keys.forEach((key) => this.map(file).delete(key)),
  } as unknown as HaproxyRuntime;

  private map(file: string): Map<string, string> {
    let map = this.worker.maps.get(file);
    if (!map) this.worker.maps.set(file, (map = new Map()));
    return map;
  }
}

const WARNING = 'HAProxy was reloaded or restarted without the router: re-applying every route';
const table: RouteTable = { hosts: new Map([['a'.repeat(26), '10.0.0.1:8080']]), ports: new Map([[20001, '10.0.0.1:9000']]) };

describe('HAProxy data plane: telling its own reloads from reloads behind its back', () => {
  let runDir: string;
  let admin: FakeAdminSocket;
  let plane: HaproxyDataPlane;
  let lines: ReturnType<typeof capturingLogger>['lines'];
  let hostsMap: string;

  beforeEach(async () => {
    runDir = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'manticore-plane-'));
    hostsMap = path.join(runDir, 'hosts.map');
    admin = new FakeAdminSocket();
    const captured = capturingLogger();
    lines = captured.lines;
    plane = new HaproxyDataPlane({ runtime: admin.runtime, runDir, log: captured.log });
    await plane.apply(table);
  });

  afterEach(async () => {
    await plane.flush();
    await fs.promises.rm(runDir, { recursive: true, force: true });
  });

  const warnings = (): string[] => lines.filter((line) => line.msg === WARNING).map((line) => line.msg);

  it('does not take the worker its own reload brought up for someone else\'s when a heartbeat checks before the routes are re-read', async () => {
    let finishReload!: () => void;
    let newWorkerAnswers!: () => void;
    const answering = new Promise<void>((resolve) => (newWorkerAnswers = resolve));
    const reloading = plane.replaceWorker(async () => {
      admin.reload();
      newWorkerAnswers();
      // The master confirms the new worker some time after it answers the admin socket.
      await new Promise<void>((resolve) => (finishReload = resolve));
    });
    await answering;
    const readsBefore = admin.mapReads;
    await plane.verify();
    assert.deepEqual(warnings(), []);
    assert.equal(admin.mapReads, readsBefore, 'no re-read besides the one that ends the reload');

    finishReload();
    await reloading;
    assert.deepEqual(admin.routes(admin.worker, hostsMap), { ['a'.repeat(26)]: '10.0.0.1:8080' }, 'the reload re-applied the routes');
    const readsAfterReload = admin.mapReads;
    await plane.verify();
    assert.deepEqual(warnings(), []);
    assert.equal(admin.mapReads, readsAfterReload, 'the next heartbeat knows the new worker');
  });

  for (const answeredBy of ['old', 'new'] as const) {
    it(`does not take its own reload for someone else's when a heartbeat's check, answered by the ${answeredBy} worker, comes back after the reload`, async () => {
      const oldWorker = admin.worker;
      const answer = admin.holdNextInfo();
      const verifying = plane.verify();
      let newWorker = oldWorker;
      // The reload's resync reads the new worker and its maps while the heartbeat's answer is on its way.
      await plane.replaceWorker(async () => void (newWorker = admin.reload()));
      answer(answeredBy === 'old' ? oldWorker : newWorker);
      await verifying;
      assert.deepEqual(warnings(), []);
    });
  }

  it('has the map files hold every route applied before its own reload or restart, which loads them', async () => {
    // The files are otherwise written at most once a second: the interval never elapses here.
    const clock = sinon.useFakeTimers({ now: Date.now(), toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    try {
      await plane.flush();
      const added = 'b'.repeat(26);
      await plane.apply({ hosts: new Map([...table.hosts, [added, '10.0.0.2:8080']]), ports: table.ports });
      let loaded: Map<string, string> | undefined;
      await plane.replaceWorker(async () => {
        loaded = parseMap(await fs.promises.readFile(hostsMap, 'utf8'));
        admin.reload();
      });
      assert.equal(loaded?.get(added), '10.0.0.2:8080', 'the new worker would load the route applied just before');
    } finally {
      clock.restore();
    }
  });

  it('still re-applies every route, with a warning, after a reload it did not make, also after one of its own', async () => {
    await plane.replaceWorker(async () => void admin.reload());
    const foreign = admin.reload();
    await plane.verify();
    assert.deepEqual(warnings(), [WARNING]);
    assert.deepEqual(admin.routes(foreign, hostsMap), { ['a'.repeat(26)]: '10.0.0.1:8080' });
  });
});
