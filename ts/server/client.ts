/**
 * The synthesis client: sends an overlay to a cloudlet, follows its progress
 * and returns the VM's endpoint. Uploads resume after a cut connection: the
 * server reports the offset it holds, and the client continues from there.
 */
import * as http from "node:http";
import * as https from "node:https";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { Core } from "../core/core.ts";
import { CloudletError, isCloudletError } from "../errors.ts";
import { encodePackHeader, HEADER_BYTES } from "../overlay/format.ts";
import type { ProgressFn } from "../overlay/io.ts";
import type { OverlayReader } from "../overlay/reader.ts";
import { API, DEFAULT_PORT, type Endpoint, OFFSET_HEADER, type ServerInfo, type SessionEvent, type SessionListing, type SessionStatus } from "./protocol.ts";

/** Where and how to reach a server. */
export interface ServerAddress {
  /** host or host:port (IPv6 in brackets). */
  server: string;
  /** Bearer token. */
  token: string;
  /** Use HTTPS. */
  tls?: boolean;
  /** CA certificate (PEM) to trust, for self-signed servers. */
  ca?: Buffer;
  /** Opens each request's connection instead of a plain TCP (or TLS) one: tests put a simulated link here. */
  connect?: (opts: { host?: string | null; port?: number | string | null }) => Duplex;
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** An answer whose head arrived: its body follows as text. */
interface Opened {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: AsyncIterable<string>;
  /** Stops reading it (and closes its connection). */
  cancel(): void;
}

interface RequestOptions {
  headers?: Record<string, string>;
  body?: Uint8Array | string;
  /** A body sent piece by piece as it is produced (chunked). */
  stream?: AsyncIterable<Uint8Array>;
  /** Called with a streamed request's node:http request (not under Deno, where fetch sends it). */
  onRequest?: (req: http.ClientRequest) => void;
  signal?: AbortSignal;
}

/** The part of Deno's API that gives fetch a CA to trust. */
interface DenoFetchClients {
  createHttpClient(o: { caCerts: string[] }): { close(): void };
}

/** ReadableStream.from (in Deno and Node 20.6+; not in the TypeScript lib used here). */
interface StreamFrom {
  from(chunks: AsyncIterable<Uint8Array>): ReadableStream<Uint8Array>;
}

/** Writes `chunks` to `req` as the socket takes them, then ends it; stops when the request is destroyed. */
async function writeAll(req: http.ClientRequest, chunks: AsyncIterable<Uint8Array>): Promise<void> {
  for await (const c of chunks) {
    if (!req.write(c)) {
      await new Promise<void>((res, rej) => {
        const done = (e?: unknown) => {
          req.off("drain", done).off("close", done).off("error", done);
          if (e instanceof Error) rej(e);
          else res();
        };
        req.on("drain", done).on("close", done).on("error", done);
      });
    }
    if (req.destroyed) return;
  }
  req.end();
}

/** An Upload-Offset header's value. */
const OFFSET_DIGITS = /^[0-9]{1,16}$/;

/** Splits host[:port]. */
export function parseServer(s: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(s) ?? /^([^:]+)(?::(\d+))?$/.exec(s);
  if (!m) throw new CloudletError("BAD_ARGUMENT", `bad server address "${s}" (use HOST or HOST:PORT)`);
  const port = m[2] ? Number(m[2]) : DEFAULT_PORT;
  if (!(port > 0 && port < 65536)) throw new CloudletError("BAD_ARGUMENT", `bad port in "${s}"`);
  return { host: m[1], port };
}

/** A connection to one cloudlet server. */
export class CloudletClient {
  private readonly host: string;
  private readonly port: number;
  /** @param addr the server */
  constructor(readonly addr: ServerAddress) {
    ({ host: this.host, port: this.port } = parseServer(addr.server));
  }

