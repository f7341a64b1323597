/**
 * QmpClient: the QEMU Machine Protocol over a unix socket (node:net).
 *
 * ```text
 *   connect   <- {"QMP": {...}}                       greeting
 *             -> {"execute":"qmp_capabilities"}        leave negotiation mode
 *   execute   -> {"execute":CMD,"arguments":A,"id":N}
 *             <- {"return":R,"id":N} | {"error":{class,desc},"id":N}
 *   any time  <- {"event":NAME,"data":D,"timestamp":T} collected in `events`
 * ```
 *
 * Replies carry the request id, so several commands may be in flight. When
 * the socket closes (QEMU exited), every pending command fails.
 *
 * Events are numbered from 0 in the order they arrive, and a number never
 * changes when old events are dropped; a reader keeps the number it has read
 * up to and asks {@link QmpClient.eventsSince} for the rest (an index into
 * `events` would shift once the list is full, and the reader would miss or
 * reread events).
 */
import { connect, type Socket } from "node:net";
import { CloudletError } from "../errors.ts";

/** An asynchronous event QEMU sent (STOP, RESUME, SHUTDOWN, MIGRATION, ...). */
export interface QmpEvent {
  event: string;
  data?: unknown;
  timestamp?: { seconds: number; microseconds: number };
}

/** Options for {@link QmpClient.connect}. */
export interface QmpConnectOptions {
  /** How long to retry while the socket does not exist or refuses; default 30 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Checked between retries: stop waiting when the VM process is gone. */
  alive?: () => boolean;
}

/** How many events are kept; older ones are dropped. */
const MAX_EVENTS = 1000;

/** What {@link QmpClient.eventsSince} returns. */
export interface QmpEventsRead {
  /** The events numbered `from` and on that are still kept, oldest first. */
  events: QmpEvent[];
  /** The number to read from next time (one past the newest event). */
  next: number;
  /** How many events from `from` on were dropped before this read (the reader fell more than 1000 behind). */
  missed: number;
}

/** A QMP connection after the capabilities handshake. */
export class QmpClient {
  /** The newest events received (oldest first, at most 1000); indexes shift as old ones drop, so read with {@link eventsSince}. */
  readonly events: QmpEvent[] = [];
  /** Resolves when the connection is closed, by either side. */
  readonly closed: Promise<void>;
  private nextId = 1;
  private readonly pending = new Map<string, { resolve: (v: unknown) => void; reject: (e: Error) => void; cmd: string }>();
  private buf = "";
  private isClosed = false;
  private greeting: ((v: unknown) => void) | null = null;
  /** How many events were dropped from the front of `events`: the number of `events[0]`. */
  private dropped = 0;
  private eventWaiters: (() => void)[] = [];

  private constructor(
    private readonly sock: Socket,
    readonly path: string,
  ) {
    let onClosed!: () => void;
    this.closed = new Promise((r) => (onClosed = r));
    sock.setEncoding("utf8");
    sock.on("data", (d: string) => this.onData(d));
    sock.on("error", () => {}); // a reset is reported through "close"
    sock.on("close", () => {
      this.isClosed = true;
      const err = new CloudletError("GUEST", `QMP connection to ${path} closed: QEMU exited`);
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
      this.wakeEventWaiters();
      onClosed();
    });
  }

