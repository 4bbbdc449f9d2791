import { isThrottling } from '../loadbalancer/provider.js';
import { recordBackendCall, type BackendOutcome } from './metrics.js';

/** What an SDK v3 error says about where it failed. */
interface AwsErrorShape {
  readonly $fault?: 'client' | 'server';
  readonly $metadata?: { readonly httpStatusCode?: number };
}

type Handler = (args: object) => Promise<object>;

/** The part of an SDK v3 client this needs (any client: EC2, ELB, ELBv2). */
export interface MiddlewareHost {
  readonly middlewareStack: {
    add(middleware: (next: Handler, context: { commandName?: string }) => Handler, options: { step: 'initialize'; name: string }): void;
  };
}

/**
 * Counts every command an AWS SDK v3 client sends (retries included in its duration), by command name and
 * outcome (throttled ones as `throttled`), in `manticore_backend_requests_total{backend="aws"}`.
 */
export function instrumentAwsClient(client: MiddlewareHost): void {
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const startedAt = performance.now();
      const operation = context.commandName ?? 'unknown';
      try {
        const output = await next(args);
        recordBackendCall('aws', operation, 'ok', startedAt);
        return output;
      } catch (error) {
        recordBackendCall('aws', operation, awsOutcome(error), startedAt);
        throw error;
      }
    },
    { step: 'initialize', name: 'manticoreMetrics' },
  );
}

/**
 * Throttling is counted on its own: it calls for fewer calls, not for a fix as other refusals do. A call its
 * caller abandoned (the leadership term ended) is `aborted`, not a sign that AWS is unreachable.
 */
export function awsOutcome(error: unknown): BackendOutcome {
  if ((error as { name?: unknown } | undefined)?.name === 'AbortError') return 'aborted';
  if (isThrottling(error)) return 'throttled';
  const { $fault, $metadata } = (error ?? {}) as AwsErrorShape;
  const status = $metadata?.httpStatusCode;
  if (status === undefined) return $fault === 'server' ? 'server_error' : 'unreachable';
  return status >= 500 ? 'server_error' : 'client_error';
}
