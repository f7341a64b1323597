/**
 * Early start benchmark (issue 12): an app VM synthesized from an overlay fed
 * through a simulated link (ts/overlay/rate_reader.ts) at 25, 100 and 1000
 * Mbit/s, early start against today's pipelined full synthesis on the same feed.
 *
 *   node --import tsx bench/early_start_bench.ts [--rates 25,100,1000] [--reps 1] [--requests 50]
 *                                                [--modes full,early,early-ws] [--app-mib 200]
 *                                                [--overlay PATH --base NAME --home DIR] [--json]
 *   node --import tsx bench/early_start_bench.ts --from-json .build/bench/early-start/results.json
 * Results: bench/README.md ("Early start at 25, 100 and 1000 Mbit/s").
 *
 * The pair (built on first use, cached in .build/bench/early-start/; ~5 min under TCG):
 *   base   = the built-in guest booted with 512 MiB of RAM (`cloudlet base`, in-process);
 *   custom = that base resumed; python3 and its libraries (22 Debian packages, `apt-get download`
 *            on the host, unpacked with dpkg-deb -x, served to the guest over QEMU user networking,
 *            untarred into /) installed; a python3 HTTP server started that fills and keeps
 *            APP_MIB MiB of memory (1 MiB blocks: a quarter random bytes, the rest text-like
 *            records that differ per block) and hashes a block per request; then snapshotted
 *            into an overlay (`cloudlet overlay`, in-process) with guest port 8080 forwarded.
 *
 * Per rate and rep, both paths read the overlay through a fresh link that starts sending when
 * the clock starts (the meta first, then segments in order; a segment early start asks for
 * before its turn goes next, as the network priority channel will do):
 *   full  = synthesizeReader (the pipelined synthesis of `cloudlet synthesis`) then the VM's resume;
 *   early = synthesizeEarly (`cloudlet synthesis --early-start`), with the meta's boot set when it
 *           has one (format v2, `bootSet.segments`), else none;
 *   early-ws = early start again, with the segments the early run of the same rate and rep needed
 *           ahead of the in-order stream before its first answer sent first on the link: a
 *           stand-in for the boot set's order (no precopy, still applied on demand).
 * Measured from the link's start: the first correct answer of the app (GET /b/0: HTTP 200, the
 * block's hash equals the one the app took at start, and the app's start-up token equals the
 * snapshot's, so the VM was resumed, not restarted), the link's bytes delivered by then, when the
 * VM was fully local, and then the median latency of --requests requests after fill (5 more first,
 * not counted), against the fully synthesized VM: that one is kept running (idle) from the full run
 * of the same rate, and the two take turns request by request, so the load of a shared machine
 * falls on both alike.
 */
