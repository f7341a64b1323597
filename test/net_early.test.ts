// Early start over the network (issue 13), between two test hosts (network namespaces joined by a
// veth pair, the client's side slowed with tc), with real VMs under TCG. One base and one overlay
// serve every test; each test resumes a VM from it (postcopy: no boot):
// - over upload: the VM resumes before the overlay has arrived, answers while it fills, the
//   segments it wants are sent ahead of the in-order stream, and --detach waits for the fill;
// - over --url: the server fetches the wanted segments by range itself;
// - an old-style client (plain PATCH upload, no wants) gets full pipelined synthesis;
// - an upload cut before the VM could resume resumes at the segment boundary, as before;
// - the faults: a segment failing its hash, the link dropped mid-fill, the client killed mid-fill:
//   each stops the VM, says why on both sides, and leaves nothing behind.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ChildProcess } from "node:child_process";
import { cloudlet, CLOUDLET } from "./_cli.ts";
import { runTool } from "./_tools.ts";
import { makeNetPair, type NetPair } from "./_netns.ts";
import { scratchDir } from "./_images.ts";
import { core } from "./_core.ts";
import { decodePackHeader, HEADER_BYTES } from "../ts/overlay/format.ts";
import { openOverlay } from "../ts/node/overlay_files.ts";
import { freshHome } from "./_vm_fixture.ts";

const WEBAPP = fileURLToPath(new URL("../examples/webapp.sh", import.meta.url));
const TOKEN = "test-token-0123456789abcdef";
const AUTH = ["-H", `Authorization: Bearer ${TOKEN}`];
const dec = (b: Uint8Array) => new TextDecoder().decode(b);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Fixture {
  net: NetPair;
  home: string;
  overlay: string;
  tokenFile: string;
  work: string;
  /** The client side's veth (tc shapes its egress: the upload). */
  dev: string;
  /** Segment sizes (compressed), and where the segment data starts in the file. */
  sizes: number[];
  dataOffset: number;
}

let fixture: Promise<Fixture> | null = null;
/** Base + overlay in a fresh home, and the two hosts with a slow client link (built once; every test awaits it). */
function setup(): Promise<Fixture> {
  fixture ??= (async () => {
    // Its own base and overlay, not the fixture cache's: under Deno its fault tests failed more often with the
    // cached ones (docs/testing.md), and a flaky CI run lands nothing.
    const home = await freshHome("netearly");
    const ok = async (args: string[]) => {
      const r = await cloudlet([args[0], "--home", home, ...args.slice(1)]);
      assert.equal(r.code, 0, r.stderr);
    };
    await ok(["base", "--name", "tiny"]);
    const work = await scratchDir("netearly");
    const overlay = join(work, "webapp.overlay");
    await ok(["overlay", "tiny", "--script", WEBAPP, "-o", overlay, "--", "-redir", "tcp:8080::80"]);
    const tokenFile = join(work, "token");
    await fsp.writeFile(tokenFile, TOKEN + "\n", { mode: 0o600 });
    const tag = `e${process.pid % 10000}`;
    const net = await makeNetPair(tag, 210 + (process.pid % 40));
    const dev = `v${tag}c`;
    // 512 kbit/s from the client: the overlay (about 0.36 MB) takes seconds, so the VM resumes long before it has arrived.
    await net.exec(net.cli, "tc", ["qdisc", "add", "dev", dev, "root", "tbf", "rate", "512kbit", "burst", "16kb", "latency", "200ms"]);
    const o = await openOverlay(core, overlay);
    const sizes = o.meta.segments.map((s) => s.compressedSize);
    await o.close();
    const head = decodePackHeader(core, new Uint8Array(await fsp.readFile(overlay)).subarray(0, HEADER_BYTES), overlay);
    return { net, home, overlay, tokenFile, work, dev, sizes, dataOffset: head.dataOffset };
  })();
  return fixture;
}

interface Served {
  child: ChildProcess;
  log: () => string;
  stop: () => Promise<void>;
  /** Ends the fill's waits from now on (they are an upper bound until then); only with `gated`. */
  openGate: () => Promise<void>;
}

