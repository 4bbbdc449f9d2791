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
  /**
   * When the credentials stop being accepted (ms since the epoch; a bearer token's exp plus the leeway);
   * absent for credentials that do not expire. A stream opened with them must not outlive them.
   */
  readonly expiresAt?: number;
}

/** What a user name may be (the X-Manticore-User header's, a token's user claim), as said to whoever gives another. */
export const userIdRule = '1 to 128 characters of A-Z a-z 0-9 . _ @ -';

export function isUserId(value: string): boolean {
  return /^[A-Za-z0-9._@-]{1,128}$/.test(value);
}

/**
 * Turns a request into an identity, or throws an ApiError (401) naming what is wrong with the
 * credentials. It may set response headers (an anonymous user's cookie).
 */
export interface Authenticator {
  identify(request: FastifyRequest, reply: FastifyReply): Identity;
  /**
   * On a load of the web page itself: hands out now whatever later requests will be identified by, as the
   * page sends its first API requests together and each would otherwise be a stranger.
   */
  welcome?(request: FastifyRequest, reply: FastifyReply): void;
}
