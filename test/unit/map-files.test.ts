import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import sinon from 'sinon';
import { parseMap } from '../../controller/router/haproxy-config.js';
import { MapFileWriter, type MapContents } from '../../controller/router/map-files.js';
import { silentLogger } from '../../controller/util/log.js';
import { turnsUntil } from '../support/wait.js';

const contents = (hosts: Record<string, string>, ports: Record<string, string> = {}): MapContents => ({
  hosts: new Map(Object.entries(hosts)),
  ports: new Map(Object.entries(ports)),
});

describe('HAProxy map files written in the background', () => {
  let dir: string;
  let files: { hosts: string; ports: string };

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-map-files-'));
    files = { hosts: path.join(dir, 'hosts.map'), ports: path.join(dir, 'tcp.map') };
  });

  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const read = (file: string): Map<string, string> => parseMap(fs.readFileSync(file, 'utf8'));

  it('leaves the files holding the latest contents, however many were passed meanwhile', async () => {
    const writer = new MapFileWriter(files, silentLogger());
    for (let i = 0; i < 20; i++) writer.write(contents({ [`token${i}`]: '127.0.0.1:1' }, { '20000': `127.0.0.1:${i + 1}` }));
    await writer.flush();
    assert.deepEqual(read(files.hosts), new Map([['token19', '127.0.0.1:1']]));
    assert.deepEqual(read(files.ports), new Map([['20000', '127.0.0.1:20']]));
  });

  it('writes at most once per interval, and at once when flushed', async () => {
    // The interval runs on a fake clock; the files are written with real I/O all the same.
    const clock = sinon.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'], shouldClearNativeTimers: true });
    // A write opens its temporary file one turn after it starts: counting those opens shows, without waiting
    // for the disk, whether a write has begun.
    const opened = sinon.spy(fsp, 'open');
    const writesStarted = (): number => opened.getCalls().filter((call) => String(call.args[0]).startsWith(files.hosts)).length;
    try {
      const writer = new MapFileWriter(files, silentLogger(), 60_000);
      writer.write(contents({ first: '127.0.0.1:1' }));
      await writer.flush();
      writer.write(contents({ second: '127.0.0.1:2' }));
      writer.write(contents({ third: '127.0.0.1:3' }));
      clock.tick(59_999);
      for (let turn = 0; turn < 3; turn++) await new Promise((resolve) => setImmediate(resolve));
      assert.equal(writesStarted(), 1, 'the next write waits for the interval');
      assert.deepEqual(read(files.hosts), new Map([['first', '127.0.0.1:1']]));
      clock.tick(1);
      await turnsUntil(() => read(files.hosts).has('third'));
      writer.write(contents({ fourth: '127.0.0.1:4' }));
      await writer.flush();
      assert.deepEqual(read(files.hosts), new Map([['fourth', '127.0.0.1:4']]), 'a flush does not wait out the interval');
      assert.equal(writesStarted(), 3, 'the contents passed meanwhile were written once');
    } finally {
      opened.restore();
      clock.restore();
    }
  });

  it('resolves flush at once when nothing is waiting to be written', async () => {
    await new MapFileWriter(files, silentLogger()).flush();
    assert.equal(fs.existsSync(files.hosts), false);
  });

  it('rewrites a file replaced behind its back only when asked to', async () => {
    const writer = new MapFileWriter(files, silentLogger());
    const table = contents({ alpha: '127.0.0.1:1' });
    writer.write(table);
    await writer.flush();
    fs.writeFileSync(files.hosts, '');
    writer.write(table);
    await writer.flush();
    assert.equal(read(files.hosts).size, 0, 'unchanged contents are not written again');
    writer.write(table, true);
    await writer.flush();
    assert.deepEqual(read(files.hosts), new Map([['alpha', '127.0.0.1:1']]));
  });

  it('rejects flush when a write fails, and retries until the files are written', async function () {
    this.timeout(5_000);
    const missing = path.join(dir, 'not-yet');
    const writer = new MapFileWriter({ hosts: path.join(missing, 'hosts.map'), ports: path.join(missing, 'tcp.map') }, silentLogger());
    writer.write(contents({ alpha: '127.0.0.1:1' }));
    await assert.rejects(writer.flush(), /hosts\.map/);
    fs.mkdirSync(missing);
    await writer.flush();
    assert.deepEqual(read(path.join(missing, 'hosts.map')), new Map([['alpha', '127.0.0.1:1']]));
  });
});
