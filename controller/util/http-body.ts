import type http from 'node:http';

/**
 * Collects a response body as UTF-8 text while it arrives. A list of 10,000 records is tens of megabytes:
 * gathered as Buffers and joined with Buffer.concat, each answer would also take one large block from the
 * C heap, which glibc keeps once freed (raising its mmap threshold) and the process grows by every such
 * answer. Decoded chunk by chunk, the text lives only in V8's heap, which the collector gives back.
 * Returns the text read so far; call it on 'end'.
 */
export function readBody(response: http.IncomingMessage): () => string {
  let text = '';
  response.setEncoding('utf8');
  response.on('data', (chunk: string) => (text += chunk));
  return () => text;
}

/**
 * Reads a response whose body is a JSON array and hands each element's text to `onElement` as soon as it
 * has arrived, so that a listing of tens of megabytes is never held whole: each element is parsed and, if
 * not kept, dropped while young (cheap for the collector), and the heap does not grow by the size of the
 * answer. The returned function, called on 'end', throws the first problem met: a body that is not an
 * array of objects or arrays, a cut-off body, or what `onElement` threw.
 */
export function readJsonArray(response: http.IncomingMessage, onElement: (text: string) => void): () => void {
  const splitter = new JsonArraySplitter(onElement);
  let failure: unknown;
  response.setEncoding('utf8');
  response.on('data', (chunk: string) => {
    if (failure !== undefined) return;
    try {
      splitter.write(chunk);
    } catch (error) {
      failure = error;
    }
  });
  return () => {
    if (failure !== undefined) throw failure;
    splitter.end();
  };
}

/** How long an HTTP exchange may take: its answer begins within `beginMs`, then never pauses longer than `idleMs`. */
export interface ExchangeLimits {
  readonly beginMs: number;
  readonly idleMs: number;
}

/**
 * Bounds one HTTP exchange by `limits`, destroying the request with `timedOut(what happened)` past them. Not a
 * deadline on the whole answer: a listing of tens of megabytes read by a busy process (its elements parsed as
 * they come, the socket held back meanwhile) may take longer than any fixed bound, and cut there and read
 * again from the start it might never finish. Call `answering` with the response, and `stop` when it ended.
 */
export class ExchangeTimer {
  private timer: NodeJS.Timeout;
  private lastDataAt = 0;

  constructor(
    private readonly request: Pick<http.ClientRequest, 'destroy'>,
    private readonly limits: ExchangeLimits,
    private readonly timedOut: (what: string) => Error,
  ) {
    this.timer = setTimeout(() => request.destroy(timedOut(`did not answer within ${limits.beginMs} ms`)), limits.beginMs);
  }

  /** The answer has begun: from now on only a pause longer than `idleMs` ends it. */
  answering(response: Pick<http.IncomingMessage, 'on'>): void {
    clearTimeout(this.timer);
    this.lastDataAt = Date.now();
    response.on('data', () => {
      this.lastDataAt = Date.now();
    });
    this.watchPauses();
  }

  stop(): void {
    clearTimeout(this.timer);
  }

  /** One timer per pause, not per chunk: it looks again when the last chunk's `idleMs` would run out. */
  private watchPauses(): void {
    const left = this.lastDataAt + this.limits.idleMs - Date.now();
    this.timer = setTimeout(() => {
      if (Date.now() - this.lastDataAt >= this.limits.idleMs) this.request.destroy(this.timedOut(`stopped answering for ${this.limits.idleMs} ms`));
      else this.watchPauses();
    }, Math.max(left, 0));
  }
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const COMMA = 0x2c;

/**
 * Splits the text of a JSON array of objects (or arrays), arriving in pieces, into its elements' texts.
 * In sequence mode the text is instead a stream of objects (or arrays) one after another with nothing or
 * whitespace between them, as Go's JSON encoders write streams (Nomad's log frames); text that is not
 * such a value (an error message a server appends) goes, from there to the end, to `onText`.
 */
export class JsonArraySplitter {
  private opened: boolean;
  private closed = false;
  /** Sequence mode: past the values, in trailing text. */
  private trailing = false;
  /** Nesting depth inside the top-level array: 0 between elements. */
  private depth = 0;
  private inString = false;
  /** Inside a string, the previous piece ended on an unpaired backslash. */
  private escaped = false;
  /** The start of the current element, from earlier pieces. */
  private partial = '';

  constructor(
    private readonly onElement: (text: string) => void,
    private readonly sequence?: { readonly onText: (text: string) => void },
  ) {
    this.opened = sequence !== undefined;
  }

  write(chunk: string): void {
    if (this.trailing) return this.sequence?.onText(chunk);
    let start = this.depth > 0 ? 0 : -1;
    let i = 0;
    if (this.inString) i = this.skipString(chunk, 0);
    for (; i < chunk.length; i++) {
      const c = chunk.charCodeAt(i);
      if (this.sequence && this.depth === 0 && c !== OPEN_BRACE && c !== OPEN_BRACKET && !isSpace(c)) {
        this.trailing = true;
        this.sequence.onText(chunk.slice(i));
        return;
      }
      if (c === QUOTE) {
        if (this.depth === 0) throw new Error('a bare string where an array element was expected');
        this.inString = true;
        i = this.skipString(chunk, i + 1) - 1;
      } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
        if (!this.opened) {
          if (c !== OPEN_BRACKET) throw new Error('not an array');
          this.opened = true;
          continue;
        }
        if (this.closed) throw new Error('text after the end of the array');
        if (this.depth === 0) start = i;
        this.depth++;
      } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
        if (this.depth === 0) {
          if (c !== CLOSE_BRACKET || !this.opened || this.closed) throw new Error('unbalanced brackets');
          this.closed = true;
          continue;
        }
        this.depth--;
        if (this.depth === 0) {
          this.onElement(this.partial + chunk.slice(start, i + 1));
          this.partial = '';
          start = -1;
        }
      } else if (this.depth === 0 && !isSpace(c) && !(c === COMMA && this.opened && !this.closed)) {
        throw new Error(this.opened ? 'an array element that is not an object or array' : 'not an array');
      }
    }
    if (this.depth > 0) this.partial += chunk.slice(start);
  }

  /** Checks that the array (in sequence mode: the last value) was complete. */
  end(): void {
    if (this.sequence) {
      if (this.depth > 0 || this.inString) throw new Error('the last value was cut off');
      return;
    }
    if (!this.closed || this.depth > 0 || this.inString) throw new Error(this.opened ? 'the array was cut off' : 'not an array');
  }

  /** Finds the end of the string being read (from `from`); returns the index after its closing quote, or the piece's length. */
  private skipString(chunk: string, from: number): number {
    let i = from;
    if (this.escaped) {
      this.escaped = false;
      i++;
    }
    for (;;) {
      const quote = chunk.indexOf('"', i);
      const end = quote === -1 ? chunk.length : quote;
      let backslashes = 0;
      while (end - backslashes - 1 >= i && chunk.charCodeAt(end - backslashes - 1) === BACKSLASH) backslashes++;
      if (quote === -1) {
        this.escaped = backslashes % 2 === 1;
        return chunk.length;
      }
      if (backslashes % 2 === 0) {
        this.inString = false;
        return quote + 1;
      }
      i = quote + 1;
    }
  }
}

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}
