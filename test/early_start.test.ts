// Early start (`cloudlet synthesis BASE OVERLAY --early-start`) on real VMs under TCG, through the CLI.
// One base and one overlay (the built-in guest customised by examples/webapp.sh, then a 1 MiB tmpfs marker)
// serve every test:
// - the fallback (userfaultfd switched off for the test) resumes by full synthesis and says so in one line;
// - the lazy VM answers while it fills (ps says "filling"), has the same boot as the fully synthesized
//   one (resumed, not rebooted), its counter continues, and after the fill its disk and memory images
//   equal a full synthesis of the same overlay byte for byte, and so does its running RAM (pmemsave) on
//   the pages the guest has not written since: a tmpfs marker file the customisation wrote;
// - the providers serve a page and a chunk of later segments out of order, verified;
// - a corrupt segment in the background part stops the VM with an error naming it, leaving nothing;
// - a cloudlet killed mid-fill leaves a frozen VM that `ps` ends and removes;
// - overlay --warmup-url records a working set and writes it first (the boot set), which early start applies
//   before the resume, fetching fewer pages on demand than without it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { cloudlet, type CliResult } from "./_cli.ts";
import { runTool } from "./_tools.ts";
import { cachedOverlay, get, homeWithBase, ok, qemuCount, sleep, untilAnswer, WEBAPP } from "./_vm_fixture.ts";
import { loadCoreFromDisk } from "../ts/node/core_file.ts";
import { openOverlay } from "../ts/node/overlay_files.ts";
import { openBase } from "../ts/home/base_cache.ts";
import { FileSource, RawImageSink } from "../ts/node/files.ts";
import { WorkerCodec } from "../ts/node/codec_pool.ts";
import { LazyOverlay, synthesizeEarly } from "../ts/jobs/early_start.ts";
import { stopSynthesized } from "../ts/jobs/vm_admin.ts";
import { Registry } from "../ts/home/registry.ts";
import { CloudletError } from "../ts/errors.ts";
import { synthesizeFiles } from "../ts/jobs/file_synthesis.ts";
import { CHUNK, ImageKind, type MachineConfig } from "../ts/overlay/format.ts";
import { QmpClient } from "../ts/vm/qmp.ts";
import { UploadFeed } from "../ts/server/upload_feed.ts";

const PAGE = 4096;
/** Blocks of the marker file: 1 MiB. */
const MARKER_BLOCKS = 256;
const MARKER_TAG = "CLOUDLET-MARK";
/**
 * Appended to examples/webapp.sh for this file's overlay: a tmpfs file (tmpfs data sits in whole pages)
 * whose every 4 KiB block starts with MARKER_TAG and its six-digit number, then random bytes, so the
 * memory comparison knows pages the guest never writes again instead of guessing. printf and head write
 * straight into the file, so no other page starts with a tag and holds the same bytes.
 */
const MARKER_SCRIPT = `
i=0
while [ $i -lt ${MARKER_BLOCKS} ]; do
  { printf '${MARKER_TAG}%06d' $i; head -c ${PAGE - MARKER_TAG.length - 6} /dev/urandom; } >> /dev/shm/marker
  i=$((i + 1))
done
[ "$(wc -c < /dev/shm/marker)" -eq ${MARKER_BLOCKS * PAGE} ]
echo "marker written: ${MARKER_BLOCKS} blocks in /dev/shm/marker"
`;


interface Fixture {
  home: string;
  overlay: string;
  base: { id: string; dir: string; machine: MachineConfig };
  /** File-mode full synthesis of the overlay (raw disk). */
  full: string;
  /** The boot id of the guest inside the overlay (read from a fully synthesized VM). */
  bootId: string;
}

