import path from 'node:path';

export const repoRoot = path.resolve(__dirname, '../../..');
/** The built `manticore` command. */
export const cli = path.join(repoRoot, 'dist/controller/cli/main.js');

/**
 * BENCH_PROFILE_DIR: the flags that make a Node child write a CPU profile into `<dir>/<name>` when it exits
 * (`node --cpu-prof`); none without it.
 */
export function profileFlags(name: string): string[] {
  const dir = process.env.BENCH_PROFILE_DIR;
  return dir ? ['--cpu-prof', `--cpu-prof-dir=${path.join(dir, folderName(name))}`] : [];
}

/** A child's name as a folder name: "front end (Consul store)" → "front-end-Consul-store". */
function folderName(name: string): string {
  return name.replace(/[^\w.-]+/g, '-').replace(/^-+|-+$/g, '');
}
