import type { FastifyRequest } from 'fastify';
import { ApiError } from './errors.js';
import type { Authenticator, Identity } from './identity.js';

const userPattern = /^[A-Za-z0-9._@-]{1,128}$/;

/** The caller is named by the `X-Manticore-User` header; `anonymous` when it is absent. */
export class HeaderAuthenticator implements Authenticator {
  identify(request: FastifyRequest): Identity {
    const header = request.headers['x-manticore-user'];
    if (header === undefined) return { user: 'anonymous', operator: false };
    if (typeof header !== 'string' || !userPattern.test(header)) {
      throw new ApiError(400, 'invalid X-Manticore-User header', ['X-Manticore-User: 1 to 128 characters of A-Z a-z 0-9 . _ @ -']);
    }
    return { user: header, operator: false };
  }
}
