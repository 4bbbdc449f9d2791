import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseMap } from '../../controller/router/haproxy-config.js';
import { MapFileWriter, type MapContents } from '../../controller/router/map-files.js';
import { silentLogger } from '../../controller/util/log.js';

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
    const writer = new MapFileWriter(files, silentLogger(), 60_000);
    writer.write(contents({ first: '127.0.0.1:1' }));
    await writer.flush();
    writer.write(contents({ second: '127.0.0.1:2' }));
    writer.write(contents({ third: '127.0.0.1:3' }));
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(read(files.hosts), new Map([['first', '127.0.0.1:1']]), 'the next write waits for the interval');
    await writer.flush();
    assert.deepEqual(read(files.hosts), new Map([['third', '127.0.0.1:3']]));
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
