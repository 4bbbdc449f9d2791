import fs from 'node:fs';
import path from 'node:path';

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

/** The processes whose parent is `pid` (e.g. an HAProxy master's workers). */
export function childPids(pid: number): number[] {
  const children: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      // The parent pid is the second field after the parenthesised command name.
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) children.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return children;
}

/** The live processes whose command line contains `needle` (e.g. the HAProxy processes of one run directory's config). */
export function processesNaming(needle: string): number[] {
  const pids: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(needle) && alive(Number(name))) pids.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/**
 * Options for a child process that permissions hold back: root reads and writes any file, so under root the
 * child runs as nobody, who must be able to load `modules`. Undefined when nobody cannot (a checkout under a
 * directory others may not enter): root cannot be held back otherwise, so the test has to be skipped.
 */
export function unprivileged(modules: readonly string[]): { uid?: number; gid?: number } | undefined {
  if (process.getuid?.() !== 0) return {};
  return modules.every(othersMayRead) ? { uid: 65534, gid: 65534 } : undefined;
}

/** Whether users other than the owner may read `file`: it is readable by others, and every directory above it searchable. */
function othersMayRead(file: string): boolean {
  if ((fs.statSync(file).mode & 0o004) === 0) return false;
  for (let dir = path.dirname(file); ; dir = path.dirname(dir)) {
    if ((fs.statSync(dir).mode & 0o001) === 0) return false;
    if (path.dirname(dir) === dir) return true;
  }
}
