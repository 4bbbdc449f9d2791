import type { FastifyReply, FastifyRequest } from 'fastify';

/** Who is calling: the user sessions belong to, and whether they may see and end everyone's sessions. */
export interface Identity {
  readonly user: string;
  readonly operator: boolean;
}

/**
 * Turns a request into an identity, or throws an ApiError (401) naming what is wrong with the
 * credentials. It may set response headers (an anonymous user's cookie).
 */
export interface Authenticator {
  identify(request: FastifyRequest, reply: FastifyReply): Identity;
}