  private async request(method: string, path: string, opts: RequestOptions = {}): Promise<Reply> {
    const r = await this.open(method, path, opts);
    let body = "";
    try {
      for await (const t of r.text) body += t;
    } catch (e) {
      throw this.transportError(e, "lost the connection to");
    }
    return { status: r.status, headers: r.headers, body };
  }

  /**
   * Sends a request and resolves once its answer's head arrives. Under Deno it
   * goes through fetch: Deno's node:http client (2.5) can end without settling
   * when the server answers early and drops the connection, or throw an error
   * no caller can catch ("request body stream errored"); fetch settles either way.
   */
  private open(method: string, path: string, opts: RequestOptions): Promise<Opened> {
    return "Deno" in globalThis && !this.addr.connect ? this.openFetch(method, path, opts) : this.openNode(method, path, opts);
  }

  private openNode(method: string, path: string, opts: RequestOptions): Promise<Opened> {
    return new Promise((resolve, reject) => {
      const mod = this.addr.tls ? https : http;
      const req = mod.request(
        {
          host: this.host,
          port: this.port,
          method,
          path: API + path,
          headers: { authorization: `Bearer ${this.addr.token}`, ...opts.headers },
          ca: this.addr.ca,
          signal: opts.signal,
          ...(this.addr.connect ? { createConnection: this.addr.connect as unknown as http.RequestOptions["createConnection"] } : {}),
        },
        (res) => {
          res.setEncoding("utf8");
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text: res as AsyncIterable<string>, cancel: () => void res.destroy() });
        },
      );
      req.on("error", (e) => reject(this.transportError(e, "cannot reach")));
      if (opts.stream) {
        opts.onRequest?.(req);
        writeAll(req, opts.stream).catch((e) => req.destroy(e as Error));
      } else req.end(opts.body);
    });
  }

  private async openFetch(method: string, path: string, opts: RequestOptions): Promise<Opened> {
    const host = this.host.includes(":") ? `[${this.host}]` : this.host;
    const url = `${this.addr.tls ? "https" : "http"}://${host}:${this.port}${API}${path}`;
    // fetch frames the body itself.
    const { "transfer-encoding": _te, "content-length": _cl, ...headers } = opts.headers ?? {};
    const deno = (globalThis as unknown as { Deno: DenoFetchClients }).Deno;
    const client = this.addr.ca ? deno.createHttpClient({ caCerts: [this.addr.ca.toString("utf8")] }) : undefined;
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers: { authorization: `Bearer ${this.addr.token}`, ...headers },
        // Pulled as the connection takes it; a cancel (the connection went) ends the generator.
        body: opts.stream ? (ReadableStream as unknown as StreamFrom).from(opts.stream) : opts.body,
        signal: opts.signal,
        ...(opts.stream ? { duplex: "half" } : {}),
        ...(client ? { client } : {}),
      } as RequestInit);
    } catch (e) {
      client?.close();
      throw this.transportError(e, "cannot reach");
    }
    const reader = res.body?.getReader();
    let closed = false;
    const finish = () => {
      if (closed) return;
      closed = true;
      reader?.cancel().catch(() => {});
      client?.close();
    };
    const text = async function* (): AsyncGenerator<string> {
      const decoder = new TextDecoder();
      try {
        while (reader) {
          const { done, value } = await reader.read();
          if (done) break;
          const t = decoder.decode(value, { stream: true });
          if (t) yield t;
        }
      } finally {
        finish();
      }
    };
    return { status: res.status, headers: Object.fromEntries(res.headers), text: text(), cancel: finish };
  }

  /**
   * A transport failure as the user sees it: the request could not be sent or
   * got no answer ("cannot reach"), or its answer was cut off while read ("lost
   * the connection to"; a cloudlet error raised while reading stays as it is).
   */
  private transportError(e: unknown, what: "cannot reach" | "lost the connection to"): CloudletError {
    if (what === "lost the connection to" && isCloudletError(e)) return e;
    const err = e as NodeJS.ErrnoException & { cause?: { message?: string } };
    if (err.name === "AbortError") return new CloudletError("CANCELLED", "cancelled");
    return new CloudletError("REMOTE", `${what} the cloudlet at ${this.addr.server}: ${err.code ?? err.cause?.message ?? err.message}`);
  }

  private fail(r: Reply, what: string): never {
    let msg = r.body;
    let code = "REMOTE";
    try {
      const j = JSON.parse(r.body) as { error?: { code: string; message: string } };
      if (j.error) ({ code, message: msg } = j.error);
    } catch {
      // not JSON: keep the text
    }
    if (r.status === 401) throw new CloudletError("REMOTE", `the cloudlet refused the token (401): check --token-file`);
    if (code === "WRONG_BASE") throw new CloudletError("WRONG_BASE", msg);
    throw new CloudletError("REMOTE", `${what} failed (${r.status} ${code}): ${msg}`);
  }

  /** Server name, version, bases and capacity. */
  async info(signal?: AbortSignal): Promise<ServerInfo> {
    const r = await this.request("GET", "/info", { signal });
    if (r.status !== 200) this.fail(r, "info");
    return JSON.parse(r.body) as ServerInfo;
  }

  /**
   * Creates a session; with `url`, the server fetches the overlay itself.
   * `earlyStart` (true, or "auto": the server decides) says this client serves
   * wants; a server that predates early start refuses the field, and is asked
   * again without it (the session then runs full pipelined synthesis).
   */
  async createSession(url?: string, signal?: AbortSignal, earlyStart?: boolean | "auto"): Promise<SessionStatus> {
    const body = (withEarly: boolean) => (url || withEarly ? JSON.stringify({ ...(url ? { url } : {}), ...(withEarly ? { earlyStart } : {}) }) : "");
    let r = await this.request("POST", "/sessions", { body: body(earlyStart !== undefined), headers: { "content-type": "application/json" }, signal });
    if (r.status === 400 && earlyStart !== undefined && /unknown field \\?"earlyStart/.test(r.body)) {
      r = await this.request("POST", "/sessions", { body: body(false), headers: { "content-type": "application/json" }, signal });
    }
    if (r.status !== 201) this.fail(r, "creating a session");
    return JSON.parse(r.body) as SessionStatus;
  }

  /** Sends segment `i` on its own (out of order); resolves true when the server took it, false when it held it already. */
  async putSegment(id: string, i: number, bytes: Uint8Array, signal?: AbortSignal): Promise<boolean> {
    const r = await this.request("PUT", `/sessions/${id}/segments/${i}`, { body: bytes, headers: { "content-type": "application/octet-stream", "content-length": String(bytes.length) }, signal });
    if (r.status !== 204 && r.status !== 200) this.fail(r, `sending segment ${i + 1}`);
    return r.status === 204;
  }

  /** Follows a session's wants (segments early start needs first) until the server ends the stream. */
  wants(id: string, onWant: (segment: number) => void, signal?: AbortSignal): Promise<void> {
    return this.ndjson(`/sessions/${id}/wants`, "wants", (j) => {
      const n = (j as { segment?: unknown }).segment;
      if (typeof n === "number" && Number.isSafeInteger(n) && n >= 0) onWant(n);
    }, signal);
  }

  /** Reads an NDJSON stream (blank lines are keep-alives); `onLine` returning true ends it. `quietMs`: fail when nothing, not even a keep-alive, arrives for this long. */
  private async ndjson(path: string, what: string, onLine: (j: unknown) => boolean | void, signal?: AbortSignal, quietMs?: number): Promise<void> {
    const r = await this.open("GET", path, { signal });
    if (r.status !== 200) {
      r.cancel();
      throw new CloudletError("REMOTE", `${what}: ${r.status}`);
    }
    let heard = Date.now();
    let quiet = false;
    const watch = quietMs
      ? setInterval(() => {
          if (Date.now() - heard <= quietMs) return;
          quiet = true;
          r.cancel();
        }, 250)
      : null;
    const silent = () => new CloudletError("REMOTE", `lost the cloudlet at ${this.addr.server}: nothing heard for ${Math.round(quietMs! / 1000)} s`);
    let buf = "";
    try {
      for await (const d of r.text) {
        heard = Date.now();
        buf += d;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.trim() && onLine(JSON.parse(line)) === true) return;
        }
      }
    } catch (e) {
      throw quiet ? silent() : this.transportError(e, "lost the connection to");
    } finally {
      if (watch) clearInterval(watch);
      r.cancel();
    }
    if (quiet) throw silent();
  }

  /** Sends the header and meta; the server refuses a wrong base here. */
  async sendMeta(id: string, headerAndMeta: Uint8Array, signal?: AbortSignal): Promise<SessionStatus> {
    const r = await this.request("PUT", `/sessions/${id}/meta`, { body: headerAndMeta, headers: { "content-type": "application/octet-stream", "content-length": String(headerAndMeta.length) }, signal });
    if (r.status !== 200) this.fail(r, "sending the meta");
    return JSON.parse(r.body) as SessionStatus;
  }

  /** Bytes of segment data the server holds (where an upload resumes). */
  async offset(id: string, signal?: AbortSignal): Promise<number> {
    const r = await this.request("HEAD", `/sessions/${id}/data`, { signal });
    if (r.status !== 200) this.fail(r, "asking for the upload offset");
    return Number(r.headers[OFFSET_HEADER]);
  }

  /** Streams segment data from `offset`; `chunks` yields it. Resolves with the server's new offset. */
  async upload(id: string, offset: number, chunks: AsyncIterable<Uint8Array>, signal?: AbortSignal, onRequest?: (req: http.ClientRequest) => void): Promise<number> {
    const r = await this.request("PATCH", `/sessions/${id}/data`, {
      headers: { "content-type": "application/octet-stream", [OFFSET_HEADER]: String(offset), "transfer-encoding": "chunked" },
      signal,
      stream: chunks,
      onRequest,
    });
    // The server holds more than this upload assumed (segments sent out of order meanwhile): continue where it says.
    if (r.status === 409 && /"OFFSET"/.test(r.body) && OFFSET_DIGITS.test(String(r.headers[OFFSET_HEADER]))) return Number(r.headers[OFFSET_HEADER]);
    if (r.status !== 204 && r.status !== 200) this.fail(r, "uploading segments");
    return Number(r.headers[OFFSET_HEADER]);
  }

  /** Follows a session's events until the server ends the stream or `onEvent` returns true; with `quietMs`, fails when the stream is silent that long. */
  events(id: string, onEvent: (e: SessionEvent) => boolean | void, signal?: AbortSignal, quietMs?: number): Promise<void> {
    return this.ndjson(`/sessions/${id}/events`, "events", (j) => onEvent(j as SessionEvent), signal, quietMs);
  }

  /** Session status. */
  async status(id: string, signal?: AbortSignal): Promise<SessionStatus> {
    const r = await this.request("GET", `/sessions/${id}`, { signal });
    if (r.status !== 200) this.fail(r, "status");
    return JSON.parse(r.body) as SessionStatus;
  }

  /** The server's sessions (GET /v1/sessions). */
  async sessions(signal?: AbortSignal): Promise<SessionStatus[]> {
    const r = await this.request("GET", "/sessions", { signal });
    if (r.status !== 200) this.fail(r, "listing the sessions");
    return (JSON.parse(r.body) as SessionListing).sessions;
  }

  /** Ends session `ref` (its id, a unique prefix, or its VM id) and returns its final status; a clear error if the server has no such session. */
  async stop(ref: string, signal?: AbortSignal): Promise<SessionStatus> {
    const r = await this.request("DELETE", `/sessions/${encodeURIComponent(ref)}`, { signal });
    if (r.status === 404) throw new CloudletError("BAD_ARGUMENT", `the cloudlet at ${this.host}:${this.port} has no session "${ref}" (see cloudlet ps)`);
    if (r.status !== 200) this.fail(r, "stopping the session");
    return JSON.parse(r.body) as SessionStatus;
  }

  /** Leaves a running session's VM running without keep-alives (until DELETE or the server's detached limit). */
  async detach(id: string, signal?: AbortSignal): Promise<SessionStatus> {
    const r = await this.request("POST", `/sessions/${id}/detach`, { signal });
    if (r.status !== 200) this.fail(r, "detaching");
    return JSON.parse(r.body) as SessionStatus;
  }

  /**
   * Holds a running session: renews its lease (a status request every third
   * of `leaseMs`) until `signal` aborts. Rejects if the session ends on the
   * server's side, or if the server cannot be reached for a whole lease.
   */
  async hold(id: string, leaseMs: number, signal: AbortSignal, state: "running" | "filling" = "running"): Promise<void> {
    const every = Math.max(500, Math.floor(leaseMs / 3));
    let lastOk = Date.now();
    while (!signal.aborted) {
      await new Promise<void>((r) => {
        const t = setTimeout(r, every);
        signal.addEventListener("abort", () => (clearTimeout(t), r()), { once: true });
      });
      if (signal.aborted) return;
      let st: SessionStatus;
      try {
        st = await this.status(id, signal);
      } catch (e) {
        if (signal.aborted) return;
        if (e instanceof CloudletError && /\(404 /.test(e.message)) throw new CloudletError("REMOTE", "the cloudlet no longer has this session");
        if (Date.now() - lastOk > leaseMs) throw new CloudletError("REMOTE", `lost the cloudlet for more than ${leaseMs / 1000} s${state === "filling" ? " while the VM was filling (early start)" : ""}; it has stopped the VM: ${(e as Error).message}`);
        continue;
      }
      lastOk = Date.now();
      if (st.state !== state && !(state === "filling" && st.state === "running")) throw new CloudletError("REMOTE", `the cloudlet ended the session (${st.state}${st.error ? `: ${st.error.message}` : ""})`);
    }
  }

  /** Finishes a session: the server tears the VM down. */
  async close(id: string, signal?: AbortSignal): Promise<void> {
    const r = await this.request("DELETE", `/sessions/${id}`, { signal });
    if (r.status !== 200 && r.status !== 404) this.fail(r, "closing the session");
  }
}

