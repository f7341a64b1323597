/**
 * The local server behind `cloudlet inspect --web`: serves the inspector
 * page (web/dist, built on demand) and, read-only and by HTTP Range, exactly
 * the overlay's files and the base images named on the command line, on
 * 127.0.0.1 only.
 *
 *   GET /                      the page (index.html) and its assets
 *   GET /api/session           which files to open (InspectSession JSON)
 *   GET /files/N/NAME          file N of the session; Range: bytes=A-B -> 206
 *
 * Nothing else on the machine is reachable: file URLs are indexes into the
 * session's list, not paths. Requests whose Host header is not this
 * loopback address are refused, so a web page elsewhere cannot reach the
 * server through DNS rebinding.
 */
import { createReadStream, promises as fsp } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { basename, dirname, join } from "node:path";
import type { Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import { segmentFileName } from "../overlay/format.ts";
import type { InspectSession, SessionFile } from "../inspect/session.ts";
import { FileSource } from "../node/files.ts";
import { META_SUFFIX, openOverlay } from "../node/overlay_files.ts";

/** Options of {@link startInspectServer}. */
export interface InspectServerOptions {
  /** The loaded core (to validate the overlay before serving it). */
  core: Core;
  /** NAME.overlay or NAME.overlay-meta. */
  overlay: string;
  /** Base disk image (raw), to verify rebuilt chunks and show XOR views. */
  baseDisk?: string;
  /** Base memory image. */
  baseMem?: string;
  /** TCP port on 127.0.0.1; 0 (default) picks a free one. */
  port?: number;
  /** The built inspector page (web/dist, or the package's copy): the command finds it, so the server needs no build tools. */
  webRoot: string;
}

/** A running inspect server. */
export interface InspectServer {
  /** The page's URL, e.g. http://127.0.0.1:41234/ */
  readonly url: string;
  /** The port. */
  readonly port: number;
  /** What the page is told to open. */
  readonly session: InspectSession;
  /** Stops listening and closes open connections. */
  close(): Promise<void>;
}

const HOST = "127.0.0.1";
const CONTENT_TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
};
const SECURITY_HEADERS = {
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
  "Cross-Origin-Resource-Policy": "same-origin",
  "Cache-Control": "no-store",
  // The page runs only its own scripts, its worker (also from a blob: URL in
  // the single-file build) and WebAssembly; it talks only to this server.
  "Content-Security-Policy": "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
};

/** A file the server may send: its path and the name the page sees. */
interface Served {
  path: string;
  name: string;
  size: number;
}

async function statOrNull(path: string): Promise<number | null> {
  try {
    const st = await fsp.stat(path);
    return st.isFile() ? st.size : null;
  } catch {
    return null;
  }
}

/** Checks a base image exists and has the size the overlay's base had. */
async function baseFile(path: string, want: number, what: string): Promise<Served> {
  const f = await FileSource.open(path);
  await f.close();
  if (f.size !== want) throw new CloudletError("WRONG_BASE", `${what} is ${f.size} bytes but the overlay was made from a ${what} of ${want} bytes: this is not the overlay's base`, path);
  return { path, name: basename(path), size: f.size };
}

