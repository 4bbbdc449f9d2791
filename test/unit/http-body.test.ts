import assert from 'node:assert/strict';
import { JsonArraySplitter } from '../../controller/util/http-body.js';

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
