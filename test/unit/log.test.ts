import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { createLogger } from '../../controller/util/log.js';
import { repeatedKeys } from '../support/log-lines.js';

/** Collects what a logger writes, with the stream claiming (or not) to be a terminal. */
function capture(terminal: boolean): { stream: PassThrough; text: () => string } {
  const stream = Object.assign(new PassThrough(), { isTTY: terminal });
  let text = '';
  stream.on('data', (chunk: Buffer) => (text += chunk.toString()));
  return { stream, text: () => text };
}

describe('logs', () => {
  it('are one JSON object per line with the fields given, when not in a terminal', async () => {
    const out = capture(false);
    createLogger('info', 'auto', out.stream).child({ component: 'controller' }).info({ session: 'abc123' }, 'session admitted');
    await new Promise((resolve) => setImmediate(resolve));
    const record = JSON.parse(out.text().trim()) as Record<string, unknown>;
    assert.equal(record.msg, 'session admitted');
    assert.equal(record.session, 'abc123');
    assert.equal(record.component, 'controller');
    assert.equal(record.level, 30);
    assert.ok(!Number.isNaN(Date.parse(record.time as string)));
  });

  it('are readable lines in a terminal, and JSON there too when asked', async () => {
    const pretty = capture(true);
    createLogger('info', 'auto', pretty.stream).warn({ session: 'abc123' }, 'watch failed');
    const plain = pretty.text().replace(/\x1b\[\d+m/g, '');
    assert.match(plain, /^\[\d\d:\d\d:\d\d\.\d{3}\] WARN: watch failed\n {4}session: "abc123"\n$/);
    const json = capture(true);
    createLogger('info', 'json', json.stream).info('hello');
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal((JSON.parse(json.text()) as { msg: string }).msg, 'hello');
  });

  it('leave out what is below the level', async () => {
    const out = capture(false);
    const log = createLogger('warn', 'json', out.stream);
    log.info('not shown');
    log.error('shown');
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(out.text().trim().split('\n').map((line) => (JSON.parse(line) as { msg: string }).msg), ['shown']);
  });

  it('name a field twice when a child logger binds a key its parent bound (what the end-to-end runs look for)', async () => {
    const out = capture(false);
    createLogger('info', 'auto', out.stream).child({ component: 'store' }).child({ component: 'consul-store' }).info({ detail: { component: 'x' } }, 'ready');
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(repeatedKeys(out.text().trim()), ['component']);
    // Keys of nested objects, keys quoted inside strings and array elements are not the line's own fields.
    assert.deepEqual(repeatedKeys('{"a":1,"b":{"a":2},"c":"\\"a\\": 3","d":[{"e":1},{"e":2}],"e":"a"}'), []);
    assert.deepEqual(repeatedKeys('{"a":1, "b":2, "a" : 3}'), ['a']);
  });
});