let gates = 0;
/**
 * Starts `cloudlet serve` in the server namespace (the fill waits `fillDelayMs` before each segment it starts
 * itself; `gated`: until the test opens the gate).
 */
async function serve(f: Fixture, extra: string[] = [], fillDelayMs = 1500, gated = false): Promise<Served> {
  const gate = join(f.work, `fill-gate-${++gates}`);
  const env: Record<string, string> = { CLOUDLET_EARLY_FILL_DELAY_MS: String(fillDelayMs) };
  if (gated) env.CLOUDLET_EARLY_FILL_GATE = gate;
  const child = f.net.spawn(f.net.srv, CLOUDLET, ["serve", "--home", f.home, "--listen", `${f.net.srvIp}:8021`, "--token-file", f.tokenFile, "--idle-timeout", "4", "--no-announce", ...extra], { env });
  let log = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (log += d));
  const exited = new Promise<void>((r) => child.on("close", () => r()));
  for (let i = 0; i < 150 && !/listening on/.test(log); i++) await sleep(100);
  assert.match(log, /listening on/, `server did not start: ${log}`);
  return {
    child,
    log: () => log,
    stop: async () => {
      child.kill("SIGINT");
      await exited;
    },
    openGate: () => fsp.writeFile(gate, ""),
  };
}

interface Run {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  done: Promise<number | null>;
}

/** Starts `cloudlet client` in the client namespace. */
function client(f: Fixture, args: string[]): Run {
  const c = f.net.spawn(f.net.cli, CLOUDLET, ["client", "-s", `${f.net.srvIp}:8021`, "--token-file", f.tokenFile, "--json", ...args]);
  let stdout = "";
  let stderr = "";
  c.stdout!.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  c.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  return { child: c, stdout: () => stdout, stderr: () => stderr, done: new Promise((r) => c.on("close", r)) };
}

/** Waits for the client's "resumed early" line; returns the VM's forwarded port. */
async function resumedPort(r: Run): Promise<number> {
  for (let i = 0; i < 600 && !/resumed early/.test(r.stderr()); i++) await sleep(100);
  const m = /resumed early after [\d.]+ s \(tcp [\d.]+:(\d+) -> guest port 80\)/.exec(r.stderr());
  assert.ok(m, `the client never said the VM resumed: ${r.stderr()}`);
  return Number(m[1]);
}

async function curlFromClient(f: Fixture, url: string): Promise<string> {
  return dec(await f.net.exec(f.net.cli, "curl", ["-s", "-m", "5", url]).catch(() => new Uint8Array(0)));
}

async function untilAnswer(f: Fixture, url: string, ms: number): Promise<string> {
  const end = Date.now() + ms;
  for (;;) {
    const body = await curlFromClient(f, url);
    if (body || Date.now() > end) return body;
    await sleep(200);
  }
}

async function sessionStatus(f: Fixture, id: string): Promise<{ state: string; earlyStart?: boolean; outOfOrder?: number; endpoint?: { ports: { hostPort: number }[] } }> {
  return JSON.parse(dec(await f.net.exec(f.net.cli, "curl", ["-s", ...AUTH, `http://${f.net.srvIp}:8021/v1/sessions/${id}`])));
}

async function qemuCount(f: Fixture): Promise<number> {
  const r = await runTool("pgrep", ["-f", `qemu-system-x86_64.*${f.home}/sessions`]).catch(() => new Uint8Array(0));
  return dec(r).split("\n").filter(Boolean).length;
}

/** Nothing of any session is left: no VM, no folder. */
async function noneLeft(f: Fixture): Promise<void> {
  // A failed session's cleanup runs after its failure is reported: give it a few seconds.
  const folders = () => fsp.readdir(join(f.home, "sessions")).catch(() => [] as string[]);
  for (let i = 0; i < 100 && ((await qemuCount(f)) > 0 || (await folders()).length > 0); i++) await sleep(100);
  assert.equal(await qemuCount(f), 0, "no VM left");
  assert.deepEqual(await folders(), [], "no session or VM folder left");
}

