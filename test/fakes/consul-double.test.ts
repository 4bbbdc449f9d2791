import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import Consul from 'consul';
import sinon from 'sinon';
import { ConsulDouble } from './consul.js';

/**
 * Conformance of the Consul double: first through an off-the-shelf client (the npm `consul` package, which
 * knows nothing of the double), then over plain HTTP for what that client does not expose. Time-dependent
 * behaviour (TTLs, lock-delay, blocking waits) runs on sinon's fake clock.
 */

// The client's published types leave out options it supports (index, wait, ctx, cas on del, ...) and
// describe transactions wrongly; these describe what it really accepts and answers.
interface KvItem {
  Key: string;
  Value: string | null;
  Flags: number;
  LockIndex: number;
  CreateIndex: number;
  ModifyIndex: number;
  Session?: string;
}
interface LooseKv {
  get(options: Record<string, unknown>): Promise<unknown>;
  keys(options: Record<string, unknown>): Promise<string[]>;
  set(options: Record<string, unknown>): Promise<boolean>;
  del(options: Record<string, unknown>): Promise<boolean>;
}
interface SessionInfo {
  ID: string;
  Name: string;
  Node: string;
  LockDelay: number;
  Behavior: string;
  TTL: string;
  CreateIndex: number;
  ModifyIndex: number;
}
interface LooseSession {
  create(options: Record<string, unknown>): Promise<{ ID: string }>;
  info(id: string): Promise<SessionInfo | undefined>;
  list(): Promise<SessionInfo[]>;
  renew(id: string): Promise<SessionInfo[]>;
  destroy(id: string): Promise<void>;
}
interface LooseTxn {
  create(operations: unknown[]): Promise<{ Results: { KV: KvItem }[] | null; Errors: { OpIndex: number; What: string }[] | null }>;
}
interface ResponseError extends Error {
  statusCode: number;
  response: { body: unknown };
}

/** A context that makes the client answer [response, data], so headers such as X-Consul-Index can be read. */
function withResponse(): EventEmitter & { includeResponse: true } {
  return Object.assign(new EventEmitter(), { includeResponse: true as const });
}

const b64 = (text: string): string => Buffer.from(text, 'utf8').toString('base64');

