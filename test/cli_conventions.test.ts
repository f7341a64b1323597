// CLI conventions (issue 17 items 7, 8, 10, 11): --help text of negated flags, progress lines,
// exit codes, and JSON for every error and every time.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { promises as fsp } from "node:fs";
import { createServer, type Server } from "node:net";
import { PassThrough } from "node:stream";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { cloudlet, CLOUDLET } from "./_cli.ts";
import { scratchDir, writeImageSet } from "./_images.ts";
import { runTool } from "./_tools.ts";
import { LiveLine, ProgressBar, STALE_STATUS_MS } from "../cli/progress.ts";
import { resolvePortForwards } from "../ts/vm/host_ports.ts";
import { loadGuestImage } from "../ts/vm/guest_image.ts";
import { isCloudletError } from "../ts/errors.ts";
import { Registry } from "../ts/home/registry.ts";
import { homePaths } from "../ts/home/paths.ts";
import { SYNTH_FILES } from "../ts/jobs/file_synthesis.ts";

const TEST_HOME = fileURLToPath(new URL("../.build/test-home", import.meta.url));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A terminal stand-in: a real stream that records what was drawn. */
function terminal(): { stream: NodeJS.WriteStream; text: () => string } {
  const s = new PassThrough();
  let text = "";
  s.setEncoding("utf8").on("data", (d: string) => (text += d));
  Object.assign(s, { columns: 200, isTTY: true });
  return { stream: s as unknown as NodeJS.WriteStream, text: () => text };
}

/** Parses "12.3 MiB/s" into bytes per second. */
function rateOf(line: string): number | null {
  const m = /([\d.]+) (B|KiB|MiB|GiB)\/s/.exec(line);
  return m ? Number(m[1]) * { B: 1, KiB: 1024, MiB: 1 << 20, GiB: 1 << 30 }[m[2] as "B"] : null;
}

function listen(port = 0): Promise<Server> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(port, "127.0.0.1", () => resolve(s));
  });
}

const portOf = (s: Server) => (s.address() as { port: number }).port;

// Item 7.
test("--help: every --no-X flag says what happens without it, never \"(default: true)\"", async () => {
  const global = await cloudlet(["--help"]);
  assert.equal(global.code, 0);
  const commands = [...global.stdout.split("Commands:")[1].split("\n\n")[0].matchAll(/^ {2}(\S+)/gm)].map((m) => m[1]);
  assert.ok(commands.length >= 10, global.stdout);
  const negated: string[] = [];
  for (const c of commands) {
    const h = await cloudlet([c, "--help"]);
    assert.equal(h.code, 0, h.stderr);
    for (const line of h.stdout.split("\n").filter((l) => /^\s+--no-/.test(l))) {
      negated.push(line);
      assert.doesNotMatch(line, /\(default: true\)/, `${c}: ${line}`);
      assert.match(line, /\(default: [^)]+\)$/, `${c}: the line says the default: ${line}`);
    }
  }
  for (const flag of ["--no-run", "--no-announce", "--no-url", "--no-page", "--no-free-memory", "--no-balloon"]) {
    assert.ok(negated.some((l) => l.includes(flag)), `${flag} is in some command's --help`);
  }
  assert.match(negated.find((l) => l.includes("--no-run"))!, /\(default: run the VM\)/);
});

