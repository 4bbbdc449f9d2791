import net from 'node:net';

/** A port the OS just handed out on loopback (free at the time of the call). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * A run of `count` consecutive free loopback ports, for HAProxy's TCP range, free on every one of `hosts`
 * (routers on several loopback addresses bind the same range). Starts from an OS-chosen port and checks
 * each port of the run by binding it.
 */
export async function freePortRange(count: number, hosts: string | readonly string[] = '127.0.0.1'): Promise<{ start: number; end: number }> {
  const all = typeof hosts === 'string' ? [hosts] : hosts;
  for (let attempt = 0; attempt < 50; attempt++) {
    const start = await freePort(all[0]);
    if (start + count - 1 > 65535) continue;
    const held: net.Server[] = [];
    let ok = true;
    for (let port = start; port < start + count && ok; port++) {
      for (const host of all) {
        const server = net.createServer();
        ok = await new Promise<boolean>((resolve) => {
          server.once('error', () => resolve(false));
          server.listen(port, host, () => resolve(true));
        });
        if (!ok) break;
        held.push(server);
      }
    }
    await Promise.all(held.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    if (ok) return { start, end: start + count - 1 };
  }
  throw new Error(`no run of ${count} free ports found on ${all.join(', ')}`);
}