/** Header + meta of any overlay, as the packed layout's first bytes. */
export function packedHead(core: Core, overlay: OverlayReader, metaBytes: Uint8Array): Uint8Array {
  const dataOffset = HEADER_BYTES + metaBytes.length;
  const total = dataOffset + overlay.meta.segments.reduce((t, s) => t + s.compressedSize, 0);
  const out = new Uint8Array(dataOffset);
  out.set(encodePackHeader(core, { metaLength: metaBytes.length, dataOffset, totalLength: total }, false));
  out.set(metaBytes, HEADER_BYTES);
  return out;
}

/** Segment data from byte `offset` (relative to the first segment), read segment by segment. */
export async function* segmentData(overlay: OverlayReader, offset: number): AsyncGenerator<Uint8Array> {
  let pos = 0;
  for (let i = 0; i < overlay.meta.segments.length; i++) {
    const size = overlay.meta.segments[i].compressedSize;
    if (pos + size <= offset) {
      pos += size;
      continue;
    }
    const bytes = await overlay.segment(i);
    yield pos < offset ? bytes.subarray(offset - pos) : bytes;
    pos += size;
  }
}

/** One write of the in-order upload: small, so that it stops within a few ms (at 25 Mbit/s, 21 ms) when a want arrives. */
const PIECE_BYTES = 64 << 10;