test("early start over upload: the VM answers before its overlay has arrived, wanted segments go first, --detach waits for the fill", async (t) => {
  const f = await setup();
  // The background fill waits 15 s before it starts (and before each segment it starts itself): the app's
  // request raises the segments it needs, so the VM answers long before it is fully local.
  const srv = await serve(f, [], 15_000, true);
  try {
    const r = client(f, ["-o", f.overlay, "--early-start", "--detach"]);
    const port = await resumedPort(r);
    const t0 = Date.now();
    const during = await untilAnswer(f, `http://${f.net.srvIp}:${port}/cgi-bin/status`, 60_000);
    const answeredAt = new Date().toISOString();
    assert.match(during, /counter=\d+ boot_id=\S+/, "the app answers while the VM fills");
    const session = /session ([0-9a-f]{32}): VM [0-9a-f]+ resumed early/.exec(srv.log())?.[1];
    assert.ok(session, srv.log());
    t.diagnostic(`answered ${Date.now() - t0} ms after the client said resumed`);
    assert.equal((await sessionStatus(f, session)).state, "filling", `it answered (${answeredAt}) before it was fully local:\n${srv.log()}`);
    // Detaching before the fill is refused by the server, with the reason.
    const det = dec(await f.net.exec(f.net.cli, "curl", ["-s", "-X", "POST", ...AUTH, `http://${f.net.srvIp}:8021/v1/sessions/${session}/detach`]));
    assert.match(det, /still filling/);
    // Checked while it fills: the rest of the fill need not wait.
    await srv.openGate();
    assert.equal(await r.done, 0, r.stderr());
    const out = JSON.parse(r.stdout());
    assert.equal(out.detached, true);
    assert.match(r.stderr(), /fully local after [\d.]+ s/);
    assert.ok(out.earlyStart.resumedMs < out.earlyStart.localMs, JSON.stringify(out));
    assert.ok(out.earlyStart.outOfOrder >= 1, `segments were sent ahead of the in-order stream: ${JSON.stringify(out)}`);
    assert.match(srv.log(), /wants segment \d+/);
    const st = await sessionStatus(f, session);
    assert.equal(st.state, "running");
    // Fully local and detached, it runs on without its client; the counter continues.
    // (The guest's counter ticks on its own clock, and with the fill released right after the checks
    // above the VM can be fully local within the same tick: read until it moves, for at most 30 s.)
    const c1 = Number(/counter=(\d+)/.exec(during)?.[1]);
    let c2 = c1;
    for (const end = Date.now() + 30_000; c2 <= c1 && Date.now() < end; ) {
      c2 = Number(/counter=(\d+)/.exec(await curlFromClient(f, `http://${f.net.srvIp}:${port}/cgi-bin/status`))?.[1]);
      if (c2 <= c1) await sleep(500);
    }
    assert.ok(c2 > c1, `counter continued: ${c1} then ${c2}`);
    await f.net.exec(f.net.cli, "curl", ["-s", "-X", "DELETE", ...AUTH, `http://${f.net.srvIp}:8021/v1/sessions/${session}`]);
    await noneLeft(f);
  } finally {
    await srv.stop();
  }
  await noneLeft(f);
});

test("early start over --url: the server fetches the wanted segments by range itself", async () => {
  const f = await setup();
  // A Range-capable file server on the client host (its answers go through the slow link).
  const fileServer = f.net.spawn(f.net.cli, "node", ["-e", `
const http = require("http"), fs = require("fs");
const data = fs.readFileSync(${JSON.stringify(f.overlay)});
http.createServer((req, res) => {
  const m = /bytes=(\\d+)-(\\d*)/.exec(req.headers.range || "");
  if (!m) { res.writeHead(200, { "content-length": data.length }); return res.end(data); }
  const a = Number(m[1]), b = m[2] ? Number(m[2]) : data.length - 1;
  res.writeHead(206, { "content-range": "bytes " + a + "-" + b + "/" + data.length, "content-length": b - a + 1 });
  res.end(data.subarray(a, b + 1));
}).listen(8099, "${f.net.cliIp}", () => console.log("up"));`]);
  await new Promise((r) => fileServer.stdout!.once("data", r));
  const srv = await serve(f, [], 5000, true);
  try {
    const r = client(f, ["--url", `http://${f.net.cliIp}:8099/webapp.overlay`, "--early-start", "--detach"]);
    const port = await resumedPort(r);
    assert.match(await untilAnswer(f, `http://${f.net.srvIp}:${port}/`, 60_000), /Hello from a synthesized/);
    await srv.openGate();
    assert.equal(await r.done, 0, r.stderr());
    const out = JSON.parse(r.stdout());
    assert.ok(out.earlyStart.resumedMs < out.earlyStart.localMs, JSON.stringify(out));
    // The wanted segment is fetched by range beside the in-order download (which may bring it first on this small overlay,
    // and then the VM can be fully local before the range answer is in: its log line may come after the client is done).
    const fetched = /wants segment (\d+)[^]*fetched wanted segment \1 by range/;
    for (let i = 0; i < 150 && !fetched.test(srv.log()); i++) await new Promise((res) => setTimeout(res, 200));
    assert.match(srv.log(), fetched, `no range fetch of the wanted segment in the server log:\n${srv.log()}`);
    await f.net.exec(f.net.cli, "curl", ["-s", "-X", "DELETE", ...AUTH, `http://${f.net.srvIp}:8021/v1/sessions/${out.session}`]);
  } finally {
    await srv.stop();
    fileServer.kill();
  }
  await noneLeft(f);
});

