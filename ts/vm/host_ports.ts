/**
 * Host ports for user-mode network forwards. QEMU fails at startup when a
 * hostfwd port is taken, with a message that does not say which forward; so
 * ports are checked (and 0 resolved to a free port) before launching.
 */
import { createServer } from "node:net";
import { createSocket } from "node:dgram";
import { CloudletError } from "../errors.ts";
import type { PortForward } from "../overlay/format.ts";

/** True when `port` can be bound on `host` right now. */
export function isPortFree(port: number, host = "127.0.0.1", proto: "tcp" | "udp" = "tcp"): Promise<boolean> {
  return bindOnce(port, host, proto).then(() => true, () => false);
}

/** Picks `count` distinct free ports on `host` (bound together, then released). */
export async function pickFreePorts(count: number, host = "127.0.0.1", proto: "tcp" | "udp" = "tcp"): Promise<number[]> {
  const held: { port: number; close: () => Promise<void> }[] = [];
  try {
    for (let i = 0; i < count; i++) held.push(await bind(0, host, proto));
    return held.map((h) => h.port);
  } finally {
    for (const h of held) await h.close();
  }
}

/** The forwards with every hostPort 0 replaced by a free port; BAD_ARGUMENT naming the port when one is taken. */
export async function resolvePortForwards(forwards: PortForward[], host = "127.0.0.1"): Promise<PortForward[]> {
  const out: PortForward[] = [];
  const seen = new Set<string>();
  for (const f of forwards) {
    let hostPort = f.hostPort;
    if (hostPort === 0) {
      do [hostPort] = await pickFreePorts(1, host, f.proto);
      while (seen.has(`${f.proto}:${hostPort}`));
    } else {
      if (seen.has(`${f.proto}:${hostPort}`)) {
        throw new CloudletError("BAD_ARGUMENT", `host port ${host}:${hostPort}/${f.proto} is forwarded twice: give each forward its own host port`);
      }
      if (!(await isPortFree(hostPort, host, f.proto))) {
        throw new CloudletError(
          "CONFLICT",
          `host port ${host}:${hostPort}/${f.proto} (forward to guest port ${f.guestPort}) is already in use: stop what listens there, or give --auto-ports to use free host ports`,
        );
      }
    }
    seen.add(`${f.proto}:${hostPort}`);
    out.push({ proto: f.proto, hostPort, guestPort: f.guestPort });
  }
  return out;
}

async function bindOnce(port: number, host: string, proto: "tcp" | "udp"): Promise<void> {
  const b = await bind(port, host, proto);
  await b.close();
}

function bind(port: number, host: string, proto: "tcp" | "udp"): Promise<{ port: number; close: () => Promise<void> }> {
  return new Promise((resolve, reject) => {
    if (proto === "udp") {
      const s = createSocket("udp4");
      s.once("error", (e) => (s.close(), reject(e)));
      s.bind(port, host, () => resolve({ port: s.address().port, close: () => new Promise((r) => s.close(() => r())) }));
      return;
    }
    const srv = createServer();
    srv.once("error", reject);
    // exclusive: a port shared with another listener in this process must count as taken.
    srv.listen({ port, host, exclusive: true }, () => {
      const a = srv.address();
      resolve({ port: typeof a === "object" && a ? a.port : port, close: () => new Promise((r) => srv.close(() => r())) });
    });
  });
}

/** The VNC port to launch with: a free one from 5900 up for 0, else `port` checked (QEMU can only listen on 5900 + display). */
export async function resolveVncPort(port: number, host = "127.0.0.1"): Promise<number> {
  if (port === 0) {
    for (let p = 5900; p < 6000; p++) if (await isPortFree(p, host)) return p;
    throw new CloudletError("BAD_ARGUMENT", `no free VNC port on ${host} between 5900 and 5999: give one explicitly`);
  }
  if (!Number.isInteger(port) || port < 5900 || port > 65535) throw new CloudletError("BAD_ARGUMENT", `VNC port ${port} is not possible: QEMU listens on 5900 + display, so use 5900-65535 (or 0 to pick one)`);
  if (!(await isPortFree(port, host))) throw new CloudletError("CONFLICT", `VNC port ${host}:${port} is already in use: choose another port (or 0 to pick one)`);
  return port;
}
