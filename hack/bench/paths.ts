import path from 'node:path';

export const repoRoot = path.resolve(__dirname, '../../..');
/** The built `manticore` command. */
export const cli = path.join(repoRoot, 'dist/controller/cli/main.js');
