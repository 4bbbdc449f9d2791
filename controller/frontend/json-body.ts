import type { FastifyBodyParser, FastifyInstance } from 'fastify';
import { ApiError } from './errors.js';

/**
 * Fastify's JSON parser, except that a body with a `__proto__` key, or a `constructor` object with a
 * `prototype` key, is refused 400 saying so and where. Fastify's own parser refuses these too (its
 * onProtoPoisoning and onConstructorPoisoning), but drops the reason and answers "Body is not valid JSON",
 * which such a body is. So Fastify's parser here leaves them in, and the value it parsed is checked before
 * anything reads it; an empty or malformed body keeps Fastify's error.
 */
export function jsonBodyParser(app: FastifyInstance): FastifyBodyParser<string> {
  const parse = app.getDefaultJsonParser('ignore', 'ignore');
  return (request, body, done) =>
    parse(request, body, (error, value?: unknown) => {
      if (error !== null) return done(error, undefined);
      const key = prototypeKey(value);
      if (key === undefined) return done(null, value);
      done(new ApiError(400, 'the body may not contain a __proto__ or constructor.prototype key', [`/body${key}: not allowed`]), undefined);
    });
}

/** Where a parsed JSON value holds a `__proto__` or `constructor.prototype` key (`/labels/__proto__`), if it holds one. */
function prototypeKey(value: unknown): string | undefined {
  // A stack, not recursion: a body may nest as deeply as its size allows.
  const pending: Array<{ node: unknown; at: string }> = [{ node: value, at: '' }];
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    const { node, at } = next;
    if (typeof node !== 'object' || node === null) continue;
    if (Object.hasOwn(node, '__proto__')) return `${at}/__proto__`;
    const constructor: unknown = Object.hasOwn(node, 'constructor') ? (node as Record<string, unknown>).constructor : undefined;
    if (typeof constructor === 'object' && constructor !== null && Object.hasOwn(constructor, 'prototype')) return `${at}/constructor/prototype`;
    for (const [key, child] of Object.entries(node)) pending.push({ node: child, at: `${at}/${key}` });
  }
  return undefined;
}
