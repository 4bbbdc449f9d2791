import { pino, type Logger, type LevelWithSilent } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

export type LogFormat = 'auto' | 'json' | 'pretty';

/**
 * The process logger: structured JSON lines on stdout, one object per line with the session id (`session`)
 * on every line about a session. Components take a child logger (`log.child({ component: 'router' })`) so
 * every line says where it came from. In a terminal (`auto`, the default) the same records are printed
 * readably instead; `json` keeps JSON even there.
 */
export function createLogger(
  level: LevelWithSilent,
  format: LogFormat = 'auto',
  destination: NodeJS.WritableStream = process.stdout,
): Logger {
  const options = { level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime };
  const terminal = (destination as { isTTY?: boolean }).isTTY === true;
  if (format === 'json' || (format === 'auto' && !terminal)) return destination === process.stdout ? pino(options) : pino(options, destination);
  // Synchronous, so nothing is lost when the process exits right after logging.
  return pino(options, pretty({ destination, sync: true, colorize: terminal, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' }));
}

/** A logger that writes nothing, for tests that do not look at logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
