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
