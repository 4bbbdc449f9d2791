import crypto from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ManticoreConfig } from '../config/config.js';
import { newToken } from '../controller/claims.js';
import { ApiError } from './errors.js';
import { isUserId, userIdRule, type Authenticator, type Identity } from './identity.js';
import { claim, JwtError, JwtVerifier } from './jwt.js';

const anonymousCookie = 'manticore_user';
/** `anon-` and 26 base32 characters (130 random bits): unguessable, so one anonymous user cannot pose as another. */
const anonymousPattern = /^anon-[a-z2-7]{26}$/;
/** Kept a year; HttpOnly as no page script needs it; SameSite=Lax so links from elsewhere still carry it. */
const anonymousCookieAttributes = 'Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000';

/** The identity the admin token gives. */
const adminIdentity: Identity = { user: 'operator', operator: true, verified: true };

/** Builds the configured authenticator; a public key that cannot be read or parsed throws a ValidationError. */
export function createAuthenticator(auth: ManticoreConfig['auth'], now: () => number = Date.now): Authenticator {
  const byMode = auth.mode === 'jwt' ? new JwtAuthenticator(new JwtVerifier({ ...auth.jwt, now }), auth.jwt) : new AnonymousOrHeaderAuthenticator();
  return auth.adminToken === undefined ? byMode : new AdminTokenAuthenticator(auth.adminToken, byMode);
}

/**
 * Mode `none` (one machine, trusted users): the caller is named by the `X-Manticore-User` header, else by
 * an anonymous id kept in the `manticore_user` cookie, minted with the web page or on the first request
 * that has neither.
 */
export class AnonymousOrHeaderAuthenticator implements Authenticator {
  identify(request: FastifyRequest, reply: FastifyReply): Identity {
    const header = request.headers['x-manticore-user'];
    if (header !== undefined) {
      if (typeof header !== 'string' || !isUserId(header)) {
        throw new ApiError(400, 'invalid X-Manticore-User header', [`X-Manticore-User: ${userIdRule}`]);
      }
      return { user: header, operator: false };
    }
    return { user: anonymousUserOf(request) ?? mintAnonymousUser(request, reply), operator: false };
  }

  /** A new visitor gets their id with the page: else its first requests, sent together, would each mint one. */
  welcome(request: FastifyRequest, reply: FastifyReply): void {
    if (anonymousUserOf(request) === undefined) mintAnonymousUser(request, reply);
  }
}

/** The anonymous id in the request's cookie, if it is one this server hands out. */
function anonymousUserOf(request: FastifyRequest): string | undefined {
  const cookie = readCookie(request.headers.cookie, anonymousCookie);
  // Anything else in the cookie (edited, truncated) is not an id this server handed out.
  return cookie !== undefined && anonymousPattern.test(cookie) ? cookie : undefined;
}

function mintAnonymousUser(request: FastifyRequest, reply: FastifyReply): string {
  const user = `anon-${newToken()}`;
  // Secure when the request came over HTTPS (a trusted proxy's X-Forwarded-Proto counts): the browser then
  // never sends the id, which is all it takes to act as this user, over plain HTTP.
  const secure = request.protocol === 'https' ? '; Secure' : '';
  reply.header('set-cookie', `${anonymousCookie}=${user}; ${anonymousCookieAttributes}${secure}`);
  return user;
}

/**
 * Mode `jwt`: a token is required, from `Authorization: Bearer <token>`, or on GET requests from the
 * `access_token` query parameter (a browser's EventSource cannot send headers). The user is the
 * `userClaim` claim (numbers as decimal strings); the `operatorClaim` claim set to true makes an operator.
 */
export class JwtAuthenticator implements Authenticator {
  constructor(
    private readonly verifier: JwtVerifier,
    private readonly claimNames: { readonly userClaim: string; readonly operatorClaim: string },
  ) {}

  identify(request: FastifyRequest): Identity {
    const token = this.tokenOf(request);
    let claims;
    try {
      claims = this.verifier.verify(token);
    } catch (error) {
      if (!(error instanceof JwtError)) throw error;
      // Debug only: refused tokens come as fast as anyone sends them. The caller gets the reason in the answer.
      request.log.debug({ reason: error.message, url: request.routeOptions.url, method: request.method }, 'bearer token refused');
      throw invalidToken(error.message);
    }
    const { userClaim, operatorClaim } = this.claimNames;
    const raw = claim(claims, userClaim);
    // The SDL Developer Portal's user_id is a number.
    const user = typeof raw === 'number' && Number.isFinite(raw) ? String(raw) : raw;
    if (typeof user !== 'string' || !isUserId(user)) throw invalidToken(`the ${userClaim} claim must be a user id: ${userIdRule}`);
    const expiresAt = this.verifier.acceptedUntil(claims);
    return { user, operator: claim(claims, operatorClaim) === true, verified: true, ...(expiresAt === undefined ? {} : { expiresAt }) };
  }

  private tokenOf(request: FastifyRequest): string {
    if (request.headers.authorization !== undefined) {
      const token = bearerToken(request);
      if (token === undefined) throw invalidToken('the Authorization header must be "Bearer <token>"');
      return token;
    }
    const fromQuery = (request.query as Record<string, unknown> | undefined)?.access_token;
    if (request.method === 'GET' && typeof fromQuery === 'string' && fromQuery !== '') return fromQuery;
    throw new ApiError(401, 'authentication required', ['Authorization: Bearer <token> (or ?access_token=<token> on GET requests)'], {}, { 'www-authenticate': 'Bearer' });
  }
}

/** `Authorization: Bearer <adminToken>` makes an operator whatever the mode; anything else goes to `otherwise`. */
export class AdminTokenAuthenticator implements Authenticator {
  private readonly digest: Buffer;

  constructor(
    adminToken: string,
    private readonly otherwise: Authenticator,
  ) {
    this.digest = sha256(adminToken);
  }

  identify(request: FastifyRequest, reply: FastifyReply): Identity {
    const token = bearerToken(request);
    // Comparing digests (all one length) in constant time tells an attacker nothing about the token.
    if (token !== undefined && crypto.timingSafeEqual(sha256(token), this.digest)) return adminIdentity;
    return this.otherwise.identify(request, reply);
  }

  welcome(request: FastifyRequest, reply: FastifyReply): void {
    this.otherwise.welcome?.(request, reply);
  }
}

function invalidToken(reason: string): ApiError {
  return new ApiError(401, 'invalid bearer token', [reason], {}, { 'www-authenticate': 'Bearer error="invalid_token"' });
}

function bearerToken(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  return typeof header === 'string' ? /^Bearer +(\S+) *$/i.exec(header)?.[1] : undefined;
}

/** The first value of the named cookie in a Cookie header (RFC 6265: `name=value; name2=value2`). */
function readCookie(header: string | undefined, name: string): string | undefined {
  for (const pair of header?.split(';') ?? []) {
    const separator = pair.indexOf('=');
    if (separator > 0 && pair.slice(0, separator).trim() === name) return pair.slice(separator + 1).trim();
  }
  return undefined;
}

function sha256(text: string): Buffer {
  return crypto.createHash('sha256').update(text, 'utf8').digest();
}
