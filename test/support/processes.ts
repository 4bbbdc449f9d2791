import fs from 'node:fs';

/**
 * Whether a process is running: it exists and is not a zombie (an orphan's zombie may wait a while for
 * init to reap it, and for the tests it is as gone as a reaped one).
 */
export function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}
