import { randomUUID } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';

/** Writes a file and flushes it to disk before returning. */
export async function writeSynced(file: string, content: string, mode = 0o600): Promise<void> {
  const handle = await fsp.open(file, 'w', mode);
  try {
    await handle.writeFile(content, 'utf8');
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Writes to a temporary file, then renames it over the target: readers (HAProxy on a reload, a restarted
 * scheduler) see the old content or the new, never half. With `durable`, the data and the rename are on
 * disk before this returns.
 */
export async function writeFileAtomic(file: string, content: string, options: { durable?: boolean; mode?: number } = {}): Promise<void> {
  const { durable = true, mode = 0o600 } = options;
  const temporary = `${file}.${process.pid}.${randomUUID()}.tmp`;
  try {
    if (durable) {
      await writeSynced(temporary, content, mode);
    } else {
      await fsp.writeFile(temporary, content, { encoding: 'utf8', mode });
    }
    await fsp.rename(temporary, file);
  } catch (error) {
    await fsp.rm(temporary, { force: true });
    throw new Error(`writing ${file}: ${(error as Error).message}`, { cause: error });
  }
  if (durable) {
    const directory = await fsp.open(path.dirname(file), 'r');
    try {
      await directory.sync();
    } finally {
      await directory.close();
    }
  }
}
