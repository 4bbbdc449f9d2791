import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Counter } from 'prom-client';
import { pino } from 'pino';
import type { Subscription } from 'rxjs';
import sinon from 'sinon';
import { registry } from '../../controller/metrics/metrics.js';
import { ConsulError, ConsulStore, type ConsulStoreOptions, type ConsulTlsOptions } from '../../controller/store/consul-store.js';
import { StoreError, type KvChange, type Store } from '../../controller/store/store.js';
import { silentLogger } from '../../controller/util/log.js';
import * as watchPacing from '../../controller/util/watch-pacing.js';
import { ConsulDouble, type ConsulDoubleOptions } from '../fakes/consul.js';
import { turnsUntil, waitFor } from '../support/wait.js';
import { describeLockContract } from './lock-contract.js';
import { describeStoreContract, WatchRecorder, type StoreUnderTest } from './store-contract.js';

/** A Consul store on a fresh double, both gone after cleanup. */
async function storeOnDouble(): Promise<{ store: ConsulStore; cleanup: () => Promise<void>; faults: StoreUnderTest['faults'] }> {
  const double = await ConsulDouble.start();
  const store = new ConsulStore({ address: double.address, log: silentLogger() });
  return {
    store,
    cleanup: async () => {
      await store.close();
      await double.stop();
    },
    faults: {
      // A token without write permission: Consul rolls the transaction back (409 "Permission denied").
      rejected: () => void (double.faults.denied = 1),
      unavailable: () => void (double.faults.failing = 1),
    },
  };
}

describeStoreContract('Consul store (double)', storeOnDouble);
describeLockContract('Consul store (double)', storeOnDouble);

// The same suite against a real agent, when there is one (`make test-real`). Every contract test works under
// its own random `contract-<hex>/` prefix; whatever those prefixes hold is deleted afterwards, so a shared
// agent can be used. Honours Consul's usual CONSUL_HTTP_TOKEN, CONSUL_CACERT, CONSUL_CLIENT_CERT/_KEY and
// CONSUL_TLS_SERVER_NAME variables.
const realAddress = process.env.CONSUL_HTTP_ADDR;
if (realAddress) {
  describeStoreContract('Consul store (real agent)', async () => {
    const options = realOptions(realAddress);
    const store = new ConsulStore(options);
    const prefixes = new Set<string>();
    const track = (key: string): void => {
      const top = /^(contract-[0-9a-f]{12}\/)/.exec(key);
      if (top) prefixes.add(top[1]);
    };
    const tracked: Store = {
      get: (key) => store.get(key),
      list: (prefix) => store.list(prefix),
      prefixIndex: (prefix) => store.prefixIndex(prefix),
      put: (key, value, writeOptions) => {
        track(key);
        return store.put(key, value, writeOptions);
      },
      delete: (key, writeOptions) => store.delete(key, writeOptions),
      transaction: (operations) => {
        for (const operation of operations) track(operation.key);
        return store.transaction(operations);
      },
      commit: (operations) => {
        for (const operation of operations) track(operation.key);
        return store.commit(operations);
      },
      watch: (prefix, fromIndex) => store.watch(prefix, fromIndex),
      close: () => store.close(),
    };
    return {
      store: tracked,
      cleanup: async () => {
        await store.close();
        for (const prefix of prefixes) await deleteTree(options, prefix);
      },
    };
  });
  describeLockContract('Consul store (real agent)', async () => {
    const options = realOptions(realAddress);
    const store = new ConsulStore(options);
    return {
      store,
      cleanup: async (prefix) => {
        await store.close();
        await deleteTree(options, prefix);
      },
    };
  });
}

/** The real agent's address and credentials, from Consul's usual environment variables. */
function realOptions(address: string): ConsulStoreOptions {
  const tls: ConsulTlsOptions = {
    caFile: process.env.CONSUL_CACERT || undefined,
    certFile: process.env.CONSUL_CLIENT_CERT || undefined,
    keyFile: process.env.CONSUL_CLIENT_KEY || undefined,
    serverName: process.env.CONSUL_TLS_SERVER_NAME || undefined,
  };
  return { address, token: process.env.CONSUL_HTTP_TOKEN || undefined, tls: address.startsWith('https:') ? tls : undefined, log: silentLogger() };
}

/** DELETE ?recurse on a real agent, to clean up after the contract suite. */
function deleteTree(options: ConsulStoreOptions, prefix: string): Promise<void> {
  const url = new URL(`/v1/kv/${prefix}?recurse`, options.address.includes('://') ? options.address : `http://${options.address}`);
  const tls = options.tls;
  const transport = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const request = transport.request(
      url,
      {
        method: 'DELETE',
        headers: options.token ? { 'X-Consul-Token': options.token } : {},
        ca: tls?.caFile ? fs.readFileSync(tls.caFile) : undefined,
        cert: tls?.certFile ? fs.readFileSync(tls.certFile) : undefined,
        key: tls?.keyFile ? fs.readFileSync(tls.keyFile) : undefined,
        servername: tls?.serverName,
      },
      (response) => {
        response.resume();
        response.on('end', () => (response.statusCode === 200 ? resolve() : reject(new Error(`cleanup of ${prefix}: ${response.statusCode}`))));
      },
    );
    request.on('error', reject);
    request.end();
  });
}