/**
 * The longest the in-order upload pauses at a time for wanted segments: a
 * third of the lease, well inside the server's idle timeout (the lease) for
 * the paused request's connection. After it, one piece goes before the next pause.
 */
export function pauseBound(leaseMs: number): number {
  return Math.max(250, Math.floor(leaseMs / 3));
}

/**
 * Lets the in-order upload yield the link to wanted segments: {@link clear}
 * waits while a wanted segment's PUT is queued or in flight, for at most
 * `maxPauseMs` at a time, so that a burst of wants cannot starve the upload
 * or leave its request silent past the server's idle timeout.
 */
export class WantGate {
  private pending = 0;
  private waiters: Array<() => void> = [];
  /** Pauses so far, and the time spent in them (for tests and benches). */
  readonly stats = { pauses: 0, pausedMs: 0 };
  /** @param maxPauseMs the longest single pause */
  constructor(private readonly maxPauseMs: number) {}

  /** A wanted segment was queued. */
  begin(): void {
    this.pending++;
  }

  /** A wanted segment's PUT settled (taken, held already, or failed). */
  end(): void {
    if (--this.pending > 0) return;
    for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves at once when no want is pending; else when none is, after `maxPauseMs`, or on abort. */
  async clear(signal?: AbortSignal): Promise<void> {
    if (this.pending === 0 || signal?.aborted) return;
    const t0 = Date.now();
    this.stats.pauses++;
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        const k = this.waiters.indexOf(done);
        if (k >= 0) this.waiters.splice(k, 1);
        resolve();
      };
      const timer = setTimeout(done, this.maxPauseMs);
      signal?.addEventListener("abort", done, { once: true });
      this.waiters.push(done);
    });
    this.stats.pausedMs += Date.now() - t0;
  }
}