let fixture: Promise<Fixture> | null = null;
/** The shared base, overlay and full synthesis (every test awaits this; Deno's node:test lacks hooks). */
function shared(): Promise<Fixture> {
  fixture ??= (async () => {
    // The base and overlay come from the fixture cache (made once for both runtimes; test/vm_flow.test.ts
    // makes its own through the CLI, and the working-set test below makes an overlay here).
    const home = await homeWithBase("early");
    const H = ["--home", home];
    const [base] = ok(await cloudlet(["list-base", ...H, "--json"]));
    const overlay = join(home, "webapp.overlay");
    await cachedOverlay((await fsp.readFile(WEBAPP, "utf8")) + MARKER_SCRIPT, ["--segment-size", "128K", "--", "-redir", "tcp:0::80"], overlay);
    const full = join(home, "full");
    // Through the library: file mode's --machine/--cpu cannot name the reporting balloon of this base.
    await synthesizeFiles(await loadCoreFromDisk(), { baseDisk: join(base.dir, "disk.raw"), baseMem: join(base.dir, "memory.raw"), machine: base.machine, overlay, outDir: full, diskFormat: "raw", home });

    // The fallback, in text mode: one line says why, then the full synthesis runs and resumes.
    const fb = await cloudlet(["synthesis", "tiny", overlay, ...H, "--early-start"], { env: { CLOUDLET_NO_USERFAULTFD: "1" } });
    assert.equal(fb.code, 0, fb.stderr);
    const said = fb.stderr.split("\n").filter((l) => /early start/.test(l));
    assert.deepEqual(said, ["cloudlet: early start is not possible here: userfaultfd is unavailable (CLOUDLET_NO_USERFAULTFD is set); falling back to full synthesis"]);
    const vmId = /cloudlet stop ([0-9a-f]{12})/.exec(fb.stdout)?.[1];
    const port = Number(/tcp 127\.0\.0\.1:(\d+) -> guest port 80/.exec(fb.stdout)?.[1]);
    assert.ok(vmId && port, fb.stdout);
    const status = await untilAnswer(`http://127.0.0.1:${port}/cgi-bin/status`);
    ok(await cloudlet(["stop", vmId, ...H, "--json"]));
    const bootId = /boot_id=(\S+)/.exec(status)?.[1];
    assert.ok(bootId, status);
    return { home, overlay, base, full, bootId };
  })();
  return fixture;
}