import { spawnSync } from "node:child_process";
import { existsSync, promises as fsp } from "node:fs";
import * as http from "node:http";
import { cpus, loadavg, totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import type { LinkDelivery, RateLimitedReader as Link } from "../ts/overlay/rate_reader.ts";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const DATA = join(process.env.BENCH_DATA ?? join(REPO, ".build/bench"), "early-start");
const BASE_NAME = "es-app";
const APP_PORT = 8080;
/** Debian packages that python3 needs beyond the built-in guest's minbase (bookworm). */
const PYTHON_DEBS = [
  "libexpat1", "libgssapi-krb5-2", "libk5crypto3", "libkeyutils1", "libkrb5-3", "libkrb5support0", "libncursesw6", "libnsl2",
  "libpython3-stdlib", "libpython3.11-minimal", "libpython3.11-stdlib", "libreadline8", "libsqlite3-0", "libssl3", "libtirpc-common",
  "libtirpc3", "media-types", "python3", "python3-minimal", "python3.11", "python3.11-minimal", "readline-common",
];

const APP_PY = String.raw`
import hashlib, http.server, os, sys
MIB = 1 << 20
n, port = int(sys.argv[1]), int(sys.argv[2])
token = os.urandom(8).hex()
words = [b"cloudlet", b"synthesis", b"overlay", b"segment", b"postcopy", b"memory", b"page", b"chunk", b"base", b"early", b"start", b"fill"]
lines, size, i = [], 0, 0
while size < MIB:
    ln = b"%06d %s %s value=%d\n" % (i, words[i % 12], words[(i * 7) % 12], (i * 1000003) % 1000000007)
    lines.append(ln); size += len(ln); i += 1
text = b"".join(lines)[: MIB - MIB // 4]
digits, lower = b"0123456789", b"abcdefghijklmnopqrstuvwxyz"
def table(k):
    d, l = k % 10, (k // 10) % 26
    return bytes.maketrans(digits + lower, digits[d:] + digits[:d] + lower[l:] + lower[:l])
blocks = [bytearray(os.urandom(MIB // 4) + text.translate(table(k))) for k in range(n)]
digests = [hashlib.sha256(b).hexdigest() for b in blocks]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        p = self.path.strip("/").split("/")
        k = int(p[1]) % n if len(p) == 2 and p[0] == "b" and p[1].isdigit() else 0
        d = hashlib.sha256(blocks[k]).hexdigest()
        good = d == digests[k]
        body = ("%s %d %s %s\n" % ("ok" if good else "BAD", k, d, token)).encode()
        self.send_response(200 if good else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("app ready", n, "MiB token", token, flush=True)
http.server.HTTPServer(("0.0.0.0", port), H).serve_forever()
`;

function customizeScript(tgzUrl: string, appMiB: number): string {
  return `set -e
busybox wget -q -O /tmp/python.tgz ${tgzUrl}
tar --warning=no-timestamp -xzf /tmp/python.tgz -C /
ldconfig
rm /tmp/python.tgz
python3 --version
mkdir -p /srv/app
cat > /srv/app/app.py <<'PY'
${APP_PY}
PY
setsid nohup python3 /srv/app/app.py ${appMiB} ${APP_PORT} </dev/null >/var/log/app.log 2>&1 &
i=0
until busybox wget -q -O /dev/null http://127.0.0.1:${APP_PORT}/b/0 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 600 ] || { cat /var/log/app.log; exit 1; }; sleep 1
done
busybox wget -q -O - http://127.0.0.1:${APP_PORT}/b/0
sync
`;
}

function log(msg: string): void {
  process.stderr.write(`[early_start_bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

function sh(cmd: string, args: string[], cwd?: string): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", cwd, maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

/** python3 for the guest: the packages unpacked into one tarball (cached). */
async function pythonTarball(): Promise<string> {
  const tgz = join(DATA, "python3-bookworm.tgz");
  if (existsSync(tgz)) return tgz;
  const debs = join(DATA, "debs");
  const root = join(DATA, "python-root");
  await fsp.rm(root, { recursive: true, force: true });
  await fsp.mkdir(debs, { recursive: true });
  await fsp.mkdir(root, { recursive: true });
  log(`python3 for the guest: apt-get download ${PYTHON_DEBS.length} packages`);
  sh("apt-get", ["download", ...PYTHON_DEBS], debs);
  for (const d of (await fsp.readdir(debs)).filter((f) => f.endsWith(".deb"))) sh("dpkg-deb", ["-x", join(debs, d), root]);
  // The guest's /lib, /bin, ... are merged-/usr symlinks that tar must not replace: their files go under usr/.
  for (const t of ["lib", "lib64", "bin", "sbin"]) {
    if (!existsSync(join(root, t))) continue;
    sh("cp", ["-a", join(root, t) + "/.", join(root, "usr", t) + "/"]);
    await fsp.rm(join(root, t), { recursive: true });
  }
  const tops = await fsp.readdir(root);
  if (tops.some((t) => !["usr", "etc", "var"].includes(t))) throw new Error(`python3's packages hold ${tops.join(", ")}; expected usr, etc, var`);
  sh("tar", ["-C", root, "-czf", tgz + ".part", ...tops]);
  await fsp.rename(tgz + ".part", tgz);
  await fsp.rm(root, { recursive: true, force: true });
  return tgz;
}

/** Serves one file on 127.0.0.1 (the guest reaches it at 10.0.2.2). */
async function serveFile(path: string): Promise<{ port: number; close: () => Promise<void> }> {
  const body = await fsp.readFile(path);
  const server = http.createServer((_, res) => {
    res.writeHead(200, { "Content-Length": body.length });
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as { port: number }).port;
  return { port, close: () => new Promise((r) => server.close(() => r())) };
}

// ---------------------------------------------------------------------------

type Mode = "full" | "early" | "early-ws";

interface Run {
  rateMbit: number;
  mode: Mode;
  rep: number;
  /** From the link's start: the first correct answer, ms. */
  firstAnswerMs: number;
  /** Requests started until the first correct answer. */
  answerAttempts: number;
  /** Link bytes (meta + whole segments) delivered by the first answer. */
  bytesBeforeAnswer: number;
  /** From the link's start: the VM no longer needs the overlay, ms (full: synthesis done, before the resume). */
  localMs: number;
  /** The link's last byte, ms. */
  linkMs: number;
  /** Early start only: when the guest resumed, ms from the link's start. */
  resumedMs?: number;
  latencyMedianMs: number;
  latencyP90Ms: number;
  /** Early runs: the fully synthesized VM's median, measured in turns with this one. */
  refLatencyMedianMs?: number;
  pagesOnDemand?: number;
  chunksOnDemand?: number;
  segmentsOnDemand?: number;
  segmentsRaisedOnLink: number;
  bootSegments: number;
  /** early-ws: segments sent first on the link (the plain early run's working set). */
  workingSetSegments?: number;
  load: number;
}

/** GET through the forward; resolves with status and body, rejects on a network error or after `timeoutMs`. */
function get(port: number, path: string, timeoutMs: number): Promise<{ status: number; body: string }> {
  return new Promise((ok, fail) => {
    const req = http.get({ host: "127.0.0.1", port, path, agent: false, timeout: timeoutMs }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (body += d));
      res.on("end", () => ok({ status: res.statusCode ?? 0, body }));
      res.on("error", fail);
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", fail);
  });
}

/**
 * Asks GET /b/0 until it answers correctly; returns the time (performance.now()) of that answer and
 * the app's token. A new request starts every 500 ms while fewer than 4 are open: one request can
 * sit in a TCP retransmission back-off between QEMU's user network and a guest that was stalled
 * (it doubles, 1 s, 2 s, 4 s...), and that would measure the back-off instead of the app.
 */
async function firstAnswer(port: number, token: string | null, deadline: number): Promise<{ at: number; token: string; attempts: number }> {
  let last = "";
  let open = 0;
  let attempts = 0;
  return await new Promise((done, fail) => {
    let settled = false;
    const attempt = () => {
      open++;
      attempts++;
      get(port, "/b/0", 60_000).then(
        (r) => {
          open--;
          const m = /^ok 0 ([0-9a-f]{64}) ([0-9a-f]{16})$/.exec(r.body.trim());
          if (settled) return;
          if (r.status === 200 && m) {
            settled = true;
            if (token && m[2] !== token) fail(new Error(`the app answered with start-up token ${m[2]}, not the snapshot's ${token}: it was restarted`));
            else done({ at: performance.now(), token: m[2], attempts });
          } else last = `HTTP ${r.status} ${r.body.slice(0, 100)}`;
        },
        (e) => {
          open--;
          last = (e as Error).message;
        },
      );
    };
    const tick = () => {
      if (settled) return;
      if (performance.now() > deadline) {
        settled = true;
        fail(new Error(`no correct answer from the app on port ${port} (last: ${last})`));
        return;
      }
      if (open < 4) attempt();
      setTimeout(tick, open ? 500 : 50);
    };
    tick();
  });
}

/**
 * Latency of `n` requests over distinct blocks per port, after 5 not counted; the ports take turns,
 * in alternating order, so that the load of a shared machine falls on all alike. Median and 90th percentile, ms.
 */
async function latency(ports: number[], n: number, appMiB: number): Promise<Array<{ median: number; p90: number }>> {
  const times: number[][] = ports.map(() => []);
  for (let j = -5; j < n; j++) {
    const k = ((j + 5) * 37) % appMiB;
    const order = j % 2 ? ports.map((_, i) => i) : ports.map((_, i) => ports.length - 1 - i);
    for (const pi of order) {
      const t = performance.now();
      const r = await get(ports[pi], `/b/${k}`, 30_000);
      if (r.status !== 200 || !r.body.startsWith(`ok ${k} `)) throw new Error(`request /b/${k} on port ${ports[pi]}: HTTP ${r.status} ${r.body.slice(0, 100)}`);
      if (j >= 0) times[pi].push(performance.now() - t);
    }
  }
  return times.map((ts) => {
    ts.sort((a, b) => a - b);
    return { median: ts[Math.floor((ts.length - 1) / 2)], p90: ts[Math.min(ts.length - 1, Math.ceil(ts.length * 0.9) - 1)] };
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

async function main(): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      rates: { type: "string", default: "25,100,1000" },
      reps: { type: "string", default: "1" },
      requests: { type: "string", default: "50" },
      "app-mib": { type: "string", default: "200" },
      overlay: { type: "string" },
      base: { type: "string" },
      home: { type: "string" },
      modes: { type: "string", default: "full,early,early-ws" },
      json: { type: "boolean", default: false },
      "from-json": { type: "string" },
      warmup: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (a.help) {
    console.log("usage: node --import tsx bench/early_start_bench.ts [--rates 25,100,1000] [--reps 1] [--requests 50] [--app-mib 200] [--modes full,early,early-ws]\n       [--overlay PATH --base NAME --home DIR] (another overlay of an app answering GET /b/0 on guest port 8080) [--json]\n       --from-json FILE: print the report of a saved run");
    return;
  }
  if (a["from-json"]) {
    console.log(report(JSON.parse(await fsp.readFile(a["from-json"], "utf8"))));
    return;
  }
  const rates = a.rates!.split(",").map(Number);
  const reps = Number(a.reps);
  const requests = Number(a.requests);
  const appMiB = Number(a["app-mib"]);
  const modes = a.modes!.split(",") as Mode[];
  if (rates.some((r) => !(r > 0)) || !(reps >= 1) || !(requests >= 1) || !(appMiB >= 1) || modes.some((m) => !["full", "early", "early-ws"].includes(m))) throw new Error("bad option value (see --help)");

  const { loadCoreFromDisk } = await import("../ts/node/core_file.ts");
  const { createBase } = await import("../ts/jobs/base_create.ts");
  const { overlayFromVm } = await import("../ts/jobs/vm_overlay.ts");
  const { Registry } = await import("../ts/home/registry.ts");
  const { openOverlay } = await import("../ts/node/overlay_files.ts");
  const { RateLimitedReader } = await import("../ts/overlay/rate_reader.ts");
  const { synthesizeReader } = await import("../ts/jobs/file_synthesis.ts");
  const { launchSynthesized } = await import("../ts/jobs/vm_launch.ts");
  const { synthesizeEarly } = await import("../ts/jobs/early_start.ts");
  const { baseFiles } = await import("../ts/jobs/base_create.ts");
  const { stopSynthesized } = await import("../ts/jobs/vm_admin.ts");
  const { homePaths } = await import("../ts/home/paths.ts");
  const core = await loadCoreFromDisk();

  const home = resolve(a.home ?? join(DATA, "home"));
  await fsp.mkdir(home, { recursive: true });
  // The built-in guest: the tests' shared cache when there is one (building it takes minutes).
  const shared = join(REPO, ".build/test-home/guest");
  if (existsSync(join(shared, "image/guest.json")) && !existsSync(join(home, "guest"))) await fsp.symlink(shared, join(home, "guest"));
  const says: string[] = [];
  const ctx = { core, home, hostChoice: { host: "qemu" as const }, say: (l: string) => (says.push(l), log(`  ${l}`)) };

  const baseName = a.base ?? BASE_NAME;
  const overlayPath = resolve(a.overlay ?? join(DATA, `app-${appMiB}${a.warmup ? "-warm" : ""}.overlay`));
  if (!a.overlay && !existsSync(overlayPath)) {
    const reg = new Registry(home);
    if (!(await reg.listBases()).some((b) => b.name === baseName)) {
      log(`base ${baseName}: the built-in guest with 512 MiB`);
      await createBase(ctx, { name: baseName, ready: {}, ramMiB: 512 });
    }
    const tgz = await pythonTarball();
    const srv = await serveFile(tgz);
    try {
      log(`overlay: install python3, start the app (${appMiB} MiB), snapshot`);
      const t = performance.now();
      const r = await overlayFromVm(ctx, {
        base: baseName,
        customize: { script: customizeScript(`http://10.0.2.2:${srv.port}/python.tgz`, appMiB), timeoutMs: 1_200_000 },
        forwards: [{ proto: "tcp", hostPort: 0, guestPort: APP_PORT }],
        out: overlayPath,
        // --warmup: record the working set with the first request (format v2's boot set; the
        // option exists once the working-set recording is in this tree).
        ...((a.warmup ? { warmup: { url: `http://{host}:{port:${APP_PORT}}/b/0`, timeoutMs: 600_000 } } : {}) as object),
      });
      log(`overlay: ${r.bytes} B, ${r.meta.segments.length} segments, ${((performance.now() - t) / 1000).toFixed(0)} s`);
    } finally {
      await srv.close();
    }
  }
  const base = await new Registry(home).getBase(baseName);
  const files = baseFiles(base);

  const probe = await openOverlay(core, overlayPath);
  const meta = probe.meta;
  const overlayBytes = probe.totalBytes;
  await probe.close();
  // Format v2's boot set, passed as `cloudlet synthesis --early-start` does (none in a v1 overlay).
  const bootSet = (meta as { bootSet?: { segments: number; basePages?: Array<[number, number]> } }).bootSet;
  const bootSegments = bootSet?.segments ?? 0;
  const bootBasePages = (bootSet?.basePages ?? []).flatMap(([first, n]) => Array.from({ length: n }, (_, i) => first + i));
  const memSegs = meta.segments.filter((s) => s.ranges.some(([k]) => k === 1)).length;
  const diskSegs = meta.segments.filter((s) => s.ranges.some(([k]) => k === 0)).length;
  const qemu = sh("qemu-system-x86_64", ["--version"]).split("\n")[0];
  const header = {
    date: new Date().toISOString(),
    commit: sh("git", ["-C", REPO, "rev-parse", "--short", "HEAD"]).trim(),
    cpu: cpus()[0]?.model ?? "?",
    cores: cpus().length,
    memGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    qemu,
    overlay: { path: overlayPath, bytes: overlayBytes, segments: meta.segments.length, diskSegments: diskSegs, memorySegments: memSegs, bootSegments, ramMiB: meta.launch.memoryMiB, diskBytes: meta.imageSizes[0], memoryBytes: meta.imageSizes[1] },
  };
  log(`overlay ${overlayBytes} B in ${meta.segments.length} segments (${diskSegs} with disk, ${memSegs} with memory); boot set: ${bootSegments ? `${bootSegments} segments` : "none in the meta"}`);

  const runs: Run[] = [];
  let token: string | null = null;
  const vmsDir = homePaths(home).vms;
  for (let rep = 0; rep < reps; rep++) {
    for (const rate of rates) {
      let ref: { port: number; stop: () => Promise<void> } | null = null;
      let refRow: Run | null = null;
      // The segments the plain early start needed ahead of the in-order stream before its first answer.
      let workingSet: number[] | null = null;
      try {
        for (const mode of modes) {
          if (mode === "early-ws" && !workingSet) {
            log(`${rate} Mbit/s, early-ws: skipped (it needs the early run of the same rate before it)`);
            continue;
          }
          const inner = await openOverlay(core, overlayPath);
          const first: number[] | undefined = mode === "early-ws" ? (workingSet ?? undefined) : undefined;
          const link: Link = new RateLimitedReader(inner, { bitsPerSecond: rate * 1e6, first });
          const load = loadavg()[0];
          log(`${rate} Mbit/s, ${mode}, rep ${rep + 1} (load ${load.toFixed(1)})`);
          says.length = 0;
          const t0 = performance.now();
          const deadline = t0 + 30 * 60_000;
          try {
            await link.start();
            if (mode === "full") {
              const id = `bench-${Date.now().toString(36)}`;
              const dir = join(vmsDir, id);
              await fsp.mkdir(vmsDir, { recursive: true });
              const out = await synthesizeReader(core, link, { baseDisk: files.disk, baseMem: files.memory, machine: base.machine, baseDir: base.dir, overlay: overlayPath, outDir: join(dir, "image"), diskFormat: "qcow2", durable: false, home });
              const localMs = performance.now() - t0;
              const vm = await launchSynthesized(ctx, base, out, { runDir: join(dir, "vm"), autoPorts: true, detach: false });
              // Kept running (idle) until the early start's latency is measured beside it.
              ref = { port: vm.portForwards.find((p) => p.guestPort === APP_PORT)!.hostPort, stop: async () => (await vm.stop().catch(() => {}), await fsp.rm(dir, { recursive: true, force: true })) };
              const ans = await firstAnswer(ref.port, token, deadline);
              token ??= ans.token;
              await link.done;
              runs.push({ rateMbit: rate, mode, rep, firstAnswerMs: ans.at - t0, answerAttempts: ans.attempts, bytesBeforeAnswer: link.bytesDeliveredAt(ans.at - t0), localMs, linkMs: link.deliveries.at(-1)!.atMs, latencyMedianMs: NaN, latencyP90Ms: NaN, segmentsRaisedOnLink: link.raisedCount, bootSegments: 0, load });
              refRow = runs.at(-1)!;
            } else {
              let resumedAt = 0;
              let answered: Promise<{ at: number; token: string; attempts: number }> | null = null;
              const onSay = ctx.say;
              ctx.say = (l: string) => {
                onSay(l);
                const m = /resumed after .*tcp [0-9.]+:(\d+) -> guest port 8080/.exec(l);
                if (m && !answered) {
                  resumedAt = performance.now();
                  answered = firstAnswer(Number(m[1]), token, deadline);
                  answered.catch(() => {});
                }
              };
              let vmId = "";
              try {
                const boot = mode === "early" ? { bootSegments, bootBasePages } : { bootSegments: 0 };
                const vm = await synthesizeEarly(ctx, base, link, { overlayPath, autoPorts: true, ...boot });
                vmId = vm.vmId;
                const localMs = performance.now() - t0;
                if (!answered) throw new Error(`no port for guest port ${APP_PORT} in the early start's output: ${says.join(" | ")}`);
                const ans = await (answered as Promise<{ at: number; token: string; attempts: number }>);
                token ??= ans.token;
                if (mode === "early") workingSet = link.deliveries.filter((d: LinkDelivery) => d.raised && d.atMs <= ans.at - t0).map((d: LinkDelivery) => d.segment);
                const port = vm.ports.find((p) => p.guestPort === APP_PORT)!.hostPort;
                const lat = await latency(ref ? [port, ref.port] : [port], requests, appMiB);
                if (refRow && Number.isNaN(refRow.latencyMedianMs)) [refRow.latencyMedianMs, refRow.latencyP90Ms] = [lat[1].median, lat[1].p90];
                await link.done;
                runs.push({
                  rateMbit: rate, mode, rep, firstAnswerMs: ans.at - t0, answerAttempts: ans.attempts, bytesBeforeAnswer: link.bytesDeliveredAt(ans.at - t0), localMs, linkMs: link.deliveries.at(-1)!.atMs,
                  resumedMs: resumedAt - t0, latencyMedianMs: lat[0].median, latencyP90Ms: lat[0].p90, refLatencyMedianMs: lat[1]?.median,
                  pagesOnDemand: vm.early.pagesOnDemand, chunksOnDemand: vm.early.chunksOnDemand, segmentsOnDemand: vm.early.segmentsOnDemand, segmentsRaisedOnLink: link.raisedCount, bootSegments: mode === "early" ? bootSegments : 0, workingSetSegments: first?.length, load,
                });
              } finally {
                ctx.say = onSay;
                if (vmId) await stopSynthesized(home, vmId).catch((e) => log(`stop ${vmId}: ${(e as Error).message}`));
              }
            }
            const r = runs.at(-1)!;
            log(`  first answer ${(r.firstAnswerMs / 1000).toFixed(2)} s (${r.answerAttempts} requests) after ${(r.bytesBeforeAnswer / 1e6).toFixed(1)} MB; local ${(r.localMs / 1000).toFixed(2)} s; link done ${(r.linkMs / 1000).toFixed(2)} s` + (r.mode !== "full" ? `; latency median ${r.latencyMedianMs.toFixed(1)} ms (full: ${r.refLatencyMedianMs?.toFixed(1) ?? "-"} ms); resumed ${(r.resumedMs! / 1000).toFixed(2)} s, on demand: ${r.pagesOnDemand} pages, ${r.chunksOnDemand} chunks, ${r.segmentsOnDemand} segments raised (${r.segmentsRaisedOnLink} on the link)` : ""));
          } finally {
            link.close();
            await inner.close();
          }
        }
        if (ref && refRow && Number.isNaN(refRow.latencyMedianMs)) {
          const [lat] = await latency([ref.port], requests, appMiB);
          [refRow.latencyMedianMs, refRow.latencyP90Ms] = [lat.median, lat.p90];
        }
      } finally {
        await ref?.stop();
      }
    }
  }

  const result = { ...header, reps, requests, appMiB, loadEnd: loadavg()[0], runs };
  await fsp.mkdir(DATA, { recursive: true });
  await fsp.writeFile(join(DATA, "results.json"), JSON.stringify(result, null, 2) + "\n");
  if (a.json) {
    console.log(JSON.stringify(result));
    return;
  }
  console.log(report(result));
}

/** The markdown report: header, per-rate table of medians, ratios against the targets. */
function report(r: { date: string; commit: string; cpu: string; cores: number; memGiB: number; node: string; qemu: string; overlay: { bytes: number; segments: number; diskSegments: number; memorySegments: number; bootSegments: number; ramMiB: number }; reps: number; requests: number; appMiB: number; loadEnd: number; runs: Run[] }): string {
  const s = (ms: number) => (ms / 1000).toFixed(2) + " s";
  const L: string[] = [];
  L.push(`${r.date.slice(0, 16).replace("T", " ")} UTC, commit ${r.commit}; ${r.cpu}, ${r.cores} cores, ${r.memGiB} GiB; ${r.node}; ${r.qemu}; TCG`);
  L.push(`overlay ${(r.overlay.bytes / 1e6).toFixed(1)} MB, ${r.overlay.segments} segments (${r.overlay.diskSegments} with disk, ${r.overlay.memorySegments} with memory), guest RAM ${r.overlay.ramMiB} MiB, app ${r.appMiB} MiB; boot set: ${r.overlay.bootSegments ? `${r.overlay.bootSegments} segments` : "none"}; ${r.reps} rep(s), medians; latency over ${r.requests} requests; load ${[...new Set(r.runs.map((x) => x.load.toFixed(1)))].join(", ")} at the runs' starts, ${r.loadEnd.toFixed(1)} at the end`);
  L.push("");
  L.push("| rate | path | first answer | bytes before it | resumed | fully local | link done | latency median (p90) | on demand: pages, chunks, segments |");
  L.push("|---|---|---:|---:|---:|---:|---:|---:|---|");
  const rates = [...new Set(r.runs.map((x) => x.rateMbit))];
  const med = (rate: number, mode: Mode, f: (x: Run) => number) => median(r.runs.filter((x) => x.rateMbit === rate && x.mode === mode).map(f));
  const ratios: string[] = [];
  for (const rate of rates) {
    for (const mode of ["full", "early", "early-ws"] as Mode[]) {
      if (!r.runs.some((x) => x.rateMbit === rate && x.mode === mode)) continue;
      const m = (f: (x: Run) => number) => med(rate, mode, f);
      const label = { full: "pipelined full", early: r.overlay.bootSegments ? "early start, boot set" : "early start", "early-ws": `early start, working set first on the link (${m((x) => x.workingSetSegments!)} segments)` }[mode];
      L.push(`| ${rate} Mbit/s | ${label} | ${s(m((x) => x.firstAnswerMs))} | ${(m((x) => x.bytesBeforeAnswer) / 1e6).toFixed(1)} MB (${((100 * m((x) => x.bytesBeforeAnswer)) / r.overlay.bytes).toFixed(0)}%) | ${mode !== "full" ? s(m((x) => x.resumedMs!)) : "-"} | ${s(m((x) => x.localMs))} | ${s(m((x) => x.linkMs))} | ${m((x) => x.latencyMedianMs).toFixed(1)} ms (${m((x) => x.latencyP90Ms).toFixed(1)}) | ${mode !== "full" ? `${m((x) => x.pagesOnDemand!)}, ${m((x) => x.chunksOnDemand!)}, ${m((x) => x.segmentsOnDemand!)}` : "-"} |`);
    }
    for (const mode of ["early", "early-ws"] as Mode[]) {
      if (!r.runs.some((x) => x.rateMbit === rate && x.mode === "full") || !r.runs.some((x) => x.rateMbit === rate && x.mode === mode)) continue;
      const fa = med(rate, mode, (x) => x.firstAnswerMs) / med(rate, "full", (x) => x.firstAnswerMs);
      // Each early run against the full VM it took turns with.
      const lat = med(rate, mode, (x) => x.latencyMedianMs / (x.refLatencyMedianMs ?? NaN));
      const target = rate === 25 ? ` (target <= 0.25x: ${fa <= 0.25 ? "met" : "MISSED"}; latency <= 1.05x: ${lat <= 1.05 ? "met" : "MISSED"})` : "";
      ratios.push(`- ${rate} Mbit/s, ${mode}: first answer ${mode}/full **${fa.toFixed(2)}x**, fully local ${mode}/full ${(med(rate, mode, (x) => x.localMs) / med(rate, "full", (x) => x.localMs)).toFixed(2)}x, latency after fill ${mode}/full **${lat.toFixed(2)}x** (median of the runs' ratios, each against the full VM it took turns with)${target}`);
    }
  }
  return [...L, "", ...ratios].join("\n");
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then(
    () => process.exit(process.exitCode ?? 0),
    (e) => {
      console.error(`early_start_bench: ${(e as Error).stack ?? e}`);
      process.exit(1);
    },
  );
}

