import crypto from 'node:crypto';
import fs from 'node:fs';
import { ValidationError } from '../api/schemas.js';

export type JwtAlgorithm = 'HS256' | 'RS256' | 'ES256';

export interface JwtVerifierOptions {
  /** The HS256 key. */
  readonly secret?: string;
  /** RS256 and ES256 keys: PEM text, or the path of a PEM file. */
  readonly publicKeys?: readonly string[];
  readonly issuer?: string;
  readonly audience?: string;
  readonly now: () => number;
}

export type JwtClaims = Readonly<Record<string, unknown>>;

/** Why a token is refused, in words fit for the caller (never the token itself). */
export class JwtError extends Error {
  override name = 'JwtError';
}

/** Clocks of the token issuer and of this process may differ this much. */
const leewaySeconds = 30;
/** Tokens whose signature checked out, remembered in each of two generations: about 4 MB at most. */
const verifiedTokensPerGeneration = 5_000;
/** A compact JWS: header, payload and signature in base64url (the signature may be empty here: alg none, refused by name). */
const compactForm = /^([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)$/;

/**
 * Verifies compact JWS tokens (JWTs) with node:crypto alone: HS256 with the shared secret, RS256 and ES256
 * with the configured public keys. Each algorithm is tied to its own kind of key, and only algorithms
 * that have a key are accepted, so `none` never is and an HS256 token is never checked against a public
 * key (the classic algorithm confusion). Then `exp` and `nbf` (with leeway), and `iss` and `aud` when
 * configured.
 */
export class JwtVerifier {
  private readonly secret: Buffer | undefined;
  private readonly keys: ReadonlyMap<JwtAlgorithm, readonly crypto.KeyObject[]>;
  /** The algorithms a token may be signed with: those that have a key. */
  readonly algorithms: readonly string[];
  /**
   * Tokens that verified, with their claims. A client sends the same token with every request for as long
   * as it lives (a page polling its session, a portal acting for its user), and checking a signature and
   * decoding the token again each time cost more than the rest of a status read. Only the claim checks
   * (times, issuer, audience) are repeated; the claims of a token never change. Only good tokens are kept,
   * so a flood of bad ones cannot push them out. Two generations bound the memory: when the current one is full it becomes the previous
   * one, and a token found only there moves to the current one, so the tokens in use stay (a least
   * recently used order, without its upkeep on every request).
   */
  private verified = new Map<string, JwtClaims>();
  private verifiedBefore = new Map<string, JwtClaims>();
  /** The header of the last token that verified, decoded: an issuer's tokens all have the same header. */
  private lastHeader: { readonly encoded: string; readonly header: JwtClaims } | undefined;

  /** Throws a ValidationError naming the entry when a public key cannot be read or is not RSA or EC P-256. */
  constructor(private readonly options: JwtVerifierOptions) {
    this.secret = options.secret === undefined ? undefined : Buffer.from(options.secret, 'utf8');
    const keys = new Map<JwtAlgorithm, crypto.KeyObject[]>();
    (options.publicKeys ?? []).forEach((entry, index) => {
      const key = loadPublicKey(entry, index);
      const algorithm = algorithmOf(key, index);
      keys.set(algorithm, [...(keys.get(algorithm) ?? []), key]);
    });
    this.keys = keys;
    this.algorithms = [...(this.secret === undefined ? [] : ['HS256']), ...keys.keys()];
  }

  /** The token's claims once its signature and times check out; a JwtError saying what is wrong otherwise. */
  verify(token: string): JwtClaims {
    const known = this.verified.get(token);
    if (known !== undefined) {
      this.checkClaims(known);
      return known;
    }
    const claims = this.verifiedBefore.get(token) ?? this.verifySignature(token);
    this.checkClaims(claims);
    this.remember(token, claims);
    return claims;
  }

  private remember(token: string, claims: JwtClaims): void {
    if (this.verified.size >= verifiedTokensPerGeneration) {
      this.verifiedBefore = this.verified;
      this.verified = new Map();
    }
    this.verified.set(token, claims);
  }

  /** The claims of a token whose form, algorithm and signature check out; its times and audience are not checked. */
  private verifySignature(token: string): JwtClaims {
    const parts = compactForm.exec(token);
    if (parts === null) throw new JwtError('not a JWT (three base64url parts)');
    const [, encodedHeader, encodedPayload, encodedSignature] = parts;
    const header = encodedHeader === this.lastHeader?.encoded ? this.lastHeader.header : decodeJson(encodedHeader, 'header');
    if (header.crit !== undefined) throw new JwtError('the token has critical header extensions, none of which are supported');
    const algorithm = header.alg;
    if (typeof algorithm !== 'string' || !this.algorithms.includes(algorithm)) {
      throw new JwtError(`algorithm ${JSON.stringify(algorithm)} is not accepted (accepted: ${this.algorithms.join(', ')})`);
    }
    const signed = Buffer.from(`${encodedHeader}.${encodedPayload}`, 'ascii');
    if (!this.signatureVerifies(algorithm as JwtAlgorithm, signed, Buffer.from(encodedSignature, 'base64url'))) {
      throw new JwtError('the signature does not verify');
    }
    const claims = decodeJson(encodedPayload, 'payload');
    if (this.lastHeader?.encoded !== encodedHeader) this.lastHeader = { encoded: encodedHeader, header };
    return claims;
  }

  private signatureVerifies(algorithm: JwtAlgorithm, signed: Buffer, signature: Buffer): boolean {
    if (algorithm === 'HS256') {
      const expected = crypto.createHmac('sha256', this.secret!).update(signed).digest();
      return signature.length === expected.length && crypto.timingSafeEqual(signature, expected);
    }
    // ES256 signatures are r||s (64 bytes), not DER.
    if (algorithm === 'ES256' && signature.length !== 64) return false;
    const dsaEncoding = algorithm === 'ES256' ? 'ieee-p1363' : 'der';
    return (this.keys.get(algorithm) ?? []).some((key) => {
      try {
        return crypto.verify('sha256', signed, { key, dsaEncoding }, signature);
      } catch {
        // A signature of the wrong shape for the key is a bad signature, not a server failure.
        return false;
      }
    });
  }

  /** Until when (ms) a token with these claims is accepted, leeway included; undefined for a token without exp. */
  acceptedUntil(claims: JwtClaims): number | undefined {
    const exp = claim(claims, 'exp');
    return typeof exp === 'number' ? (exp + leewaySeconds) * 1000 : undefined;
  }

  private checkClaims(claims: JwtClaims): void {
    const now = this.options.now() / 1000;
    const exp = claim(claims, 'exp');
    if (exp !== undefined) {
      if (typeof exp !== 'number') throw new JwtError('exp must be a number');
      if (now - leewaySeconds >= exp) throw new JwtError(`the token expired at ${isoTime(exp)}`);
    }
    const nbf = claim(claims, 'nbf');
    if (nbf !== undefined) {
      if (typeof nbf !== 'number') throw new JwtError('nbf must be a number');
      if (now + leewaySeconds < nbf) throw new JwtError(`the token is not valid before ${isoTime(nbf)}`);
    }
    const { issuer, audience } = this.options;
    if (issuer !== undefined && claim(claims, 'iss') !== issuer) throw new JwtError('the token is not from the accepted issuer (iss)');
    if (audience !== undefined) {
      const aud = claim(claims, 'aud');
      if (!(aud === audience || (Array.isArray(aud) && aud.includes(audience)))) throw new JwtError('the token is not meant for this service (aud)');
    }
  }
}

/** A claim the token itself carries (never one inherited from Object.prototype, like `constructor`). */
export function claim(claims: JwtClaims, name: string): unknown {
  return Object.hasOwn(claims, name) ? claims[name] : undefined;
}

function decodeJson(part: string, what: string): JwtClaims {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  } catch {
    throw new JwtError(`the ${what} is not JSON`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new JwtError(`the ${what} is not a JSON object`);
  return value as JwtClaims;
}

function isoTime(seconds: number): string {
  const date = new Date(seconds * 1000);
  return Number.isNaN(date.getTime()) ? String(seconds) : date.toISOString();
}

function loadPublicKey(entry: string, index: number): crypto.KeyObject {
  const inline = entry.includes('-----BEGIN');
  const where = `/auth/jwt/publicKeys/${index}`;
  let pem = entry;
  if (!inline) {
    try {
      pem = fs.readFileSync(entry, 'utf8');
    } catch (error) {
      throw new ValidationError('configuration', [`${where}: cannot read the key file ${entry}: ${(error as Error).message}`]);
    }
  }
  try {
    return crypto.createPublicKey(pem);
  } catch (error) {
    const source = inline ? 'the PEM text' : `the key file ${entry}`;
    throw new ValidationError('configuration', [`${where}: ${source} is not a PEM public key: ${(error as Error).message}`]);
  }
}

function algorithmOf(key: crypto.KeyObject, index: number): JwtAlgorithm {
  if (key.asymmetricKeyType === 'rsa') return 'RS256';
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'ES256';
  const kind = [key.asymmetricKeyType, key.asymmetricKeyDetails?.namedCurve].filter(Boolean).join(' ');
  throw new ValidationError('configuration', [`/auth/jwt/publicKeys/${index}: a ${kind} key; RSA (RS256) or EC P-256 (ES256) keys are supported`]);
}
