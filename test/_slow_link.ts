// A slow link on the client's side: connections (for http.request's
// createConnection) whose client-to-server bytes cross a link of `bytesPerSec`
// shared round robin by every connection on it, as TCP flows share one link.
// A write completes only once the link has carried it, so a writer sees
// backpressure at the link's rate (as over a socket with a small send buffer;
// a loopback socket's buffer would swallow megabytes at once). Underneath, each
// connection is a real loopback TCP socket; server-to-client bytes are not limited.
import * as net from "node:net";
import { Duplex } from "node:stream";

/** Round-robin quantum. */
const QUANTUM = 16 << 10;
const TICK_MS = 5;

interface Flow {
  socket: net.Socket;
  queue: Array<{ bytes: Uint8Array; done: (e?: Error | null) => void }>;
  /** Client-to-server bytes this connection carried. */
  carried: number;
  /** The request line of the first request on it, e.g. "PATCH /v1/sessions/ID/data". */
  first: string;
  resets: number;
}

/** A shared client-to-server link of `bytesPerSec`. */
export class SlowLink {
  private readonly flows: Flow[] = [];
  private credit = 0;
  private last = performance.now();
  private turn = 0;
  private readonly tick: ReturnType<typeof setInterval>;

  /**
   * @param bytesPerSec the link's rate, client to server
   * @param resettable connections have resetAndDestroy (as a TCP socket under Node), which drops the bytes not yet carried
   */
  constructor(
    private readonly bytesPerSec: number,
    private readonly resettable = true,
  ) {
    this.tick = setInterval(() => this.send(), TICK_MS);
  }

  /** Bytes carried so far by the connections whose first request line matches `re`. */
  carried(re: RegExp): number {
    return this.all.filter((f) => re.test(f.first)).reduce((t, f) => t + f.carried, 0);
  }

  private readonly all: Flow[] = [];

  /** Connections reset by their client. */
  resets(): number {
    return this.all.reduce((t, f) => t + f.resets, 0);
  }

  /** For http.request's `createConnection`: a connection to `port` on 127.0.0.1 over this link. */
  readonly connect = (opts: { port?: number | string | null }): Duplex => {
    const socket = net.connect(Number(opts.port), "127.0.0.1");
    const flow: Flow = { socket, queue: [], carried: 0, first: "", resets: 0 };
    this.flows.push(flow);
    this.all.push(flow);
    const leave = () => {
      const k = this.flows.indexOf(flow);
      if (k >= 0) this.flows.splice(k, 1);
      for (const q of flow.queue.splice(0)) q.done(new Error("the link's connection closed"));
    };
    const duplex = new Duplex({
      writableHighWaterMark: 16 << 10,
      write: (chunk: Buffer, _enc, done) => {
        if (!flow.first) flow.first = chunk.subarray(0, 200).toString("latin1").split(" HTTP/")[0];
        flow.queue.push({ bytes: new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength), done });
      },
      final: (done) => {
        // Ends once the link carried everything before it.
        flow.queue.push({ bytes: new Uint8Array(0), done: (e) => (e ? done(e) : socket.end(() => done())) });
      },
      read: () => socket.resume(),
      destroy: (e, done) => {
        leave();
        socket.destroy();
        done(e);
      },
    });
    if (this.resettable) {
      Object.assign(duplex, {
        resetAndDestroy: () => {
          flow.resets++;
          leave();
          socket.resetAndDestroy();
          duplex.destroy();
        },
      });
    }
    // Looks like a socket that is connecting, as node:http's client (Node's and Deno's) expects.
    Object.assign(duplex, { connecting: true });
    socket.once("connect", () => {
      Object.assign(duplex, { connecting: false });
      duplex.emit("connect");
    });
    socket.on("data", (b: Buffer) => {
      if (!duplex.push(b)) socket.pause();
    });
    socket.on("end", () => duplex.push(null));
    socket.on("close", () => {
      leave();
      duplex.destroy();
    });
    socket.on("error", (e) => duplex.destroy(e));
    return duplex;
  };

  private send(): void {
    const now = performance.now();
    // Unused credit does not pile up beyond two ticks: an idle link has no burst to spend.
    this.credit = Math.min(this.credit + ((now - this.last) / 1000) * this.bytesPerSec, (this.bytesPerSec * TICK_MS * 2) / 1000);
    this.last = now;
    for (let idle = 0; this.credit >= 1 && idle < this.flows.length; ) {
      const f = this.flows[this.turn++ % this.flows.length];
      if (!f.queue.length) {
        idle++;
        continue;
      }
      idle = 0;
      let n = Math.min(QUANTUM, Math.floor(this.credit));
      while (f.queue.length && (n > 0 || f.queue[0].bytes.length === 0)) {
        const head = f.queue[0];
        const k = Math.min(n, head.bytes.length);
        if (k) f.socket.write(head.bytes.subarray(0, k));
        f.carried += k;
        n -= k;
        this.credit -= k;
        if (k === head.bytes.length) {
          f.queue.shift();
          head.done();
        } else head.bytes = head.bytes.subarray(k);
      }
    }
  }

  /** Stops the link and closes its connections. */
  close(): void {
    clearInterval(this.tick);
    for (const f of this.all) f.socket.destroy();
  }
}
