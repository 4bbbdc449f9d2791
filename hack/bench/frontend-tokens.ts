import crypto from 'node:crypto';
import fs from 'node:fs/promises';

/** The JWT settings the bench's front ends are configured with and its tokens are signed with. */
export interface JwtSettings {
  /** HS256 key (the configuration wants at least 32 characters). */
  readonly secret: string;
  readonly issuer: string;
}

export function newJwtSettings(): JwtSettings {
  return { secret: crypto.randomBytes(32).toString('hex'), issuer: 'manticore-bench' };
}

/**
 * HS256 bearer tokens for users `<prefix>0` … `<prefix>(count-1)`, as an identity provider (the SDL
 * Developer Portal) would issue them: signed beforehand, because wrk's Lua cannot sign.
 */
export function mintTokens(settings: JwtSettings, prefix: string, count: number, lifetimeSeconds = 3600): string[] {
  const header = encode({ alg: 'HS256', typ: 'JWT' });
  const exp = Math.floor(Date.now() / 1000) + lifetimeSeconds;
  const tokens: string[] = [];
  for (let i = 0; i < count; i++) {
    const signed = `${header}.${encode({ sub: `${prefix}${i}`, iss: settings.issuer, exp })}`;
    tokens.push(`${signed}.${crypto.createHmac('sha256', settings.secret).update(signed).digest('base64url')}`);
  }
  return tokens;
}

/** One entry a line, for wrk's Lua to read with io.lines. */
export async function writeLines(file: string, lines: readonly string[]): Promise<void> {
  await fs.writeFile(file, `${lines.join('\n')}\n`);
}

function encode(value: object): string {
  return Buffer.from(JSON.stringify(value), 'utf8').toString('base64url');
}