describe('Consul double', function () {
  let double: ConsulDouble;
  let client: InstanceType<typeof Consul>;
  let kv: LooseKv;
  let session: LooseSession;
  let clock: sinon.SinonFakeTimers | undefined;

  /** Fakes only what the double's timers and lock-delay read; network I/O keeps running for real. */
  const fakeTime = (): sinon.SinonFakeTimers => {
    clock = sinon.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'], now: Date.now(), shouldClearNativeTimers: true });
    return clock;
  };

  /** Waits, without timers, until the double holds `count` blocking queries. */
  const whenHeld = async (count: number): Promise<void> => {
    for (let i = 0; i < 10_000 && double.heldQueries !== count; i++) await new Promise((resolve) => setImmediate(resolve));
    assert.equal(double.heldQueries, count, 'held blocking queries');
  };

  beforeEach(async function () {
    double = await ConsulDouble.start();
    client = new Consul({ host: '127.0.0.1', port: double.port });
    kv = client.kv as unknown as LooseKv;
    session = client.session as unknown as LooseSession;
  });

  afterEach(async function () {
    clock?.restore();
    clock = undefined;
    client.destroy();
    await double.stop();
  });

  describe('through the npm consul client', function () {
    it('gets, sets and deletes keys, with flags, and reads raw values', async function () {
      assert.equal(await kv.get({ key: 'app/missing' }), undefined);
      assert.equal(await kv.set({ key: 'app/config', value: 'hello ✓', flags: 42 }), true);
      const item = (await kv.get({ key: 'app/config' })) as KvItem;
      assert.equal(item.Key, 'app/config');
      assert.equal(item.Value, 'hello ✓');
      assert.equal(item.Flags, 42);
      assert.equal(item.LockIndex, 0);
      assert.ok(item.CreateIndex > 1);
      assert.equal(item.ModifyIndex, item.CreateIndex);
      assert.equal(item.Session, undefined);
      const raw = (await kv.get({ key: 'app/config', raw: true })) as Buffer;
      assert.equal(raw.toString('utf8'), 'hello ✓');
      assert.equal(await kv.del({ key: 'app/config' }), true);
      assert.equal(await kv.get({ key: 'app/config' }), undefined);
      assert.equal(await kv.del({ key: 'app/never-existed' }), true);
    });

    it('does check-and-set writes and deletes', async function () {
      assert.equal(await kv.set({ key: 'cas/a', value: 'first', cas: 0 }), true);
      // The client hands Consul's `false` back as undefined (papi drops a falsy body), with a real agent too.
      assert.equal(await kv.set({ key: 'cas/a', value: 'again', cas: 0 }), undefined, 'cas 0 only creates');
      const first = (await kv.get({ key: 'cas/a' })) as KvItem;
      assert.equal(await kv.set({ key: 'cas/a', value: 'second', cas: first.ModifyIndex }), true);
      assert.equal(await kv.set({ key: 'cas/a', value: 'stale', cas: first.ModifyIndex }), undefined);
      const second = (await kv.get({ key: 'cas/a' })) as KvItem;
      assert.equal(second.Value, 'second');
      assert.equal(second.CreateIndex, first.CreateIndex);
      assert.ok(second.ModifyIndex > first.ModifyIndex);
      assert.equal(await kv.del({ key: 'cas/a', cas: first.ModifyIndex }), undefined);
      assert.equal(await kv.del({ key: 'cas/a', cas: 0 }), undefined, 'a delete with cas 0 never deletes');
      assert.equal(await kv.del({ key: 'cas/a', cas: second.ModifyIndex }), true);
      assert.equal(await kv.get({ key: 'cas/a' }), undefined);
    });

    it('lists recursively in key order, lists keys up to a separator, and deletes trees', async function () {
      for (const key of ['web/b', 'web/a', 'web/sub/x', 'web/sub/y', 'webby', 'other']) await kv.set({ key, value: key });
      const items = (await kv.get({ key: 'web/', recurse: true })) as KvItem[];
      assert.deepEqual(
        items.map((i) => i.Key),
        ['web/a', 'web/b', 'web/sub/x', 'web/sub/y'],
      );
      assert.deepEqual(await kv.keys({ key: 'web/', separator: '/' }), ['web/a', 'web/b', 'web/sub/']);
      assert.deepEqual(await kv.keys({ key: 'web' }), ['web/a', 'web/b', 'web/sub/x', 'web/sub/y', 'webby']);
      assert.equal(await kv.del({ key: 'web/sub/', recurse: true }), true);
      assert.deepEqual(await kv.keys({ key: 'web/' }), ['web/a', 'web/b']);
      assert.equal(await kv.get({ key: 'nothing/', recurse: true }), undefined);
    });

    it('orders keys by their UTF-8 bytes, as Consul does (not by UTF-16 code units)', async function () {
      // U+FF01 is EF BC 81 in UTF-8, U+1F600 is F0 9F 98 80: the first sorts first, although its UTF-16 unit is higher.
      for (const key of ['utf/\u{1F600}', 'utf/\uFF01', 'utf/z', 'utf/é']) await kv.set({ key, value: 'v' });
      assert.deepEqual(await kv.keys({ key: 'utf/' }), ['utf/z', 'utf/é', 'utf/\uFF01', 'utf/\u{1F600}']);
      await kv.del({ key: 'utf/\uFF01' });
      assert.deepEqual(await kv.keys({ key: 'utf/' }), ['utf/z', 'utf/é', 'utf/\u{1F600}']);
    });

    it('answers blocking reads when the key changes, with X-Consul-Index', async function () {
      await kv.set({ key: 'block/k', value: 'v1' });
      const [first, item] = (await kv.get({ key: 'block/k', ctx: withResponse() })) as [http.IncomingMessage, KvItem];
      const index = Number(first.headers['x-consul-index']);
      assert.equal(index, item.ModifyIndex);
      const blocked = kv.get({ key: 'block/k', index, wait: '30s', ctx: withResponse() }) as Promise<[http.IncomingMessage, KvItem]>;
      await whenHeld(1);
      await kv.set({ key: 'block/other', value: 'unrelated' });
      assert.equal(double.heldQueries, 1, 'a write to another key does not answer a read of this key');
      await kv.set({ key: 'block/k', value: 'v2' });
      const [response, changed] = await blocked;
      assert.equal(changed.Value, 'v2');
      assert.ok(Number(response.headers['x-consul-index']) > index);
    });

    it('keeps a watch going across changes, deletes and a Consul that lost its state', async function () {
      const seen: (string | undefined)[] = [];
      const errors: unknown[] = [];
      const waiters: (() => void)[] = [];
      const watch = client.watch({ method: client.kv.get, options: { key: 'watched/k', wait: '30s' } });
      watch.on('change', (data: KvItem | undefined) => {
        seen.push(data?.Value ?? undefined);
        for (const wake of waiters.splice(0)) wake();
      });
      watch.on('error', (error: unknown) => errors.push(error));
      // A blocking read of a missing key answers on other writes too (its index is the table's), so the
      // watch may report "still missing" more than once: compare the values it went through.
      const distinct = (): (string | undefined)[] => seen.filter((value, i) => i === 0 || value !== seen[i - 1]);
      const reaches = async (count: number): Promise<void> => {
        while (distinct().length < count) await new Promise<void>((resolve) => waiters.push(resolve));
      };
      try {
        await reaches(1);
        await kv.set({ key: 'watched/k', value: 'a' });
        await reaches(2);
        await kv.set({ key: 'watched/k', value: 'b' });
        await reaches(3);
        await kv.del({ key: 'watched/k' });
        await reaches(4);
        // Build the index up, then lose everything: the client must notice the index going backwards.
        for (let i = 0; i < 5; i++) await kv.set({ key: 'watched/filler', value: String(i) });
        await kv.set({ key: 'watched/k', value: 'c' });
        await reaches(5);
        // Lost while the client is blocked: the held query is answered at once with the lower index. (Had the
        // client not been blocked, its next read with the old index would wait out its full wait first.)
        await whenHeld(1);
        double.reset();
        await reaches(6);
        await kv.set({ key: 'watched/k', value: 'after the reset' });
        await reaches(7);
        assert.deepEqual(distinct(), [undefined, 'a', 'b', undefined, 'c', undefined, 'after the reset']);
        assert.deepEqual(errors, []);
      } finally {
        watch.end();
      }
    });

    it('creates, reads, lists, renews and destroys sessions', async function () {
      const { ID } = await session.create({ name: 'leader-election', ttl: '15s', lockdelay: '5s', behavior: 'delete' });
      assert.match(ID, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      const info = await session.info(ID);
      assert.ok(info);
      assert.equal(info.ID, ID);
      assert.equal(info.Name, 'leader-election');
      assert.equal(info.TTL, '15s');
      assert.equal(info.LockDelay, 5_000_000_000);
      assert.equal(info.Behavior, 'delete');
      assert.equal(info.Node, 'consul-double');
      assert.deepEqual(
        (await session.list()).map((s) => s.ID),
        [ID],
      );
      const renewed = await session.renew(ID);
      assert.equal(renewed[0].ID, ID);
      await session.destroy(ID);
      assert.equal(await session.info(ID), undefined);
      await assert.rejects(session.renew(ID), (error: ResponseError) => error.statusCode === 404);
    });

    it('acquires and releases locks, with LockIndex and Session as Consul keeps them', async function () {
      const a = (await session.create({ name: 'a' })).ID;
      const b = (await session.create({ name: 'b' })).ID;
      assert.equal(await kv.set({ key: 'lock', value: 'held by a', acquire: a }), true);
      assert.equal(await kv.set({ key: 'lock', value: 'b wants it', acquire: b }), undefined, 'false, as the client reports it');
      let item = (await kv.get({ key: 'lock' })) as KvItem;
      assert.equal(item.Session, a);
      assert.equal(item.LockIndex, 1);
      assert.equal(item.Value, 'held by a');
      assert.equal(await kv.set({ key: 'lock', value: 'a again', acquire: a }), true, 'the holder may acquire again');
      item = (await kv.get({ key: 'lock' })) as KvItem;
      assert.equal(item.LockIndex, 1, 're-acquiring does not count as a new lock');
      assert.equal(await kv.set({ key: 'lock', value: 'x', release: b }), undefined, 'only the holder releases');
      assert.equal(await kv.set({ key: 'lock', value: 'released', release: a }), true);
      item = (await kv.get({ key: 'lock' })) as KvItem;
      assert.equal(item.Session, undefined);
      assert.equal(item.LockIndex, 1);
      // An explicit release sets no lock-delay: another session may take the lock at once.
      assert.equal(await kv.set({ key: 'lock', value: 'held by b', acquire: b }), true);
      assert.equal(((await kv.get({ key: 'lock' })) as KvItem).LockIndex, 2);
      await assert.rejects(kv.set({ key: 'lock2', value: 'x', acquire: 'no-such-session' }), (error: ResponseError) => error.statusCode === 500);
    });

    it('enforces lock-delay after the holding session is destroyed', async function () {
      const time = fakeTime();
      const a = (await session.create({ name: 'a', lockdelay: '15s' })).ID;
      const b = (await session.create({ name: 'b' })).ID;
      assert.equal(await kv.set({ key: 'leader', value: 'a', acquire: a }), true);
      await session.destroy(a);
      const released = (await kv.get({ key: 'leader' })) as KvItem;
      assert.equal(released.Session, undefined, 'behavior release: the key stays, unlocked');
      assert.equal(released.Value, 'a');
      assert.equal(await kv.set({ key: 'leader', value: 'b', acquire: b }), undefined, 'refused within lock-delay');
      time.tick(14_999);
      assert.equal(await kv.set({ key: 'leader', value: 'b', acquire: b }), undefined, 'still within lock-delay');
      time.tick(1);
      assert.equal(await kv.set({ key: 'leader', value: 'b', acquire: b }), true, 'lock-delay over');
    });

    it('runs transactions all or nothing', async function () {
      const txn = client.transaction as unknown as LooseTxn;
      const applied = await txn.create([
        { KV: { Verb: 'set', Key: 'txn/a', Value: b64('1') } },
        { KV: { Verb: 'cas', Key: 'txn/b', Value: b64('2'), Index: 0 } },
        { KV: { Verb: 'get', Key: 'txn/a' } },
      ]);
      assert.equal(applied.Errors, null);
      assert.deepEqual(
        applied.Results?.map((r) => [r.KV.Key, r.KV.Value]),
        [
          ['txn/a', null],
          ['txn/b', null],
          ['txn/a', b64('1')],
        ],
      );
      await assert.rejects(
        txn.create([
          { KV: { Verb: 'set', Key: 'txn/c', Value: b64('3') } },
          { KV: { Verb: 'check-not-exists', Key: 'txn/a' } },
        ]),
        (error: ResponseError) => {
          assert.equal(error.statusCode, 409);
          assert.deepEqual(error.response.body, { Results: null, Errors: [{ OpIndex: 1, What: 'key "txn/a" exists' }] });
          return true;
        },
      );
      assert.equal(await kv.get({ key: 'txn/c' }), undefined, 'nothing of a rolled-back transaction is written');
    });

    it('answers status and agent requests', async function () {
      assert.equal(await client.status.leader(), '127.0.0.1:8300');
      const self = (await client.agent.self()) as { Config: { Datacenter: string; NodeName: string } };
      assert.equal(self.Config.Datacenter, 'dc1');
      assert.equal(self.Config.NodeName, 'consul-double');
    });
  });

  describe('over plain HTTP', function () {
    const request = (method: string, path: string, options: { body?: string | Buffer; headers?: Record<string, string> } = {}): Promise<Answer> =>
      send(double.port, method, path, options);

    it('answers reads with Consul headers, and a missing key with an empty 404', async function () {
      await request('PUT', '/v1/kv/h/a', { body: 'x' });
      const found = await request('GET', '/v1/kv/h/a');
      assert.equal(found.status, 200);
      assert.equal(found.headers['content-type'], 'application/json');
      assert.equal(found.headers['x-consul-knownleader'], 'true');
      assert.equal(found.headers['x-consul-lastcontact'], '0');
      const [entry] = JSON.parse(found.text) as KvItem[];
      assert.equal(found.headers['x-consul-index'], String(entry.ModifyIndex));
      assert.deepEqual(Object.keys(entry), ['LockIndex', 'Key', 'Flags', 'Value', 'CreateIndex', 'ModifyIndex']);
      const missing = await request('GET', '/v1/kv/h/missing');
      assert.equal(missing.status, 404);
      assert.equal(missing.text, '');
      assert.equal(missing.headers['content-type'], undefined);
      assert.ok(Number(missing.headers['x-consul-index']) >= entry.ModifyIndex);
      const raw = await request('GET', '/v1/kv/h/a?raw');
      assert.equal(raw.text, 'x');
      assert.equal(raw.headers['content-type'], 'text/plain');
      assert.equal(raw.headers['x-content-type-options'], 'nosniff');
    });

    it('answers unknown paths, wrong methods and malformed parameters as Consul does', async function () {
      const unknown = await request('GET', '/v1/nope');
      assert.deepEqual([unknown.status, unknown.text], [404, '']);
      const method = await request('POST', '/v1/kv/a');
      assert.deepEqual([method.status, method.text, method.headers.allow], [405, 'method POST not allowed', 'OPTIONS,GET,PUT,DELETE']);
      const cases: [string, string, number, string | RegExp][] = [
        ['GET', '/v1/kv/', 400, 'Missing key name'],
        ['PUT', '/v1/kv/', 400, 'Missing key name'],
        ['GET', '/v1/kv/a?index=1&wait=10', 400, 'Invalid wait time'],
        ['GET', '/v1/kv/a?index=x', 400, 'Invalid index'],
        ['PUT', '/v1/kv/a?cas=1&acquire=s', 400, 'Conflicting flags: acquire=s&cas=1\n'],
        ['DELETE', '/v1/kv/a?cas=1&recurse', 400, 'Conflicting flags: cas=1&recurse=\n'],
        ['PUT', '/v1/kv/a?cas=abc', 500, 'strconv.ParseUint: parsing "abc": invalid syntax'],
        ['PUT', '/v1/kv/a?ns=team', 400, 'Bad request: Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature'],
        ['GET', '/v1/kv/a?dc=dc9', 500, 'No path to datacenter'],
        ['PUT', '/v1/kv/a?acquire=', 500, 'missing session'],
        ['PUT', '/v1/session/renew/00000000-0000-0000-0000-000000000000', 404, "Session id '00000000-0000-0000-0000-000000000000' not found"],
        ['GET', '/v1/kv/a%09tab', 400, ''],
      ];
      for (const [verb, path, status, body] of cases) {
        const answer = await request(verb, path);
        assert.equal(answer.status, status, `${verb} ${path}: ${answer.text}`);
        if (typeof body === 'string') assert.equal(answer.text, body, `${verb} ${path}`);
        if (status >= 400 && answer.text !== '') assert.equal(answer.headers['content-type'], 'text/plain; charset=utf-8');
      }
      const redirect = await request('GET', '/v1/kv/a//b');
      assert.deepEqual([redirect.status, redirect.headers.location], [301, '/v1/kv/a/b']);
      assert.deepEqual(JSON.parse((await request('GET', '/v1/session/info/00000000-0000-0000-0000-000000000000')).text), []);
    });

    it('keeps an empty value as null, caps values at 512 KB and keeps unchanged writes from moving the index', async function () {
      await request('PUT', '/v1/kv/v/empty');
      assert.equal((JSON.parse((await request('GET', '/v1/kv/v/empty')).text) as KvItem[])[0].Value, null);
      const limit = 512 * 1024;
      assert.equal((await request('PUT', '/v1/kv/v/big', { body: Buffer.alloc(limit, 'v') })).text, 'true');
      const tooBig = await request('PUT', '/v1/kv/v/big', { body: Buffer.alloc(limit + 1, 'v') });
      assert.equal(tooBig.status, 413);
      assert.match(tooBig.text, /^Request body\(524289 bytes\) too large, max size: 524288 bytes/);
      await request('PUT', '/v1/kv/v/same', { body: 'same' });
      const before = (JSON.parse((await request('GET', '/v1/kv/v/same')).text) as KvItem[])[0];
      assert.equal((await request('PUT', '/v1/kv/v/same', { body: 'same' })).text, 'true');
      const after = (JSON.parse((await request('GET', '/v1/kv/v/same')).text) as KvItem[])[0];
      assert.equal(after.ModifyIndex, before.ModifyIndex, 'Consul skips a write that changes nothing');
    });

    it('raises a prefix index on deletes (tombstones) and lists keys as Consul does', async function () {
      await request('PUT', '/v1/kv/t/a', { body: '1' });
      await request('PUT', '/v1/kv/t/b', { body: '2' });
      await request('PUT', '/v1/kv/elsewhere', { body: '3' });
      const listed = await request('GET', '/v1/kv/t/?recurse');
      const listIndex = Number(listed.headers['x-consul-index']);
      const entries = JSON.parse(listed.text) as KvItem[];
      assert.equal(listIndex, Math.max(...entries.map((e) => e.ModifyIndex)), 'a prefix index is its highest ModifyIndex');
      await request('DELETE', '/v1/kv/t/b');
      const afterDelete = Number((await request('GET', '/v1/kv/t/?recurse')).headers['x-consul-index']);
      assert.ok(afterDelete > listIndex, 'the tombstone raises the prefix index');
      const empty = await request('GET', '/v1/kv/?keys');
      assert.deepEqual(JSON.parse(empty.text), ['elsewhere', 't/a']);
      await request('DELETE', '/v1/kv/?recurse');
      const root = await request('GET', '/v1/kv/?keys');
      assert.deepEqual([root.status, root.text], [200, '[]'], 'the root lists as an empty array, not a 404');
      assert.equal((await request('GET', '/v1/kv/t/?keys')).status, 404);
    });

    it('takes a prefix index back to its highest ModifyIndex when its tombstones are reaped, without waking held queries', async function () {
      const time = fakeTime();
      await request('PUT', '/v1/kv/g/a', { body: '1' });
      await request('PUT', '/v1/kv/g/b', { body: '2' });
      const [kept] = JSON.parse((await request('GET', '/v1/kv/g/a')).text) as KvItem[];
      await request('DELETE', '/v1/kv/g/b');
      const deletedAt = Number((await request('GET', '/v1/kv/g/?recurse')).headers['x-consul-index']);
      assert.ok(deletedAt > kept.ModifyIndex);
      const held = request('GET', `/v1/kv/g/?recurse&index=${deletedAt}&wait=1s`);
      await whenHeld(1);
      double.reapTombstones();
      await whenHeld(1);
      assert.equal((await request('GET', '/v1/kv/g/?keys')).headers['x-consul-index'], String(kept.ModifyIndex));
      time.tick(1000 + 1000 / 16 + 1);
      const answer = await held;
      assert.equal(answer.headers['x-consul-index'], String(kept.ModifyIndex), 'the index went backwards');
      assert.deepEqual((JSON.parse(answer.text) as KvItem[]).map((e) => e.Key), ['g/a']);
      // The table index (a missing key's, an empty prefix's) does not go back.
      assert.ok(Number((await request('GET', '/v1/kv/g/b')).headers['x-consul-index']) >= deletedAt);
    });

    it('limits transactions to 64 operations and rolls back every operation on any failure', async function () {
      const op = (i: number): unknown => ({ KV: { Verb: 'set', Key: `many/${i}`, Value: b64(String(i)) } });
      const tooMany = await request('PUT', '/v1/txn', { body: JSON.stringify(Array.from({ length: 65 }, (_, i) => op(i))) });
      assert.deepEqual([tooMany.status, tooMany.text], [413, 'Transaction contains too many operations (65 > 64)']);
      assert.equal((await request('GET', '/v1/kv/many/?keys')).status, 404);
      const full = await request('PUT', '/v1/txn', { body: JSON.stringify(Array.from({ length: 64 }, (_, i) => op(i))) });
      assert.equal(full.status, 200);
      const results = (JSON.parse(full.text) as { Results: { KV: KvItem }[] }).Results;
      assert.equal(results.length, 64);
      assert.equal(new Set(results.map((r) => r.KV.ModifyIndex)).size, 1, 'one transaction, one index');
      const failed = await request('PUT', '/v1/txn', {
        body: JSON.stringify([
          { KV: { Verb: 'delete', Key: 'many/0' } },
          { KV: { Verb: 'cas', Key: 'many/1', Value: b64('x'), Index: 1 } },
          { KV: { Verb: 'delete-cas', Key: 'many/2', Index: 1 } },
          { KV: { Verb: 'check-index', Key: 'many/missing', Index: 3 } },
          { KV: { Verb: 'frobnicate', Key: 'many/3' } },
        ]),
      });
      assert.equal(failed.status, 409);
      assert.deepEqual(JSON.parse(failed.text), {
        Results: null,
        Errors: [
          { OpIndex: 1, What: 'failed to set key "many/1", index is stale' },
          { OpIndex: 2, What: 'failed to delete key "many/2", index is stale' },
          { OpIndex: 3, What: 'failed to check index, key "many/missing" doesn\'t exist' },
          { OpIndex: 4, What: 'unknown KV verb "frobnicate"' },
        ],
      });
      assert.equal((await request('GET', '/v1/kv/many/0')).status, 200, 'the delete was rolled back');
      const malformed = await request('PUT', '/v1/txn', { body: '[{"KV": {"Verb": "set", "Key": "x", "Value": "not base64!"}}]' });
      assert.equal(malformed.status, 400);
      assert.match(malformed.text, /^Failed to parse body: /);
    });

    it('holds a blocking query for the wait (with up to wait/16 jitter), answers index 0 at once and wakes on deletes', async function () {
      const time = fakeTime();
      await request('PUT', '/v1/kv/b/a', { body: '1' });
      const now = await request('GET', '/v1/kv/b/?recurse');
      const index = Number(now.headers['x-consul-index']);
      assert.equal((await request('GET', '/v1/kv/b/?recurse&index=0&wait=1s')).status, 200, 'index 0 does not block');

      const timedOut = request('GET', `/v1/kv/b/?recurse&index=${index}&wait=2s`);
      await whenHeld(1);
      time.tick(1999);
      await whenHeld(1);
      time.tick(2000 / 16 + 1);
      const answer = await timedOut;
      assert.equal(answer.status, 200);
      assert.equal(answer.headers['x-consul-index'], String(index), 'a timed-out query answers the same index');

      const woken = request('GET', `/v1/kv/b/?recurse&index=${index}&wait=5m`);
      await whenHeld(1);
      await request('DELETE', '/v1/kv/b/never-existed');
      await whenHeld(1);
      await request('DELETE', '/v1/kv/b/a');
      const deleted = await woken;
      assert.equal(deleted.status, 404);
      assert.ok(Number(deleted.headers['x-consul-index']) > index, 'the delete woke the prefix and raised its index');

      const ahead = request('GET', `/v1/kv/b/?recurse&index=${index + 100}&wait=10m`);
      await whenHeld(1);
      time.tick(10 * 60_000 + (10 * 60_000) / 16);
      assert.equal((await ahead).status, 404, 'an index ahead of the store blocks until the (capped) wait ends');
    });

    it('answers held queries at once with the lower index when it loses its state', async function () {
      for (let i = 0; i < 5; i++) await request('PUT', '/v1/kv/r/a', { body: String(i) });
      const index = Number((await request('GET', '/v1/kv/r/?recurse')).headers['x-consul-index']);
      const held = request('GET', `/v1/kv/r/?recurse&index=${index}`);
      await whenHeld(1);
      double.reset();
      const answer = await held;
      assert.equal(answer.status, 404);
      assert.equal(answer.headers['x-consul-index'], '1');
      await request('PUT', '/v1/kv/r/b', { body: 'new' });
      assert.equal((JSON.parse((await request('GET', '/v1/kv/r/b')).text) as KvItem[])[0].CreateIndex, 2, 'the index starts again');
    });

    it('expires TTL sessions exactly TTL after the last renewal, releasing their locks with lock-delay', async function () {
      const time = fakeTime();
      const create = async (body: Record<string, unknown>): Promise<string> => (JSON.parse((await request('PUT', '/v1/session/create', { body: JSON.stringify(body) })).text) as { ID: string }).ID;
      const holder = await create({ Name: 'holder', TTL: '10s', LockDelay: '15s' });
      const other = await create({ Name: 'other' });
      assert.equal((await request('PUT', `/v1/kv/ttl/lock?acquire=${holder}`, { body: 'mine' })).text, 'true');
      const locked = (JSON.parse((await request('GET', '/v1/kv/ttl/lock')).text) as KvItem[])[0];

      time.tick(9_000);
      assert.equal((await request('PUT', `/v1/session/renew/${holder}`)).status, 200);
      time.tick(9_999);
      assert.equal(JSON.parse((await request('GET', `/v1/session/info/${holder}`)).text).length, 1, 'renewed 9.999 s ago');
      time.tick(1);
      assert.deepEqual(JSON.parse((await request('GET', `/v1/session/info/${holder}`)).text), [], 'expired exactly TTL after the renewal');
      const released = (JSON.parse((await request('GET', '/v1/kv/ttl/lock')).text) as KvItem[])[0];
      assert.equal(released.Session, undefined);
      assert.equal(released.Value, b64('mine'));
      assert.ok(released.ModifyIndex > locked.ModifyIndex, 'releasing the lock is a write');

      assert.equal((await request('PUT', `/v1/kv/ttl/lock?acquire=${other}`, { body: 'x' })).text, 'false', 'lock-delay');
      time.tick(15_000);
      assert.equal((await request('PUT', `/v1/kv/ttl/lock?acquire=${other}`, { body: 'x' })).text, 'true');
    });

    it('deletes the keys of an expired session with Behavior delete, and validates TTLs', async function () {
      const time = fakeTime();
      const created = await request('PUT', '/v1/session/create', { body: JSON.stringify({ TTL: '10s', Behavior: 'delete', LockDelay: 0 }) });
      const id = (JSON.parse(created.text) as { ID: string }).ID;
      assert.equal((await request('PUT', `/v1/kv/eph/node?acquire=${id}`, { body: 'here' })).text, 'true');
      time.tick(10_000);
      assert.equal((await request('GET', '/v1/kv/eph/node')).status, 404);
      const info = (await request('GET', '/v1/session/list')).text;
      assert.equal(info, '[]');

      const invalid: [Record<string, unknown>, number, string][] = [
        [{ TTL: '5s' }, 500, "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"],
        [{ TTL: '25h' }, 500, "Invalid Session TTL '90000000000000', must be between [10s=24h0m0s]"],
        [{ TTL: 'soon' }, 500, 'Session TTL \'soon\' invalid: time: invalid duration "soon"'],
        [{ Behavior: 'explode' }, 500, "Invalid Behavior setting 'explode'"],
        [{ Node: 'elsewhere' }, 500, 'Missing node registration'],
      ];
      for (const [body, status, text] of invalid) {
        const answer = await request('PUT', '/v1/session/create', { body: JSON.stringify(body) });
        assert.deepEqual([answer.status, answer.text], [status, text], JSON.stringify(body));
      }
      const numeric = JSON.parse((await request('PUT', '/v1/session/create', { body: '{"LockDelay": 7}' })).text) as { ID: string };
      assert.equal((JSON.parse((await request('GET', `/v1/session/info/${numeric.ID}`)).text) as SessionInfo[])[0].LockDelay, 7_000_000_000, 'small numbers are seconds');
    });

    it('enforces an ACL token from the header, the query or a bearer token', async function () {
      await double.stop();
      double = await ConsulDouble.start({ aclToken: 'root' });
      assert.deepEqual(await statusAndText(request('PUT', '/v1/kv/acl/a', { body: 'x' })), [403, 'Permission denied']);
      assert.deepEqual(await statusAndText(request('GET', '/v1/kv/acl/a', { headers: { 'X-Consul-Token': 'wrong' } })), [403, 'ACL not found']);
      assert.deepEqual(await statusAndText(request('PUT', '/v1/kv/acl/a', { body: 'x', headers: { 'X-Consul-Token': 'root' } })), [200, 'true']);
      assert.equal((await request('GET', '/v1/kv/acl/a?token=root')).status, 200);
      assert.equal((await request('GET', '/v1/kv/acl/a', { headers: { Authorization: 'Bearer root' } })).status, 200);
      const filtered = await request('GET', '/v1/kv/acl/?recurse');
      assert.equal(filtered.status, 404, 'an anonymous listing is filtered, not refused');
      assert.equal(filtered.headers['x-consul-results-filtered-by-acls'], 'true');
      assert.equal((await request('PUT', '/v1/session/create')).status, 403);
      assert.equal((await request('GET', '/v1/status/leader')).status, 200, 'status needs no token');
    });

    it("answers a client's connection beyond limits.http_max_conns_per_client (200) with 429 and closes it, handling nothing sent on it", async function () {
      const held: net.Socket[] = [];
      try {
        for (let i = 0; i < 200; i++) held.push(await connect(double.port));
        const refused = await request('PUT', '/v1/kv/limit/a', { body: 'x' });
        assert.equal(refused.status, 429);
        assert.equal(refused.headers.connection, 'close');
        assert.equal(refused.text, 'Your IP is issuing too many concurrent connections, please rate limit your calls\n');
        assert.equal(double.requests.length, 0, 'the request on the refused connection was never read');
        assert.equal(double.refusedConnections, 1);
      } finally {
        for (const socket of held) socket.destroy();
      }
      // Idle connections count until they close; once they have, the client is let in again.
      for (let i = 0; i < 10_000 && double.openConnections > 0; i++) await new Promise((resolve) => setImmediate(resolve));
      assert.equal((await request('GET', '/v1/kv/limit/a')).status, 404, 'the refused write was not applied');
    });

    it('injects latency and errors, refuses connections during an outage and keeps its port', async function () {
      double.faults.errorRate = 1;
      assert.deepEqual(await statusAndText(request('PUT', '/v1/kv/f/a', { body: 'x' })), [500, 'rpc error making call: No cluster leader']);
      double.faults.errorRate = 0;
      assert.equal((await request('GET', '/v1/kv/f/a')).status, 404, 'the failed write was not applied');
      double.faults.latencyMs = 50;
      const started = Date.now();
      await request('GET', '/v1/kv/f/a');
      assert.ok(Date.now() - started >= 45);
      double.faults.latencyMs = 0;

      const held = request('GET', `/v1/kv/f/?recurse&index=${Number((await request('GET', '/v1/kv/f/?recurse')).headers['x-consul-index'])}`);
      await whenHeld(1);
      await double.outage(true);
      await assert.rejects(held, /socket hang up|ECONNRESET/);
      await assert.rejects(request('GET', '/v1/kv/f/a'), (error: NodeJS.ErrnoException) => error.code === 'ECONNREFUSED');
      await double.outage(false);
      assert.equal((await request('GET', '/v1/kv/f/a')).status, 404);

      const dropped = request('GET', `/v1/kv/f/?recurse&index=${Number((await request('GET', '/v1/kv/f/?recurse')).headers['x-consul-index'])}`);
      await whenHeld(1);
      double.abortBlockingQueries();
      await assert.rejects(dropped, /socket hang up|ECONNRESET/);
      assert.equal(double.heldQueries, 0);
    });
  });
});

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

/** A bare HTTP request on a fresh connection (no timers, so it works under a fake clock). */
function send(port: number, method: string, path: string, options: { body?: string | Buffer; headers?: Record<string, string> }): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const request = http.request({ host: '127.0.0.1', port, method, path, headers: options.headers, agent: false }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: response.headers, text: Buffer.concat(chunks).toString('utf8') }));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(options.body);
  });
}

/** An open, idle connection to the double. */
function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => resolve(socket));
    socket.on('error', reject);
  });
}

async function statusAndText(answer: Promise<Answer>): Promise<[number, string]> {
  const { status, text } = await answer;
  return [status, text];
}