test("an old-style client (plain PATCH upload, no wants, no earlyStart field) gets full pipelined synthesis from the new server", async () => {
  const f = await setup();
  const srv = await serve(f);
  try {
    const file = new Uint8Array(await fsp.readFile(f.overlay));
    const metaFile = join(f.work, "old.meta");
    const dataFile = join(f.work, "old.data");
    await fsp.writeFile(metaFile, file.subarray(0, f.dataOffset));
    await fsp.writeFile(dataFile, file.subarray(f.dataOffset));
    const base = `http://${f.net.srvIp}:8021/v1/sessions`;
    const curl = async (...a: string[]) => dec(await f.net.exec(f.net.cli, "curl", ["-s", ...AUTH, ...a]));
    const id = JSON.parse(await curl("-X", "POST", base)).id;
    const meta = JSON.parse(await curl("-X", "PUT", "--data-binary", `@${metaFile}`, `${base}/${id}/meta`));
    assert.equal(meta.earlyStart, false, "no early start for a client that did not say it serves wants");
    const patched = await curl("-w", "%{http_code}", "-X", "PATCH", "-H", "Upload-Offset: 0", "-H", "Content-Type: application/octet-stream", "--data-binary", `@${dataFile}`, `${base}/${id}/data`);
    assert.equal(patched, "204");
    let st = await sessionStatus(f, id);
    for (let i = 0; i < 600 && st.state !== "running" && st.state !== "failed"; i++) {
      assert.notEqual(st.state, "filling", "never resumed early");
      await sleep(100);
      st = await sessionStatus(f, id);
    }
    assert.equal(st.state, "running", JSON.stringify(st));
    assert.equal(st.earlyStart, false);
    assert.match(await untilAnswer(f, `http://${f.net.srvIp}:${st.endpoint!.ports[0].hostPort}/`, 30_000), /Hello from a synthesized/);
    assert.doesNotMatch(srv.log(), /wants segment|resumed early/);
    await curl("-X", "DELETE", `${base}/${id}`);
  } finally {
    await srv.stop();
  }
  await noneLeft(f);
});

test("early start: an upload cut during the boot set (before the VM can resume) resumes at the segment boundary as before", async () => {
  const f = await setup();
  const srv = await serve(f);
  try {
    const tsx = fileURLToPath(new URL("../node_modules/tsx/dist/loader.mjs", import.meta.url));
    const script = fileURLToPath(new URL("./_resume_client.ts", import.meta.url));
    const r = JSON.parse(dec(await f.net.exec(f.net.cli, "node", ["--import", `file://${tsx}`, script, `${f.net.srvIp}:8021`, f.tokenFile, f.overlay, "early"])));
    assert.equal(r.resumeAt, r.lastStart, `resumed at ${r.resumeAt}: the start of the segment cut at ${r.cutAt}`);
    assert.equal(r.after, r.total);
    assert.equal(r.resumed, true, "the VM was started early");
    assert.match(await untilAnswer(f, `http://${f.net.srvIp}:${r.endpoint.ports[0].hostPort}/`, 30_000), /Hello from a synthesized/);
    await f.net.exec(f.net.cli, "curl", ["-s", "-X", "DELETE", ...AUTH, `http://${f.net.srvIp}:8021/v1/sessions/${r.sessionId}`]);
  } finally {
    await srv.stop();
  }
  await noneLeft(f);
});

