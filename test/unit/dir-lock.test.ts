import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { unprivileged } from '../support/processes.js';

/** The compiled module, for the child process (this file runs from dist/test/unit). */
const LOCK_MODULE = path.resolve(__dirname, '../../controller/util/dir-lock.js');

describe('lockDirectory', function () {
  let dir: string;

  beforeEach(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'manticore-dir-lock-'));
  });

  afterEach(function () {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a directory this user may not write, naming it, the user and the permission', async function () {
    const user = unprivileged([LOCK_MODULE]);
    if (user === undefined) this.skip();
    // Nobody may not write a directory of root's; anyone else is kept out by its mode.
    fs.chmodSync(dir, user.uid === undefined ? 0o555 : 0o755);
    const script = `
      const { lockDirectory } = require(process.argv[1]);
      try { lockDirectory(process.argv[2], 'the scheduler state directory'); } catch (error) { process.stderr.write(error.message); process.exit(3); }
    `;
    const { code, stderr } = await new Promise<{ code: number | string | undefined; stderr: string }>((resolve) => {
      execFile(process.execPath, ['-e', script, LOCK_MODULE, dir], user, (error, _stdout, stderr) => resolve({ code: (error as { code?: number | string } | null)?.code, stderr }));
    });
    assert.equal(code, 3, `the directory was locked: ${stderr}`);
    assert.match(stderr, new RegExp(`^the scheduler state directory ${dir} is not writable by this user \\(uid \\d+\\): EACCES`));
    fs.chmodSync(dir, 0o755);
  });
});