/**
 * Resets a request's connection (RST): the bytes its socket has not sent yet
 * are dropped, where closing would still send them. Returns false where the
 * runtime cannot (Deno, a TLS socket): the caller keeps the request.
 */
export function resetConnection(req: http.ClientRequest): boolean {
  const sock = req.socket as (Socket & { resetAndDestroy?: () => void }) | null;
  if (!sock || sock.destroyed || typeof sock.resetAndDestroy !== "function") return false;
  try {
    sock.resetAndDestroy();
    return true;
  } catch {
    return false;
  }
}

/** Options for {@link sendOverlay}. */
export interface SendOptions {
  core: Core;
  client: CloudletClient;
  /** The overlay to send, or null with `url`. */
  overlay: OverlayReader | null;
  /** The overlay's meta bytes (as in the file). */
  metaBytes?: Uint8Array;
  /** Let the server fetch the overlay from this URL instead. */
  url?: string;
  /**
   * Early start: true asks for it, "auto" (default) leaves it to the server
   * (it starts early when the overlay has a boot set), false never. This
   * client serves the server's wants either way.
   */
  earlyStart?: boolean | "auto";
  /** Told when the VM resumed early (before it is fully local). */
  onResumed?: (endpoint: Endpoint) => void;
  /** Upload progress: bytes of segment data sent. */
  progress?: ProgressFn;
  /** Server events. */
  onEvent?: (e: SessionEvent) => void;
  signal?: AbortSignal;
  /** Upload attempts after a cut connection. */
  retries?: number;
}

