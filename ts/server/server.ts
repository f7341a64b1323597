/**
 * SynthesisServer: accepts overlays over HTTP/1.1 and turns them into
 * running VMs, pipelined: segments are decoded and applied while the rest of
 * the overlay is still arriving, and the VM resumes as soon as the last
 * chunk is applied.
 *
 * Security: every request needs the bearer token; the default listen address
 * is loopback; sizes, session counts and times are limited; nothing from the
 * wire becomes a file path (session ids are ours, checked against a strict
 * pattern, and only used as map keys).
 */
import { clearInterval, setInterval, setTimeout } from "node:timers";
import { randomBytes, timingSafeEqual } from "node:crypto";
import { promises as fsp } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import type { AddressInfo, Socket } from "node:net";
import { join } from "node:path";
import type { Core } from "../core/core.ts";
import { charsToTellApart } from "../core/ids.ts";
import { CloudletError, isCloudletError } from "../errors.ts";
import { decodePackedHead, HEADER_BYTES, type OverlayMeta } from "../overlay/format.ts";
import { checkBase } from "../overlay/synthesis.ts";
import type { ProgressFn } from "../overlay/io.ts";
import type { OverlayReader } from "../overlay/reader.ts";
import { API, type Endpoint, LENGTH_HEADER, OFFSET_HEADER, type ServerInfo, type SessionEvent, type SessionState, type SessionStatus } from "./protocol.ts";
import { UploadFeed } from "./upload_feed.ts";
import { openUrlOverlay } from "./url_source.ts";

/** A base the server can synthesize on. */
export interface ServedBase {
  id: string;
  name: string;
  disk: string;
  memory: string;
  /** Prepared digests/index directory. */
  dir: string;
  diskSize: number;
  memorySize: number;
  machine: string;
}

/** A VM the backend launched for a session. */
export interface LaunchedVm {
  vmId: string;
  ports: Endpoint["ports"];
  /** Ends the VM and removes what it created. */
  stop(): Promise<void>;
}

/** A session's rebuilt VM files, as the backend made them (the server only passes them back to {@link ServerBackend.launch}). */
export interface SessionFiles {
  /** The folder that holds them. */
  readonly dir: string;
}

/**
 * What the server needs from the host: the home (its lock and the sessions'
 * folders), bases, synthesis and VM launches. The server reaches the engine
 * only through this port.
 */
export interface ServerBackend {
  /** Takes the home for this server (one server per home: a second one would take the first one's VMs for orphans); resolves to the release. */
  lockHome(): Promise<() => Promise<void>>;
  /** Kills VMs and removes files that a crashed server left behind. */
  cleanupOrphans(): Promise<string[]>;
  /** Empties the folder that holds the sessions' files. */
  resetSessions(): Promise<void>;
  /** The folder of session `id` (an id the server made, never one from the wire). */
  sessionDir(id: string): string;
  /** Bases served. */
  bases(): Promise<ServedBase[]>;
  /** Starts what synthesis needs (codec workers) so the first session does not wait for it. */
  warm(): void;
  /** Rebuilds a session's VM files from its base and the overlay as it arrives (pipelined), verifying everything. */
  synthesize(base: ServedBase, sessionId: string, overlay: OverlayReader, o: { signal: AbortSignal; progress: ProgressFn }): Promise<SessionFiles>;
  /** Why early start cannot run for this overlay here, or null when it can; absent when the backend has no early start. */
  earlyBlocker?(meta: OverlayMeta): Promise<string | null>;
  /**
   * Early start: resumes the session's VM lazily while the overlay arrives
   * (`onResumed` says when the guest runs) and resolves once it is fully local.
   * On failure or abort the VM is killed and its files removed before it rejects.
   */
  synthesizeEarly?(base: ServedBase, sessionId: string, overlay: OverlayReader, o: { signal: AbortSignal; bindAddress: string; bootSegments: number; onResumed: (vm: LaunchedVm) => void }): Promise<void>;
  /** Launches the synthesized files as a VM (port forwards on `bindAddress`, fresh host ports). */
  launch(base: ServedBase, files: SessionFiles, sessionId: string, bindAddress: string, signal: AbortSignal): Promise<LaunchedVm>;
  /** Releases what the backend holds (codec workers). */
  close(): Promise<void>;
}

/** Server settings. */
export interface ServerOptions {
  core: Core;
  backend: ServerBackend;
  /** Listen host and port. */
  host: string;
  port: number;
  /** Bearer token clients must present. */
  token: string;
  /** TLS key and certificate (PEM), to serve HTTPS. */
  tls?: { key: Buffer; cert: Buffer };
  /** Most sessions at once. */
  maxSessions?: number;
  /** Largest meta accepted, bytes. */
  maxMetaBytes?: number;
  /** Largest overlay accepted (meta + segments), bytes. */
  maxOverlayBytes?: number;
  /** Accept `{url}` sessions, where the server itself fetches the overlay (default true). */
  allowUrl?: boolean;
  /** A session waiting on its client (bytes, or keep-alives once running) with no request for this long fails, ms. */
  idleMs?: number;
  /** A session must be running within this long of its creation, ms. */
  sessionMs?: number;
  /** A detached VM is stopped this long after its client detached, ms (0: never). */
  detachedMs?: number;
  /** Name announced to clients. */
  name?: string;
  /** Version reported. */
  version?: string;
  /** Log lines (default: stderr). */
  log?: (line: string) => void;
  /**
   * Early start for clients that serve wants (they say so when creating the
   * session): "auto" (default) starts early when the client asks, or leaves it
   * to the server and the overlay has a boot set; "off" never does.
   */
  earlyStart?: "auto" | "off";
  /** Serves non-API paths (the phone page, ts/server/client_page.ts); without it they need the token like the API. */
  page?: (req: http.IncomingMessage, res: http.ServerResponse) => boolean;
}

