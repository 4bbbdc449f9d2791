import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import sinon from 'sinon';
import { EmbeddedStore } from '../../controller/store/embedded-store.js';
import { MAX_KEY_BYTES, StoreError, type KvChange, type KvEntry } from '../../controller/store/store.js';
import { unprivileged } from '../support/processes.js';
import { describeStoreContract, WatchRecorder } from './store-contract.js';

/** The compiled store module, for child processes (this file runs from dist/test/contract). */
const STORE_MODULE = path.resolve(__dirname, '../../controller/store/embedded-store.js');

function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-store-'));
}

/** SQLite's own refusal of a disk that is full: the store's file may grow no further, so the next commit that needs room fails and is rolled back. */
function fillDisk(store: EmbeddedStore): void {
  const db = (store as unknown as { db: Database.Database }).db;
  db.pragma(`max_page_count = ${String(db.pragma('page_count', { simple: true }))}`);
}

/** The next WAL sync fails (EIO), after the write was committed to the file. */
function failNextSync(): void {
  const stub = sinon.stub(fs, 'fdatasync').callsFake(((_fd: number, callback: fs.NoParamCallback) => {
    stub.restore();
    callback(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
  }) as typeof fs.fdatasync);
}

describeStoreContract('EmbeddedStore (file)', async () => {
  const dir = tempDir();
  const store = EmbeddedStore.open(path.join(dir, 'store.db'));
  return {
    store,
    cleanup: async () => {
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
    faults: { rejected: () => fillDisk(store), unavailable: failNextSync },
  };
});

describeStoreContract('EmbeddedStore (:memory:)', async () => {
  const store = EmbeddedStore.open(':memory:');
  return { store, cleanup: () => store.close(), faults: { rejected: () => fillDisk(store) } };
});

interface ChildResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `node -e script args…` to completion. */
function runNode(script: string, args: readonly string[], user: { uid?: number; gid?: number } = {}): Promise<ChildResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['-e', script, ...args], user, (error, stdout, stderr) => {
      const failed = error as (Error & { code?: number | string; signal?: NodeJS.Signals }) | null;
      resolve({
        code: failed === null ? 0 : typeof failed.code === 'number' ? failed.code : null,
        signal: failed?.signal ?? null,
        stdout,
        stderr,
      });
    });
  });
}

function changeIndex(change: KvChange): number {
  return change.type === 'put' ? change.entry.modifyIndex : change.modifyIndex;
}