test("early start: the VM resumes before its overlay is applied, answers while it fills, and ends equal to a full synthesis", async (t) => {
  const f = await shared();
  const H = ["--home", f.home];
  // The background waits before each segment, so the VM runs while most of the overlay is not applied:
  // the guest itself raises most segments on demand, and the rest must outlast the checks while it fills
  // (under load). The gate ends the waits once those checks are done, so the delay is only an upper bound.
  const gate = join(f.home, "fill-gate-lazy");
  // The resume waits for its own gate, so that ps is seen to tell a VM whose guest does not run yet.
  const resumeGate = join(f.home, "resume-gate-lazy");
  const run = cloudlet(["synthesis", "tiny", f.overlay, ...H, "--early-start", "--json"], { env: { CLOUDLET_EARLY_FILL_DELAY_MS: "30000", CLOUDLET_EARLY_FILL_GATE: gate, CLOUDLET_EARLY_RESUME_GATE: resumeGate } });
  let filling: { id: string; ports: { hostPort: number }[] } | null = null;
  let done: CliResult | null = null;
  void run.then((r) => (done = r));
  try {
    await lazyVmChecks();
  } finally {
    // A failed check must not leave the VM running (or its fill waiting): stop whatever this run started.
    await fsp.writeFile(resumeGate, "");
    await fsp.writeFile(gate, "");
    const r = await run;
    const id = /"vmId": "([0-9a-f]{12})"/.exec(r.stdout)?.[1] ?? (filling as { id: string } | null)?.id;
    if (id) await cloudlet(["stop", id, ...H]);
  }
  async function lazyVmChecks() {
    let resuming: { id: string; ports: { hostPort: number }[] } | null = null;
    while (!resuming && !done) {
      const ps = ok(await cloudlet(["ps", ...H, "--json"]));
      assert.equal(ps.find((v: { state: string }) => v.state === "filling"), undefined, "filling only once the guest runs");
      resuming = ps.find((v: { state: string }) => v.state === "resuming") ?? null;
      if (!resuming) await sleep(200);
    }
    assert.ok(resuming, `ps never showed the VM resuming: ${(done as CliResult | null)?.stderr}`);
    assert.equal(await get(`http://127.0.0.1:${resuming.ports[0].hostPort}/cgi-bin/status`), "", "no answer before the resume");
    await fsp.writeFile(resumeGate, "");
    while (!filling && !done) {
      const ps = ok(await cloudlet(["ps", ...H, "--json"]));
      filling = ps.find((v: { state: string }) => v.state === "filling") ?? null;
      if (!filling) await sleep(200);
    }
    assert.ok(filling, `ps never showed the VM filling: ${(done as CliResult | null)?.stderr}`);
    // While it fills: the app answers through its forwarded port, from the same boot as the overlay's guest.
    const during = await untilAnswer(`http://127.0.0.1:${filling.ports[0].hostPort}/cgi-bin/status`, 60_000);
    assert.match(during, /created .* by the customisation script/);
    assert.equal(/boot_id=(\S+)/.exec(during)?.[1], f.bootId, "the same boot: resumed, not rebooted");
    const c1 = Number(/counter=(\d+)/.exec(during)?.[1]);
    const stillFilling = ok(await cloudlet(["ps", ...H, "--json"])).find((v: { id: string }) => v.id === filling!.id);
    assert.equal(stillFilling?.state, "filling", "answered before the fill ended");
    await fsp.writeFile(gate, "");

    const vm = ok(await run);
    const e = vm.earlyStart;
    assert.equal(vm.vmId, filling.id);
    assert.ok(e.resumedMs > 0 && e.resumedMs < e.localMs, JSON.stringify(e));
    assert.ok(e.pagesOnDemand > 0, "the guest faulted pages in on demand");
    assert.ok(e.segmentsOnDemand >= 1, "a request raised a segment ahead of the background");
    assert.ok(e.segments > e.segmentsBeforeResume, JSON.stringify(e));
    t.diagnostic(`resumed ${Math.round(e.resumedMs)} ms, fully local ${Math.round(e.localMs)} ms (fill held until the checks while filling), ${e.pagesOnDemand} pages and ${e.chunksOnDemand} chunks on demand, ${e.segmentsOnDemand} of ${e.segments} segments raised`);
    try {
      // The running VM's RAM against the full synthesis's memory, first thing after the fill.
      const want = await fsp.readFile(join(f.full, "memory.raw"));
      const dump = join(f.home, "lazy-ram.raw");
      const qmp = await QmpClient.connect(join(vm.dir, "vm", "qmp.sock"), { timeoutMs: 10_000 });
      try {
        await qmp.execute("pmemsave", { val: 0, size: want.length, filename: dump }, 120_000);
      } finally {
        qmp.close();
      }
      const got = await fsp.readFile(dump);
      await fsp.rm(dump, { force: true });
      assert.equal(got.length, want.length);
      const marks = markerPages(want);
      const blocks = new Set(marks.map((m) => m.block));
      assert.ok(marks.length >= MARKER_BLOCKS && blocks.size === MARKER_BLOCKS, `the full synthesis holds the marker's ${MARKER_BLOCKS} blocks (found ${marks.length} pages, ${blocks.size} distinct blocks): the test setup is wrong`);
      const differ = marks.filter((m) => !samePage(got, want, m.page));
      assert.deepEqual(differ.slice(0, 10), [], `${differ.length} of ${marks.length} marker pages differ in the running VM's RAM`);
      // The check itself sees a single flipped byte in a marker page.
      const probe = marks[marks.length >> 1].page * PAGE + 1000;
      got[probe] ^= 1;
      assert.equal(samePage(got, want, marks[marks.length >> 1].page), false);
      got[probe] ^= 1;
      let equal = 0;
      let compared = 0;
      for (let p = 0; p < want.length / PAGE; p++) {
        if (p >= 0xa0 && p < 0x100) continue; // guest-physical 0xa0000-0xfffff shows VGA and BIOS, not RAM
        compared++;
        if (samePage(got, want, p)) equal++;
      }
      t.diagnostic(`running RAM after the fill: ${marks.length} marker pages (${MARKER_BLOCKS} blocks) all equal the full synthesis; ${equal} of ${compared} pages equal overall (${((equal / compared) * 100).toFixed(1)}%)`);
      assert.equal(ok(await cloudlet(["ps", ...H, "--json"])).find((v: { id: string }) => v.id === vm.vmId)?.state, "running");
      // Independent of cloudlet now (that process has exited): it keeps counting.
      const port = vm.ports[0].hostPort;
      await sleep(2200);
      const c2 = Number(/counter=(\d+)/.exec(await get(`http://127.0.0.1:${port}/cgi-bin/status`))?.[1]);
      assert.ok(c1 >= 1 && c2 > c1, `counter continued: ${c1} then ${c2}`);
      // The synthesized images equal a full synthesis of the same overlay, byte for byte.
      for (const name of ["disk.raw", "memory.raw", "state.bin"]) {
        assert.equal(await sameFile(join(vm.dir, "image", name), join(f.full, name)), true, `${name} differs from the full synthesis`);
      }
      // The top layer's backing is the local file.
      const info = JSON.parse(new TextDecoder().decode(await runTool("qemu-img", ["info", "-U", "--output=json", join(vm.dir, "image", "disk.qcow2")])));
      assert.equal(info["backing-filename"], join(vm.dir, "image", "disk.raw"));
    } finally {
      ok(await cloudlet(["stop", vm.vmId, ...H, "--json"]));
    }
    // Without the delay, for the record: early start against full synthesis on this overlay.
    const quick = ok(await cloudlet(["synthesis", "tiny", f.overlay, ...H, "--early-start", "--json"]));
    ok(await cloudlet(["stop", quick.vmId, ...H, "--json"]));
    const fullRun = ok(await cloudlet(["synthesis", "tiny", f.overlay, ...H, "--json"]));
    ok(await cloudlet(["stop", fullRun.vmId, ...H, "--json"]));
    t.diagnostic(`no delay: early start resumed ${Math.round(quick.earlyStart.resumedMs)} ms, fully local ${Math.round(quick.earlyStart.localMs)} ms; full synthesis resumed ${Math.round(fullRun.ms.synthesis + fullRun.ms.launch)} ms`);
    await noneLeft(f.home);
  }
});