/** What {@link sendOverlay} returns once the VM runs (and, early started, is fully local). */
export interface SentOverlay {
  id: string;
  endpoint: Endpoint;
  leaseMs: number;
  /** The session started its VM early. */
  earlyStart: boolean;
  /** Why early start was asked for but did not run. */
  earlyStartFallback?: string;
  /** Segments sent out of order because the server wanted them first. */
  outOfOrder: number;
  /** Per wanted segment sent, ms from its want to the server's answer to its PUT (queueing included). */
  wantsServedMs: number[];
  /** In-order uploads this client cut (connection reset) to give the link to wanted segments. */
  uploadsCut: number;
}

/**
 * Sends an overlay and waits for the VM; returns the session id and endpoint.
 * Early started, it resolves once the VM is fully local (`onResumed` tells
 * when it answered): until then the VM needs this client's bytes.
 */
export async function sendOverlay(o: SendOptions): Promise<SentOverlay> {
  const { client } = o;
  // Ours, so that losing the cloudlet mid-fill stops every request at once.
  const stop = new AbortController();
  const signal = o.signal ? AbortSignal.any([o.signal, stop.signal]) : stop.signal;
  const session = await client.createSession(o.url, signal, o.earlyStart ?? "auto");
  const id = session.id;
  let outOfOrder = 0;
  const wantsServedMs: number[] = [];
  let uploadsCut = 0;
  // From the resume on, the session is held like a running one: keep-alives until fully local.
  const holdStop = new AbortController();
  let holding: Promise<void> | null = null;
  try {
    let endpoint: Endpoint | null = null;
    let failure: CloudletError | null = null;
    let early = false;
    let fallback: string | undefined;
    // The link is gone: the server stops the VM after its lease, since no byte and no keep-alive reaches it.
    const lostLink = (e: unknown) => new CloudletError("REMOTE", `${(e as Error).message}${early ? " while the VM was filling (early start); the cloudlet stops it after its lease" : ""}`);
    const onEvent = (e: SessionEvent) => {
      o.onEvent?.(e);
      if (e.type === "resumed") {
        early = true;
        holding ??= client.hold(id, session.leaseMs, AbortSignal.any([holdStop.signal, stop.signal]), "filling").catch((err) => {
          failure ??= err as CloudletError;
          stop.abort();
        });
        o.onResumed?.(e.endpoint);
      }
      if (e.type === "status") {
        early ||= e.status.earlyStart === true;
        fallback ??= e.status.earlyStartFallback;
      }
      if (e.type === "done") endpoint = e.endpoint;
      if (e.type === "error") failure = new CloudletError(e.code === "WRONG_BASE" ? "WRONG_BASE" : "REMOTE", `the cloudlet failed the session: ${e.message}`);
      return endpoint !== null || failure !== null;
    };
    // Silence on the event stream for a lease means the link is gone (the server sends keep-alive lines);
    // only servers that speak early start send them.
    const watching = client.events(id, onEvent, signal, session.earlyStart !== undefined ? session.leaseMs + 2000 : undefined);
    // The event stream going quiet (the link is gone) ends every request at once, with that as the reason.
    watching.catch((e) => {
      if (!o.signal?.aborted) failure ??= lostLink(e);
      stop.abort();
    });
    if (!o.url) {
      const overlay = o.overlay!;
      const st = await client.sendMeta(id, packedHead(o.core, overlay, o.metaBytes!), signal);
      early = st.earlyStart === true;
      fallback = st.earlyStartFallback;
      // Segments sent (or being sent) out of order: the in-order upload stops before one and resumes past it.
      const sent = new Map<number, Promise<boolean>>();
      // The in-order upload yields the link while a wanted segment is queued or in flight.
      const gate = new WantGate(pauseBound(session.leaseMs));
      // The in-order upload's request while it runs, and whether this client cut it for a want.
      let patching: http.ClientRequest | null = null;
      let cut = false;
      let wanting: Promise<void> = Promise.resolve();
      if (early) {
        let queue = Promise.resolve();
        wanting = client.wants(id, (i) => {
          // Sent by PUT even when the in-order upload wrote its bytes already: those may wait behind the
          // server's memory bound, which only synthesis taking this segment frees (the duplicate is dropped).
          if (sent.has(i)) return;
          gate.begin();
          // Pausing stops new bytes, but the socket still holds what it was given (its send buffer grows to
          // megabytes, over half a second at 25 Mbit/s) and shares the link with the PUT:
          // reset the connection to drop them. The server drops the cut segment's part; the next upload starts at its offset.
          if (patching && !cut) cut = resetConnection(patching);
          const wantedAt = Date.now();
          const p = (queue = queue.then(async () => {
            const ok = await client.putSegment(id, i, await overlay.segment(i), signal);
            if (ok) outOfOrder++;
            wantsServedMs.push(Date.now() - wantedAt);
          })).then(
            () => true,
            // Not taken (cut off, or the session ended): the in-order upload sends it.
            () => {
              sent.delete(i);
              return false;
            },
          );
          sent.set(i, p);
          void p.finally(() => gate.end());
        }, signal).catch(() => {});
      }
      const total = overlay.meta.segments.reduce((t, s) => t + s.compressedSize, 0);
      let offset = 0;
      for (let errors = 0; offset < total; ) {
        let sentBytes = offset;
        const counted = (async function* () {
          let pos = 0;
          for (let i = 0; i < overlay.meta.segments.length; i++) {
            const size = overlay.meta.segments[i].compressedSize;
            if (pos + size <= offset) {
              pos += size;
              continue;
            }
            // The server holds this one (or will): end here; the next upload starts where the server says.
            const out = sent.get(i);
            if (out && (await out)) return;
            const bytes = await overlay.segment(i);
            for (let k = pos < offset ? offset - pos : 0; k < bytes.length; k += PIECE_BYTES) {
              await gate.clear(signal);
              const piece = bytes.subarray(k, k + PIECE_BYTES);
              yield piece;
              sentBytes += piece.length;
              o.progress?.({ phase: "upload", done: sentBytes, total });
            }
            pos += size;
          }
        })();
        try {
          offset = await client.upload(id, offset, counted, signal, (req) => {
            patching = req;
            // Once answered, its connection may carry another request (keep-alive): never reset it then.
            const done = () => {
              if (patching === req) patching = null;
            };
            req.once("response", done).once("close", done);
          });
        } catch (e) {
          if (failure) throw failure;
          if (cut && !signal.aborted) {
            // Cut for a want: once the wanted segments are sent, continue where the server is.
            cut = false;
            uploadsCut++;
            await gate.clear(signal);
          } else {
            if (signal.aborted || ++errors > (o.retries ?? 5)) throw e;
            await new Promise((r) => setTimeout(r, 300 * errors));
          }
          const before = offset;
          try {
            offset = await client.offset(id, signal);
          } catch (e2) {
            // As an upload's failure (a kept-alive connection the server closed meanwhile, say): with the offset
            // as it was, the next upload is told the server's (409) if it moved.
            if (failure) throw failure;
            if (signal.aborted || ++errors > (o.retries ?? 5)) throw e2;
            continue;
          }
          // Retries count failures in a row: an attempt that moved the server's offset was progress.
          if (offset > before) errors = 0;
        }
      }
      void wanting;
    }
    try {
      await watching;
    } catch (e) {
      if (failure) throw failure;
      if (o.signal?.aborted) throw e;
      throw lostLink(e);
    }
    if (failure) throw failure;
    if (!endpoint) {
      const st = await client.status(id, o.signal);
      if (st.error) throw new CloudletError("REMOTE", `the cloudlet failed the session: ${st.error.message}`);
      throw new CloudletError("REMOTE", `the session ended in state ${st.state} without a VM`);
    }
    return { id, endpoint, leaseMs: session.leaseMs, earlyStart: early, ...(fallback ? { earlyStartFallback: fallback } : {}), outOfOrder, uploadsCut, wantsServedMs };
  } catch (e) {
    stop.abort();
    // Bounded: over a dead link the request would hang; the server ends the session on its lease then.
    await client.close(id, AbortSignal.timeout(3000)).catch(() => {});
    throw e;
  } finally {
    holdStop.abort();
    await holding;
    stop.abort();
  }
}
