/** An API error: the status code, a sentence for humans, and the offending fields. */
export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
    readonly details: string[] = [],
    /** Machine-readable fields added to the error body (e.g. the ids of the sessions in the way). */
    readonly extra: Record<string, unknown> = {},
    /** Response headers that go with the error (e.g. Retry-After). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}
