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
import { CloudletError, isCloudletError } from "../errors.ts";
import { checkPackTotal, decodeMeta, decodePackHeader, HEADER_BYTES, metaBodyLength, type OverlayMeta } from "../overlay/format.ts";
import { checkBase } from "../overlay/synthesis.ts";
import { synthesizeReader, type SynthesizedFiles } from "../host/file_jobs.ts";
import { acquirePidLock } from "../host/pid_lock.ts";
import { WorkerCodec } from "../host/codec_pool.ts";
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

/** What the server needs from the host: bases and VM launches. */
export interface ServerBackend {
  /** Bases served. */
  bases(): Promise<ServedBase[]>;
  /** Launches the synthesized files as a VM (port forwards on `bindAddress`, fresh host ports). */
  launch(base: ServedBase, files: SynthesizedFiles, sessionId: string, bindAddress: string, signal: AbortSignal): Promise<LaunchedVm>;
  /** Kills VMs and removes files that a crashed server left behind. */
  cleanupOrphans(): Promise<string[]>;
}

/** Server settings. */
export interface ServerOptions {
  core: Core;
  backend: ServerBackend;
  /** The cloudlet home (sessions live in <home>/sessions). */
  home: string;
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
  /** Serves non-API paths (the phone page, ts/server/client_page.ts); without it they need the token like the API. */
  page?: (req: http.IncomingMessage, res: http.ServerResponse) => boolean;
}

const ID_RE = /^[0-9a-f]{32}$/;

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
    return this.state === "running" && this.detachedAt === 0;
  }
}

