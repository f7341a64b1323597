/**
 * The network benchmark's finish line: the first HTTP answer of a
 * synthesized VM through its forwarded port. Polls GET / until a 200 whose
 * body is the webapp's page (or GET PATH until a 200, for the early-start
 * bench's app, which answers 500 when its block's hash is wrong); a refused
 * connection is retried after 20 ms,
 * and a connection that QEMU's user network accepted before the guest
 * runs simply waits for the guest's answer.
 */
import * as http from "node:http";

/** The page both bench overlays serve (examples/webapp.sh). */
export const PAGE_MARK = "Hello from a synthesized cloudlet VM";

/** Resolves with performance.now() at the first good answer; rejects after `timeoutMs`. */
export async function firstAnswer(host: string, port: number, timeoutMs = 120_000, path = "/"): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  let last = "";
  while (performance.now() < deadline) {
    const r = await new Promise<{ ok: boolean; why: string }>((resolve) => {
      const req = http.get({ host, port, path, agent: false, timeout: Math.max(100, deadline - performance.now()) }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => resolve({ ok: res.statusCode === 200 && (path !== "/" || body.includes(PAGE_MARK)), why: `HTTP ${res.statusCode}: ${body.slice(0, 80)}` }));
        res.on("error", (e) => resolve({ ok: false, why: e.message }));
      });
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", (e) => resolve({ ok: false, why: e.message }));
    });
    if (r.ok) return performance.now();
    last = r.why;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`no answer from http://${host}:${port}${path} within ${timeoutMs} ms (last: ${last})`);
}
