/**
 * The phone client page (web/phone.*, built by web/build.ts) as `cloudlet
 * serve` serves it at `/`, beside the API. The page holds no secret: the
 * token reaches it in a URL fragment, which browsers never send. Every
 * response carries a strict Content-Security-Policy (scripts, styles, the
 * worker and the .wasm only from this origin; fetches only to this origin;
 * no framing), nosniff and no-referrer. The API itself sends no CORS
 * headers, so other origins cannot read it.
 */
import { promises as fsp } from "node:fs";
import type * as http from "node:http";
import { join } from "node:path";
import { API } from "./protocol.ts";

/** The policy on every page response. `wasm-unsafe-eval` lets the worker compile the core; nothing allows inline code. */
export const PAGE_CSP = [
  "default-src 'none'",
  "script-src 'self' 'wasm-unsafe-eval'",
  "worker-src 'self'",
  "connect-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** Headers of every page response. */
export const PAGE_HEADERS: Readonly<Record<string, string>> = {
  "content-security-policy": PAGE_CSP,
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-resource-policy": "same-origin",
  "cache-control": "no-cache",
};

/** URL path -> built file and its type. */
const FILES: Record<string, [string, string]> = {
  "/": ["phone.html", "text/html; charset=utf-8"],
  "/phone.js": ["phone.js", "text/javascript; charset=utf-8"],
  "/phone.css": ["phone.css", "text/css; charset=utf-8"],
  "/worker.js": ["worker.js", "text/javascript; charset=utf-8"],
  "/cloudlet_core_bg.wasm": ["cloudlet_core_bg.wasm", "application/wasm"],
};

/** Answers a request for the page, or false when it is for the API. */
export type PageHandler = (req: http.IncomingMessage, res: http.ServerResponse) => boolean;

/** True when a request path belongs to the API (`/v1` and below). */
export function isApiPath(url: string | undefined): boolean {
  const path = (url ?? "/").split("?")[0];
  return path === API || path.startsWith(API + "/");
}

/**
 * Loads the built page from `root` (web/dist, or the package's copy: the
 * command finds it, so the server needs no build tools) and returns the
 * handler the server calls for non-API paths.
 */
export async function clientPage(root: string): Promise<PageHandler> {
  const bodies = new Map<string, { body: Buffer; type: string }>();
  for (const [path, [file, type]] of Object.entries(FILES)) bodies.set(path, { body: await fsp.readFile(join(root, file)), type });
  return (req, res) => {
    if (isApiPath(req.url)) return false;
    const path = (req.url ?? "/").split("?")[0];
    const hit = bodies.get(path === "/index.html" ? "/" : path);
    const method = req.method ?? "GET";
    if (!hit || (method !== "GET" && method !== "HEAD")) {
      const text = hit ? "method not allowed\n" : "not found\n";
      res.writeHead(hit ? 405 : 404, { ...PAGE_HEADERS, "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(text), ...(hit ? { allow: "GET, HEAD" } : {}) });
      res.end(method === "HEAD" ? undefined : text);
      // A body we do not want is not read: close instead.
      if (!req.complete) res.once("finish", () => req.socket.destroy());
      return true;
    }
    res.writeHead(200, { ...PAGE_HEADERS, "content-type": hit.type, "content-length": hit.body.length });
    res.end(method === "HEAD" ? undefined : hit.body);
    return true;
  };
}

/** The address a phone should open: the listen address, or for a wildcard the first non-loopback IPv4 address. */
export function pageHost(listenHost: string, addresses: string[]): string {
  const host = listenHost === "0.0.0.0" || listenHost === "::" ? (addresses[0] ?? "127.0.0.1") : listenHost;
  return host.includes(":") ? `[${host}]` : host;
}

/** The pairing link: the token rides in the fragment, which the browser keeps to itself (never in a request or a log). */
export function pairingUrl(scheme: "http" | "https", host: string, port: number, token: string): string {
  return `${scheme}://${host}:${port}/#token=${encodeURIComponent(token)}`;
}

/** The pairing link as a QR code drawn with text (two rows per line). */
export async function pairingQr(url: string): Promise<string> {
  const qr = (await import("qrcode-terminal")).default;
  return new Promise((resolve) => qr.generate(url, { small: true }, (s) => resolve(s)));
}