test("early start: a page and a chunk of later segments are served first, verified, before the fill reaches them", async () => {
  const f = await shared();
  const core = await loadCoreFromDisk();
  const overlay = await openOverlay(core, f.overlay);
  const dir = join(f.home, "lazy-lib");
  await fsp.mkdir(dir, { recursive: true });
  const base = await openBase(core, { disk: join(f.base.dir, "disk.raw"), memory: join(f.base.dir, "memory.raw"), machine: overlay.meta.base.machine, dir: f.base.dir, needIndex: false });
  const codec = new WorkerCodec(1);
  const sizes = overlay.meta.imageSizes;
  const sinks = [
    await RawImageSink.create(join(dir, "disk.raw"), sizes[0], join(f.base.dir, "disk.raw"), false),
    await RawImageSink.create(join(dir, "memory.raw"), sizes[1], join(f.base.dir, "memory.raw"), false),
    await RawImageSink.create(join(dir, "state.bin"), sizes[2], null, false),
  ] as [RawImageSink, RawImageSink, RawImageSink];
  const local = [await FileSource.open(sinks[0].file.tmp), await FileSource.open(sinks[1].file.tmp)] as [FileSource, FileSource];
  const fullDisk = await FileSource.open(join(f.full, "disk.raw"));
  const fullMem = await FileSource.open(join(f.full, "memory.raw"));
  try {
    const lazy = new LazyOverlay(core, overlay, base, codec, sinks, local);
    const n = overlay.meta.segments.length;
    // The last segment that holds memory, and the last that holds disk.
    const memSeg = lazy.segmentsWith(ImageKind.Memory).at(-1)!;
    const diskSeg = lazy.segmentsWith(ImageKind.Disk).at(-1)!;
    const page = overlay.meta.segments[memSeg].ranges.find(([k]) => k === ImageKind.Memory)![1];
    const chunk = overlay.meta.segments[diskSeg].ranges.findLast(([k]) => k === ImageKind.Disk)![1];
    assert.ok(memSeg > 0, `the overlay has memory past its first segment (${n} segments)`);
    assert.equal(lazy.ready(ImageKind.Memory, page), false);
    lazy.demand(ImageKind.Memory, page);
    lazy.demand(ImageKind.Disk, chunk);
    assert.deepEqual(Buffer.from(await lazy.chunk(ImageKind.Memory, page)), Buffer.from(await fullMem.read(page * CHUNK, CHUNK)));
    assert.deepEqual(Buffer.from(await lazy.chunk(ImageKind.Disk, chunk)), Buffer.from(await fullDisk.read(chunk * CHUNK, CHUNK)));
    // Out of order: those segments were applied, segments before them were not.
    assert.equal(lazy.applied[memSeg], 1);
    assert.equal(lazy.applied[diskSeg], 1);
    const skipped = Array.from(lazy.applied.slice(0, Math.max(memSeg, diskSeg))).filter((a, i) => !a && i !== memSeg && i !== diskSeg);
    assert.ok(skipped.length > 0, `segments before them still wait: ${lazy.applied.join(",")}`);
    assert.deepEqual(lazy.raised, [diskSeg === memSeg ? 0 : 1, 1], "each request raised its segment once");
    // A chunk no segment lists comes from the base, checked against its digest.
    let baseChunk = 0;
    while (lazy.segmentOf(ImageKind.Disk, baseChunk) >= 0) baseChunk++;
    assert.deepEqual(Buffer.from(await lazy.chunk(ImageKind.Disk, baseChunk)), Buffer.from(await fullDisk.read(baseChunk * CHUNK, CHUNK)));
    // Then the fill applies the rest.
    await lazy.fill(new AbortController().signal);
    assert.ok(lazy.applied.every((a) => a === 1));
    // A base chunk that differs from the digest recorded for the base is never handed out.
    const lying = { ...base, digests: { read: async (kind: 0 | 1, first: number, count: number) => {
      const d = (await base.digests.read(kind, first, count)).slice();
      const at = (baseChunk - first) * 16;
      if (kind === 0 && at >= 0 && at < d.length) d[at] ^= 1;
      return d;
    } } };
    const strict = new LazyOverlay(core, overlay, lying, codec, sinks, local);
    await assert.rejects(strict.chunk(ImageKind.Disk, baseChunk), (e: unknown) => {
      assert.ok(e instanceof CloudletError && e.code === "WRONG_BASE", String(e));
      assert.match(e.message, new RegExp(`base disk chunk ${baseChunk} differs`));
      assert.equal(e.file, join(f.base.dir, "disk.raw"));
      return true;
    });
    // Fed over a link (the server's upload feed, in order, a segment every 30 ms): the fill's
    // read-ahead must not ask for segments that have not arrived, or each becomes a "want" that
    // the client sends ahead of the guest's own requests (issue 13's bench saw 209-252 of 266).
    const feed = new UploadFeed(core, overlay.meta, "link");
    const wants: number[] = [];
    feed.onWant = (i) => wants.push(i);
    const fed = new LazyOverlay(core, feed, base, codec, sinks, local);
    const upload = feed.ingest((async function* () {
      for (let i = 0; i < n; i++) {
        await sleep(30);
        yield await overlay.segment(i);
      }
    })(), 0);
    await Promise.all([fed.fill(new AbortController().signal), upload]);
    assert.ok(fed.applied.every((a) => a === 1));
    assert.deepEqual(wants, [], "an in-order fill with nobody faulting asks for nothing out of order");
  } finally {
    await Promise.allSettled(sinks.map((s) => s.abort()));
    for (const s of [...local, fullDisk, fullMem]) await s.close();
    await codec.close();
    await base.close();
    await overlay.close();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("early start: a boot set of leading segments is applied before the resume and its pages go first", async () => {
  const f = await shared();
  const core = await loadCoreFromDisk();
  const overlay = await openOverlay(core, f.overlay);
  try {
    const boot = 6;
    const memPages = overlay.meta.segments.slice(0, boot).reduce((t, s) => t + s.ranges.filter(([k]) => k === ImageKind.Memory).reduce((u, r) => u + r[2], 0), 0);
    assert.ok(memPages > 0, "the leading segments hold memory");
    const base = await new Registry(f.home).getBase("tiny");
    const vm = await synthesizeEarly({ core, home: f.home, hostChoice: { host: "qemu" } }, base, overlay, { overlayPath: f.overlay, autoPorts: true, bootSegments: boot });
    try {
      assert.ok(vm.early.segmentsBeforeResume >= boot, JSON.stringify(vm.early));
      assert.equal(vm.early.pagesBeforeResume, memPages);
      const status = await untilAnswer(`http://127.0.0.1:${vm.ports[0].hostPort}/cgi-bin/status`);
      assert.equal(/boot_id=(\S+)/.exec(status)?.[1], f.bootId);
    } finally {
      await stopSynthesized(f.home, vm.vmId);
    }
  } finally {
    await overlay.close();
  }
  await noneLeft(f.home);
});

test("early start: a corrupt segment in the background part stops the VM, names the segment, leaves nothing", async () => {
  const f = await shared();
  const core = await loadCoreFromDisk();
  const ov = await openOverlay(core, f.overlay);
  const meta = ov.meta;
  await ov.close();
  // The last segment without device state: it is applied after the VM resumed.
  const bad = meta.segments.findLastIndex((s) => !s.ranges.some(([k]) => k === ImageKind.State));
  assert.ok(bad >= 0 && meta.segments.some((s) => s.ranges.some(([k]) => k === ImageKind.State)));
  const bytes = new Uint8Array(await fsp.readFile(f.overlay));
  const total = meta.segments.reduce((t, s) => t + s.compressedSize, 0);
  const at = bytes.length - total + meta.segments.slice(0, bad).reduce((t, s) => t + s.compressedSize, 0) + (meta.segments[bad].compressedSize >> 1);
  bytes[at] ^= 0x55;
  const corrupt = join(f.home, "corrupt.overlay");
  await fsp.writeFile(corrupt, bytes);
  const r = await cloudlet(["synthesis", "tiny", corrupt, "--home", f.home, "--early-start"], { env: { CLOUDLET_EARLY_FILL_DELAY_MS: "1500" } });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /early start: VM [0-9a-f]{12} resumed/, "it failed in the background part, after the resume");
  assert.match(r.stderr, new RegExp(`segment ${bad + 1}\\b.*corrupt|corrupt.*segment ${bad + 1}\\b`));
  assert.doesNotMatch(r.stderr, /\bat .*\.ts:\d+/, "no stack trace");
  await noneLeft(f.home);
});

test("early start: a cloudlet killed mid-fill leaves a frozen VM that ps or the next start end; Ctrl-C leaves nothing; require refuses", async () => {
  const f = await shared();
  const H = ["--home", f.home];
  /**
   * Starts an early start whose fill never gets far; resolves once ps shows it filling (resumed: before
   * that ps says "resuming", and a kill then fails the incoming migration and QEMU exits by itself,
   * which is not the case tested here) and its app answers.
   */
  const startFilling = async () => {
    let pid = 0;
    const run = cloudlet(["synthesis", "tiny", f.overlay, ...H, "--early-start", "--json"], { env: { CLOUDLET_EARLY_FILL_DELAY_MS: "20000" }, onSpawn: (p) => (pid = p) });
    let filling: { id: string; ports: { hostPort: number }[] } | null = null;
    for (let i = 0; i < 300 && !filling; i++) {
      await sleep(200);
      filling = ok(await cloudlet(["ps", ...H, "--json"])).find((v: { state: string }) => v.state === "filling") ?? null;
    }
    assert.ok(filling, "the VM was filling");
    assert.match(await untilAnswer(`http://127.0.0.1:${filling.ports[0].hostPort}/cgi-bin/status`, 60_000), /counter=\d+/, "the VM resumed and its app answers");
    return { run, pid, id: filling.id };
  };
  for (const cleaner of ["ps", "the next start"] as const) {
    const { run, pid, id } = await startFilling();
    process.kill(pid, "SIGKILL");
    await run;
    assert.equal(await qemuCount(f.home), 1, "QEMU outlives its source (frozen in postcopy-paused)");
    if (cleaner === "ps") {
      const ps = ok(await cloudlet(["ps", ...H, "--json"]));
      assert.deepEqual(ps.map((v: { id: string; state: string }) => [v.id, v.state]), [[id, "removed"]]);
    } else {
      ok(await cloudlet(["synthesis", "tiny", f.overlay, ...H, "--no-run", "--json"]));
      assert.deepEqual(ok(await cloudlet(["ps", ...H, "--json"])), []);
    }
    await noneLeft(f.home);
  }
  const { run, pid } = await startFilling();
  process.kill(pid, "SIGINT");
  const interrupted = await run;
  assert.equal(interrupted.code, 130, interrupted.stderr);
  await noneLeft(f.home);

  const virsh = await cloudlet(["synthesis", "tiny", f.overlay, ...H, "--host", "virsh", "--early-start=require"]);
  assert.equal(virsh.code, 2, virsh.stderr);
  assert.match(virsh.stderr, /early start cannot run here: the virsh host cannot resume a VM through postcopy/);
  const noUffd = await cloudlet(["synthesis", "tiny", f.overlay, ...H, "--early-start=require"], { env: { CLOUDLET_NO_USERFAULTFD: "1" } });
  assert.equal(noUffd.code, 2, noUffd.stderr);
  assert.match(noUffd.stderr, /userfaultfd is unavailable/);
  const badValue = await cloudlet(["synthesis", "tiny", f.overlay, ...H, "--early-start=maybe"]);
  assert.equal(badValue.code, 2);
  await noneLeft(f.home);
});

test("working set: overlay --warmup-url records what the warm-up touched and writes it first; early start applies that boot set and fetches less on demand", async (t) => {
  const f = await shared();
  const H = ["--home", f.home];
  const ws = join(f.home, "warm.overlay");
  const made = ok(await cloudlet(["overlay", "tiny", ...H, "--script", WEBAPP, "--warmup-url", "http://{host}:{port:80}/cgi-bin/status", "-o", ws, "--segment-size", "128K", "--json", "--", "-redir", "tcp:0::80"]));
  const boot = made.bootSet;
  assert.ok(boot, `the overlay has a boot set: ${JSON.stringify(made)}`);
  assert.equal(boot.reason, "warmup-url http://{host}:{port:80}/cgi-bin/status");
  assert.ok(boot.segments >= 1 && boot.segments < made.segments, JSON.stringify(boot));
  assert.ok(boot.pages > 0 && made.warmup.pagesTouched >= boot.pages, JSON.stringify(made.warmup));
  await noneLeft(f.home);
  // The boot set's segments come first and hold the device state and the recorded pages (the writer's
  // placement is checked chunk by chunk in test/working_set.test.ts).
  const core = await loadCoreFromDisk();
  const ov = await openOverlay(core, ws);
  const meta = ov.meta;
  await ov.close();
  assert.equal(meta.version, 2);
  const mb = meta.bootSet!;
  assert.deepEqual([mb.segments, mb.reason, mb.pages, mb.chunks, mb.basePages.reduce((n, r) => n + r[1], 0)], [boot.segments, boot.reason, boot.pages, boot.chunks, boot.basePages]);
  assert.equal(boot.pages + boot.basePages, made.warmup.pagesTouched, "every touched page is in the boot set: from its segments or listed as the base's");
  const lead = meta.segments.slice(0, boot.segments);
  const count = (segs: typeof lead, kind: number) => segs.reduce((n, s) => n + s.ranges.filter(([k]) => k === kind).reduce((u, r) => u + r[2], 0), 0);
  // All of the device state the overlay stores (its zero chunks need no record) is in the boot set.
  assert.ok(count(lead, ImageKind.State) > 0);
  assert.ok(count(lead, ImageKind.Memory) >= boot.pages && count(lead, ImageKind.Disk) >= boot.chunks);
  assert.equal(count(meta.segments.slice(boot.segments), ImageKind.State), 0);

  /** An early start of `ws` with a slow fill (until the app has answered); the app asked as soon as ps shows the VM filling. */
  let gates = 0;
  const early = async (extra: string[]) => {
    const t0 = performance.now();
    const gate = join(f.home, `fill-gate-ws${++gates}`);
    const run = cloudlet(["synthesis", "tiny", ws, ...H, "--early-start", "--json", ...extra], { env: { CLOUDLET_EARLY_FILL_DELAY_MS: "1500", CLOUDLET_EARLY_FILL_GATE: gate } });
    let done: CliResult | null = null;
    void run.then((r) => (done = r));
    let filling: { id: string; ports: { hostPort: number }[] } | null = null;
    while (!filling && !done) {
      filling = ok(await cloudlet(["ps", ...H, "--json"])).find((v: { state: string }) => v.state === "filling") ?? null;
      if (!filling) await sleep(100);
    }
    assert.ok(filling, `ps never showed the VM filling: ${(done as CliResult | null)?.stderr}`);
    const answer = await untilAnswer(`http://127.0.0.1:${filling.ports[0].hostPort}/cgi-bin/status`, 60_000);
    const answerMs = performance.now() - t0;
    await fsp.writeFile(gate, "");
    const r = await run;
    const vm = ok(r);
    ok(await cloudlet(["stop", vm.vmId, ...H, "--json"]));
    assert.equal(/boot_id=(\S+)/.exec(answer)?.[1], f.bootId, "resumed, not rebooted");
    return { e: vm.earlyStart, answerMs, stderr: r.stderr };
  };
  const withBoot = await early([]);
  const without = await early(["--no-boot-set"]);
  assert.equal(withBoot.e.bootSet.segments, boot.segments);
  assert.ok(withBoot.e.pagesBeforeResume >= boot.pages + boot.basePages, JSON.stringify(withBoot.e));
  assert.equal(without.e.bootSet, null);
  assert.equal(without.e.pagesBeforeResume, 0);
  assert.ok(withBoot.e.pagesOnDemand < without.e.pagesOnDemand, `fewer pages on demand with the boot set: ${withBoot.e.pagesOnDemand} against ${without.e.pagesOnDemand}`);
  // The text output names the boot set.
  const text = await cloudlet(["synthesis", "tiny", ws, ...H, "--early-start"]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, new RegExp(`^boot set: ${boot.segments} of ${meta.segments.length} segments \\(.*; ${boot.pages} pages, ${boot.chunks} disk chunks\\) and ${boot.basePages} base pages applied before the resume`, "m"));
  ok(await cloudlet(["stop", /cloudlet stop ([0-9a-f]{12})/.exec(text.stdout)![1], ...H, "--json"]));
  const bootBytes = lead.reduce((n, s) => n + s.compressedSize, 0);
  const allBytes = meta.segments.reduce((n, s) => n + s.compressedSize, 0);
  t.diagnostic(`boot set: ${boot.segments} of ${meta.segments.length} segments, ${bootBytes} of ${allBytes} bytes (${((bootBytes / allBytes) * 100).toFixed(1)}%), ${boot.pages} pages, ${boot.chunks} chunks, ${boot.basePages} base pages; ` +
    `warm-up touched ${made.warmup.pagesTouched} pages, ${made.warmup.chunksTouched} chunks; creation ${made.seconds.toFixed(1)} s final encode + ${made.warmup.recordSeconds.toFixed(1)} s recording (first encode ${made.warmup.firstEncodeSeconds.toFixed(1)} s)`);
  for (const [name, r] of [["with boot set", withBoot], ["without", without]] as const) {
    t.diagnostic(`${name}: first answer ${Math.round(r.answerMs)} ms, resumed ${Math.round(r.e.resumedMs)} ms, ${r.e.pagesOnDemand} pages and ${r.e.chunksOnDemand} chunks on demand, ${r.e.pagesBeforeResume} pages before the resume`);
  }
  await noneLeft(f.home);
});

test("cleanup: the test home goes", async () => {
  const f = await shared().catch(() => null);
  if (!f) return;
  // VMs a failed test left behind go first: their QEMUs would outlive the folder.
  for (const v of ok(await cloudlet(["ps", "--home", f.home, "--json"]))) await cloudlet(["stop", v.id, "--home", f.home]);
  await fsp.rm(f.home, { recursive: true, force: true });
});

/** No VM directory and no QEMU of this home. */
async function noneLeft(home: string): Promise<void> {
  assert.deepEqual(await fsp.readdir(join(home, "vms")).catch(() => []), [], "no VM directory left");
  assert.equal(await qemuCount(home), 0, "no QEMU left running");
}

/** Pages of `mem` that start with the marker's tag and a block number, with that number. */
function markerPages(mem: Buffer): { page: number; block: number }[] {
  const tag = Buffer.from(MARKER_TAG);
  const out: { page: number; block: number }[] = [];
  for (let p = 0; p < mem.length / PAGE; p++) {
    const at = p * PAGE;
    if (!tag.equals(mem.subarray(at, at + tag.length))) continue;
    const digits = mem.toString("latin1", at + tag.length, at + tag.length + 6);
    if (/^\d{6}$/.test(digits) && Number(digits) < MARKER_BLOCKS) out.push({ page: p, block: Number(digits) });
  }
  return out;
}

/** Page `p` of `a` and of `b` hold the same bytes. */
function samePage(a: Buffer, b: Buffer, p: number): boolean {
  // Views, not Buffer#compare's ranges: Deno's ranged compare costs time in the whole buffer's size.
  return Buffer.compare(a.subarray(p * PAGE, (p + 1) * PAGE), b.subarray(p * PAGE, (p + 1) * PAGE)) === 0;
}

async function sameFile(a: string, b: string): Promise<boolean> {
  const [fa, fb] = [await FileSource.open(a), await FileSource.open(b)];
  try {
    if (fa.size !== fb.size) return false;
    for (let off = 0; off < fa.size; off += 4 << 20) {
      const n = Math.min(4 << 20, fa.size - off);
      if (Buffer.compare(await fa.read(off, n), await fb.read(off, n)) !== 0) return false;
    }
    return true;
  } finally {
    await fa.close();
    await fb.close();
  }
}