describe('Consul store specifics (against the double)', function () {
  let double: ConsulDouble;
  const stores: ConsulStore[] = [];
  const recorders: WatchRecorder[] = [];
  let prefix: string;

  const open = (options: Partial<ConsulStoreOptions> = {}): ConsulStore => {
    const store = new ConsulStore({ address: double.address, log: silentLogger(), ...options });
    stores.push(store);
    return store;
  };
  const record = (recorder: WatchRecorder): WatchRecorder => {
    recorders.push(recorder);
    return recorder;
  };
  const start = async (options: ConsulDoubleOptions = {}): Promise<void> => {
    double = await ConsulDouble.start(options);
  };
  /** The watch's requests the double has seen for the test's prefix. */
  const watchRequests = (): number => double.requests.filter((r) => r.path.startsWith(`/v1/kv/${prefix}`) && 'recurse' in r.query).length;
  /** Watches the prefix with a consumer that has much to do (thousands of streams to write to): busy `consumerMs` on every step. */
  const watchWithBusyConsumer = (store: ConsulStore, consumerMs: number): { steps: string[]; subscription: Subscription } => {
    const steps: string[] = [];
    const subscription = store.watch(prefix).subscribe((step) => {
      steps.push(step.kind);
      const until = performance.now() + consumerMs;
      while (performance.now() < until);
    });
    return { steps, subscription };
  };

  beforeEach(function () {
    prefix = `specific-${randomBytes(4).toString('hex')}/`;
  });

  afterEach(async function () {
    for (const recorder of recorders.splice(0)) recorder.stop();
    for (const store of stores.splice(0)) await store.close();
    sinon.restore();
    await double?.stop();
  });

  describe('requests', function () {
    it('sends the ACL token, datacenter and namespace with every request', async function () {
      await start({ aclToken: 'secret-token', datacenter: 'dc7', namespaces: true });
      const store = open({ token: 'secret-token', datacenter: 'dc7', namespace: 'team-a' });
      const watch = record(new WatchRecorder(store.watch(prefix)));
      await watch.until('the reset', () => watch.steps.length > 0);
      assert.equal(await store.put(`${prefix}a`, 'one'), true);
      assert.equal(await store.put(`${prefix}a`, 'two', { cas: (await store.get(`${prefix}a`))!.modifyIndex }), true);
      assert.equal(await store.transaction([{ verb: 'put', key: `${prefix}b`, value: 'x', cas: 0 }]), true);
      assert.equal(await store.delete(`${prefix}b`), true);
      await watch.until('the writes', () => watch.values()[`${prefix}a`] === 'two' && !watch.state.has(`${prefix}b`));
      assert.ok(double.requests.length >= 6);
      for (const request of double.requests) {
        assert.equal(request.token, 'secret-token', `${request.method} ${request.path}`);
        assert.equal(request.query.dc, 'dc7', `${request.method} ${request.path}`);
        assert.equal(request.query.ns, 'team-a', `${request.method} ${request.path}`);
      }
      const casPut = double.requests.find((r) => r.method === 'PUT' && 'cas' in r.query);
      assert.ok(casPut, 'the CAS put carries ?cas=');
      // The namespace really is a separate keyspace.
      const other = open({ token: 'secret-token', datacenter: 'dc7', namespace: 'team-b' });
      assert.deepEqual((await other.list(prefix)).entries, []);
    });

    it("counts a read of a missing key or an empty prefix (Consul's 404 with its index) as ok in the metrics, and a refused one as client_error", async function () {
      await start({ aclToken: 'secret-token' });
      const calls = async (operation: string, outcome: string): Promise<number> => {
        const { values } = await (registry.getSingleMetric('manticore_backend_requests_total') as Counter).get();
        return values.find(({ labels }) => labels.backend === 'consul' && labels.operation === operation && labels.outcome === outcome)?.value ?? 0;
      };
      const counted = async (): Promise<number[]> => Promise.all([calls('get', 'ok'), calls('list', 'ok'), calls('get', 'client_error'), calls('list', 'client_error')]);
      const before = await counted();
      const store = open({ token: 'secret-token' });
      assert.equal(await store.get(`${prefix}missing`), undefined);
      assert.deepEqual((await store.list(prefix)).entries, []);
      await assert.rejects(open().get(`${prefix}missing`), (error: unknown) => error instanceof ConsulError && error.status === 403);
      const after = await counted();
      assert.deepEqual(
        after.map((count, i) => count - before[i]!),
        [1, 1, 1, 0],
        'the answers the store reads as "none" are no errors; a refusal is one',
      );
    });

    it('reports a missing or wrong ACL token as a 403 ConsulError, never as a failed compare-and-set', async function () {
      await start({ aclToken: 'secret-token' });
      const anonymous = open();
      await assert.rejects(anonymous.put(`${prefix}a`, 'x'), (error: unknown) => {
        assert.ok(error instanceof ConsulError);
        assert.equal(error.status, 403);
        assert.match(error.message, /Permission denied/);
        assert.equal(error.operation, 'put');
        assert.equal(error.key, `${prefix}a`);
        return true;
      });
      // Consul rolls a transaction back with 409 for ACL failures too: that must not read as "cas failed".
      await assert.rejects(anonymous.transaction([{ verb: 'put', key: `${prefix}a`, value: 'x', cas: 0 }]), (error: unknown) => {
        assert.ok(error instanceof ConsulError);
        assert.match(error.message, /Permission denied/);
        return true;
      });
      const wrong = open({ token: 'not-the-token' });
      await assert.rejects(wrong.get(`${prefix}a`), (error: unknown) => error instanceof ConsulError && error.status === 403 && /ACL not found/.test(error.message));
      const watch = record(new WatchRecorder(wrong.watch(prefix)));
      await watch.until('the watch to fail', () => watch.error !== undefined);
      assert.ok(watch.error instanceof ConsulError && watch.error.status === 403, 'a refused watch errors instead of retrying forever');
    });

    it('refuses a listing Consul trimmed for the ACL token, which would read as deleted records', async function () {
      await start({ aclToken: 'secret-token' });
      const allowed = open({ token: 'secret-token' });
      assert.equal(await allowed.put(`${prefix}a`, 'x'), true);
      const anonymous = open();
      await assert.rejects(anonymous.list(prefix), (error: unknown) => {
        assert.ok(error instanceof ConsulError);
        assert.equal(error.retryable, false);
        assert.match(error.message, /ACL token.*read/);
        assert.equal(error.key, prefix);
        return true;
      });
      const watch = record(new WatchRecorder(anonymous.watch(prefix)));
      await watch.until('the watch to fail', () => watch.error !== undefined);
      assert.equal(watch.steps.length, 0, 'no trimmed view is delivered');
      assert.ok(watch.error instanceof ConsulError && /ACL token/.test(watch.error.message));
    });

    it('reports a datacenter the agent cannot reach, and namespaces on Consul CE, as ConsulErrors', async function () {
      await start();
      await assert.rejects(open({ datacenter: 'elsewhere' }).get(`${prefix}a`), (error: unknown) => {
        assert.ok(error instanceof ConsulError);
        assert.equal(error.status, 500);
        assert.match(error.message, /No path to datacenter/);
        return true;
      });
      await assert.rejects(open({ namespace: 'team' }).put(`${prefix}a`, 'x'), (error: unknown) => {
        assert.ok(error instanceof ConsulError);
        assert.equal(error.status, 400);
        assert.match(error.message, /Namespaces are a Consul Enterprise feature/);
        return true;
      });
    });

    it('refuses keys that Consul cannot address over HTTP, before sending anything', async function () {
      await start();
      const store = open();
      for (const key of [`${prefix}a//b`, `${prefix}./b`, `${prefix}a/..`, `${prefix}tab\tkey`]) {
        await assert.rejects(store.put(key, 'x'), StoreError, JSON.stringify(key));
      }
      await assert.rejects(store.list(`${prefix}x//`), StoreError);
      assert.equal(double.requests.length, 0);
      assert.equal(await store.put(`${prefix}a/b/`, 'a trailing slash is fine'), true);
      assert.equal((await store.get(`${prefix}a/b/`))?.value, 'a trailing slash is fine');
    });

    it('reads values written by other Consul clients, empty values included', async function () {
      await start();
      const store = open();
      // A PUT with an empty body is stored as a nil value, which Consul answers as "Value": null.
      assert.equal(await store.put(`${prefix}empty`, ''), true);
      const raw = await rawRequest(double, 'GET', `/v1/kv/${prefix}empty`);
      assert.equal((JSON.parse(raw.body) as [{ Value: unknown }])[0].Value, null);
      assert.equal((await store.get(`${prefix}empty`))?.value, '');
      assert.deepEqual((await store.list(prefix)).entries.map((e) => e.value), ['']);
    });

    it('retries reads through injected latency and errors, and reports failed writes as retryable ConsulErrors', async function () {
      await start();
      const store = open();
      await store.put(`${prefix}a`, '1');
      double.faults.latencyMs = 5;
      double.faults.errorRate = 1;
      await assert.rejects(store.put(`${prefix}a`, '2'), (error: unknown) => {
        assert.ok(error instanceof ConsulError);
        assert.equal(error.status, 500);
        assert.equal(error.retryable, true);
        return true;
      });
      double.faults.errorRate = 0.5;
      // Four attempts in all: a read fails only if all four are hit (1 in 16); count how often that happens.
      let failures = 0;
      for (let i = 0; i < 20; i++) {
        try {
          assert.equal((await store.get(`${prefix}a`))?.value, '1');
        } catch (error) {
          assert.ok(error instanceof ConsulError && error.retryable, String(error));
          failures++;
        }
      }
      assert.ok(failures < 10, `${failures} of 20 reads failed despite retries`);
      assert.ok(double.requests.some((r) => r.status === 500), 'errors were injected');
    });
    it("retries writes the servers' rate limiter refused (503 \"try again later\"), which Consul never applied", async function () {
      await start();
      const store = open();
      await store.put(`${prefix}a`, '1');
      const { modifyIndex } = (await store.get(`${prefix}a`))!;
      double.faults.rateLimited = 2;
      assert.equal(await store.put(`${prefix}a`, '2', { cas: modifyIndex }), true);
      double.faults.rateLimited = 1;
      assert.equal(await store.transaction([{ verb: 'put', key: `${prefix}b`, value: '3', cas: 0 }]), true);
      assert.deepEqual(
        double.requests.filter((r) => r.method === 'PUT').map((r) => r.status),
        [200, 503, 503, 200, 503, 200],
      );
      assert.deepEqual((await store.list(prefix)).entries.map((e) => e.value), ['2', '3']);
    });

    it("keeps within Consul's limit on one client's connections (200) however many requests are on their way, so none is refused, and few once they are answered", async function () {
      await start();
      const store = open();
      const watch = record(new WatchRecorder(store.watch(prefix)));
      await watch.until('the reset', () => watch.steps.length > 0);
      const keys = Array.from({ length: 400 }, (_, i) => `${prefix}${String(i).padStart(3, '0')}`);
      const written = await Promise.all(
        keys.map((key, i) => (i % 2 === 0 ? store.put(key, 'x', { cas: 0 }) : store.transaction([{ verb: 'put', key, value: 'x', cas: 0 }]))),
      );
      assert.ok(written.every(Boolean));
      assert.equal(double.refusedConnections, 0);
      assert.equal((await store.list(prefix)).entries.length, keys.length);
      // Once the burst is over, it keeps only a few idle connections beside the watch's: the rest of the limit
      // is left to the other processes on its host.
      for (let i = 0; i < 10_000 && double.openConnections > 9; i++) await new Promise((resolve) => setImmediate(resolve));
      assert.ok(double.openConnections <= 9, `${double.openConnections} connections stay open`);
    });
  });

  describe('watch', function () {
    it('survives dropped blocking queries without losing or repeating a change', async function () {
      await start();
      const store = open();
      const writer = open();
      await writer.put(`${prefix}a`, '1');
      const watch = record(new WatchRecorder(store.watch(prefix)));
      await watch.until('the reset', () => watch.steps.length > 0);
      for (let round = 0; round < 3; round++) {
        await waitFor('a held blocking query', () => double.heldQueries === 1);
        double.abortBlockingQueries();
        await writer.put(`${prefix}k${round}`, String(round));
        await writer.put(`${prefix}a`, `a${round}`);
        await watch.until(`round ${round}`, () => watch.values()[`${prefix}k${round}`] === String(round) && watch.values()[`${prefix}a`] === `a${round}`);
      }
      await writer.delete(`${prefix}k0`);
      await watch.until('the delete', () => !watch.state.has(`${prefix}k0`));
      assertCleanHistory(watch);
      assert.deepEqual(watch.values(), valuesOf((await writer.list(prefix)).entries));
    });

    it('rides out an outage with a bounded number of attempts and catches up afterwards', async function () {
      await start();
      // The backoff waits as the watch logs them, each just before it sleeps.
      const backoffs: number[] = [];
      const log = pino({ level: 'warn' }, {
        write: (line: string) => {
          const record = JSON.parse(line) as { msg: string; retryInMs?: number };
          if (record.msg === 'watch request failed; retrying') backoffs.push(record.retryInMs!);
        },
      });
      const store = open({ log });
      const writer = open();
      const watch = record(new WatchRecorder(store.watch(prefix)));
      await watch.until('the reset', () => watch.steps.length > 0);
      await waitFor('a held blocking query', () => double.heldQueries === 1);
      const before = watchRequests();
      // One second of outage on a clock the test moves: on real time, a busy machine made fewer attempts in it.
      const clock = sinon.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'], shouldClearNativeTimers: true });
      const attempts = sinon.spy(http, 'request');
      try {
        await double.outage(true);
        const outageEnds = clock.now + 1000;
        // Each attempt fails on real I/O (nothing listens) and then sleeps on the fake clock: the next timer is its backoff.
        for (let failed = 1; ; failed++) {
          await turnsUntil(() => backoffs.length === failed);
          if (clock.now + backoffs[failed - 1]! > outageEnds) break;
          await clock.nextAsync();
        }
        const tried = attempts.getCalls().filter((call) => String((call.args[0] as { path?: string }).path).includes(encodeURIComponent(prefix).replace(/%2F/g, '/'))).length;
        // Backoff 100 ms doubling with jitter (half to all of it): 3 or 4 attempts fit in a second; a busy loop would make thousands.
        backoffs.forEach((waited, n) => assert.ok(waited >= 50 * 2 ** n && waited <= 100 * 2 ** n, `backoff ${n}: ${waited} ms of ${backoffs.join(', ')}`));
        assert.ok(tried >= 3 && tried <= 4, `${tried} attempts during a 1 s outage`);
        assert.equal(watchRequests(), before, 'nothing reached the double while it was down');
        await double.outage(false);
        // The backoff under way ends: the attempt after it finds the double back.
        await clock.nextAsync();
      } finally {
        clock.restore();
        attempts.restore();
      }
      await writer.put(`${prefix}after`, 'x');
      await watch.until('the write after the outage', () => watch.state.has(`${prefix}after`));
      assert.equal(watch.error, undefined);
      assertCleanHistory(watch);
    });

    it('starts over with a reset when Consul lost its state and the index went backwards', async function () {
      await start();
      const store = open();
      const writer = open();
      for (let i = 0; i < 5; i++) await writer.put(`${prefix}old${i}`, String(i));
      const watch = record(new WatchRecorder(store.watch(prefix)));
      await watch.until('the reset', () => watch.steps.length > 0);
      await waitFor('a held blocking query', () => double.heldQueries === 1);
      const oldIndex = watch.steps[0].index;
      double.reset();
      await watch.until('a second reset', () => watch.steps.filter((s) => s.kind === 'reset').length === 2);
      const second = watch.steps.find((s, i) => i > 0 && s.kind === 'reset')!;
      assert.ok(second.index < oldIndex, `the index went from ${oldIndex} to ${second.index}`);
      assert.deepEqual(watch.values(), {});
      await writer.put(`${prefix}new`, 'n');
      await watch.until('the first write of the new state', () => watch.values()[`${prefix}new`] === 'n');
      assert.deepEqual(watch.values(), { [`${prefix}new`]: 'n' });
    });

    it('meets a prefix index that a reaped tombstone took back with a reset of the same entries, and goes on delivering', async function () {
      await start();
      const store = open({ watchWaitSeconds: 1 });
      const writer = open();
      await writer.put(`${prefix}a`, '1');
      await writer.put(`${prefix}b`, '2');
      const watch = record(new WatchRecorder(store.watch(prefix)));
      await watch.until('the reset', () => watch.steps.length > 0);
      await writer.delete(`${prefix}b`);
      await watch.until('the delete', () => watch.steps.length === 2);
      const deletedAt = watch.steps[1].index;
      await waitFor('a held blocking query', () => double.heldQueries === 1);
      double.reapTombstones();
      // Nothing wakes the query: its wait ends with the prefix's highest ModifyIndex, below the delete's.
      await watch.until('a reset after the reap', () => watch.steps.length === 3);
      const reset = watch.steps[2];
      assert.equal(reset.kind, 'reset');
      assert.ok(reset.index < deletedAt, `the index went from ${deletedAt} to ${reset.index}`);
      assert.deepEqual(watch.values(), { [`${prefix}a`]: '1' });
      // Where the prefix stands is read as the same lower index, which the watch has reached.
      assert.equal((await writer.prefixIndex(prefix)).index, reset.index);
      await writer.put(`${prefix}c`, '3');
      await watch.until('the write after the reap', () => watch.values()[`${prefix}c`] === '3');
      assert.deepEqual(watch.changes().map((change) => change.type), ['delete', 'put']);
    });

    it('notices lost state after a dropped connection at once, by reading without blocking', async function () {
      await start();
      const store = open({ watchWaitSeconds: 600 });
      const writer = open();
      for (let i = 0; i < 5; i++) await writer.put(`${prefix}a`, String(i));
      const watch = record(new WatchRecorder(store.watch(prefix)));
      await watch.until('the reset', () => watch.steps.length > 0);
      await waitFor('a held blocking query', () => double.heldQueries === 1);
      // Disaster: connections drop and the cluster comes back empty. A blocking read with the old index would
      // wait the full ten minutes on the new cluster; the store reads without blocking after any error.
      const oldIndex = watch.steps[0].index;
      double.abortBlockingQueries();
      double.reset();
      await writer.put(`${prefix}b`, '2');
      assert.ok((await writer.list(prefix)).index < oldIndex, 'the new cluster is behind the old one');
      await watch.until('the new state', () => watch.values()[`${prefix}b`] === '2' && !watch.state.has(`${prefix}a`));
      assert.equal(watch.steps.filter((s) => s.kind === 'reset').length, 2);
    });

    it('makes every watch read again when one of them sees the index go backwards, so none waits out a stale blocking query', async function () {
      await start();
      const store = open({ watchWaitSeconds: 600 });
      const writer = open();
      for (let i = 0; i < 5; i++) await writer.put(`${prefix}busy/k`, String(i));
      const busy = record(new WatchRecorder(store.watch(`${prefix}busy/`)));
      const quiet = record(new WatchRecorder(store.watch(`${prefix}quiet/`)));
      await waitFor('both blocking queries held', () => double.heldQueries === 2);
      // The quiet watch's next blocking query (with the old index) is on its way when the state is lost: on
      // the new cluster it would wait the full ten minutes for the index to pass the old one.
      double.faults.latencyMs = 300;
      await writer.put(`${prefix}quiet/k`, 'q');
      await quiet.until('the change', () => quiet.values()[`${prefix}quiet/k`] === 'q');
      await waitFor('the quiet watch asking again', () => double.heldQueries === 1);
      double.reset();
      double.faults.latencyMs = 0;
      await busy.until('the busy watch reset', () => busy.steps.filter((s) => s.kind === 'reset').length === 2);
      await quiet.until('the quiet watch reset too', () => quiet.steps.filter((s) => s.kind === 'reset').length === 2, 5_000);
      assert.deepEqual(quiet.values(), {});
    });

    it('blocks again at once when a wait ends with the same index, without busy-looping', async function () {
      await start();
      // The double's waits and the store's timers run on a clock the test moves (the requests are real): a
      // window of real time counted the reads that a busy machine had managed to make in it.
      const clock = sinon.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'], shouldClearNativeTimers: true });
      try {
        const store = open({ watchWaitSeconds: 1 });
        const watch = record(new WatchRecorder(store.watch(prefix)));
        await turnsUntil(() => watch.steps.length > 0 && double.heldQueries === 1);
        for (let wait = 1; wait <= 3; wait++) {
          const before = watchRequests();
          // A wait of one second and the most jitter the double adds to it (1/16 s).
          await clock.tickAsync(1000 + 1000 / 16);
          await turnsUntil(() => watchRequests() > before && double.heldQueries === 1);
          assert.equal(watchRequests(), before + 1, `wait ${wait} ended: one blocking read again, not more`);
        }
        const blockingReads = double.requests.filter((r) => 'recurse' in r.query && r.query.index !== undefined);
        assert.ok(blockingReads.every((r) => r.query.wait === '1s'));
        assert.equal(watch.steps.length, 1, 'a wait that ends with nothing new delivers nothing');
      } finally {
        clock.restore();
      }
    });

    it('paces by what reading the list cost, not by what its consumer then did with the changes', async function () {
      await start();
      const store = open();
      const costs: number[] = [];
      sinon.stub(watchPacing, 'pacingDelayMs').callsFake((costMs: number) => {
        costs.push(costMs);
        return 0;
      });
      const consumerMs = 100;
      // Its time must not hold the next read back.
      const { steps, subscription } = watchWithBusyConsumer(store, consumerMs);
      try {
        await waitFor('the reset', () => steps.length > 0);
        await store.put(`${prefix}a`, 'one');
        await waitFor('the change to be paced', () => costs.length >= 2);
        assert.deepEqual(steps, ['reset', 'changes']);
        for (const cost of costs) assert.ok(cost < consumerMs, `a one-entry listing was counted as costing ${cost} ms`);
      } finally {
        subscription.unsubscribe();
      }
    });

    it("counts the pause from when the answer was taken in, so that the consumer's work fills it", async function () {
      await start();
      const consumerMs = 50;
      // Every answer is followed by a pause as long as its consumer is busy: once the consumer returns, the
      // pause is over and the next read goes out at once. The store's timers stand still, so a pause that
      // began only after the consumer would never end.
      sinon.stub(watchPacing, 'pacingDelayMs').returns(consumerMs);
      const clock = sinon.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'], shouldClearNativeTimers: true });
      try {
        const { steps, subscription } = watchWithBusyConsumer(open(), consumerMs);
        try {
          await turnsUntil(() => steps.length === 1 && double.heldQueries === 1);
          const before = watchRequests();
          await open().put(`${prefix}a`, 'one');
          await turnsUntil(() => steps.length === 2 && watchRequests() === before + 1 && double.heldQueries === 1);
          assert.deepEqual(steps, ['reset', 'changes']);
        } finally {
          subscription.unsubscribe();
        }
      } finally {
        clock.restore();
      }
    });

    it('resumes with changes from an index it delivered, and with a reset from one it cannot know', async function () {
      await start();
      const store = open();
      const writer = open();
      await writer.put(`${prefix}keep`, 'k');
      await writer.put(`${prefix}gone`, 'g');
      const first = record(new WatchRecorder(store.watch(prefix)));
      await first.until('the reset', () => first.steps.length > 0);
      const known = first.steps[0];
      first.stop();
      await writer.put(`${prefix}new`, 'n');
      await writer.delete(`${prefix}gone`);
      const expected = await writer.list(prefix);

      const resumed = record(new WatchRecorder(store.watch(prefix, known.index), known.kind === 'reset' ? known.entries : []));
      await resumed.until('the missed changes', () => resumed.steps.length > 0);
      assert.equal(resumed.steps[0].kind, 'changes');
      assert.deepEqual(
        resumed.changes().map((c: KvChange) => (c.type === 'put' ? `put ${c.entry.key}` : `delete ${c.key}`)),
        [`put ${prefix}new`, `delete ${prefix}gone`],
      );
      assert.deepEqual(resumed.values(), valuesOf(expected.entries));

      // A fresh store knows nothing of that index: it can only start with a reset.
      const stranger = record(new WatchRecorder(open().watch(prefix, known.index)));
      await stranger.until('the reset', () => stranger.steps.length > 0);
      assert.equal(stranger.steps[0].kind, 'reset');
      assert.deepEqual(stranger.values(), valuesOf(expected.entries));
    });

    it('aborts the blocking request on unsubscribe and completes watches on close', async function () {
      await start();
      const store = open();
      const stopped = record(new WatchRecorder(store.watch(prefix)));
      await stopped.until('the reset', () => stopped.steps.length > 0);
      await waitFor('a held blocking query', () => double.heldQueries === 1);
      stopped.stop();
      await waitFor('the double to see the request go', () => double.heldQueries === 0);
      assert.equal(stopped.completed, false);

      const open1 = record(new WatchRecorder(store.watch(prefix)));
      const open2 = record(new WatchRecorder(store.watch(`${prefix}other/`)));
      await open1.until('the reset', () => open1.steps.length > 0);
      await open2.until('the reset', () => open2.steps.length > 0);
      await waitFor('two held blocking queries', () => double.heldQueries === 2);
      await store.close();
      assert.equal(open1.completed, true);
      assert.equal(open2.completed, true);
      await waitFor('the double to see both requests go', () => double.heldQueries === 0);
    });

    it('tells unchanged entries from new ones by their indexes, value, session and key, escaped keys included', async function () {
      // Scripted answers: the second listing keeps every index but changes what the indexes alone cannot
      // tell (a Consul rebuilt with colliding indexes, a lock taken without a write), which must be delivered.
      const entry = (key: string, value: string | null, index: number, extra = ''): string =>
        `{"LockIndex":0,"Key":${JSON.stringify(key)},"Flags":0,"Value":${value === null ? 'null' : `"${Buffer.from(value).toString('base64')}"`},${extra}"CreateIndex":${index},"ModifyIndex":${index}}`;
      const listings = [
        { index: 10, body: [entry('p/same', 'kept', 3), entry('p/value', 'one', 4), entry('p/q"uote', 'q', 5), entry('p/lock', 'l', 6), entry('p/empty', null, 7)] },
        { index: 11, body: [entry('p/same', 'kept', 3), entry('p/value', 'two!', 4), entry('p/q"uote', 'q', 5), entry('p/lock', 'l', 6, '"Session":"s1",'), entry('p/empty', 'now', 7)] },
      ];
      let answered = 0;
      const server = http.createServer((request, response) => {
        const listing = listings[Math.min(answered++, listings.length - 1)]!;
        // Past the script, hold the blocking query until the watch lets it go.
        if (answered > listings.length) return void request.on('close', () => response.destroy());
        response.writeHead(200, { 'Content-Type': 'application/json', 'X-Consul-Index': String(listing.index) });
        response.end(`[${listing.body.join(',')}]`);
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      try {
        const store = new ConsulStore({ address: `http://127.0.0.1:${(server.address() as { port: number }).port}`, log: silentLogger() });
        stores.push(store);
        const watch = record(new WatchRecorder(store.watch('p/')));
        await watch.until('the second listing', () => watch.steps.length === 2);
        assert.deepEqual(
          watch.changes().map((change) => (change.type === 'put' ? [change.entry.key, change.entry.value, change.entry.session ?? null] : ['delete', change.key])),
          [
            ['p/value', 'two!', null],
            ['p/lock', 'l', 's1'],
            ['p/empty', 'now', null],
          ],
        );
        assert.equal(watch.values()['p/q"uote'], 'q');
      } finally {
        await new Promise((resolve) => server.close(resolve));
        server.closeAllConnections();
      }
    });

    it('counts a committed transaction whose results cannot be read as written, answering none of its entries', async function () {
      // Scripted 200 answers to /v1/txn: the write stands whatever the body says, so none of them is an error,
      // and only the readable entries of the puts asked for are answered.
      const kv = (key: string, index: number): string => `{"KV":{"LockIndex":0,"Key":${JSON.stringify(key)},"Flags":0,"Value":null,"CreateIndex":${index},"ModifyIndex":${index}}}`;
      const answers = ['not json', '{"Results":null,"Errors":null}', '[1,2]', `{"Results":[null,{"KV":{"Key":"p/a"}},${kv('p/other', 8)},${kv('p/b', 9)}],"Errors":null}`];
      let answered = 0;
      const server = http.createServer((request, response) => {
        request.resume();
        request.on('end', () => response.writeHead(200, { 'Content-Type': 'application/json' }).end(answers[answered++]));
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      try {
        const store = new ConsulStore({ address: `http://127.0.0.1:${(server.address() as { port: number }).port}`, log: silentLogger() });
        stores.push(store);
        const operations = [
          { verb: 'put', key: 'p/a', value: 'x' },
          { verb: 'put', key: 'p/b', value: 'y' },
        ] as const;
        for (let i = 0; i < 3; i++) assert.deepEqual(await store.commit(operations), [], answers[i]);
        assert.deepEqual(await store.commit(operations), [{ key: 'p/b', createIndex: 9, modifyIndex: 9 }]);
      } finally {
        await new Promise((resolve) => server.close(resolve));
        server.closeAllConnections();
      }
    });

    it('keeps delivering, without errors, while half of all requests fail', async function () {
      await start();
      const store = open();
      const writer = open();
      const watch = record(new WatchRecorder(store.watch(prefix)));
      await watch.until('the reset', () => watch.steps.length > 0);
      double.faults.errorRate = 0.5;
      double.faults.latencyMs = 2;
      const expected: Record<string, string> = {};
      for (let i = 0; i < 10; i++) {
        // Injected errors are answered before anything is applied, so trying again is safe here.
        await untilApplied(() => writer.put(`${prefix}k${i % 4}`, String(i)));
        expected[`${prefix}k${i % 4}`] = String(i);
      }
      await watch.until('convergence under faults', () => JSON.stringify(sortedRecord(watch.values())) === JSON.stringify(sortedRecord(expected)), 20_000);
      double.faults.errorRate = 0;
      assert.equal(watch.error, undefined);
      assert.ok(double.requests.some((r) => r.status === 500));
      assertCleanHistory(watch);
    });
  });

  describe('TLS', function () {
    let dir: string;
    let certs: TestCertificates | undefined;

    before(async function () {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'consul-tls-'));
      certs = await makeCertificates(dir);
      if (!certs) this.skip();
    });

    after(function () {
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it('verifies the agent with the CA file and presents the client certificate', async function () {
      const c = certs!;
      await start({ tls: { cert: fs.readFileSync(c.serverCert), key: fs.readFileSync(c.serverKey), ca: fs.readFileSync(c.caCert), requireClientCert: true } });
      assert.match(double.address, /^https:/);
      const store = open({ tls: { caFile: c.caCert, certFile: c.clientCert, keyFile: c.clientKey } });
      assert.equal(await store.put(`${prefix}a`, 'over TLS'), true);
      assert.equal((await store.get(`${prefix}a`))?.value, 'over TLS');
      const watch = record(new WatchRecorder(store.watch(prefix)));
      await watch.until('the reset', () => watch.values()[`${prefix}a`] === 'over TLS');

      // Without the CA the self-signed chain is refused; without the client certificate the agent refuses.
      await assert.rejects(open({ tls: { certFile: c.clientCert, keyFile: c.clientKey } }).get(`${prefix}a`), ConsulError);
      await assert.rejects(open({ tls: { caFile: c.caCert } }).get(`${prefix}a`), ConsulError);
    });

    it('checks the certificate against serverName when the address is an IP', async function () {
      const c = certs!;
      await start({ tls: { cert: fs.readFileSync(c.namedCert), key: fs.readFileSync(c.namedKey) } });
      assert.equal(await open({ tls: { caFile: c.caCert, serverName: 'consul.manticore.test' } }).put(`${prefix}a`, 'x'), true);
      await assert.rejects(open({ tls: { caFile: c.caCert } }).get(`${prefix}a`), /cannot reach Consul/);
    });

    it('fails at construction on unreadable files and on TLS options for an http address', async function () {
      await start();
      const missing = path.join(dir, 'missing.pem');
      assert.throws(
        () => new ConsulStore({ address: 'https://127.0.0.1:1', tls: { caFile: missing }, log: silentLogger() }),
        (error: unknown) => error instanceof StoreError && error.message.includes(missing),
      );
      assert.throws(
        () => new ConsulStore({ address: 'https://127.0.0.1:1', tls: { certFile: certs!.clientCert }, log: silentLogger() }),
        /certFile and keyFile go together/,
      );
      assert.throws(() => new ConsulStore({ address: double.address, tls: { caFile: certs!.caCert }, log: silentLogger() }), /https/);
    });
  });
});

/** One reset at the start, then changes only, none delivered twice, step indexes never going back. */
function assertCleanHistory(watch: WatchRecorder): void {
  assert.equal(watch.steps[0]?.kind, 'reset');
  assert.equal(watch.steps.filter((s) => s.kind === 'reset').length, 1, 'no reset after the first step');
  const seen = watch.changes().map((c) => (c.type === 'put' ? `put ${c.entry.key} ${c.entry.modifyIndex}` : `delete ${c.key}`));
  assert.equal(new Set(seen).size, seen.length, `a change was delivered twice: ${seen.join('; ')}`);
  for (let i = 1; i < watch.steps.length; i++) assert.ok(watch.steps[i].index >= watch.steps[i - 1].index);
}

function valuesOf(entries: readonly { key: string; value: string }[]): Record<string, string> {
  return sortedRecord(Object.fromEntries(entries.map((e) => [e.key, e.value])));
}

function sortedRecord(record: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(record).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** Repeats a write that failed with an injected (retryable) error until it is applied. */
async function untilApplied(write: () => Promise<boolean>): Promise<void> {
  for (let attempt = 0; attempt < 50; attempt++) {
    try {
      if (await write()) return;
    } catch (error) {
      if (!(error instanceof ConsulError) || !error.retryable) throw error;
    }
  }
  throw new Error('the write never went through');
}

function rawRequest(double: ConsulDouble, method: string, pathAndQuery: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = http.request(`${double.address}${pathAndQuery}`, { method }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    request.on('error', reject);
    request.end();
  });
}

interface TestCertificates {
  readonly caCert: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly namedCert: string;
  readonly namedKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
}

/**
 * A throwaway CA, a server certificate for 127.0.0.1, one for the name consul.manticore.test only, and a
 * client certificate, all made with openssl. Undefined (the TLS tests skip) when openssl is missing.
 */
async function makeCertificates(dir: string): Promise<TestCertificates | undefined> {
  const run = promisify(execFile);
  try {
    await run('openssl', ['version']);
  } catch {
    return undefined;
  }
  const file = (name: string): string => path.join(dir, name);
  const openssl = (...args: string[]): Promise<unknown> => run('openssl', args, { cwd: dir });
  const ecKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl('req', '-x509', ...ecKey, '-keyout', file('ca.key'), '-out', file('ca.pem'), '-days', '1', '-subj', '/CN=Manticore test CA');
  const leaf = async (name: string, subject: string, extensions: string): Promise<void> => {
    fs.writeFileSync(file(`${name}.ext`), extensions);
    await openssl('req', ...ecKey, '-keyout', file(`${name}.key`), '-out', file(`${name}.csr`), '-subj', subject);
    await openssl('x509', '-req', '-in', file(`${name}.csr`), '-CA', file('ca.pem'), '-CAkey', file('ca.key'), '-CAcreateserial', '-days', '1', '-out', file(`${name}.pem`), '-extfile', file(`${name}.ext`));
  };
  await leaf('server', '/CN=127.0.0.1', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  await leaf('named', '/CN=consul.manticore.test', 'subjectAltName=DNS:consul.manticore.test\nextendedKeyUsage=serverAuth\n');
  await leaf('client', '/CN=manticore', 'extendedKeyUsage=clientAuth\n');
  return {
    caCert: file('ca.pem'),
    serverCert: file('server.pem'),
    serverKey: file('server.key'),
    namedCert: file('named.pem'),
    namedKey: file('named.key'),
    clientCert: file('client.pem'),
    clientKey: file('client.key'),
  };
}
