/**
 * The UDP socket mDNS runs on. Under Node it is a node:dgram socket. Deno
 * 2.5's node:dgram cannot join a multicast group (`addMembership` fails
 * with EINVAL whatever the arguments), so under Deno this adapts Deno's own
 * `Deno.listenDatagram` (which needs `--unstable-net`, given by
 * bin/cloudlet-deno, deno.json and scripts/test.sh) to the small part of
 * the dgram API that multicast-dns uses: bind, send, memberships, TTL,
 * loopback, close, and the listening/message/error events.
 */
import { createSocket, type Socket } from "node:dgram";
import { EventEmitter } from "node:events";

/** The part of Deno's datagram API used here (Deno's own types are not in this build). */
interface DenoDatagramConn {
  receive(): Promise<[Uint8Array, { hostname: string; port: number }]>;
  send(data: Uint8Array, to: { transport: "udp"; hostname: string; port: number }): Promise<number>;
  joinMulticastV4(address: string, networkInterface: string): Promise<{ setLoopback(on: boolean): Promise<void>; leave(): Promise<void> }>;
  setMulticastTTL?(ttl: number): Promise<void>;
  close(): void;
  addr: { hostname: string; port: number };
}

interface DenoNet {
  listenDatagram(o: { transport: "udp"; hostname: string; port: number; reuseAddress?: boolean; loopback?: boolean }): DenoDatagramConn;
}

/** Options for multicast-dns: its own node:dgram socket under Node, the Deno adapter under Deno. */
export function mdnsOptions(): { socket?: Socket } {
  return "Deno" in globalThis ? { socket: mdnsSocket() } : {};
}

/** A socket for multicast-dns's `socket` option. */
export function mdnsSocket(): Socket {
  const deno = (globalThis as { Deno?: Partial<DenoNet> }).Deno;
  if (!deno) return createSocket({ type: "udp4", reuseAddr: true });
  if (typeof deno.listenDatagram !== "function") {
    throw new Error("mDNS under Deno needs --unstable-net (Deno's node:dgram cannot join multicast groups); run bin/cloudlet-deno");
  }
  return new DenoUdpSocket(deno as DenoNet) as unknown as Socket;
}

/** node:dgram's Socket, as far as multicast-dns needs it, over Deno.listenDatagram. */
class DenoUdpSocket extends EventEmitter {
  private conn: DenoDatagramConn | null = null;
  private loopback = true;
  private readonly groups = new Map<string, Promise<{ setLoopback(on: boolean): Promise<void>; leave(): Promise<void> } | null>>();
  private closed = false;

  constructor(private readonly deno: DenoNet) {
    super();
  }

  bind(port: number, address: string | undefined | (() => void), cb?: () => void): void {
    if (typeof address === "function") [cb, address] = [address, undefined];
    try {
      this.conn = this.deno.listenDatagram({ transport: "udp", hostname: address ?? "0.0.0.0", port, reuseAddress: true, loopback: true });
    } catch (e) {
      queueMicrotask(() => this.emit("error", e));
      return;
    }
    queueMicrotask(() => {
      this.emit("listening");
      cb?.();
    });
    void this.receiveLoop();
  }

  private async receiveLoop(): Promise<void> {
    while (!this.closed && this.conn) {
      try {
        const [data, from] = await this.conn.receive();
        this.emit("message", Buffer.from(data), { address: from.hostname, port: from.port, family: "IPv4", size: data.length });
      } catch (e) {
        if (!this.closed) this.emit("error", e);
        return;
      }
    }
  }

  address(): { address: string; port: number; family: string } {
    return { address: this.conn?.addr.hostname ?? "0.0.0.0", port: this.conn?.addr.port ?? 0, family: "IPv4" };
  }

  send(buf: Uint8Array, offset: number, length: number, port: number, address: string, cb?: (e: Error | null) => void): void {
    if (!this.conn) return cb?.(new Error("socket is not bound"));
    this.conn.send(buf.subarray(offset, offset + length), { transport: "udp", hostname: address, port }).then(
      () => cb?.(null),
      (e: Error) => cb?.(e),
    );
  }

  addMembership(group: string, iface = "0.0.0.0"): void {
    if (!this.conn) throw new Error("socket is not bound");
    const key = `${group}/${iface}`;
    if (this.groups.has(key)) return;
    const joined = this.conn.joinMulticastV4(group, iface).then(
      async (m) => {
        await m.setLoopback(this.loopback);
        return m;
      },
      (e: Error) => {
        this.emit("warning", e);
        return null;
      },
    );
    this.groups.set(key, joined);
  }

  dropMembership(group: string, iface = "0.0.0.0"): void {
    const key = `${group}/${iface}`;
    void this.groups.get(key)?.then((m) => m?.leave().catch(() => {}));
    this.groups.delete(key);
  }

  setMulticastTTL(ttl: number): void {
    void this.conn?.setMulticastTTL?.(ttl).catch(() => {});
  }

  setMulticastLoopback(on: boolean): void {
    this.loopback = on;
    for (const g of this.groups.values()) void g.then((m) => m?.setLoopback(on).catch(() => {}));
  }

  setMulticastInterface(): void {
    // Deno sends through the route for the group (the tests add one per namespace).
  }

  close(cb?: () => void): void {
    this.closed = true;
    try {
      this.conn?.close();
    } catch {
      // already closed
    }
    queueMicrotask(() => {
      this.emit("close");
      cb?.();
    });
  }

  unref(): this {
    return this;
  }

  ref(): this {
    return this;
  }
}