test("faults mid-fill: a segment failing its hash, the link dropped, the client killed: the VM stops, both sides say why, nothing is left", async () => {
  const f = await setup();
  // The fill waits 15 s before it starts: every fault below hits the VM while it fills.
  const srv = await serve(f, [], 15_000);
  try {
    // A flipped byte in the largest segment (the guest wants it early, and the in-order stream brings it too).
    const bytes = new Uint8Array(await fsp.readFile(f.overlay));
    const big = f.sizes.indexOf(Math.max(...f.sizes));
    const at = f.dataOffset + f.sizes.slice(0, big).reduce((a, b) => a + b, 0) + Math.floor(f.sizes[big] / 2);
    bytes[at] ^= 0x01;
    const flipped = join(f.work, "flipped.overlay");
    await fsp.writeFile(flipped, bytes);
    const bad = client(f, ["-o", flipped, "--early-start"]);
    assert.equal(await bad.done, 1);
    assert.match(bad.stderr(), new RegExp(`segment ${big + 1} is corrupt`));
    assert.match(srv.log(), new RegExp(`failed: .*segment ${big + 1} is corrupt`));
    await noneLeft(f);

    // The link dropped mid-fill: the server hears nothing for its lease (4 s) and stops the VM; the client hears no keep-alive and says so.
    const cut = client(f, ["-o", f.overlay, "--early-start"]);
    await resumedPort(cut);
    assert.doesNotMatch(cut.stderr(), /fully local/);
    await f.net.exec(f.net.cli, "ip", ["link", "set", f.dev, "down"]);
    try {
      assert.equal(await cut.done, 1);
      assert.match(cut.stderr(), /lost the cloudlet .*while the VM was filling/);
      // The two sides time out on their own clocks: the client may give up before the server's lease ends.
      const leaseEnded = /failed: the client sent nothing \(no segment, no keep-alive\) for 4 s while its VM was filling/;
      for (let i = 0; i < 100 && !leaseEnded.test(srv.log()); i++) await sleep(100);
      assert.match(srv.log(), leaseEnded, `the server's log:\n${srv.log()}\nthe client's:\n${cut.stderr()}`);
    } finally {
      await f.net.exec(f.net.cli, "ip", ["link", "set", f.dev, "up"]);
    }
    await noneLeft(f);

    // The client killed mid-fill. A small socket send buffer: otherwise the kernel still delivers what the
    // killed client had written (most of this small overlay), and the VM becomes local after the kill.
    const wmem = dec(await f.net.exec(f.net.cli, "sysctl", ["-n", "net.ipv4.tcp_wmem"])).trim().split(/\s+/).join(" ");
    await f.net.exec(f.net.cli, "sysctl", ["-q", "-w", "net.ipv4.tcp_wmem=4096 16384 16384"]);
    const killed = client(f, ["-o", f.overlay, "--early-start"]);
    await resumedPort(killed);
    const before = (srv.log().match(/while its VM was filling/g) ?? []).length;
    killed.child.kill("SIGKILL");
    await f.net.exec(f.net.cli, "sysctl", ["-q", "-w", `net.ipv4.tcp_wmem=${wmem}`]);
    for (let i = 0; i < 100 && (srv.log().match(/while its VM was filling/g) ?? []).length === before; i++) await sleep(100);
    assert.equal((srv.log().match(/failed: the client sent nothing \(no segment, no keep-alive\) for 4 s while its VM was filling/g) ?? []).length, before + 1, srv.log());
    await noneLeft(f);
  } finally {
    await srv.stop();
  }
  await noneLeft(f);
});

test("cleanup: namespaces removed", async () => {
  const f = await setup();
  await f.net.destroy();
  await fsp.rm(f.home, { recursive: true, force: true });
  await fsp.rm(f.work, { recursive: true, force: true });
});
