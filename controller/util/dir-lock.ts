import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { notWritable } from './writable.js';

/** Held while a process owns a directory; released by `release()` or by the process ending, kill -9 included. */
export interface DirectoryLock {
  release(): void;
}

/**
 * Takes `<dir>/manticore.lock` exclusively, or throws at once, naming `what`, while another holder has it.
 * Node has no flock, so SQLite's file lock does it: the OS drops it when its holder dies, so a killed
 * process leaves no stale lock, and a second connection within one process is refused like another process.
 */
export function lockDirectory(dir: string, what: string): DirectoryLock {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'manticore.lock');
  const problem = notWritable(dir, 'directory') ?? notWritable(file, 'file');
  if (problem !== undefined) throw new Error(`${what} ${problem}`);
  const db = new Database(file, { timeout: 0 });
  try {
    // Exclusive locking mode keeps the lock the first write transaction takes until the connection closes;
    // nothing is ever written, so the journal stays in memory (no file beside the lock).
    db.pragma('locking_mode = EXCLUSIVE');
    db.pragma('journal_mode = MEMORY');
    db.exec('BEGIN EXCLUSIVE; COMMIT');
  } catch (error) {
    db.close();
    if ((error as { code?: unknown }).code === 'SQLITE_BUSY') {
      throw new Error(`${what} ${dir} is in use by another Manticore process; two processes must not share it`, { cause: error });
    }
    throw new Error(`locking ${what} ${dir}: ${(error as Error).message}`, { cause: error });
  }
  return { release: () => db.close() };
}
