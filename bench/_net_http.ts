/**
 * The network benchmark's finish line: the first HTTP answer of a
 * synthesized VM through its forwarded port. Asks GET / until a 200 whose
 * body is the webapp's page (or GET PATH until a 200, for the early-start
 * bench's app, which answers 500 when its block's hash is wrong).
 *
 * Requests overlap, as in early_start_bench.ts: a new one every 500 ms while
 * fewer than 4 are open, and a refused or wrong one is retried after 20 ms.
 * A single request at a time can sit seconds in TCP's retransmission
 * back-off between QEMU's user network and a guest that is stalled on page
 * faults (early start), which would time the back-off, not the VM.
 */
import * as http from "node:http";

/** The page both bench overlays serve (examples/webapp.sh). */
export const PAGE_MARK = "Hello from a synthesized cloudlet VM";

/** Most requests open at once, and how often another one is started. */
const MAX_OPEN = 4;
const EVERY_MS = 500;

/** Resolves with performance.now() at the first good answer; rejects after `timeoutMs`. */
export function firstAnswer(host: string, port: number, timeoutMs = 120_000, path = "/"): Promise<number> {
  return new Promise((resolve, reject) => {
    const open = new Set<http.ClientRequest>();
    let over = false;
    let last = "";
    const finish = (e: Error | null) => {
      if (over) return;
      over = true;
      clearInterval(tick);
      clearTimeout(timer);
      for (const r of open) r.destroy();
      if (e) reject(e);
      else resolve(performance.now());
    };
    const start = () => {
      if (over || open.size >= MAX_OPEN) return;
      let settled = false;
      const retry = (why: string) => {
        if (settled) return;
        settled = true;
        open.delete(req);
        last = why;
        if (!over) setTimeout(start, 20);
      };
      const req = http.get({ host, port, path, agent: false }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => {
          if (res.statusCode === 200 && (path !== "/" || body.includes(PAGE_MARK))) finish(null);
          else retry(`HTTP ${res.statusCode}: ${body.slice(0, 80)}`);
        });
        res.on("error", (e) => retry(e.message));
      });
      req.on("error", (e) => retry(e.message));
      open.add(req);
    };
    const tick = setInterval(start, EVERY_MS);
    const timer = setTimeout(() => finish(new Error(`no answer from http://${host}:${port}${path} within ${timeoutMs} ms (last: ${last})`)), timeoutMs);
    start();
  });
}