  /** Connects to the QMP socket at `path` (retrying until it answers) and negotiates capabilities. */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
    for (;;) {
      if (opts.signal?.aborted) throw new CloudletError("CANCELLED", "cancelled while connecting to QMP", path);
      const sock = await tryConnect(path);
      if (sock) {
        const c = new QmpClient(sock, path);
        try {
          await c.handshake(Math.max(1000, deadline - Date.now()));
          return c;
        } catch (e) {
          c.close();
          throw e;
        }
      }
      if (opts.alive && !opts.alive()) throw new CloudletError("GUEST", "QEMU exited before its QMP socket answered", path);
      if (Date.now() > deadline) throw new CloudletError("HOST_TOOL", `QMP socket did not answer within ${Math.round((opts.timeoutMs ?? 30_000) / 1000)} s`, path);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Runs a QMP command and returns its `return` value; HOST_TOOL error when QEMU reports an error. */
  execute<T = unknown>(cmd: string, args?: Record<string, unknown>, timeoutMs = 30_000): Promise<T> {
    if (this.isClosed) return Promise.reject(new CloudletError("GUEST", `QMP ${cmd}: QEMU is gone (connection closed)`, this.path));
    const id = `cl-${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CloudletError("HOST_TOOL", `QMP ${cmd} got no answer within ${Math.round(timeoutMs / 1000)} s`, this.path));
      }, timeoutMs);
      this.pending.set(id, {
        cmd,
        resolve: (v) => (clearTimeout(timer), resolve(v as T)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      this.sock.write(JSON.stringify(args ? { execute: cmd, arguments: args, id } : { execute: cmd, id }) + "\n");
    });
  }

  /** The number the next event will get: how many events have arrived, dropped ones included. */
  get eventCount(): number {
    return this.dropped + this.events.length;
  }

  /** The events numbered `from` and on (see the module doc), and where to read from next. */
  eventsSince(from: number): QmpEventsRead {
    const wanted = Math.max(0, from);
    const start = Math.max(wanted, this.dropped);
    return { events: this.events.slice(start - this.dropped), next: this.eventCount, missed: start - wanted };
  }

  /**
   * Resolves once an event numbered `after` or later has arrived (at once if
   * one has; without `after`, at the next event), when the connection closes,
   * or after `timeoutMs`. Once closed it waits up to 50 ms, so a polling loop
   * does not spin.
   */
  nextEvent(timeoutMs: number, after = this.eventCount): Promise<void> {
    if (this.eventCount > after) return Promise.resolve();
    if (this.isClosed) return new Promise((r) => setTimeout(r, Math.min(timeoutMs, 50)));
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.eventWaiters = this.eventWaiters.filter((w) => w !== done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.eventWaiters.push(done);
    });
  }

  /** Closes the connection (QEMU keeps running). */
  close(): void {
    this.sock.destroy();
  }

  private async handshake(timeoutMs: number) {
    const greeted = new Promise((resolve) => (this.greeting = resolve));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new CloudletError("HOST_TOOL", "QMP greeting did not arrive", this.path)), timeoutMs);
    });
    try {
      await Promise.race([greeted, timeout, this.closed.then(() => Promise.reject(new CloudletError("GUEST", "QEMU closed QMP before the greeting", this.path)))]);
      await this.execute("qmp_capabilities", undefined, timeoutMs);
    } finally {
      clearTimeout(timer);
    }
  }

  private onData(d: string) {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf("\n")) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string) {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line);
    } catch {
      return; // QEMU only sends JSON; ignore anything else
    }
    if ("QMP" in msg) {
      this.greeting?.(msg.QMP);
      this.greeting = null;
      return;
    }
    if ("event" in msg) {
      this.events.push(msg as unknown as QmpEvent);
      if (this.events.length > MAX_EVENTS) {
        this.events.shift();
        this.dropped++;
      }
      this.wakeEventWaiters();
      return;
    }
    const p = typeof msg.id === "string" ? this.pending.get(msg.id) : undefined;
    if (!p) return;
    this.pending.delete(msg.id as string);
    if ("error" in msg) {
      const e = msg.error as { class?: string; desc?: string };
      p.reject(new CloudletError("HOST_TOOL", `QMP ${p.cmd} failed: ${e.desc ?? e.class ?? "unknown error"}`, this.path));
    } else p.resolve(msg.return);
  }

  private wakeEventWaiters() {
    const waiters = this.eventWaiters;
    this.eventWaiters = [];
    for (const w of waiters) w();
  }
}

function tryConnect(path: string): Promise<Socket | null> {
  return new Promise((resolve) => {
    const s = connect(path);
    const fail = () => {
      s.destroy();
      resolve(null);
    };
    s.once("error", fail);
    s.once("connect", () => {
      s.off("error", fail);
      resolve(s);
    });
  });
}