// Item 8, first two points.
test("progress bar: a finished phase keeps its own rate, not counting the wait for the next phase", async () => {
  const t = terminal();
  const bar = new ProgressBar(true, t.stream);
  const total = 8 << 20;
  const t0 = performance.now();
  bar.update({ phase: "compress", done: 0, total });
  await sleep(150);
  bar.update({ phase: "compress", done: total / 2, total });
  await sleep(150);
  bar.update({ phase: "compress", done: total, total });
  const took = performance.now() - t0;
  // The next phase starts long after: that time is not the finished phase's.
  await sleep(1200);
  bar.update({ phase: "apply", done: 0, total: 100 });
  bar.done();
  const finished = t.text().split("\n")[0].split("\r\x1b[2K").pop()!;
  assert.match(finished, /^compress +\[#+\] 100% 8\.00 MiB \/ 8\.00 MiB/);
  const rate = rateOf(finished);
  const expected = total / (took / 1000);
  assert.ok(rate !== null && Math.abs(rate - expected) / expected < 0.15, `final rate ${finished} is about ${(expected / (1 << 20)).toFixed(1)} MiB/s, not counting the 1.2 s until the next phase`);
});

test("progress bar: a step complete at its first report, or of ~0 s, shows sizes only, no 1000 B/s", () => {
  const t = terminal();
  const bar = new ProgressBar(true, t.stream);
  bar.update({ phase: "compress", done: 1, total: 1 });
  bar.update({ phase: "apply", done: 0, total: 100 });
  bar.update({ phase: "apply", done: 100, total: 100 });
  bar.done();
  const lines = t.text().split("\n").map((l) => l.split("\r\x1b[2K").pop()!);
  assert.match(lines[0], /^compress +\[#+\] 100% 1 B \/ 1 B$/);
  assert.match(lines[1], /^apply +\[#+\] 100% 100 B \/ 100 B$/);
  assert.doesNotMatch(t.text(), /B\/s/);
});

test("guest: a cached built-in guest draws no bar on a terminal (no \"1 B / 1 B\")", async (ctx) => {
  const guest = join(TEST_HOME, "guest");
  if (!(await loadGuestImage(guest))) return ctx.skip("the built-in guest is not built here");
  const home = join(await scratchDir("cliconv-tty"), "home");
  await fsp.mkdir(home, { recursive: true });
  await fsp.symlink(guest, join(home, "guest"));
  // `script` gives the command a pseudo-terminal, as a user's shell would.
  const tty = new TextDecoder().decode(await runTool("script", ["-q", "-e", "-c", `'${CLOUDLET}' guest --home '${home}'`, "/dev/null"]));
  assert.match(tty, /guest: kernel /);
  assert.doesNotMatch(tty, /\[[#-]+\]|1 B \/ 1 B|B\/s/, tty);
});

// Item 8, last point: boot, snapshot and customise steps show their elapsed time; the guest's status line wins while it waits.
test("live line: a step ticks its elapsed time; a wait's status (time and serial tail) replaces it; stop clears it", async () => {
  const t = terminal();
  const live = new LiveLine(t.stream);
  live.step();
  await sleep(2300);
  assert.match(t.text(), /\.\.\. 1 s.*\.\.\. 2 s/s);
  live.status("waiting for \"READY\": 3 s | Debian GNU/Linux 12 ttyS0");
  const before = t.text().length;
  await sleep(1200);
  assert.equal(t.text().length, before, "no tick while the job's own status shows");
  assert.ok(t.text().endsWith("\r\x1b[2Kwaiting for \"READY\": 3 s | Debian GNU/Linux 12 ttyS0"));
  // The job stopped refreshing it (its wait is over, a script runs): the step's time shows again.
  await sleep(STALE_STATUS_MS);
  assert.match(t.text().slice(before), /\.\.\. [4-7] s$/, "a stale status gives way to the step's time");
  live.status(null);
  live.stop();
  assert.ok(t.text().endsWith("\r\x1b[2K"), "stop clears the line");
  const end = t.text().length;
  await sleep(1200);
  assert.equal(t.text().length, end, "no tick after stop");
});

// Item 8, third point.
test("base: a cached built-in guest is not announced as being built", async (ctx) => {
  const guest = join(TEST_HOME, "guest");
  if (!(await loadGuestImage(guest))) return ctx.skip("the built-in guest is not built here");
  const dir = await scratchDir("cliconv-guest");
  const home = join(dir, "home");
  await fsp.mkdir(home, { recursive: true });
  await fsp.symlink(guest, join(home, "guest"));
  // Stop the command at its first line: no VM is needed to see what it says about the guest.
  const child = spawn(CLOUDLET, ["base", "--home", home, "--name", "never"], { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  await new Promise<void>((resolve) => {
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
      if (stderr.includes("\n")) resolve();
    });
    child.on("close", () => resolve());
  });
  child.kill("SIGINT");
  const code = await exited;
  const first = stderr.split("\n")[0];
  assert.match(first, /^cloudlet: using the cached built-in guest/, stderr);
  assert.doesNotMatch(stderr, /building the built-in guest/);
  assert.equal(code, 130, stderr);
  assert.deepEqual((await fsp.readdir(join(home, "bases")).catch(() => [])).filter((n) => n !== "registry.db"), [], "cancelled: nothing left in bases/");
});

// Item 10.
test("exit codes: usage errors 2, conflicts 75 (port in use, another server on the home); --help lists them", async () => {
  const h = await cloudlet(["--help"]);
  const codes = h.stdout.split("Exit codes:")[1];
  assert.ok(codes, "the global --help ends with the exit codes");
  for (const c of ["0", "1", "2", "69", "70", "75", "77", "78", "130"]) assert.match(codes, new RegExp(`^ {2}${c} +\\S`, "m"), `exit code ${c} is listed`);
  for (const args of [["overlay", "--frobnicate"], ["overlay", "--base-disk"], ["inspect"], ["frobnicate"], ["overlay", "--disk", "x"]]) {
    const r = await cloudlet(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /^cloudlet: .*\n$/, "one line, no stack");
  }

  const dir = await scratchDir("cliconv-serve");
  const home = join(dir, "home");
  const serve = spawn(CLOUDLET, ["serve", "--home", home, "--listen", "127.0.0.1:0", "--json", "--no-page", "--no-announce"], { stdio: ["ignore", "pipe", "pipe"] });
  let serveErr = "";
  serve.stderr.setEncoding("utf8").on("data", (d: string) => (serveErr += d));
  const serveExit = new Promise<number | null>((resolve) => serve.on("close", (code) => resolve(code)));
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let buf = "";
      serve.stdout.setEncoding("utf8").on("data", (d: string) => {
        buf += d;
        if (buf.includes("\n")) resolve(JSON.parse(buf).port);
      });
      serve.on("close", () => reject(new Error(`serve ended: ${serveErr}`)));
    });
    const again = await cloudlet(["serve", "--home", home, "--listen", "127.0.0.1:0", "--no-page", "--no-announce"]);
    assert.equal(again.code, 75, again.stderr);
    assert.match(again.stderr, /another cloudlet serve \(process \d+\) uses this home/);
    // The port is the conflict here, not the home: a JSON error, no internal error.
    const taken = await cloudlet(["serve", "--home", join(dir, "other"), "--listen", `127.0.0.1:${port}`, "--no-page", "--no-announce", "--json"]);
    assert.equal(taken.code, 75, taken.stderr);
    assert.equal(JSON.parse(taken.stdout).error.code, "CONFLICT");
    assert.match(taken.stderr, new RegExp(`^cloudlet: 127\\.0\\.0\\.1:${port} is in use`));
  } finally {
    serve.kill("SIGINT");
    await serveExit;
  }
});

test("a host port in use is a CONFLICT whose message names --auto-ports", async () => {
  const held = await listen();
  try {
    await assert.rejects(resolvePortForwards([{ proto: "tcp", hostPort: portOf(held), guestPort: 80 }]), (e: unknown) => {
      assert.ok(isCloudletError(e));
      assert.equal(e.code, "CONFLICT");
      assert.match(e.message, new RegExp(`127\\.0\\.0\\.1:${portOf(held)}/tcp .*already in use.*--auto-ports`));
      return true;
    });
  } finally {
    held.close();
  }
});

test("del-base of a base a synthesized VM runs on: CONFLICT, exit 75, the base stays", async () => {
  const home = join(await scratchDir("cliconv-delbase"), "home");
  const id = "c0ffee".padEnd(64, "0");
  await new Registry(home).addBase({ id, name: "busy", created: new Date().toISOString(), dir: join(home, "bases", id), diskSize: 1, memorySize: 1, machine: { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: 256 }, vcpus: 1, boot: null, host: "qemu", source: "test" });
  // What `synthesis BASE OVERLAY` leaves for a VM it started: its launch.json names the base.
  const image = join(homePaths(home).vms, "0123456789ab", "image");
  await fsp.mkdir(image, { recursive: true });
  await fsp.writeFile(join(image, SYNTH_FILES.launch), JSON.stringify({ baseId: id }));
  const r = await cloudlet(["del-base", "busy", "--home", home, "--json"]);
  assert.equal(r.code, 75, r.stderr);
  assert.equal(JSON.parse(r.stdout).error.code, "CONFLICT");
  assert.match(r.stderr, /base busy is in use by VM 0123456789ab/);
  assert.equal((await new Registry(home).getBase("busy")).id, id);
});

// Item 11.
test("--json: option-parse errors print {\"error\":...} on stdout, exit 2", async () => {
  for (const args of [["overlay", "--frobnicate"], ["overlay", "--base-disk"], ["inspect"]]) {
    const r = await cloudlet([...args, "--json"]);
    assert.equal(r.code, 2, r.stderr);
    const err = JSON.parse(r.stdout).error;
    assert.equal(err.code, "BAD_ARGUMENT", r.stdout);
    assert.equal(err.file, null);
    assert.match(err.message, /see cloudlet --help/);
  }
});

test("--json: times are rounded to ms (seconds to 3 decimals)", async () => {
  const dir = await scratchDir("cliconv-json");
  const set = await writeImageSet(dir, 17, 4 << 20, 2 << 20, 20);
  const home = join(dir, "home");
  const made = await cloudlet(["overlay", "--json", "--home", home, "--base-disk", set.baseDisk, "--base-mem", set.baseMem, "--disk", set.disk, "--mem", set.mem, "-o", join(dir, "a.overlay")]);
  assert.equal(made.code, 0, made.stderr);
  const o = JSON.parse(made.stdout);
  assert.equal(typeof o.seconds, "number");
  const synth = await cloudlet(["synthesis", "--json", "--home", home, "--base-disk", set.baseDisk, "--base-mem", set.baseMem, join(dir, "a.overlay"), "-o", join(dir, "out")]);
  assert.equal(synth.code, 0, synth.stderr);
  const s = JSON.parse(synth.stdout);
  assert.equal(typeof s.seconds, "number");
  for (const v of [o.seconds, s.seconds]) assert.ok((String(v).split(".")[1] ?? "").length <= 3, `${v} is rounded to ms`);
});
