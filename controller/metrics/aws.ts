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
 * outcome, in `manticore_backend_requests_total{backend="aws"}`.
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
        recordBackendCall('aws', operation, awsOutcome(error as AwsErrorShape), startedAt);
        throw error;
      }
    },
    { step: 'initialize', name: 'manticoreMetrics' },
  );
}

export function awsOutcome(error: AwsErrorShape): BackendOutcome {
  const status = error.$metadata?.httpStatusCode;
  if (status === undefined) return error.$fault === 'server' ? 'server_error' : 'unreachable';
  return status >= 500 ? 'server_error' : 'client_error';
}
