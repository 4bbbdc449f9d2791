import type { FastifyReply, FastifyRequest } from 'fastify';

/** Who is calling: the user sessions belong to, and whether they may see and end everyone's sessions. */
export interface Identity {
  readonly user: string;
  readonly operator: boolean;
  /**
   * True when credentials prove the user (a verified token); absent or false when callers merely name
   * themselves (a header, an anonymous cookie). The v2 API, whose bodies name the user, lets a proven
   * user override the body, as v2's JWT mode did.
   */
  readonly verified?: boolean;
}

/**
 * Turns a request into an identity, or throws an ApiError (401) naming what is wrong with the
 * credentials. It may set response headers (an anonymous user's cookie).
 */
export interface Authenticator {
  identify(request: FastifyRequest, reply: FastifyReply): Identity;
}
