/**
 * The network benchmark's upload sink, run in the server namespace:
 *
 *   node --import tsx bench/_net_sink.ts HOST PORT SAVE_DIR
 *
 *   PUT /discard      reads the body and drops it        -> {"bytes":N,"ms":T}
 *   PUT /save/NAME    writes the body to SAVE_DIR/NAME   -> {"bytes":N,"ms":T,"path":"..."}
 *
 * It answers only after the whole body arrived (and, for /save, was
 * written), so the client's request time is the transfer time. NAME is
 * checked against a strict pattern; it comes from the bench itself.
 * Prints "listening" once it listens; exits on SIGINT/SIGTERM.
 */
import { createWriteStream } from "node:fs";
import * as http from "node:http";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";

const [host, port, saveDir] = process.argv.slice(2);
if (!host || !port || !saveDir) {
  console.error("usage: _net_sink.ts HOST PORT SAVE_DIR");
  process.exit(2);
}

const server = http.createServer((req, res) => {
  const t0 = performance.now();
  let bytes = 0;
  const reply = (status: number, body: unknown) => {
    const text = JSON.stringify(body);
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    res.end(text);
  };
  req.on("data", (c: Buffer) => (bytes += c.length));
  if (req.method === "PUT" && req.url === "/discard") {
    req.on("end", () => reply(200, { bytes, ms: performance.now() - t0 }));
    req.resume();
    return;
  }
  const m = /^\/save\/([a-z0-9][a-z0-9.-]{0,63})$/.exec(req.url ?? "");
  if (req.method === "PUT" && m) {
    const path = join(saveDir, m[1]);
    pipeline(req, createWriteStream(path, { highWaterMark: 1 << 20 })).then(
      () => reply(200, { bytes, ms: performance.now() - t0, path }),
      (e: Error) => reply(500, { error: e.message }),
    );
    return;
  }
  req.resume();
  reply(404, { error: "use PUT /discard or PUT /save/NAME" });
});
server.listen(Number(port), host, () => console.log("listening"));
for (const sig of ["SIGINT", "SIGTERM"] as const) process.on(sig, () => server.close(() => process.exit(0)).closeAllConnections());