/** A session id or a prefix of one (or a VM id): lower-case hex only, so nothing from the wire reaches a path. */
const ID_PREFIX_RE = /^[0-9a-f]{1,32}$/;
/** Time a connection has to send its first request's headers, ms (docs/protocol.md, Limits). */
const HEADERS_MS = 10_000;
/** A segment index in a path: decimal digits only. */
const SEGMENT_RE = /^[0-9]{1,9}$/;
/** An Upload-Offset value: decimal digits only (no sign, exponent, hex or blanks). */
const OFFSET_RE = /^[0-9]{1,16}$/;

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** One synthesis session; see docs/protocol.md for its state machine. */
class Session {
  state: SessionState = "created";
  meta: OverlayMeta | null = null;
  base: ServedBase | null = null;
  feed: UploadFeed | null = null;
  applied = 0;
  endpoint: Endpoint | null = null;
  error: { code: string; message: string } | null = null;
  vm: LaunchedVm | null = null;
  readonly abort = new AbortController();
  readonly listeners = new Set<(e: SessionEvent) => void>();
  lastActivity = Date.now();
  readonly created = Date.now();
  firstByteAt = 0;
  work: Promise<void> | null = null;
  detachedAt = 0;
  /** For `{url}` sessions: the overlay's URL (the server, not the client, moves the bytes). */
  url: string | null = null;
  /** For `{url}` sessions: fetches one segment by range (wanted segments). */
  fetchSegment: ((i: number) => Promise<Uint8Array>) | null = null;
  /** What the client asked for: early start on, off, or left to the server (null: an old client, which serves no wants). */
  earlyRequest: boolean | "auto" | null = null;
  /** Whether this session starts early, and if not while asked to, why. */
  early = false;
  earlyFallback: string | null = null;
  /** Open wants streams (GET .../wants). */
  readonly wantListeners = new Set<(i: number | null) => void>();
  /** Segments sent out of order (PUT .../segments/N, or fetched by range for a URL). */
  outOfOrder = 0;

  /** @param id session id @param dir its temp dir @param host the address its client reaches this server at */
  constructor(
    readonly id: string,
    readonly dir: string,
    readonly host: string,
    readonly leaseMs: number,
  ) {}

  status(): SessionStatus {
    return {
      id: this.id,
      state: this.state,
      received: this.feed?.offset ?? 0,
      expected: this.feed?.expected ?? 0,
      applied: this.applied,
      baseId: this.meta?.base.id ?? null,
      endpoint: this.endpoint,
      error: this.error,
      leaseMs: this.leaseMs,
      detached: this.detachedAt > 0,
      earlyStart: this.early,
      ...(this.earlyFallback ? { earlyStartFallback: this.earlyFallback } : {}),
      outOfOrder: this.outOfOrder,
    };
  }

  emit(e: SessionEvent): void {
    for (const l of this.listeners) l(e);
  }

  get terminal(): boolean {
    return this.state === "failed" || this.state === "closed";
  }

  /** True while the session waits on its client: for the meta, for segment bytes, or (running, attached) for keep-alives. */
  get waitingOnClient(): boolean {
    if (this.state === "created") return true;
    if (this.state === "receiving") return !this.feed?.complete;
    // A filling VM is held like a running one: by its client's bytes and keep-alives (it cannot be detached yet).
    if (this.state === "filling") return true;
    return this.state === "running" && this.detachedAt === 0;
  }
}

/** The synthesis server. */
export class SynthesisServer {
  private readonly sessions = new Map<string, Session>();
  private server: http.Server | https.Server | null = null;
  private sweeper: ReturnType<typeof setInterval> | null = null;
  private unlock: (() => Promise<void>) | null = null;
  /** Session slots taken by create requests still reading their body (counted against --max-sessions). */
  private reserved = 0;
  /** Connections that have not yet sent a request's headers, oldest first, by remote address:port. */
  private readonly awaitingHeaders = new Map<string, { sock: Socket; timer: ReturnType<typeof setTimeout> }>();
  private readonly o: Required<Omit<ServerOptions, "tls" | "page">> & Pick<ServerOptions, "tls" | "page">;

  /** @param opts settings */
  constructor(opts: ServerOptions) {
    this.o = {
      maxSessions: 4,
      maxMetaBytes: 16 << 20,
      maxOverlayBytes: 64 * 2 ** 30,
      allowUrl: true,
      idleMs: 60_000,
      sessionMs: 30 * 60_000,
      detachedMs: 24 * 3600_000,
      earlyStart: "auto",
      name: "cloudlet",
      version: "0.0.0",
      log: (l) => process.stderr.write(l + "\n"),
      ...opts,
    };
  }

  /** Address actually listened on. */
  address(): AddressInfo {
    return this.server!.address() as AddressInfo;
  }

