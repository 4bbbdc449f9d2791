import fs from 'node:fs';
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
 * The ports the OS hands out to outgoing connections (Linux: ip_local_port_range). A range for HAProxy is
 * looked for below them: inside, the tests' own client connections hold scattered ports, and under traffic
 * a long free run there gets rare.
 */
function ephemeralPorts(): { low: number; high: number } {
  try {
    const [low, high] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (Number.isInteger(low) && Number.isInteger(high)) return { low: low!, high: high! };
  } catch {
    // not Linux: IANA's dynamic range
  }
  return { low: 49152, high: 65535 };
}

/** Ports below this are left to system services. */
const lowestRangePort = 10_000;

/**
 * A run of `count` consecutive free loopback ports, for HAProxy's TCP range, free on every one of `hosts`
 * (routers on several loopback addresses bind the same range). The run starts at a random port outside the
 * OS's ephemeral range (or above it when below is too small), and each port is checked by binding it.
 */
export async function freePortRange(count: number, hosts: string | readonly string[] = '127.0.0.1'): Promise<{ start: number; end: number }> {
  const all = typeof hosts === 'string' ? [hosts] : hosts;
  const ephemeral = ephemeralPorts();
  const below = { from: lowestRangePort, to: ephemeral.low - count };
  const candidates = below.to >= below.from ? below : { from: ephemeral.high + 1, to: 65536 - count };
  if (candidates.to < candidates.from) throw new Error(`no room for ${count} ports outside the ephemeral range ${ephemeral.low}-${ephemeral.high}`);
  for (let attempt = 0; attempt < 50; attempt++) {
    const start = candidates.from + Math.floor(Math.random() * (candidates.to - candidates.from + 1));
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