describe('EmbeddedStore', function () {
  let dir: string;
  let file: string;
  const opened: EmbeddedStore[] = [];
  const recorders: WatchRecorder[] = [];

  const open = (options?: Parameters<typeof EmbeddedStore.open>[1]): EmbeddedStore => {
    const store = EmbeddedStore.open(file, options);
    opened.push(store);
    return store;
  };
  const record = (recorder: WatchRecorder): WatchRecorder => {
    recorders.push(recorder);
    return recorder;
  };

  beforeEach(function () {
    dir = tempDir();
    file = path.join(dir, 'store.db');
  });

  afterEach(async function () {
    for (const recorder of recorders.splice(0)) recorder.stop();
    for (const store of opened.splice(0)) await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  describe('durability and locking', function () {
    it('keeps every write across close and reopen and goes on counting from the same index', async function () {
      const first = open();
      await first.put('s/a', 'a');
      await first.put('s/b', 'b');
      await first.put('s/a', 'a2');
      await first.delete('s/b');
      const before = await first.list('');
      await first.close();

      const second = open();
      const after = await second.list('');
      assert.deepEqual(after, before);
      await second.put('s/c', 'c');
      const c = await second.get('s/c');
      assert.equal(c?.modifyIndex, before.index + 1);
    });

    it('commits writes made together as one group, each with its own compare-and-set, in call order', async function () {
      const store = open();
      const start = (await store.list('')).index;
      const results = await Promise.all([
        store.put('g/a', '1', { cas: 0 }),
        store.put('g/a', '2', { cas: 0 }),
        store.put('g/b', '1'),
        store.transaction([
          { verb: 'put', key: 'g/c', value: '1' },
          { verb: 'put', key: 'g/a', value: 'never', cas: 12345 },
        ]),
        store.delete('g/b'),
      ]);
      assert.deepEqual(results, [true, false, true, false, true]);
      const listing = await store.list('g/');
      assert.deepEqual(listing.entries.map((entry) => [entry.key, entry.value, entry.modifyIndex]), [['g/a', '1', start + 1]]);
      assert.equal(listing.index, start + 3, 'the failed writes advanced nothing; the group rolled back none of the others');
    });

    it('answers a write, and tells the watchers of it, only once the WAL is synced to disk', async function () {
      const store = open();
      const watcher = record(new WatchRecorder(store.watch('d/')));
      await watcher.until('reset', () => watcher.steps.length > 0);
      // The store's sync is held: it resolves `held`, once called, with what lets the real sync run.
      let hold!: (release: () => void) => void;
      const held = new Promise<() => void>((resolve) => (hold = resolve));
      const realSync = fs.fdatasync;
      const stub = sinon.stub(fs, 'fdatasync').callsFake(((fd: number, callback: fs.NoParamCallback) => {
        hold(() => realSync(fd, callback));
      }) as typeof fs.fdatasync);
      try {
        let answered = false;
        const written = store.put('d/a', '1').then((applied) => {
          answered = true;
          return applied;
        });
        const release = await held;
        // An answer or a delivery that did not wait for the sync would come within these turns: the store
        // answers in a microtask and delivers to watchers on its next turn (setImmediate).
        for (let turn = 0; turn < 3; turn++) await new Promise((resolve) => setImmediate(resolve));
        assert.equal(answered, false, 'not answered before the sync');
        assert.equal(watcher.state.has('d/a'), false, 'not shown to watchers before the sync');
        release();
        assert.equal(await written, true);
        await watcher.until('the change', () => watcher.state.has('d/a'));
      } finally {
        stub.restore();
      }
    });

    it('commits the writes still queued when the store is closed, and answers them', async function () {
      const first = open();
      const written = first.put('q/a', 'queued');
      await first.close();
      assert.equal(await written, true);
      const second = open();
      assert.equal((await second.get('q/a'))?.value, 'queued');
    });

    it('loses no acknowledged write when the writing process is killed with SIGKILL', async function () {
      const script = `
        const { EmbeddedStore } = require(process.argv[1]);
        const store = EmbeddedStore.open(process.argv[2]);
        (async () => {
          for (let i = 0; ; i++) {
            await store.put('acked/' + i, 'value-' + i);
            process.stdout.write('ack ' + i + '\\n');
          }
        })().catch((error) => { process.stderr.write(String(error && error.stack)); process.exit(1); });
      `;
      const child = spawn(process.execPath, ['-e', script, STORE_MODULE, file], { stdio: ['ignore', 'pipe', 'pipe'] });
      const acked: number[] = [];
      let stderr = '';
      let partial = '';
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
        const lines = (partial + chunk).split('\n');
        partial = lines.pop() ?? '';
        for (const line of lines) {
          const match = /^ack (\d+)$/.exec(line);
          if (match) acked.push(Number(match[1]));
        }
        // Kill it mid-stream, while it is still writing.
        if (acked.length >= 200 && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      });
      const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
        child.on('close', (c: number | null, s: NodeJS.Signals | null) => resolve([c, s])),
      );
      assert.equal(signal, 'SIGKILL', `the child ended with code ${code} before the kill: ${stderr}`);
      assert.ok(acked.length >= 200);

      const store = open();
      const stored = new Map((await store.list('acked/')).entries.map((e) => [e.key, e.value]));
      const lost = acked.filter((i) => stored.get(`acked/${i}`) !== `value-${i}`);
      assert.deepEqual(lost, [], `acknowledged writes lost after SIGKILL (${acked.length} acknowledged)`);
      assert.ok(stored.size >= acked.length);
    });

    it('refuses a second open of the same file, from this process and from another one, naming the file', async function () {
      const store = open();
      await store.put('k', 'v');

      assert.throws(
        () => EmbeddedStore.open(file),
        (error: unknown) =>
          error instanceof StoreError && error.message.includes(file) && /locked by another/.test(error.message),
      );

      const script = `
        const { EmbeddedStore } = require(process.argv[1]);
        try { EmbeddedStore.open(process.argv[2]); } catch (error) { process.stderr.write(error.message); process.exit(3); }
      `;
      const other = await runNode(script, [STORE_MODULE, file]);
      assert.equal(other.code, 3, `the second process opened the store: ${other.stdout} ${other.stderr}`);
      assert.ok(other.stderr.includes(file), other.stderr);
      assert.match(other.stderr, /two Manticore processes must not share one store/);

      // The failed attempts left the holder working, and the lock goes with close.
      assert.equal((await store.get('k'))?.value, 'v');
      await store.close();
      const reopened = open();
      assert.equal((await reopened.get('k'))?.value, 'v');
    });

    it('writes the file in WAL mode and bounds the change log to the retention', async function () {
      const store = open({ changeLogRetention: 5 });
      for (let i = 0; i < 20; i++) await store.put(`k/${i % 3}`, String(i));
      await store.close();
      const db = new Database(file, { readonly: true });
      try {
        assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
        const counts = db.prepare('SELECT count(*) AS n, min(idx) AS low, max(idx) AS high FROM changes').get() as {
          n: number;
          low: number;
          high: number;
        };
        assert.deepEqual(counts, { n: 5, low: counts.high - 4, high: counts.high });
      } finally {
        db.close();
      }
    });

    it('syncs the directory of a new store file once its WAL exists, so that a power loss keeps both files', async function () {
      const opens = sinon.spy(fs, 'openSync');
      const syncs = sinon.spy(fs, 'fsyncSync');
      try {
        open();
      } finally {
        opens.restore();
        syncs.restore();
      }
      const walOpened = opens.getCalls().findIndex((call) => call.args[0] === `${file}-wal`);
      const dirCall = opens.getCalls().findIndex((call) => call.args[0] === dir);
      assert.ok(walOpened !== -1 && dirCall > walOpened, 'the directory is opened after the WAL exists');
      assert.ok(syncs.calledWith(opens.getCall(dirCall).returnValue as number), 'and synced');
    });

    it('creates missing parent directories', async function () {
      file = path.join(dir, 'nested', 'deeper', 'store.db');
      const store = open();
      await store.put('k', 'v');
      assert.ok(fs.existsSync(file));
    });

    it('fails with a StoreError naming the file when it is not a store', function () {
      fs.writeFileSync(file, 'this is not a SQLite database, it is just text that is long enough to look like a header');
      assert.throws(
        () => EmbeddedStore.open(file),
        (error: unknown) => error instanceof StoreError && error.message.includes(file),
      );
    });

    it('refuses a file with a damaged page, saying so and leaving it as it was', async function () {
      const store = open();
      for (let i = 0; i < 50; i++) await store.put(`sessions/${i}`, `value-${i}`);
      await store.close();
      const pageSize = 4096;
      const fd = fs.openSync(file, 'r+');
      // Page 2 is the first table's root: its header overwritten, the file still opens but no read of it works.
      fs.writeSync(fd, Buffer.alloc(64, 0x55), 0, 64, pageSize);
      fs.closeSync(fd);
      const damaged = fs.readFileSync(file);

      assert.throws(
        () => EmbeddedStore.open(file),
        (error: unknown) => error instanceof StoreError && error.message.includes(file) && /damaged/.test(error.message) && /backup/.test(error.message),
      );
      assert.ok(fs.readFileSync(file).equals(damaged), 'the damaged file was changed');
    });

    it('refuses a store file, or a directory, this user may not write, naming it and the permission rather than a disk I/O error', async function () {
      const store = open();
      await store.put('k', 'v');
      await store.close();
      const user = unprivileged([STORE_MODULE, require.resolve('better-sqlite3')]);
      if (user === undefined) this.skip();
      fs.chmodSync(dir, 0o755);
      fs.chmodSync(file, 0o444);
      const script = `
        const { EmbeddedStore } = require(process.argv[1]);
        try { EmbeddedStore.open(process.argv[2]); } catch (error) { process.stderr.write(error.message); process.exit(3); }
      `;
      const attempt = (): Promise<ChildResult> => runNode(script, [STORE_MODULE, file], user);

      const readOnly = await attempt();
      assert.equal(readOnly.code, 3, `the store opened: ${readOnly.stdout} ${readOnly.stderr}`);
      assert.match(readOnly.stderr, new RegExp(`the store file ${file} is not writable by this user.*permission denied`));

      fs.chmodSync(file, 0o666);
      // Nobody may not write a directory of root's; anyone else is kept out by its mode.
      if (user.uid === undefined) fs.chmodSync(dir, 0o555);
      const readOnlyDir = await attempt();
      assert.equal(readOnlyDir.code, 3, `the store opened: ${readOnlyDir.stdout} ${readOnlyDir.stderr}`);
      assert.match(readOnlyDir.stderr, new RegExp(`its directory ${dir} is not writable by this user.*store.db-wal`));
      fs.chmodSync(dir, 0o755);
      assert.equal((await open().get('k'))?.value, 'v');
    });

    it('rejects an invalid change-log retention', function () {
      for (const changeLogRetention of [0, -1, 1.5, Number.NaN]) {
        assert.throws(() => EmbeddedStore.open(file, { changeLogRetention }), StoreError);
      }
    });
  });

  describe('watch replay and delivery', function () {
    it('replays exactly the missed changes under the prefix, in index order, as one changes step', async function () {
      const store = open();
      await store.put('p/a', '1');
      const from = (await store.list('p/')).index;
      await store.put('p/b', '2');
      await store.put('q/x', 'outside');
      await store.put('p/a', '3');
      await store.delete('p/b');
      const now = await store.list('p/');

      const watch = record(new WatchRecorder(store.watch('p/', from)));
      await watch.until('the replay', () => watch.steps.length > 0);
      const step = watch.steps[0];
      assert.equal(step.kind, 'changes');
      assert.equal(step.index, now.index);
      const changes = step.kind === 'changes' ? step.changes : [];
      assert.deepEqual(
        changes.map((c) => (c.type === 'put' ? `put ${c.entry.key}=${c.entry.value}` : `delete ${c.key}`)),
        ['put p/b=2', 'put p/a=3', 'delete p/b'],
      );
      const indexes = changes.map(changeIndex);
      assert.deepEqual(indexes, [from + 1, from + 3, from + 4]);
      const updated = changes[1];
      assert.equal(updated.type === 'put' ? updated.entry.createIndex : 0, from, "p/a keeps the createIndex it had before the watch");
    });

    it('replays from the change log after a reopen', async function () {
      const first = open();
      await first.put('p/a', '1');
      const from = (await first.list('')).index;
      await first.put('p/b', '2');
      await first.delete('p/a');
      await first.close();

      const second = open();
      const watch = record(new WatchRecorder(second.watch('p/', from)));
      await watch.until('the replay', () => watch.steps.length > 0);
      assert.equal(watch.steps[0].kind, 'changes');
      assert.deepEqual(
        watch.changes().map((c) => (c.type === 'put' ? `put ${c.entry.key}` : `delete ${c.key}`)),
        ['put p/b', 'delete p/a'],
      );
    });

    it('answers a watch from an index older than the retained change log with a reset', async function () {
      const store = open({ changeLogRetention: 5 });
      for (let i = 0; i < 12; i++) await store.put(`p/${i % 4}`, String(i));
      const { index } = await store.list('');
      // The log holds indexes index-4 … index, so index-5 is the oldest index that can still be replayed.
      const replayable = record(new WatchRecorder(store.watch('p/', index - 5)));
      const tooOld = record(new WatchRecorder(store.watch('p/', index - 6)));
      const fromZero = record(new WatchRecorder(store.watch('p/', 0)));
      await replayable.until('replay', () => replayable.steps.length > 0);
      await tooOld.until('reset', () => tooOld.steps.length > 0);
      await fromZero.until('reset', () => fromZero.steps.length > 0);
      assert.equal(replayable.steps[0].kind, 'changes');
      assert.equal(replayable.changes().length, 5);
      for (const watch of [tooOld, fromZero]) {
        const step = watch.steps[0];
        assert.equal(step.kind, 'reset');
        assert.equal(step.index, index);
        assert.deepEqual(step.kind === 'reset' ? step.entries : [], (await store.list('p/')).entries);
      }
    });

    it('answers a watch from an index ahead of the store (a recreated store) with a reset', async function () {
      const store = open();
      await store.put('p/a', '1');
      const { index, entries } = await store.list('p/');
      const watch = record(new WatchRecorder(store.watch('p/', index + 1000)));
      await watch.until('reset', () => watch.steps.length > 0);
      assert.deepEqual(watch.steps[0], { kind: 'reset', index, entries });
    });

    it('answers a watch from the current index with nothing until the next change', async function () {
      const store = open();
      await store.put('p/a', '1');
      const { index } = await store.list('');
      const watch = record(new WatchRecorder(store.watch('p/', index)));
      await store.put('p/b', '2');
      await watch.until('the change', () => watch.steps.length > 0);
      const b = await store.get('p/b');
      assert.deepEqual(watch.steps[0], { kind: 'changes', index: index + 1, changes: [{ type: 'put', entry: b }] });
    });

    it('delivers every change of a burst exactly once, in index order, including to a watcher started mid-burst', async function () {
      const store = open();
      const early = record(new WatchRecorder(store.watch('b/')));
      await early.until('reset', () => early.steps.length > 0);
      const writes: Promise<boolean>[] = [];
      let late: WatchRecorder | undefined;
      for (let i = 0; i < 300; i++) {
        writes.push(i % 7 === 6 ? store.delete(`b/${i % 40}`) : store.put(`b/${i % 40}`, String(i)));
        if (i === 150) late = record(new WatchRecorder(store.watch('b/')));
        if (i % 50 === 0) {
          // Let deliveries happen mid-burst (these writes are puts: 50·k is never 6 mod 7 below 300).
          const [key, value] = [`b/${i % 40}`, String(i)];
          await early.until(`write ${i}`, () => early.state.get(key)?.value === value);
        }
      }
      await Promise.all(writes);
      assert.ok(late);
      const expected = await store.list('b/');
      const expectedValues = Object.fromEntries(expected.entries.map((e: KvEntry) => [e.key, e.value]));
      for (const watch of [early, late]) {
        await watch.until('convergence', () => watch.steps[watch.steps.length - 1]?.index === expected.index);
        assert.deepEqual(watch.values(), expectedValues);
        const reset = watch.steps[0];
        assert.equal(reset.kind, 'reset');
        const indexes = watch.changes().map(changeIndex);
        for (let i = 1; i < indexes.length; i++) assert.ok(indexes[i] > indexes[i - 1], `out of order at ${i}`);
        assert.ok(indexes.every((i) => i > reset.index), 'a change already in the reset was delivered again');
      }
      // The early watcher saw every write that changed something (deletes of missing keys change nothing).
      const changed = expected.index - early.steps[0].index;
      assert.equal(early.changes().length, changed);
      assert.ok(late.changes().length > 0, 'the late watcher started after the burst instead of during it');
      assert.ok(late.steps[0].index < expected.index);
    });

    it('never delivers a step inside put(), even when a handler writes', async function () {
      const store = open();
      let insidePut = false;
      let deliveredInsidePut = 0;
      const observer = record(new WatchRecorder(store.watch('r/')));
      await observer.until('reset', () => observer.steps.length > 0);
      let handlerReady: () => void = () => undefined;
      const ready = new Promise<void>((resolve) => (handlerReady = resolve));
      const sub = store.watch('r/').subscribe((step) => {
        if (insidePut) deliveredInsidePut++;
        if (step.kind === 'reset') handlerReady();
        if (step.kind === 'changes' && step.changes.some((c) => c.type === 'put' && c.entry.key === 'r/trigger')) {
          insidePut = true;
          void store.put('r/echo', 'from a handler');
          insidePut = false;
        }
      });
      try {
        await ready;
        const stepsBefore = observer.steps.length;
        insidePut = true;
        const written = store.put('r/trigger', 'x');
        insidePut = false;
        assert.equal(observer.steps.length, stepsBefore, 'a step arrived before put() returned');
        await written;
        await observer.until('the echo', () => observer.state.has('r/echo'));
        assert.equal(deliveredInsidePut, 0);
      } finally {
        sub.unsubscribe();
      }
    });

    it('delivers pending changes before completing watches on close', async function () {
      const store = open();
      const watch = record(new WatchRecorder(store.watch('p/')));
      await watch.until('reset', () => watch.steps.length > 0);
      await store.put('p/a', '1');
      await store.close();
      assert.equal(watch.completed, true);
      assert.equal(watch.state.get('p/a')?.value, '1');
    });

    it('delivers a change written while watchers are served exactly once to a watcher that starts meanwhile', async function () {
      const store = open();
      const echoer = store.watch('p/').subscribe((step) => {
        if (step.kind === 'changes' && step.changes.some((c) => c.type === 'put' && c.entry.key === 'p/trigger')) {
          void store.put('p/echo', 'written while the watchers were being served');
        }
      });
      const observer = record(new WatchRecorder(store.watch('p/')));
      const keyOf = (change: KvChange): string => (change.type === 'put' ? change.entry.key : change.key);
      try {
        await observer.until('reset', () => observer.steps.length > 0);
        await store.put('p/trigger', 'x');
        // Starts in the same delivery in which the echo is written, after the echoer: the echo reaches it
        // either in its reset or as a change (writes are committed in groups, after the delivery), never both.
        const late = record(new WatchRecorder(store.watch('p/')));
        await observer.until('the echo', () => observer.state.has('p/echo'));
        await store.put('p/after', 'y');
        await late.until('the next change', () => late.state.has('p/after'));
        const reset = late.steps[0];
        assert.equal(reset.kind, 'reset');
        const echoes = reset.entries.filter((entry) => entry.key === 'p/echo').length + late.changes().filter((c) => keyOf(c) === 'p/echo').length;
        assert.equal(echoes, 1, 'the echo exactly once');
        assert.deepEqual(
          late.changes().map(keyOf).filter((key) => key !== 'p/echo'),
          ['p/after'],
          'only changes after the reset',
        );
      } finally {
        echoer.unsubscribe();
      }
    });

    it('still hands a batch to every watcher when a handler closes the store', async function () {
      const store = open();
      let closing: Promise<void> | undefined;
      const closer = store.watch('p/').subscribe((step) => {
        if (step.kind === 'changes') closing = store.close();
      });
      const other = record(new WatchRecorder(store.watch('p/')));
      try {
        await other.until('reset', () => other.steps.length > 0);
        await store.put('p/a', '1');
        await other.until('completion', () => other.completed);
        assert.equal(other.state.get('p/a')?.value, '1');
        assert.ok(closing);
        await closing;
        assert.equal(closer.closed, true);
      } finally {
        closer.unsubscribe();
      }
    });
  });

  describe('validation and CAS edge cases', function () {
    it('reports the operation and key in StoreErrors', async function () {
      const store = open();
      const cases: [string, () => Promise<unknown>, string][] = [
        ['put', () => store.put('/abs', 'v'), '/abs'],
        ['put', () => store.put('nul\0key', 'v'), 'nul\0key'],
        ['put', () => store.put('bad\uD800key', 'v'), 'bad\uD800key'],
        ['put', () => store.put('k', 'lone \uDC00 surrogate'), 'k'],
        ['put', () => store.put('k', 42 as unknown as string), 'k'],
        ['put', () => store.put('k', 'v', { cas: -1 }), 'k'],
        ['delete', () => store.delete('k', { cas: 1.5 }), 'k'],
        ['list', () => store.list('/p'), '/p'],
        ['get', () => store.get('x'.repeat(MAX_KEY_BYTES + 1)), 'x'.repeat(MAX_KEY_BYTES + 1)],
      ];
      for (const [operation, call, key] of cases) {
        await assert.rejects(call(), (error: unknown) => {
          assert.ok(error instanceof StoreError, String(error));
          assert.equal(error.operation, operation);
          assert.equal(error.key, key);
          return true;
        });
      }
      const badIndex = record(new WatchRecorder(store.watch('p/', -3)));
      await badIndex.until('an error', () => badIndex.error !== undefined);
      assert.ok(badIndex.error instanceof StoreError);
      assert.equal(await store.put('emoji/🚗', '🚗'), true, 'surrogate pairs are fine');
    });

    it('counts a multi-byte key by its UTF-8 bytes', async function () {
      const store = open();
      const fits = 'é'.repeat(MAX_KEY_BYTES / 2);
      assert.equal(await store.put(fits, 'v'), true);
      await assert.rejects(store.put(`${fits}x`, 'v'), StoreError);
    });

    it('treats deleting a missing key, with or without cas, as a success that changes nothing (as Consul does)', async function () {
      const store = open();
      await store.put('a', '1');
      const { index } = await store.list('');
      assert.equal(await store.delete('missing'), true);
      assert.equal(await store.delete('missing', { cas: 0 }), true);
      assert.equal(await store.delete('missing', { cas: index }), true);
      assert.equal((await store.list('')).index, index);
    });

    it('does not advance the index on a failed compare-and-set', async function () {
      const store = open();
      await store.put('a', '1');
      const { index } = await store.list('');
      assert.equal(await store.put('a', '2', { cas: 0 }), false);
      assert.equal(await store.delete('a', { cas: index - 1 }), false);
      assert.equal((await store.list('')).index, index);
    });
  });
});
