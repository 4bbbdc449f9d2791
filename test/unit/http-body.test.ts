import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import sinon from 'sinon';
import { ExchangeTimer, JsonArraySplitter } from '../../controller/util/http-body.js';

/** Feeds `text` in pieces cut at `cuts` and returns the elements, or throws what the splitter threw. */
function split(text: string, cuts: readonly number[] = []): unknown[] {
  const elements: unknown[] = [];
  const splitter = new JsonArraySplitter((element) => elements.push(JSON.parse(element)));
  let at = 0;
  for (const cut of [...cuts, text.length]) {
    if (cut > at) splitter.write(text.slice(at, cut));
    at = cut;
  }
  splitter.end();
  return elements;
}

describe('JsonArraySplitter', () => {
  const items = [
    { Key: 'a', Value: 'eyJ4IjoxfQ==', ModifyIndex: 5 },
    { Key: 'quote " and \\ backslash \\\\" end', Nested: { list: [1, { deep: '}]' }], empty: {} } },
    [],
    { Key: 'b\\', Value: null },
  ];
  const text = ` [ ${items.map((item) => JSON.stringify(item)).join(' ,\n')} ] `;

  it('hands over every element of an array read whole', () => {
    assert.deepEqual(split(text), items);
  });

  it('hands over the same elements however the text is cut, at every position and in single characters', () => {
    for (let cut = 0; cut <= text.length; cut++) assert.deepEqual(split(text, [cut]), items, `cut at ${cut}`);
    assert.deepEqual(
      split(text, Array.from({ length: text.length }, (_, i) => i)),
      items,
    );
  });

  it('reads an empty array', () => {
    assert.deepEqual(split('[]'), []);
    assert.deepEqual(split(' [\n] '), []);
  });

  it('refuses what is not a complete array of objects or arrays', () => {
    for (const bad of ['', '{}', '[{"a":1}', '[{"a":1}]]', '[1,2]', '["x"]', '[{"a":"b}]', '[{}] [{}]', 'null']) {
      assert.throws(() => split(bad), Error, JSON.stringify(bad));
    }
  });
});

describe('JsonArraySplitter in sequence mode (Go JSON streams: values one after another)', () => {
  /** The values and the trailing text of `text` cut at every position given. */
  function sequence(text: string, cuts: readonly number[] = []): { values: unknown[]; trailing: string } {
    const values: unknown[] = [];
    let trailing = '';
    const splitter = new JsonArraySplitter((element) => values.push(JSON.parse(element)), { onText: (more) => (trailing += more) });
    let at = 0;
    for (const cut of [...cuts, text.length]) {
      if (cut > at) splitter.write(text.slice(at, cut));
      at = cut;
    }
    splitter.end();
    return { values, trailing };
  }
  const frames = [{}, { File: 'alloc/logs/core.stdout.0', Offset: 5, Data: 'aGVsbG8=' }, { FileEvent: 'file truncated', File: 'x}{"' }, {}];

  it('hands over values written back to back or with whitespace between, however the text is cut', () => {
    for (const separator of ['', '\n', ' \r\n']) {
      const text = frames.map((frame) => JSON.stringify(frame)).join(separator);
      for (let cut = 0; cut <= text.length; cut++) assert.deepEqual(sequence(text, [cut]), { values: frames, trailing: '' }, `cut at ${cut}`);
    }
  });

  it('passes text after the values (an error a server appended) to onText, to the end', () => {
    const text = `${JSON.stringify(frames[1])}Unknown allocation "abc" {"not":"a frame"}`;
    for (let cut = 0; cut <= text.length; cut++) {
      assert.deepEqual(sequence(text, [cut]), { values: [frames[1]], trailing: 'Unknown allocation "abc" {"not":"a frame"}' }, `cut at ${cut}`);
    }
  });

  it('refuses a last value that was cut off', () => {
    assert.throws(() => sequence('{}{"File":"a'), /cut off/);
    assert.deepEqual(sequence(''), { values: [], trailing: '' });
  });
});

describe('ExchangeTimer: an answer must begin in time, then keep coming', () => {
  const limits = { beginMs: 5_000, idleMs: 1_000 };
  let clock: sinon.SinonFakeTimers;
  let destroyed: Error[] = [];
  let timer: ExchangeTimer;
  const request = { destroy: (error?: Error): void => void destroyed.push(error!) };

  beforeEach(() => {
    clock = sinon.useFakeTimers();
    destroyed = [];
    timer = new ExchangeTimer(request as never, limits, (what) => new Error(what));
  });
  afterEach(() => clock.restore());

  it('ends an exchange whose answer has not begun within beginMs', () => {
    clock.tick(limits.beginMs - 1);
    assert.equal(destroyed.length, 0);
    clock.tick(1);
    assert.deepEqual(destroyed.map((error) => error.message), ['did not answer within 5000 ms']);
  });

  it('lets an answer that keeps coming take far longer than either bound', () => {
    clock.tick(limits.beginMs - 1);
    const response = new EventEmitter();
    timer.answering(response as never);
    for (let chunk = 0; chunk < 60; chunk++) {
      clock.tick(limits.idleMs - 1);
      response.emit('data', 'x');
    }
    timer.stop();
    clock.tick(10 * limits.beginMs);
    assert.equal(destroyed.length, 0, 'ended after about 64 s of answer arriving at least once a second');
  });

  it('ends an answer that pauses for idleMs', () => {
    const response = new EventEmitter();
    timer.answering(response as never);
    clock.tick(700);
    response.emit('data', 'x');
    clock.tick(limits.idleMs - 1);
    assert.equal(destroyed.length, 0);
    clock.tick(1);
    assert.deepEqual(destroyed.map((error) => error.message), ['stopped answering for 1000 ms']);
  });
});
