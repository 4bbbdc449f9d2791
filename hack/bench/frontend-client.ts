import http from 'node:http';

/** The body of every create the bench sends (the demo template runs on either backend). */
export const CREATE_BODY = JSON.stringify({ template: 'demo', parameters: { coreVersion: '8.2.0' } });

/** One answer of the front end, its body parsed as JSON. */
interface JsonAnswer {
  readonly status: number;
  readonly body: unknown;
}

/**
 * Creates one session per token through `POST /api/v1/sessions`, `concurrency` at a time over keep-alive
 * connections, and returns the new sessions' ids in token order. Any answer but 201 is an error naming it:
 * this is set-up, and a refusal here would make every later figure meaningless.
 */
export async function createSessions(api: string, tokens: readonly string[], concurrency: number): Promise<string[]> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const ids: string[] = new Array<string>(tokens.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < tokens.length; i = next++) ids[i] = await createSession(api, tokens[i]!, agent);
  };
  try {
    await Promise.all(Array.from({ length: Math.min(concurrency, tokens.length) }, worker));
  } finally {
    agent.destroy();
  }
  return ids;
}

async function createSession(api: string, token: string, agent: http.Agent): Promise<string> {
  const answer = await requestJson(`${api}/api/v1/sessions`, { method: 'POST', agent, token, body: CREATE_BODY });
  const id = (answer.body as { metadata?: { id?: unknown } } | undefined)?.metadata?.id;
  if (answer.status !== 201 || typeof id !== 'string') {
    throw new Error(`POST ${api}/api/v1/sessions answered ${answer.status}: ${JSON.stringify(answer.body)}`);
  }
  return id;
}

function requestJson(url: string, options: { method: string; agent: http.Agent; token: string; body?: string }): Promise<JsonAnswer> {
  return new Promise((resolve, reject) => {
    const headers: http.OutgoingHttpHeaders = { authorization: `Bearer ${options.token}` };
    if (options.body !== undefined) Object.assign(headers, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(options.body) });
    const request = http.request(url, { method: options.method, agent: options.agent, headers }, (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (text += chunk));
      response.on('end', () => {
        try {
          resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) });
        } catch {
          resolve({ status: response.statusCode ?? 0, body: text });
        }
      });
      response.on('error', reject);
    });
    request.on('error', (error) => reject(new Error(`${options.method} ${url} failed: ${error.message}`, { cause: error })));
    request.end(options.body);
  });
}
