import crypto from 'node:crypto';

/** A compact HS256 JWT of `claims`, signed with `secret`, as an issuer sharing the secret would. */
export function hs256Token(claims: Record<string, unknown>, secret: string): string {
  const encode = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  const signed = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode(claims)}`;
  return `${signed}.${crypto.createHmac('sha256', secret).update(signed).digest('base64url')}`;
}