  /** Cleans up after a crashed run, then listens. */
  async start(): Promise<void> {
    this.unlock = await this.o.backend.lockHome();
    const orphans = await this.o.backend.cleanupOrphans();
    if (orphans.length) this.o.log(`cleaned up after an earlier run: ${orphans.join(", ")}`);
    await this.o.backend.resetSessions();
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
      this.headersArrived(req.socket);
      this.handle(req, res).catch((e) => this.o.log(`request failed: ${(e as Error).stack ?? e}`));
    };
    // Check header/request deadlines every second (Node's default is every 30 s).
    const base = { connectionsCheckingInterval: 1000 };
    const srv = this.o.tls ? https.createServer({ ...base, key: this.o.tls.key, cert: this.o.tls.cert }, handler) : http.createServer(base, handler);
    // Slowloris: headers must arrive promptly; bodies are policed per session (idle timer).
    srv.headersTimeout = HEADERS_MS;
    srv.requestTimeout = 0;
    srv.keepAliveTimeout = 5_000;
    srv.maxHeadersCount = 64;
    srv.maxConnections = this.o.maxSessions * 4 + 16;
    // One address may hold only a share of the connections, so that clients
    // without a token cannot take every slot by reconnecting.
    const perAddress = new Map<string, number>();
    const perAddressMax = Math.max(8, this.o.maxSessions * 3);
    // Connections that have sent no headers yet hold at most half of all slots, from any
    // number of addresses: a new one evicts the oldest silent one, so silent sockets
    // cannot fill maxConnections and shut out clients that do send a request.
    const silentMax = Math.max(8, Math.floor(srv.maxConnections / 2));
    srv.on("connection", (sock: Socket) => {
      const from = sock.remoteAddress ?? "?";
      const n = (perAddress.get(from) ?? 0) + 1;
      if (n > perAddressMax) return sock.destroy();
      perAddress.set(from, n);
      const key = `${from}|${sock.remotePort}`;
      if (this.awaitingHeaders.size >= silentMax) {
        const [oldest, w] = this.awaitingHeaders.entries().next().value!;
        clearTimeout(w.timer);
        this.awaitingHeaders.delete(oldest);
        w.sock.destroy();
      }
      // Node's headersTimeout is checked only on connections that sent something; this bound holds for silent ones too.
      const timer = setTimeout(() => sock.destroy(), HEADERS_MS);
      timer.unref();
      this.awaitingHeaders.set(key, { sock, timer });
      sock.once("close", () => {
        const left = (perAddress.get(from) ?? 1) - 1;
        if (left > 0) perAddress.set(from, left);
        else perAddress.delete(from);
        this.headersArrived(sock);
      });
      sock.setTimeout(this.o.idleMs, () => sock.destroy());
    });
    this.server = srv;
    await new Promise<void>((resolve, reject) => {
      srv.once("error", reject);
      srv.listen(this.o.port, this.o.host, () => resolve());
    }).catch(async (e) => {
      await this.unlock?.();
      if ((e as NodeJS.ErrnoException).code === "EADDRINUSE") throw new CloudletError("CONFLICT", `${this.o.host}:${this.o.port} is in use: stop what listens there, or give --listen another port`, undefined, { cause: e });
      throw e;
    });
    this.sweeper = setInterval(() => this.sweep(), 1000);
    this.sweeper.unref();
    this.o.backend.warm();
  }

  /** A request's headers arrived on this connection (or it closed): it is no longer silent. Keyed by address:port, which a TLS socket shares with its TCP socket. */
  private headersArrived(sock: Socket | null | undefined): void {
    if (!sock) return;
    const key = `${sock.remoteAddress ?? "?"}|${sock.remotePort}`;
    const w = this.awaitingHeaders.get(key);
    if (!w) return;
    clearTimeout(w.timer);
    this.awaitingHeaders.delete(key);
  }

  /** Stops listening and ends every session. */
  async stop(): Promise<void> {
    if (this.sweeper) clearInterval(this.sweeper);
    await Promise.allSettled([...this.sessions.values()].map((s) => this.close(s, "closed")));
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    this.server?.closeAllConnections?.();
    await this.o.backend.close();
    await this.unlock?.();
    this.unlock = null;
  }

  private sweep(): void {
    const now = Date.now();
    for (const s of this.sessions.values()) {
      if (s.terminal) continue;
      if (s.waitingOnClient && now - s.lastActivity > this.o.idleMs) {
        const why =
          s.state === "running" ? `the client sent no keep-alive for ${this.o.idleMs / 1000} s (session idle); VM stopped`
          : s.state === "filling" ? `the client sent nothing (no segment, no keep-alive) for ${this.o.idleMs / 1000} s while its VM was filling (early start); VM stopped`
          : s.url ? `${s.url} sent nothing for more than ${this.o.idleMs / 1000} s`
          : `session idle for more than ${this.o.idleMs / 1000} s`;
        this.failSession(s, new CloudletError("REMOTE", why));
      } else if (s.state !== "running" && now - s.created > this.o.sessionMs) {
        this.failSession(s, new CloudletError("REMOTE", `session not running within ${this.o.sessionMs / 1000} s`));
      } else if (s.detachedAt && this.o.detachedMs > 0 && now - s.detachedAt > this.o.detachedMs) {
        this.failSession(s, new CloudletError("REMOTE", `detached VM reached its limit of ${this.o.detachedMs / 1000} s; VM stopped`));
      }
    }
  }

  private authorized(req: http.IncomingMessage): boolean {
    const h = req.headers.authorization ?? "";
    const m = /^Bearer (\S+)$/.exec(h);
    if (!m) return false;
    const a = Buffer.from(m[1]);
    const b = Buffer.from(this.o.token);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    // Node detaches req.socket once the response finishes; the error path below closes it after that.
    const sock = req.socket as Socket | null;
    if (this.o.page?.(req, res)) return;
    try {
      if (!this.authorized(req)) {
        // No keep-alive for a client without a token.
        res.setHeader("connection", "close");
        throw new HttpError(401, "UNAUTHORIZED", "a valid bearer token is required");
      }
      const url = new URL(req.url ?? "/", "http://x");
      const parts = url.pathname.split("/").filter(Boolean);
      if (`/${parts[0]}` !== API) throw new HttpError(404, "NOT_FOUND", "unknown path");
      if (parts[1] === "info" && parts.length === 2 && req.method === "GET") return this.json(res, 200, await this.info());
      if (parts[1] !== "sessions") throw new HttpError(404, "NOT_FOUND", "unknown path");
      if (parts.length === 2 && req.method === "POST") return this.json(res, 201, (await this.create(req)).status());
      if (parts.length === 2 && req.method === "GET") return this.json(res, 200, { sessions: [...this.sessions.values()].map((x) => x.status()) });
      const s = this.findSession(parts[2] ?? "");
      s.lastActivity = Date.now();
      const sub = parts[3] ?? "";
      if (parts.length > (sub === "segments" ? 5 : 4)) throw new HttpError(404, "NOT_FOUND", "unknown path");
      if (sub === "" && req.method === "GET") return this.json(res, 200, s.status());
      if (sub === "" && req.method === "DELETE") {
        await this.close(s, "closed");
        return this.json(res, 200, s.status());
      }
      if (sub === "meta" && req.method === "PUT") return this.json(res, 200, (await this.acceptMeta(s, await this.body(req, this.o.maxMetaBytes + HEADER_BYTES))).status());
      if (sub === "detach" && req.method === "POST") {
        if (s.state === "filling") throw new HttpError(409, "STATE", "the VM is still filling (early start): it needs this session's overlay until it is fully local; detach once the session is running");
        if (s.state !== "running") throw new HttpError(409, "STATE", `session is ${s.state}; only a running session can be detached`);
        s.detachedAt ||= Date.now();
        this.o.log(`session ${s.id}: detached`);
        return this.json(res, 200, s.status());
      }
      if (sub === "data" && req.method === "HEAD") return this.offsetHeaders(res, s, 200);
      if (sub === "data" && req.method === "PATCH") return await this.upload(s, req, res);
      if (sub === "events" && req.method === "GET") return this.events(s, res);
      if (sub === "wants" && req.method === "GET") return this.wants(s, res);
      if (sub === "segments" && req.method === "PUT") return await this.putSegment(s, parts[4] ?? "", req, res);
      throw new HttpError(405, "METHOD", "method not allowed here");
    } catch (e) {
      if (res.headersSent || res.destroyed) {
        res.destroy();
        return;
      }
      const he =
        e instanceof HttpError ? e
        : isCloudletError(e) ? new HttpError(e.code === "WRONG_BASE" ? 409 : e.code === "BAD_META" || e.code === "TRUNCATED" ? 400 : 422, e.code, e.message)
        : new HttpError(500, "INTERNAL", (e as Error).message);
      if (he.status === 500) this.o.log(`internal error: ${(e as Error).stack}`);
      // Do not read an unwanted body: close the connection once the answer is out.
      if (!req.complete) {
        res.setHeader("connection", "close");
        closeAfterAnswer(sock, res);
      }
      this.json(res, he.status, { error: { code: he.code, message: he.message } });
    }
  }

  /** The session a path names: its id, a unique prefix of it (as `cloudlet ps` and `stop` take), or its VM's id. */
  private findSession(ref: string): Session {
    if (!ID_PREFIX_RE.test(ref)) throw new HttpError(404, "NOT_FOUND", "no such session");
    const exact = this.sessions.get(ref) ?? [...this.sessions.values()].find((x) => x.vm?.vmId === ref);
    if (exact) return exact;
    const hits = [...this.sessions.keys()].filter((id) => id.startsWith(ref));
    if (hits.length > 1) throw new HttpError(409, "AMBIGUOUS", `"${ref}" is the start of ${hits.length} session ids; give at least ${charsToTellApart(hits)} characters`);
    if (hits.length === 0) throw new HttpError(404, "NOT_FOUND", "no such session");
    return this.sessions.get(hits[0])!;
  }

  private json(res: http.ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    res.end(text);
  }

  private offsetHeaders(res: http.ServerResponse, s: Session, status: number): void {
    res.writeHead(status, { [OFFSET_HEADER]: String(s.feed?.offset ?? 0), [LENGTH_HEADER]: String(s.feed?.expected ?? 0), "content-length": 0 });
    res.end();
  }

  /** Reads a whole (small) body, refusing more than `max` bytes before buffering them. */
  private async body(req: http.IncomingMessage, max: number): Promise<Uint8Array> {
    const declared = Number(req.headers["content-length"] ?? NaN);
    if (declared > max) throw new HttpError(413, "TOO_LARGE", `body of ${declared} bytes exceeds the limit of ${max}`);
    const parts: Buffer[] = [];
    let n = 0;
    // Not `for await`: leaving that loop destroys the request, and with it the socket the 413 must go out on.
    const it = (req as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    for (let r = await it.next(); !r.done; r = await it.next()) {
      n += r.value.length;
      if (n > max) throw new HttpError(413, "TOO_LARGE", `body exceeds the limit of ${max} bytes`);
      parts.push(r.value);
    }
    return new Uint8Array(Buffer.concat(parts));
  }

  private async info(): Promise<ServerInfo> {
    const bases = await this.o.backend.bases();
    return {
      name: this.o.name,
      version: this.o.version,
      bases: bases.map((b) => ({ id: b.id, name: b.name, diskSize: b.diskSize, memorySize: b.memorySize, machine: b.machine })),
      sessions: { active: [...this.sessions.values()].filter((s) => !s.terminal).length, max: this.o.maxSessions },
    };
  }

  private async create(req: http.IncomingMessage): Promise<Session> {
    // The slot is taken before the body is read (a slow body must not let more sessions in than --max-sessions).
    const active = [...this.sessions.values()].filter((s) => !s.terminal).length + this.reserved;
    if (active >= this.o.maxSessions) throw new HttpError(503, "BUSY", `the cloudlet is busy (${active} of ${this.o.maxSessions} sessions); try again later`);
    this.reserved++;
    try {
      const { url, earlyStart } = this.sessionRequest(await this.body(req, 4096));
      const id = randomBytes(16).toString("hex");
      const s = new Session(id, this.o.backend.sessionDir(id), this.reachableHost(req), this.o.idleMs);
      await fsp.mkdir(s.dir, { recursive: true });
      s.earlyRequest = earlyStart;
      this.sessions.set(id, s);
      this.o.log(`session ${id}: created${url ? ` (fetching ${url})` : ""}`);
      if (url) {
        s.url = url;
        s.work = this.fromUrl(s, url).catch((e) => this.failSession(s, e));
      }
      return s;
    } finally {
      this.reserved--;
    }
  }

  /** Checks a create request's body: empty, `{}`, or an object with `url` ("http(s)://...") and/or `earlyStart` (true, false or "auto"). */
  private sessionRequest(raw: Uint8Array): { url: string | null; earlyStart: boolean | "auto" | null } {
    if (!raw.length) return { url: null, earlyStart: null };
    let j: unknown;
    try {
      j = JSON.parse(new TextDecoder().decode(raw));
    } catch {
      throw new HttpError(400, "BAD_REQUEST", "session request must be JSON");
    }
    if (j === null || typeof j !== "object" || Array.isArray(j)) throw new HttpError(400, "BAD_REQUEST", `session request must be a JSON object ({} or {"url": "..."}), not ${j === null ? "null" : Array.isArray(j) ? "an array" : `a ${typeof j}`}`);
    const extra = Object.keys(j).filter((k) => k !== "url" && k !== "earlyStart");
    if (extra.length) throw new HttpError(400, "BAD_REQUEST", `session request has unknown field ${JSON.stringify(extra[0])} (only "url" and "earlyStart" are accepted)`);
    const es = (j as { earlyStart?: unknown }).earlyStart;
    if (es !== undefined && es !== true && es !== false && es !== "auto") throw new HttpError(400, "BAD_REQUEST", `earlyStart must be true, false or "auto", not ${JSON.stringify(es)?.slice(0, 40)}`);
    const earlyStart = es === undefined ? null : (es as boolean | "auto");
    const u = (j as { url?: unknown }).url;
    if (u === undefined) return { url: null, earlyStart };
    if (!this.o.allowUrl) throw new HttpError(403, "URL_DISABLED", "this cloudlet does not fetch overlays by URL (started with --no-url); upload the overlay instead");
    if (typeof u !== "string" || !/^https?:\/\//.test(u) || u.length > 2048) throw new HttpError(400, "BAD_REQUEST", "url must be an http(s) URL");
    return { url: u, earlyStart };
  }

  /**
   * The address to tell a client its VM is at: the listen address, or when
   * listening on every address, the one this client's connection came in on.
   */
  private reachableHost(req: http.IncomingMessage): string {
    if (this.o.host !== "0.0.0.0" && this.o.host !== "::") return this.o.host;
    const local = req.socket.localAddress ?? "127.0.0.1";
    return local.startsWith("::ffff:") ? local.slice(7) : local;
  }

  /** The meta step: the packed header plus meta. A wrong base is refused here, before any segment. */
  private async acceptMeta(s: Session, bytes: Uint8Array): Promise<Session> {
    if (s.state !== "created" || s.meta) throw new HttpError(409, "STATE", `session is ${s.state}; the meta was already sent`);
    const name = `session ${s.id}`;
    // The one packed-head rule (format.ts): the meta fills the header's meta
    // length exactly, and the segment table agrees with the declared total, which the limit below is on.
    const { header: h, meta } = decodePackedHead(this.o.core, bytes.subarray(0, HEADER_BYTES), bytes.subarray(HEADER_BYTES), name);
    if (h.totalLength > this.o.maxOverlayBytes) throw new HttpError(413, "TOO_LARGE", `overlay of ${h.totalLength} bytes exceeds the limit of ${this.o.maxOverlayBytes}`);
    const base = (await this.o.backend.bases()).find((b) => b.id === meta.base.id);
    if (!base) throw new CloudletError("WRONG_BASE", `this cloudlet has no base ${meta.base.id} (the overlay's base); it has: ${(await this.o.backend.bases()).map((b) => `${b.name} ${b.id.slice(0, 12)}`).join(", ") || "none"}`, name);
    checkBase(meta, base.id, name);
    // The session may have been closed, or sent another meta, while the registry was read.
    if (s.state !== "created" || s.meta) throw new HttpError(409, "STATE", `session is ${s.state}; the meta was already sent or the session ended`);
    s.meta = meta;
    s.base = base;
    s.feed = new UploadFeed(this.o.core, meta, name);
    await this.decideEarly(s, meta);
    if (s.state !== "created") throw new HttpError(409, "STATE", `session is ${s.state}; the session ended`);
    s.state = "receiving";
    s.emit({ type: "status", status: s.status() });
    s.work = (s.early ? this.synthesizeEarly(s) : this.synthesizeAndLaunch(s)).catch((e) => this.failSession(s, e));
    return s;
  }

  /** Turns a failed segment upload (in order or one PUT) into its answer; a corrupt segment ends the session now, with its cause, whatever the client does next. */
  private uploadFailed(s: Session, e: unknown): never {
    if (isCloudletError(e) && e.code === "CORRUPT_SEGMENT") {
      this.failSession(s, e);
      throw e;
    }
    if (s.terminal) throw new HttpError(409, "STATE", `session is ${s.state}${s.error ? `: ${s.error.message}` : ""}`);
    if (isCloudletError(e) && e.code === "REMOTE") throw new HttpError(400, "BAD_UPLOAD", e.message);
    throw e;
  }

  private async upload(s: Session, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if ((s.state !== "receiving" && s.state !== "filling") || !s.feed) throw new HttpError(409, "STATE", `session is ${s.state}; segments are accepted only after the meta and before launch`);
    const rawOffset = req.headers[OFFSET_HEADER];
    if (typeof rawOffset !== "string" || !OFFSET_RE.test(rawOffset) || !Number.isSafeInteger(Number(rawOffset))) {
      throw new HttpError(400, "BAD_REQUEST", `${OFFSET_HEADER} header must be a byte offset (decimal digits), got ${rawOffset === undefined ? "none" : JSON.stringify(String(rawOffset).slice(0, 40))}`);
    }
    const offset = Number(rawOffset);
    if (offset !== s.feed.offset) {
      const sock = req.socket;
      res.writeHead(409, { [OFFSET_HEADER]: String(s.feed.offset), "content-type": "application/json", connection: "close" });
      closeAfterAnswer(sock, res);
      res.end(JSON.stringify({ error: { code: "OFFSET", message: `resume at offset ${s.feed.offset}` } }));
      return;
    }
    s.firstByteAt ||= Date.now();
    const feed = s.feed;
    let bytes = 0;
    const counted = (async function* (src: AsyncIterable<Buffer>) {
      for await (const c of src) {
        s.lastActivity = Date.now();
        bytes += c.byteLength;
        yield new Uint8Array(c.buffer, c.byteOffset, c.byteLength);
      }
    })(req as AsyncIterable<Buffer>);
    try {
      await feed.ingest(counted, offset);
    } catch (e) {
      this.uploadFailed(s, e);
    }
    // Deno's node:http does not set req.complete; a body that reached its declared length is complete too.
    const declared = Number(req.headers["content-length"] ?? NaN);
    this.offsetHeaders(res, s, req.complete || bytes === declared ? 204 : 200);
  }

  /**
   * Early start or not, decided at the meta step: only for a client that said
   * it serves wants (or a URL session, where the server fetches them), when
   * the backend can, and the client asked or left it to a server that sees a boot set.
   */
  private async decideEarly(s: Session, meta: OverlayMeta): Promise<void> {
    const asked = s.earlyRequest;
    if (asked === null || asked === false) return;
    const boot = bootSegmentCount(meta);
    if (asked === "auto" && boot === 0) return;
    const why =
      this.o.earlyStart === "off" ? "this cloudlet runs with --no-early-start"
      : !this.o.backend.synthesizeEarly || !this.o.backend.earlyBlocker ? "this cloudlet's backend has no early start"
      : await this.o.backend.earlyBlocker(meta);
    if (why) {
      // Asked for explicitly: say why it runs as full pipelined synthesis instead.
      if (asked === true) {
        s.earlyFallback = why;
        this.o.log(`session ${s.id}: early start cannot run (${why}); full pipelined synthesis`);
      }
      return;
    }
    s.early = true;
  }

  /** Early start: the VM resumes on the boot set and state while the rest arrives; wanted segments are asked for out of order. */
  private async synthesizeEarly(s: Session): Promise<void> {
    const base = s.base!;
    const feed = s.feed!;
    const t0 = Date.now();
    feed.onWant = (i) => {
      this.o.log(`session ${s.id}: wants segment ${i + 1}`);
      for (const l of s.wantListeners) l(i);
      if (s.fetchSegment) void this.fetchWanted(s, i);
    };
    const bind = this.o.host === "::" ? "0.0.0.0" : this.o.host;
    await this.o.backend.synthesizeEarly!(base, s.id, feed, {
      signal: s.abort.signal,
      bindAddress: bind,
      bootSegments: bootSegmentCount(feed.meta),
      onResumed: (vm) => {
        if (s.terminal) return;
        s.vm = vm;
        s.endpoint = { vmId: vm.vmId, host: s.host, ports: vm.ports, ms: { synthesis: Date.now() - (s.firstByteAt || t0), launch: 0 } };
        s.state = "filling";
        s.lastActivity = Date.now();
        this.o.log(`session ${s.id}: VM ${vm.vmId} resumed early, filling; ports ${vm.ports.map((p) => `${bind}:${p.hostPort}->${p.guestPort}`).join(" ")}`);
        s.emit({ type: "resumed", endpoint: s.endpoint });
        s.emit({ type: "status", status: s.status() });
      },
    });
    if (s.terminal) {
      await s.vm?.stop();
      return;
    }
    s.endpoint = { ...s.endpoint!, ms: { ...s.endpoint!.ms, local: Date.now() - (s.firstByteAt || t0) } };
    s.state = "running";
    s.lastActivity = Date.now();
    for (const l of s.wantListeners) l(null);
    this.o.log(`session ${s.id}: VM ${s.vm!.vmId} fully local (${s.outOfOrder} segments sent out of order)`);
    s.emit({ type: "done", endpoint: s.endpoint });
  }

  /** A `{url}` session's wanted segment: fetched by range beside the in-order download. */
  private async fetchWanted(s: Session, i: number): Promise<void> {
    for (let attempt = 0; attempt < 3 && !s.terminal && !s.feed!.has(i); attempt++) {
      try {
        const bytes = await s.fetchSegment!(i);
        const fresh = await s.feed!.put(i, (async function* () { yield bytes; })());
        if (fresh) s.outOfOrder++;
        this.o.log(`session ${s.id}: fetched wanted segment ${i + 1} by range${fresh ? "" : " (the in-order download had brought it first)"}`);
        return;
      } catch (e) {
        if (s.terminal || s.feed!.failed) return;
        this.o.log(`session ${s.id}: fetching wanted segment ${i + 1} failed (${(e as Error).message}); the in-order download brings it otherwise`);
      }
    }
  }

  /** The wants stream: NDJSON `{"segment": N}` for each segment early start needs ahead of the in-order upload; ends when no more can come. */
  private wants(s: Session, res: http.ServerResponse): void {
    res.writeHead(200, { "content-type": "application/x-ndjson", "cache-control": "no-store" });
    const open = () => !s.terminal && (s.state === "created" || ((s.state === "receiving" || s.state === "filling") && s.early && !s.feed?.complete));
    if (!open()) return void res.end();
    const send = (i: number | null) => {
      if (i === null || !open()) return finish();
      res.write(JSON.stringify({ segment: i }) + "\n");
    };
    // Blank lines keep a quiet stream's socket from the idle cut (NDJSON readers skip them).
    const beat = setInterval(() => res.write("\n"), Math.max(500, Math.floor(this.o.idleMs / 3)));
    beat.unref();
    const finish = () => {
      clearInterval(beat);
      s.wantListeners.delete(send);
      res.end();
    };
    for (const i of s.feed?.pendingWants() ?? []) send(i);
    s.wantListeners.add(send);
    res.on("close", () => {
      clearInterval(beat);
      s.wantListeners.delete(send);
    });
  }

  /** PUT .../segments/N: one whole segment out of order; its length comes from the meta, its bytes must match its hash. */
  private async putSegment(s: Session, raw: string, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if ((s.state !== "receiving" && s.state !== "filling") || !s.feed) throw new HttpError(409, "STATE", `session is ${s.state}; segments are accepted only after the meta and before the VM is fully local`);
    if (!SEGMENT_RE.test(raw)) throw new HttpError(400, "BAD_REQUEST", "a segment index (decimal digits, from 0) is required after /segments/");
    const i = Number(raw);
    const n = s.feed.meta.segments.length;
    if (i >= n) throw new HttpError(404, "NOT_FOUND", `no segment index ${i}: the overlay has ${n} segments (indexes 0 to ${n - 1})`);
    const size = s.feed.meta.segments[i].compressedSize;
    const declared = req.headers["content-length"];
    if (declared !== undefined && Number(declared) !== size) throw new HttpError(400, "BAD_UPLOAD", `segment ${i + 1} (index ${i}) is ${size} bytes; Content-Length says ${declared}`);
    s.firstByteAt ||= Date.now();
    const counted = (async function* (src: AsyncIterable<Buffer>) {
      for await (const c of src) {
        s.lastActivity = Date.now();
        yield new Uint8Array(c.buffer, c.byteOffset, c.byteLength);
      }
    })(req as AsyncIterable<Buffer>);
    let fresh: boolean;
    try {
      fresh = await s.feed.put(i, counted);
    } catch (e) {
      this.uploadFailed(s, e);
    }
    if (fresh) s.outOfOrder++;
    this.offsetHeaders(res, s, fresh ? 204 : 200);
  }

  private events(s: Session, res: http.ServerResponse): void {
    res.writeHead(200, { "content-type": "application/x-ndjson", "cache-control": "no-store" });
    let stalled = 0;
    const send = (e: SessionEvent) => {
      if (!res.write(JSON.stringify(e) + "\n")) {
        // A client that does not read its events must not hold memory: drop it.
        if (++stalled > 256) res.destroy();
      } else stalled = 0;
      if (e.type === "done" || e.type === "error" || (e.type === "status" && (e.status.state === "closed" || e.status.state === "failed"))) {
        if (e.type !== "done") finish();
      }
    };
    const finish = () => {
      s.listeners.delete(send);
      res.end();
    };
    res.once("finish", () => s.listeners.delete(send));
    send({ type: "status", status: s.status() });
    if (s.terminal) return finish();
    if (s.endpoint && s.state === "filling") send({ type: "resumed", endpoint: s.endpoint });
    else if (s.endpoint) send({ type: "done", endpoint: s.endpoint });
    s.listeners.add(send);
    // Blank lines at a third of the lease: a client that hears nothing for a lease knows the link is gone.
    const beat = setInterval(() => res.write("\n"), Math.max(500, Math.floor(this.o.idleMs / 3)));
    beat.unref();
    res.on("close", () => {
      clearInterval(beat);
      s.listeners.delete(send);
    });
  }

  private async synthesizeAndLaunch(s: Session): Promise<void> {
    const base = s.base!;
    const t0 = Date.now();
    let lastEmit = 0;
    const files = await this.o.backend.synthesize(base, s.id, s.feed!, {
      signal: s.abort.signal,
      progress: (p) => {
        s.applied = p.done;
        const now = Date.now();
        if (now - lastEmit > 200 || p.done === p.total) {
          lastEmit = now;
          s.emit({ type: "progress", received: s.feed!.offset, applied: s.applied, expected: s.feed!.expected });
        }
      },
    });
    const synthMs = Date.now() - (s.firstByteAt || t0);
    s.state = "launching";
    s.emit({ type: "status", status: s.status() });
    const t1 = Date.now();
    const bind = this.o.host === "::" ? "0.0.0.0" : this.o.host;
    s.vm = await this.o.backend.launch(base, files, s.id, bind, s.abort.signal);
    if (s.terminal) {
      await s.vm.stop();
      return;
    }
    s.endpoint = { vmId: s.vm.vmId, host: s.host, ports: s.vm.ports, ms: { synthesis: synthMs, launch: Date.now() - t1 } };
    s.state = "running";
    // The lease starts now: the client has been waiting on its event stream, not sending.
    s.lastActivity = Date.now();
    this.o.log(`session ${s.id}: VM ${s.vm.vmId} running, ports ${s.vm.ports.map((p) => `${bind}:${p.hostPort}->${p.guestPort}`).join(" ")}`);
    s.emit({ type: "done", endpoint: s.endpoint });
  }

  /** `--url` sessions: the server fetches the overlay itself, by range, resuming after a cut. */
  private async fromUrl(s: Session, url: string): Promise<void> {
    const src = await openUrlOverlay(url, this.o.maxMetaBytes, s.abort.signal);
    if (src.totalLength > this.o.maxOverlayBytes) throw new HttpError(413, "TOO_LARGE", `overlay of ${src.totalLength} bytes exceeds the limit of ${this.o.maxOverlayBytes}`);
    s.fetchSegment = (i) => {
      const meta = s.feed!.meta;
      let at = 0;
      for (let k = 0; k < i; k++) at += meta.segments[k].compressedSize;
      return src.range(at, meta.segments[i].compressedSize);
    };
    await this.acceptMeta(s, src.headerAndMeta);
    s.firstByteAt = Date.now();
    // Bytes arriving from the URL renew the idle clock: the session waits on that server, not on its client.
    // Progress goes out as bytes arrive too, so a client's event stream is not silent during a slow download.
    let lastEmit = 0;
    const renewing = async function* (body: AsyncIterable<Uint8Array>) {
      for await (const c of body) {
        s.lastActivity = Date.now();
        if (s.lastActivity - lastEmit > 500) {
          lastEmit = s.lastActivity;
          s.emit({ type: "progress", received: s.feed!.offset, applied: s.applied, expected: s.feed!.expected });
        }
        yield c;
      }
    };
    // A download also ends, without an error, where it reaches a segment fetched by range for a want:
    // the next one starts past it, so no wanted segment is downloaded twice.
    for (let failures = 0; !s.feed!.complete && !s.terminal; ) {
      let body: AsyncGenerator<Uint8Array> | null = null;
      try {
        const at = s.feed!.offset;
        body = renewing(await src.body(at));
        await s.feed!.ingest(s.feed!.untilHeld(body, at), at);
      } catch (e) {
        // The feed stops reading on an error without closing its source: cancel this download.
        void body?.return(undefined).catch(() => {});
        // A corrupt segment is final; only transfer errors are retried.
        if (s.terminal || s.feed!.failed || failures++ >= 5) throw e;
        this.o.log(`session ${s.id}: fetch interrupted at ${s.feed!.offset} (${(e as Error).message}); resuming`);
        await new Promise((r) => setTimeout(r, 300 * failures));
      }
      s.lastActivity = Date.now();
    }
  }

  private failSession(s: Session, e: unknown): void {
    if (s.terminal) return;
    const err = isCloudletError(e) ? { code: e.code, message: e.userMessage } : { code: "INTERNAL", message: (e as Error)?.message ?? String(e) };
    this.o.log(`session ${s.id}: failed: ${err.message}`);
    s.error = err;
    s.emit({ type: "error", ...err });
    void this.close(s, "failed");
  }

  /** Ends a session on every path: VM stopped, files removed, listeners told. */
  private async close(s: Session, state: "closed" | "failed"): Promise<void> {
    if (s.terminal) return;
    s.state = state;
    s.abort.abort(new CloudletError("CANCELLED", `session ${state}`));
    s.feed?.fail(new CloudletError("CANCELLED", `session ${state}`));
    await s.work?.catch(() => {});
    await s.vm?.stop().catch((e) => this.o.log(`session ${s.id}: stopping the VM failed: ${e}`));
    await fsp.rm(s.dir, { recursive: true, force: true });
    s.emit({ type: "status", status: s.status() });
    s.listeners.clear();
    for (const l of [...s.wantListeners]) l(null);
    this.o.log(`session ${s.id}: ${state}`);
    // Keep the record a while so a client can read the final status, then forget it.
    setTimeout(() => this.sessions.delete(s.id), 60_000).unref();
  }
}

/** Reads the token file, or creates one (0600) on first start. Returns the token and whether it was created. */
export async function loadOrCreateToken(path: string): Promise<{ token: string; created: boolean }> {
  try {
    const t = (await fsp.readFile(path, "utf8")).trim();
    if (!/^[\x21-\x7e]{16,512}$/.test(t)) throw new CloudletError("BAD_INPUT", "token file must hold one token of 16-512 printable characters", path);
    return { token: t, created: false };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  const token = randomBytes(32).toString("hex");
  await fsp.mkdir(join(path, ".."), { recursive: true });
  await fsp.writeFile(path, token + "\n", { mode: 0o600, flag: "wx" });
  return { token, created: true };
}

/** Leading segments that form the overlay's boot set (0: none, as in a version 1 overlay). */
export function bootSegmentCount(meta: OverlayMeta): number {
  const n = meta.bootSet?.segments ?? 0;
  return Math.min(n, meta.segments.length);
}

/** How long, and for how many bytes, a connection closed after an early error answer is drained. */
const LINGER_MS = 2000;
const LINGER_BYTES = 4 << 20;

/**
 * Closes the connection of a request whose body was not read, once its (error)
 * answer is out: {@link lingerClose} under Node, which otherwise destroys the
 * socket as soon as the answer is flushed (destroySoon). Deno's node:http ends
 * the answer early when the socket is half-closed, so there it is destroyed once the answer is out.
 */
function closeAfterAnswer(sock: Socket | null, res: http.ServerResponse): void {
  if (!sock) return;
  let close = (): void => void sock.destroy();
  if (!("Deno" in globalThis)) sock.destroySoon = close = () => lingerClose(sock);
  res.once("finish", close);
  res.once("close", close);
}

/**
 * Closes a connection whose request body was not read, after its error answer
 * went out: sends FIN and drains what the client is still sending for a short,
 * bounded time before destroying it. Destroying at once, with unread bytes in
 * the kernel's buffer, sends a reset that can make the client lose the answer.
 */
function lingerClose(sock: Socket): void {
  if (sock.destroyed || (sock as Socket & { lingering?: true }).lingering) return;
  (sock as Socket & { lingering?: true }).lingering = true;
  let drained = 0;
  const stop = () => sock.destroy();
  const timer = setTimeout(stop, LINGER_MS);
  timer.unref?.();
  sock.on("data", (b: Buffer) => {
    drained += b.length;
    if (drained > LINGER_BYTES) stop();
  });
  sock.once("close", () => clearTimeout(timer));
  sock.once("end", stop);
  sock.on("error", () => {});
  sock.end();
  sock.resume();
}