/** Starts the server; the overlay's meta is validated first, so a bad overlay fails here, not in the page. */
export async function startInspectServer(o: InspectServerOptions): Promise<InspectServer> {
  const ov = await openOverlay(o.core, o.overlay);
  const meta = ov.meta;
  await ov.close();
  const head = await FileSource.open(o.overlay);
  const magic = new TextDecoder().decode(await head.read(0, 8));
  await head.close();
  const files: Served[] = [{ path: o.overlay, name: basename(o.overlay), size: (await statOrNull(o.overlay)) ?? 0 }];
  if (magic === "CLOVMETA") {
    const stem = o.overlay.endsWith(META_SUFFIX) ? o.overlay.slice(0, -META_SUFFIX.length) : o.overlay;
    for (let i = 0; i < meta.segments.length; i++) {
      const name = segmentFileName(basename(stem), i);
      const path = join(dirname(stem), name);
      const size = await statOrNull(path);
      // A missing segment is left out; the page then names it.
      if (size !== null) files.push({ path, name, size });
    }
  }
  const overlayCount = files.length;
  const disk = o.baseDisk ? await baseFile(o.baseDisk, meta.base.diskSize, "base disk") : null;
  const mem = o.baseMem ? await baseFile(o.baseMem, meta.base.memorySize, "base memory") : null;
  if (disk) files.push(disk);
  if (mem) files.push(mem);
  const entry = (f: Served, i: number): SessionFile => ({ name: f.name, url: `files/${i}/${encodeURIComponent(f.name)}`, size: f.size });
  const session: InspectSession = {
    overlay: files.slice(0, overlayCount).map(entry),
    baseDisk: disk ? entry(disk, overlayCount) : null,
    baseMemory: mem ? entry(mem, files.indexOf(mem)) : null,
  };

  const webRoot = o.webRoot;
  // The single-file build's inline scripts are for file:// use; the CSP here would block them.
  const assets = new Set((await fsp.readdir(webRoot)).filter((n) => /\.(html|js|json|wasm)$/.test(n) && n !== "build-stamp.json" && n !== "cloudlet-inspector.html"));

  let port = 0;
  const server = createServer((req, res) => {
    handle(req, res).catch((e) => {
      if (!res.headersSent) send(res, 500, `internal error: ${(e as Error)?.message ?? e}`);
      else res.destroy();
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.headers.host !== `${HOST}:${port}` && req.headers.host !== `localhost:${port}`) return send(res, 403, "forbidden: wrong Host header");
    if (req.method !== "GET" && req.method !== "HEAD") return send(res, 405, "method not allowed", { Allow: "GET, HEAD" });
    const path = new URL(req.url ?? "/", `http://${HOST}`).pathname;
    if (path === "/api/session") return send(res, 200, JSON.stringify(session), { "Content-Type": "application/json" });
    const m = /^\/files\/(\d+)\/[^/]*$/.exec(path);
    if (m) {
      const f = files[Number(m[1])];
      return f ? sendFile(req, res, f.path, "application/octet-stream") : send(res, 404, "no such file");
    }
    const name = path === "/" ? "index.html" : path.slice(1);
    if (!assets.has(name)) return send(res, 404, "not found");
    return sendFile(req, res, join(webRoot!, name), CONTENT_TYPES[name.slice(name.lastIndexOf("."))] ?? "application/octet-stream");
  }

  await new Promise<void>((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) =>
      reject(e.code === "EADDRINUSE" ? new CloudletError("CONFLICT", `port ${o.port} is in use: pick another with --port, or 0 for any free port`) : e),
    );
    server.listen(o.port ?? 0, HOST, () => resolve());
  });
  port = (server.address() as AddressInfo).port;
  return {
    url: `http://${HOST}:${port}/`,
    port,
    session,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function send(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { ...SECURITY_HEADERS, "Content-Type": "text/plain; charset=utf-8", ...headers, "Content-Length": Buffer.byteLength(body) });
  res.end(res.req.method === "HEAD" ? undefined : body);
}

/** Sends a file, or the one byte range the request asks for. */
async function sendFile(req: IncomingMessage, res: ServerResponse, path: string, type: string): Promise<void> {
  const size = await statOrNull(path);
  if (size === null) return send(res, 404, "file is gone");
  const headers: Record<string, string | number> = { ...SECURITY_HEADERS, "Content-Type": type, "Accept-Ranges": "bytes" };
  let start = 0;
  let end = size - 1;
  let status = 200;
  const range = req.headers.range;
  if (range) {
    const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
    if (!m || (m[1] === "" && m[2] === "")) return send(res, 416, "only one byte range is supported", { "Content-Range": `bytes */${size}` });
    if (m[1] === "") start = Math.max(0, size - Number(m[2]));
    else {
      start = Number(m[1]);
      end = m[2] === "" ? size - 1 : Math.min(size - 1, Number(m[2]));
    }
    if (start >= size || start > end) return send(res, 416, "range not satisfiable", { "Content-Range": `bytes */${size}` });
    status = 206;
    headers["Content-Range"] = `bytes ${start}-${end}/${size}`;
  }
  headers["Content-Length"] = size === 0 ? 0 : end - start + 1;
  res.writeHead(status, headers);
  if (req.method === "HEAD" || size === 0) return void res.end();
  await new Promise<void>((resolve, reject) => {
    const stream = createReadStream(path, { start, end, highWaterMark: 1 << 20 });
    stream.on("error", reject);
    res.on("close", () => {
      stream.destroy();
      resolve();
    });
    stream.pipe(res);
  });
}
