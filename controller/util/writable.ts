import fs from 'node:fs';

/**
 * Why this process may not use `target` for its files, or undefined when it may (a file that does not exist
 * yet counts as usable: its directory is checked on its own). SQLite says no more than "disk I/O error" or
 * "unable to open database file" for a file or directory it may not write (one made by `sudo make run`,
 * then run as oneself), so callers check first and name the permission.
 */
export function notWritable(target: string, kind: 'file' | 'directory'): string | undefined {
  try {
    fs.accessSync(target, kind === 'file' ? fs.constants.R_OK | fs.constants.W_OK : fs.constants.W_OK | fs.constants.X_OK);
    return undefined;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EACCES' && code !== 'EPERM' && code !== 'EROFS') return undefined;
    return `${target} is not writable by this user (uid ${process.getuid?.() ?? 'unknown'}): ${(error as Error).message}`;
  }
}