/** The synthesis server. */
export class SynthesisServer {
  private readonly sessions = new Map<string, Session>();
  private server: http.Server | https.Server | null = null;
  private sweeper: ReturnType<typeof setInterval> | null = null;
  private unlock: (() => Promise<void>) | null = null;
  private codec: WorkerCodec | null = null;
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
    // One server per home: a second one would take the first one's VMs for orphans.
    const lockFile = join(this.o.home, "server", "serve.lock");
    this.unlock = await acquirePidLock(lockFile, 0, (pid) => new CloudletError("BAD_ARGUMENT", `another cloudlet serve (process ${pid}) uses this home; stop it or give another --home`, lockFile));
    const orphans = await this.o.backend.cleanupOrphans();
    if (orphans.length) this.o.log(`cleaned up after an earlier run: ${orphans.join(", ")}`);
    await fsp.rm(join(this.o.home, "sessions"), { recursive: true, force: true });
    await fsp.mkdir(join(this.o.home, "sessions"), { recursive: true });
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
      this.handle(req, res).catch((e) => this.o.log(`request failed: ${(e as Error).stack ?? e}`));
    };
    // Check header/request deadlines every second (Node's default is every 30 s).
    const base = { connectionsCheckingInterval: 1000 };
    const srv = this.o.tls ? https.createServer({ ...base, key: this.o.tls.key, cert: this.o.tls.cert }, handler) : http.createServer(base, handler);
    // Slowloris: headers must arrive promptly; bodies are policed per session (idle timer).
    srv.headersTimeout = 10_000;
    srv.requestTimeout = 0;
    srv.keepAliveTimeout = 5_000;
    srv.maxHeadersCount = 64;
    srv.maxConnections = this.o.maxSessions * 4 + 16;
    // One address may hold only a share of the connections, so that clients
    // without a token cannot take every slot by reconnecting.
    const perAddress = new Map<string, number>();
    const perAddressMax = Math.max(8, this.o.maxSessions * 3);
    srv.on("connection", (sock: Socket) => {
      const from = sock.remoteAddress ?? "?";
      const n = (perAddress.get(from) ?? 0) + 1;
      if (n > perAddressMax) return sock.destroy();
      perAddress.set(from, n);
      sock.once("close", () => {
        const left = (perAddress.get(from) ?? 1) - 1;
        if (left > 0) perAddress.set(from, left);
        else perAddress.delete(from);
      });
      sock.setTimeout(this.o.idleMs, () => sock.destroy());
    });
    this.server = srv;
    await new Promise<void>((resolve, reject) => {
      srv.once("error", reject);
      srv.listen(this.o.port, this.o.host, () => resolve());
    }).catch(async (e) => {
      await this.unlock?.();
      throw e;
    });
    this.sweeper = setInterval(() => this.sweep(), 1000);
    this.sweeper.unref();
    this.warmCodec();
  }

  /** Stops listening and ends every session. */
  async stop(): Promise<void> {
    if (this.sweeper) clearInterval(this.sweeper);
    await Promise.allSettled([...this.sessions.values()].map((s) => this.close(s, "closed")));
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    this.server?.closeAllConnections?.();
    await this.codec?.close();
    this.codec = null;
    await this.unlock?.();
    this.unlock = null;
  }

  /**
   * The codec workers all sessions share, started once: a session does not
   * wait for threads and WASM instances (0.15-0.3 s here), and concurrent
   * sessions cannot oversubscribe the cores. Replaced if a worker died.
   */
  private warmCodec(): WorkerCodec {
    if (!this.codec || this.codec.failed) this.codec = new WorkerCodec();
    return this.codec;
  }

  private sweep(): void {
    const now = Date.now();
    for (const s of this.sessions.values()) {
      if (s.terminal) continue;
      if (s.waitingOnClient && now - s.lastActivity > this.o.idleMs) {
        const why = s.state === "running" ? `the client sent no keep-alive for ${this.o.idleMs / 1000} s (session idle); VM stopped` : `session idle for more than ${this.o.idleMs / 1000} s`;
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
      const id = parts[2] ?? "";
      if (!ID_RE.test(id)) throw new HttpError(404, "NOT_FOUND", "no such session");
      const s = this.sessions.get(id);
      if (!s) throw new HttpError(404, "NOT_FOUND", "no such session");
      s.lastActivity = Date.now();
      const sub = parts[3] ?? "";
      if (parts.length > 4) throw new HttpError(404, "NOT_FOUND", "unknown path");
      if (sub === "" && req.method === "GET") return this.json(res, 200, s.status());
      if (sub === "" && req.method === "DELETE") {
        await this.close(s, "closed");
        return this.json(res, 200, s.status());
      }
      if (sub === "meta" && req.method === "PUT") return this.json(res, 200, (await this.acceptMeta(s, await this.body(req, this.o.maxMetaBytes + HEADER_BYTES))).status());
      if (sub === "detach" && req.method === "POST") {
        if (s.state !== "running") throw new HttpError(409, "STATE", `session is ${s.state}; only a running session can be detached`);
        s.detachedAt ||= Date.now();
        this.o.log(`session ${s.id}: detached`);
        return this.json(res, 200, s.status());
      }
      if (sub === "data" && req.method === "HEAD") return this.offsetHeaders(res, s, 200);
      if (sub === "data" && req.method === "PATCH") return await this.upload(s, req, res);
      if (sub === "events" && req.method === "GET") return this.events(s, res);
      throw new HttpError(405, "METHOD", "method not allowed here");
    } catch (e) {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const he =
        e instanceof HttpError ? e
        : isCloudletError(e) ? new HttpError(e.code === "WRONG_BASE" ? 409 : e.code === "BAD_META" || e.code === "TRUNCATED" ? 400 : 422, e.code, e.message)
        : new HttpError(500, "INTERNAL", (e as Error).message);
      if (he.status === 500) this.o.log(`internal error: ${(e as Error).stack}`);
      this.json(res, he.status, { error: { code: he.code, message: he.message } });
      // Do not read an unwanted body: close the connection instead.
      if (!req.complete) res.once("finish", () => req.socket.destroy());
    }
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
    for await (const c of req as AsyncIterable<Buffer>) {
      n += c.length;
      if (n > max) throw new HttpError(413, "TOO_LARGE", `body exceeds the limit of ${max} bytes`);
      parts.push(c);
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
    const active = [...this.sessions.values()].filter((s) => !s.terminal).length;
    if (active >= this.o.maxSessions) throw new HttpError(503, "BUSY", `the cloudlet is busy (${active} of ${this.o.maxSessions} sessions); try again later`);
    const raw = await this.body(req, 4096);
    let url: string | null = null;
    if (raw.length) {
      let j: unknown;
      try {
        j = JSON.parse(new TextDecoder().decode(raw));
      } catch {
        throw new HttpError(400, "BAD_REQUEST", "session request must be JSON");
      }
      const u = (j as { url?: unknown }).url;
      if (u !== undefined) {
        if (!this.o.allowUrl) throw new HttpError(403, "URL_DISABLED", "this cloudlet does not fetch overlays by URL (started with --no-url); upload the overlay instead");
        if (typeof u !== "string" || !/^https?:\/\//.test(u) || u.length > 2048) throw new HttpError(400, "BAD_REQUEST", "url must be an http(s) URL");
        url = u;
      }
    }
    const id = randomBytes(16).toString("hex");
    const s = new Session(id, join(this.o.home, "sessions", id), this.reachableHost(req), this.o.idleMs);
    await fsp.mkdir(s.dir, { recursive: true });
    this.sessions.set(id, s);
    this.o.log(`session ${id}: created${url ? ` (fetching ${url})` : ""}`);
    if (url) {
      s.work = this.fromUrl(s, url).catch((e) => this.failSession(s, e));
    }
    return s;
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
    const h = decodePackHeader(this.o.core, bytes.subarray(0, HEADER_BYTES), name);
    if (bytes.length !== HEADER_BYTES + h.metaLength) throw new CloudletError("BAD_META", `the meta step must carry exactly the header and meta (${HEADER_BYTES + h.metaLength} bytes), got ${bytes.length}`, name);
    metaBodyLength(bytes.subarray(HEADER_BYTES), name);
    const meta = decodeMeta(this.o.core, bytes.subarray(HEADER_BYTES), name);
    // The limit below is on the declared total; the segment table must agree with it.
    checkPackTotal(h, meta, name);
    if (h.totalLength > this.o.maxOverlayBytes) throw new HttpError(413, "TOO_LARGE", `overlay of ${h.totalLength} bytes exceeds the limit of ${this.o.maxOverlayBytes}`);
    const base = (await this.o.backend.bases()).find((b) => b.id === meta.base.id);
    if (!base) throw new CloudletError("WRONG_BASE", `this cloudlet has no base ${meta.base.id} (the overlay's base); it has: ${(await this.o.backend.bases()).map((b) => `${b.name} ${b.id.slice(0, 12)}`).join(", ") || "none"}`, name);
    checkBase(meta, base.id, name);
    // The session may have been closed, or sent another meta, while the registry was read.
    if (s.state !== "created" || s.meta) throw new HttpError(409, "STATE", `session is ${s.state}; the meta was already sent or the session ended`);
    s.meta = meta;
    s.base = base;
    s.feed = new UploadFeed(meta, name);
    s.state = "receiving";
    s.emit({ type: "status", status: s.status() });
    s.work = this.synthesizeAndLaunch(s).catch((e) => this.failSession(s, e));
    return s;
  }

  private async upload(s: Session, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (s.state !== "receiving" || !s.feed) throw new HttpError(409, "STATE", `session is ${s.state}; segments are accepted only after the meta and before launch`);
    const offset = Number(req.headers[OFFSET_HEADER]);
    if (!Number.isSafeInteger(offset) || offset < 0) throw new HttpError(400, "BAD_REQUEST", `${OFFSET_HEADER} header is required`);
    if (offset !== s.feed.offset) {
      res.writeHead(409, { [OFFSET_HEADER]: String(s.feed.offset), "content-type": "application/json" });
      res.end(JSON.stringify({ error: { code: "OFFSET", message: `resume at offset ${s.feed.offset}` } }));
      req.socket.destroy();
      return;
    }
    s.firstByteAt ||= Date.now();
    const feed = s.feed;
    const counted = (async function* (src: AsyncIterable<Buffer>) {
      for await (const c of src) {
        s.lastActivity = Date.now();
        yield new Uint8Array(c.buffer, c.byteOffset, c.byteLength);
      }
    })(req as AsyncIterable<Buffer>);
    try {
      await feed.ingest(counted, offset);
    } catch (e) {
      if (isCloudletError(e) && e.code === "REMOTE") throw new HttpError(400, "BAD_UPLOAD", e.message);
      throw e;
    }
    this.offsetHeaders(res, s, req.complete ? 204 : 200);
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
    send({ type: "status", status: s.status() });
    if (s.terminal) return finish();
    if (s.endpoint) send({ type: "done", endpoint: s.endpoint });
    s.listeners.add(send);
    res.on("close", () => s.listeners.delete(send));
  }

  private async synthesizeAndLaunch(s: Session): Promise<void> {
    const base = s.base!;
    const t0 = Date.now();
    let lastEmit = 0;
    const files = await synthesizeReader(this.o.core, s.feed!, {
      baseDisk: base.disk,
      baseMem: base.memory,
      baseDir: base.dir,
      overlay: `session ${s.id}`,
      outDir: join(s.dir, "vm"),
      diskFormat: "qcow2",
      // A session's files die with it (and with the server): no fsync on the critical path.
      durable: false,
      codec: this.warmCodec(),
      home: this.o.home,
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
    this.o.log(`session ${s.id}: VM ${s.vm.vmId} running, ports ${s.vm.ports.map((p) => `${p.guestPort}->${p.hostPort}`).join(" ")}`);
    s.emit({ type: "done", endpoint: s.endpoint });
  }

  /** `--url` sessions: the server fetches the overlay itself, by range, resuming after a cut. */
  private async fromUrl(s: Session, url: string): Promise<void> {
    const src = await openUrlOverlay(url, this.o.maxMetaBytes, s.abort.signal);
    if (src.totalLength > this.o.maxOverlayBytes) throw new HttpError(413, "TOO_LARGE", `overlay of ${src.totalLength} bytes exceeds the limit of ${this.o.maxOverlayBytes}`);
    await this.acceptMeta(s, src.headerAndMeta);
    s.firstByteAt = Date.now();
    for (let attempt = 0; !s.feed!.complete && !s.terminal; attempt++) {
      try {
        await s.feed!.ingest(await src.body(s.feed!.offset), s.feed!.offset);
      } catch (e) {
        if (s.terminal || attempt >= 5) throw e;
        this.o.log(`session ${s.id}: fetch interrupted at ${s.feed!.offset} (${(e as Error).message}); resuming`);
        await new Promise((r) => setTimeout(r, 300 * (attempt + 1)));
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
