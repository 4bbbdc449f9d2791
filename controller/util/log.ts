import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/**
 * The process logger: structured JSON lines on stdout. Components take a child logger
 * (`log.child({ component: 'router' })`) so every line says where it came from.
 */
export function createLogger(level: LevelWithSilent = (process.env.MANTICORE_LOG_LEVEL as LevelWithSilent) ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime });
}

/** A logger that writes nothing, for tests that do not look at logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
