/**
 * The network benchmark's client side, run in the client namespace. Prints
 * one JSON object on stdout.
 *
 *   node --import tsx bench/_net_client.ts pipelined SERVER TOKEN_FILE OVERLAY
 *     (a) cloudlet's pipelined synthesis: the same `sendOverlay` that
 *     `cloudlet client` calls, in-process (node start-up, WASM load and
 *     opening the overlay happen before the clock starts). t0 is just before
 *     the session is created (the client's first byte); the clock stops at
 *     the VM's first HTTP answer through its forwarded port, fetched from
 *     here, across the link. Then the session is closed (VM stopped).
 *
 *   node --import tsx bench/_net_client.ts early SERVER TOKEN_FILE OVERLAY
 *
 *   Both take GUEST_PORT PATH after OVERLAY: the answer to wait for is a 200
 *   from PATH on that guest port (default: the webapp page, GET / on port 80).
 *     (e) early start over the network: `sendOverlay` with earlyStart true
 *     (what `cloudlet client --early-start` runs). The first answer is
 *     polled from the moment the server says the VM resumed; the clock for
 *     "fully local" stops at the done event. Then the session is closed.
 *
 *   node --import tsx bench/_net_client.ts upload URL FILE
 *     (b)/(c) a plain HTTP PUT of FILE (Content-Length, 256 KiB reads, the
 *     same Node HTTP stack and chunk size as the client) to the sink; the
 *     clock runs from the request's start to the sink's answer, which comes
 *     after the last byte arrived.
 */
import { createReadStream, promises as fsp } from "node:fs";
import * as http from "node:http";
import { loadCoreFromDisk } from "../ts/node/core_file.ts";
import { openOverlay } from "../ts/node/overlay_files.ts";
import { CloudletClient, sendOverlay } from "../ts/server/client.ts";
import type { SessionEvent } from "../ts/server/protocol.ts";
import { firstAnswer } from "./_net_http.ts";

type Mark = { ms: number; what: string; received?: number; applied?: number; expected?: number };

async function pipelined(server: string, tokenFile: string, path: string, early = false, guestPort = 80, answerPath = "/"): Promise<unknown> {
  const core = await loadCoreFromDisk();
  const token = (await fsp.readFile(tokenFile, "utf8")).trim();
  const client = new CloudletClient({ server, token });
  const overlay = await openOverlay(core, path);
  const marks: Mark[] = [];
  let firstSent = 0;
  let lastSent = 0;
  try {
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    const at = () => performance.now() - t0;
    let resumedAt = 0;
    let answering: Promise<number> | null = null;
    const r = await sendOverlay({
      core,
      client,
      overlay,
      metaBytes: overlay.metaBytes,
      // (a) is full pipelined synthesis whatever the overlay carries; (e) asks for early start.
      earlyStart: early,
      onResumed: (ep) => {
        resumedAt = at();
        const port = ep.ports.find((p) => p.guestPort === guestPort)?.hostPort ?? ep.ports[0].hostPort;
        answering = firstAnswer(ep.host, port, undefined, answerPath);
        answering.catch(() => {});
      },
      progress: (p) => {
        lastSent = at();
        firstSent ||= lastSent;
        void p;
      },
      onEvent: (e: SessionEvent) => {
        if (e.type === "status") marks.push({ ms: at(), what: `status:${e.status.state}`, received: e.status.received, applied: e.status.applied, expected: e.status.expected });
        else if (e.type === "progress") marks.push({ ms: at(), what: "progress", received: e.received, applied: e.applied, expected: e.expected });
        else marks.push({ ms: at(), what: e.type });
      },
    });
    const done = at();
    const cpu = process.cpuUsage(c0);
    if (early && !r.earlyStart) throw new Error(`early start did not run: ${r.earlyStartFallback ?? "the server did not start the VM early"}`);
    const port = r.endpoint.ports.find((p) => p.guestPort === guestPort)?.hostPort ?? r.endpoint.ports[0].hostPort;
    const answered = (await (answering ?? firstAnswer(r.endpoint.host, port, undefined, answerPath))) - t0;
    const tc = performance.now();
    await client.close(r.id);
    return {
      ms: answered,
      doneMs: done,
      answerAfterDoneMs: answered - done,
      firstSegmentByteMs: firstSent,
      lastSegmentByteHandedOverMs: lastSent,
      server: r.endpoint.ms,
      /** This process's CPU from t0 to the done event (sending, mostly). */
      cpuMs: (cpu.user + cpu.system) / 1000,
      closeMs: performance.now() - tc,
      marks,
      ...(early ? { resumedMs: resumedAt, localMs: done, outOfOrder: r.outOfOrder, uploadsCut: r.uploadsCut, wantsServedMs: r.wantsServedMs } : {}),
    };
  } finally {
    await overlay.close();
  }
}

async function upload(url: string, path: string): Promise<unknown> {
  const size = (await fsp.stat(path)).size;
  const u = new URL(url);
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const reply = await new Promise<string>((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: "PUT", agent: false, headers: { "content-type": "application/octet-stream", "content-length": String(size) } }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`sink: ${res.statusCode} ${body}`))));
    });
    req.on("error", reject);
    createReadStream(path, { highWaterMark: 256 << 10 }).on("error", reject).pipe(req);
  });
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(c0);
  const sink = JSON.parse(reply) as { bytes: number; ms: number };
  if (sink.bytes !== size) throw new Error(`sink got ${sink.bytes} of ${size} bytes`);
  return { ms, bytes: size, mbit: (size * 8) / 1e6 / (ms / 1000), sinkMs: sink.ms, cpuMs: (cpu.user + cpu.system) / 1000 };
}

const [mode, ...args] = process.argv.slice(2);
try {
  let out: unknown;
  const answerAt = args.length === 5 ? ([Number(args[3]), args[4]] as const) : ([80, "/"] as const);
  if (mode === "pipelined" && (args.length === 3 || args.length === 5)) out = await pipelined(args[0], args[1], args[2], false, ...answerAt);
  else if (mode === "early" && (args.length === 3 || args.length === 5)) out = await pipelined(args[0], args[1], args[2], true, ...answerAt);
  else if (mode === "upload" && args.length === 2) out = await upload(args[0], args[1]);
  else throw new Error("usage: _net_client.ts pipelined|early SERVER TOKEN_FILE OVERLAY [GUEST_PORT PATH] | upload URL FILE");
  process.stdout.write(JSON.stringify(out) + "\n");
  process.exit(0);
} catch (e) {
  process.stderr.write(`_net_client: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
}
