/**
 * Overlay benchmark: cloudlet against its peers on realistic VM pairs, side by side in one run.
 *
 *   node --import tsx bench/overlay_bench.ts [--reps 3] [--pairs vm,mkfs] [--no-build]
 *                                            [--no-peers] [--no-big] [--json]
 *   node --import tsx bench/overlay_bench.ts --from-json .build/bench/overlay-results.json
 *   node --import tsx bench/overlay_bench.ts --synthesis [--reps 5] [--pairs vm,mkfs]
 *       (synthesis only: xz -d -T1 and cloudlet synthesis raw / qcow2 interleaved, ~2 min a pair)
 *   node --import tsx bench/overlay_bench.ts --free-memory [--hosts qemu,virsh] [--reps 1]
 *       (200 MiB written and freed before the snapshot, free memory on/off; bench/free_memory_bench.ts)
 *
 * Takes about 25 minutes on a 2-core machine (the zstd -19 and xz -9 peers are most of it);
 * --no-peers --no-big --reps 1 takes about 2. Results: bench/OVERLAY_RESULTS.md.
 *
 * Inputs come from bench/fixtures/build-all.sh (run first unless --no-build; cached):
 *   pair "vm"   (B) a REAL guest under QEMU/TCG: base = booted minbase guest (disk + RAM
 *               snapshot); custom = that snapshot resumed, `apt-get install python3` run inside,
 *               python3 http.server started, snapshotted again. Custom disk = qcow2 top layer.
 *   pair "mkfs" (A) disk only realistic: base disk as in B; custom disk = mke2fs -d of the base tree
 *               after a chroot `apt-get install python3` (a freshly laid out image, raw). Memory
 *               images are pair B's (the real VM's).
 *
 * For each pair it measures:
 *   - base preparation (digests + index, done once per base), separately from creation;
 *   - cloudlet overlay size and creation time (median of --reps, base already prepared);
 *   - cloudlet synthesis (decode + verify + apply) into raw and qcow2 outputs, checked
 *     byte-identical against the custom images;
 *   - `xz -d -T1` over the overlay's own segments (split layout), for the throughput target;
 *   - the honest peer: cloudlet's own classes (same dedup, same XOR choices, taken from its
 *     overlay) with each image's records then payload as ONE xz -9e stream (bench/_honest_peer.ts):
 *     what independent segments cost in size, at most;
 *   - cloudlet with each --profile (fast, balanced, small): size, creation CPU and RSS, synthesis;
 *   - peers, disk and memory separately then summed: xdelta3 -e -9 -S djw, zstd --patch-from
 *     --long=31 -19, and xz -9 of the changed 4 KiB chunks (plus their indexes); each decoded
 *     back to full images and checked.
 * Then the same change in an 8 GiB sparse disk: creation time (1 GiB vs 8 GiB) and peak RSS.
 *
 * Every external command runs under /usr/bin/time (wall, user, sys, max RSS). Results are
 * printed as markdown and written as JSON to .build/bench/overlay-results.json.
 */
import { spawnSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { availableParallelism, cpus, loadavg, totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const DATA = process.env.BENCH_DATA ?? join(REPO, ".build/bench");
const CLOUDLET = join(REPO, "bin/cloudlet");
const CHUNK = 4096;

// ---------------------------------------------------------------------------
// --prepare-base: run in a child process, so that its time and RSS are measured alone.
// It does what `cloudlet overlay` does first: find the cache dir and build the base index.

async function prepareBase(home: string, baseDisk: string, baseMem: string): Promise<void> {
  const { loadCoreFromDisk } = await import("../ts/node/core_file.ts");
  const { cacheDirFor, fileIdentity, openBase } = await import("../ts/home/base_cache.ts");
  const { defaultMachine } = await import("../ts/home/machine_defaults.ts");
  const { indexCacheDir } = await import("../ts/home/paths.ts");
  const core = await loadCoreFromDisk();
  const t0 = performance.now();
  const machine = defaultMachine((await fileIdentity(baseMem)).size);
  const dir = cacheDirFor(core, indexCacheDir(resolve(home)), await fileIdentity(baseDisk), await fileIdentity(baseMem), machine);
  const base = await openBase(core, { disk: baseDisk, memory: baseMem, machine, dir, needIndex: true });
  const seconds = (performance.now() - t0) / 1000;
  await base.close();
  const bytes = readdirSync(dir).reduce((t, f) => t + statSync(join(dir, f)).size, 0);
  process.stdout.write(JSON.stringify({ dir, id: base.id, seconds, bytes }) + "\n");
}

// ---------------------------------------------------------------------------
// Running and timing commands.

interface Run {
  wall: number;
  user: number;
  sys: number;
  /** Max RSS in MiB (GNU time %M, of the process and its waited-for children, whichever is largest). */
  rssMiB: number;
  stdout: string;
}

/** Runs a command under /usr/bin/time; stdout to `outFile` when given (else captured). Throws on failure. */
function timed(cmd: string, args: string[], o: { outFile?: string; env?: NodeJS.ProcessEnv; allowFail?: boolean } = {}): Run {
  const tf = join(DATA, "runs", `.time-${process.pid}`);
  const outFd = o.outFile ? openSync(o.outFile, "w") : null;
  try {
    const r = spawnSync("/usr/bin/time", ["-f", "%e %U %S %M", "-o", tf, cmd, ...args], {
      stdio: ["ignore", outFd ?? "pipe", "pipe"],
      encoding: "utf8",
      maxBuffer: 256 << 20,
      env: o.env ?? process.env,
    });
    if (r.status !== 0 && !o.allowFail) {
      throw new Error(`${cmd} ${args.join(" ")} failed (${r.status}):\n${(r.stderr ?? "").slice(-3000)}`);
    }
    const [wall, user, sys, rss] = readFileSync(tf, "utf8").trim().split("\n").pop()!.split(" ").map(Number);
    return { wall, user, sys, rssMiB: rss / 1024, stdout: r.stdout ?? "" };
  } finally {
    if (outFd !== null) closeSync(outFd);
    rmSync(tf, { force: true });
  }
}

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed: ${r.stderr}`);
  return r.stdout;
}

function same(a: string, b: string): boolean {
  return spawnSync("cmp", ["-s", a, b]).status === 0;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function size(p: string): number {
  return statSync(p).size;
}

/** 1-minute load averages seen during the run (the machine may be shared). */
const loads: number[] = [];

function log(msg: string): void {
  loads.push(loadavg()[0]);
  process.stderr.write(`[overlay_bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

// ---------------------------------------------------------------------------
// Data.

interface Pair {
  name: string;
  description: string;
  baseDisk: string;
  baseMem: string;
  /** What cloudlet gets: the qcow2 top layer or the raw custom disk. */
  customDisk: string;
  /** The flat custom disk (what the peers get, and what synthesis must rebuild). */
  customDiskRaw: string;
  customMem: string;
}

function pairs(): Record<string, Pair> {
  const vm = join(DATA, "vm");
  return {
    vm: {
      name: "vm",
      description: "B: real VM (TCG). base = booted minbase guest + RAM snapshot; custom = resumed, apt-get install python3 (26 debs) inside, python3 http.server running, snapshotted. Custom disk = qcow2 top layer over base.raw.",
      baseDisk: join(vm, "base.raw"),
      baseMem: join(vm, "base.mem"),
      customDisk: join(vm, "custom.qcow2"),
      customDiskRaw: join(vm, "custom.raw"),
      customMem: join(vm, "custom.mem"),
    },
    mkfs: {
      name: "mkfs",
      description: "A: base disk as in B; custom disk = mke2fs -d of the base tree after chroot apt-get install python3 (fresh layout, raw). Memory = B's real RAM snapshots.",
      baseDisk: join(vm, "base.raw"),
      baseMem: join(vm, "base.mem"),
      customDisk: join(DATA, "custom-mkfs.raw"),
      customDiskRaw: join(DATA, "custom-mkfs.raw"),
      customMem: join(vm, "custom.mem"),
    },
  };
}

/**
 * The changed 4 KiB chunks of `custom` against `base` (base reads as zero past its end), written
 * as one file: u64 LE chunk count, u64 LE chunk indexes, then the chunks. Returns chunk count and seconds.
 */
function changedChunks(base: string, custom: string, out: string): { chunks: number; seconds: number } {
  const t0 = performance.now();
  const fb = openSync(base, "r");
  const fc = openSync(custom, "r");
  const block = 16 << 20;
  const bb = Buffer.alloc(block);
  const cb = Buffer.alloc(block);
  const indexes: number[] = [];
  const dataPath = out + ".data";
  const fd = openSync(dataPath, "w");
  const total = size(custom);
  for (let off = 0; off < total; off += block) {
    const nc = readSync(fc, cb, 0, Math.min(block, total - off), off);
    const nb = readSync(fb, bb, 0, nc, off);
    bb.fill(0, nb, nc);
    cb.fill(0, nc);
    for (let p = 0; p < nc; p += CHUNK) {
      const c = cb.subarray(p, p + CHUNK);
      if (c.equals(bb.subarray(p, p + CHUNK))) continue;
      indexes.push((off + p) / CHUNK);
      writeSync(fd, c);
    }
  }
  closeSync(fd);
  closeSync(fb);
  closeSync(fc);
  const head = Buffer.alloc(8 + indexes.length * 8);
  head.writeBigUInt64LE(BigInt(indexes.length), 0);
  indexes.forEach((ix, i) => head.writeBigUInt64LE(BigInt(ix), 8 + i * 8));
  const ofd = openSync(out, "w");
  writeSync(ofd, head);
  const data = readFileSync(dataPath);
  writeSync(ofd, data);
  closeSync(ofd);
  rmSync(dataPath);
  return { chunks: indexes.length, seconds: (performance.now() - t0) / 1000 };
}

/** Applies a changed-chunks file (see changedChunks) onto a copy of `base` at `out`. Returns seconds. */
function applyChunks(base: string, payload: string, out: string, imageSize: number): number {
  const t0 = performance.now();
  sh("cp", ["--sparse=always", base, out]);
  sh("truncate", ["-s", String(imageSize), out]);
  const buf = readFileSync(payload);
  const n = Number(buf.readBigUInt64LE(0));
  const fd = openSync(out, "r+");
  const dataAt = 8 + n * 8;
  for (let i = 0; i < n; i++) {
    const ix = Number(buf.readBigUInt64LE(8 + i * 8));
    writeSync(fd, buf, dataAt + i * CHUNK, CHUNK, ix * CHUNK);
  }
  closeSync(fd);
  return (performance.now() - t0) / 1000;
}

// ---------------------------------------------------------------------------
// Measurements.

interface PeerResult {
  tool: string;
  bytes: { disk: number; memory: number; total: number };
  create: { wall: number; cpu: number; rssMiB: number };
  decode: { wall: number; cpu: number; rssMiB: number };
  verified: boolean;
  note?: string;
}

interface CloudletResult {
  prep: { seconds: number; wall: number; rssMiB: number; indexBytes: number };
  bytes: number;
  segments: number;
  compressedSegmentBytes: number;
  rawPayloadBytes: number;
  rebuiltBytes: number;
  create: { wall: number[]; internal: number[]; cpu: number[]; rssMiB: number };
  synth: {
    raw: { wall: number[]; internal: number[]; cpu: number[]; rssMiB: number };
    qcow2: { wall: number[]; internal: number[]; cpu: number[]; rssMiB: number };
    raw1thread: { wall: number; internal: number; cpu: number };
    verified: boolean;
  };
  xzd: { wall: number[]; cpu: number[] };
  classes: Record<string, Record<string, { chunks: number; bytes: number }>>;
  classTotals: Record<string, { chunks: number; bytes: number }>;
}

function cloudletCreate(p: Pair, home: string, out: string, extra: string[] = []): { run: Run; json: { bytes: number; seconds: number; segments: number } } {
  const run = timed(CLOUDLET, ["overlay", "--home", home, "--base-disk", p.baseDisk, "--base-mem", p.baseMem, "--disk", p.customDisk, "--mem", p.customMem, "-o", out, "--json", ...extra]);
  return { run, json: JSON.parse(run.stdout) };
}

function cloudletSynth(p: Pair, home: string, overlay: string, outDir: string, fmt: "raw" | "qcow2", extra: string[] = []): { run: Run; json: { seconds: number } } {
  rmSync(outDir, { recursive: true, force: true });
  const run = timed(CLOUDLET, ["synthesis", "--home", home, "--base-disk", p.baseDisk, "--base-mem", p.baseMem, overlay, "-o", outDir, "--disk-format", fmt, "--json", ...extra]);
  return { run, json: JSON.parse(run.stdout) };
}

function prep(home: string, baseDisk: string, baseMem: string): CloudletResult["prep"] {
  const run = timed(process.execPath, ["--import", "tsx", fileURLToPath(import.meta.url), "--prepare-base", "--home", home, "--base-disk", baseDisk, "--base-mem", baseMem]);
  const j = JSON.parse(run.stdout.trim().split("\n").pop()!);
  return { seconds: j.seconds, wall: run.wall, rssMiB: run.rssMiB, indexBytes: j.bytes };
}

function measureCloudlet(p: Pair, home: string, work: string, reps: number): CloudletResult {
  log(`${p.name}: base preparation`);
  const pr = prep(home, p.baseDisk, p.baseMem);
  const create: CloudletResult["create"] = { wall: [], internal: [], cpu: [], rssMiB: 0 };
  let packed = "";
  let bytes = 0;
  for (let i = 0; i < reps; i++) {
    log(`${p.name}: cloudlet overlay ${i + 1}/${reps}`);
    packed = join(work, `c${i}.overlay`);
    rmSync(packed, { force: true });
    const { run, json } = cloudletCreate(p, home, packed);
    create.wall.push(run.wall);
    create.internal.push(json.seconds);
    create.cpu.push(run.user + run.sys);
    create.rssMiB = Math.max(create.rssMiB, run.rssMiB);
    bytes = json.bytes;
    if (i < reps - 1) rmSync(packed, { force: true });
  }
  // The seed layout: one .xz per segment, for `xz -d`.
  log(`${p.name}: cloudlet overlay, split layout`);
  const splitDir = join(work, "split");
  rmSync(splitDir, { recursive: true, force: true });
  mkdirSync(splitDir);
  cloudletCreate(p, home, join(splitDir, "x.overlay-meta"));
  const segFiles = readdirSync(splitDir).filter((f) => f.endsWith(".xz")).sort((a, b) => Number(a.slice(2, -3)) - Number(b.slice(2, -3))).map((f) => join(splitDir, f));
  const xzd: CloudletResult["xzd"] = { wall: [], cpu: [] };
  for (let i = 0; i < reps; i++) {
    const r = timed("xz", ["-d", "-T1", "-c", "--", ...segFiles], { outFile: "/dev/null" });
    xzd.wall.push(r.wall);
    xzd.cpu.push(r.user + r.sys);
  }
  const insp = JSON.parse(sh(CLOUDLET, ["inspect", packed, "--json"]));
  // Synthesis.
  const synth: CloudletResult["synth"] = {
    raw: { wall: [], internal: [], cpu: [], rssMiB: 0 },
    qcow2: { wall: [], internal: [], cpu: [], rssMiB: 0 },
    raw1thread: { wall: 0, internal: 0, cpu: 0 },
    verified: false,
  };
  const outDir = join(work, "synth");
  for (const fmt of ["raw", "qcow2"] as const) {
    for (let i = 0; i < reps; i++) {
      log(`${p.name}: cloudlet synthesis --disk-format ${fmt} ${i + 1}/${reps}`);
      const { run, json } = cloudletSynth(p, home, packed, outDir, fmt);
      synth[fmt].wall.push(run.wall);
      synth[fmt].internal.push(json.seconds);
      synth[fmt].cpu.push(run.user + run.sys);
      synth[fmt].rssMiB = Math.max(synth[fmt].rssMiB, run.rssMiB);
      if (i === 0) {
        const memOk = same(join(outDir, "memory.raw"), p.customMem);
        const diskOk = fmt === "raw"
          ? same(join(outDir, "disk.raw"), p.customDiskRaw)
          : spawnSync("qemu-img", ["compare", "-q", "-f", "qcow2", "-F", "raw", join(outDir, "disk.qcow2"), p.customDiskRaw]).status === 0;
        if (!memOk || !diskOk) throw new Error(`${p.name}: synthesis (${fmt}) is NOT byte-identical (disk ${diskOk}, memory ${memOk})`);
        synth.verified = true;
      }
    }
  }
  {
    log(`${p.name}: cloudlet synthesis --threads 1`);
    const { run, json } = cloudletSynth(p, home, packed, outDir, "raw", ["--threads", "1"]);
    synth.raw1thread = { wall: run.wall, internal: json.seconds, cpu: run.user + run.sys };
  }
  rmSync(outDir, { recursive: true, force: true });
  return {
    prep: pr,
    bytes,
    segments: insp.segments.length,
    compressedSegmentBytes: insp.sizes.compressed,
    rawPayloadBytes: insp.sizes.raw,
    rebuiltBytes: insp.sizes.rebuilt,
    create,
    synth,
    xzd,
    classes: insp.classes,
    classTotals: insp.classTotals,
  };
}

/** What {@link measureSynthesis} measured for one pair. */
interface SynthesisRow {
  pair: string;
  segments: number;
  compressedBytes: number;
  xzd: { wall: number[]; cpu: number[] };
  raw: { wall: number[]; engine: number[]; cpu: number[] };
  qcow2: { wall: number[]; engine: number[]; cpu: number[] };
  load: number[];
}

/**
 * Synthesis against `xz -d -T1` on the same segments, one of each per round
 * (interleaved, so a change in the machine's load hits all three alike).
 * The segments for xz are the packed overlay's own, written out one file each.
 */
async function measureSynthesis(p: Pair, home: string, work: string, reps: number): Promise<SynthesisRow> {
  const { loadCoreFromDisk } = await import("../ts/node/core_file.ts");
  const { openOverlay } = await import("../ts/node/overlay_files.ts");
  log(`${p.name}: cloudlet overlay (default profile)`);
  const packed = join(work, "s.overlay");
  rmSync(packed, { force: true });
  cloudletCreate(p, home, packed);
  const core = await loadCoreFromDisk();
  const ov = await openOverlay(core, packed);
  const segDir = join(work, "segments");
  mkdirSync(segDir, { recursive: true });
  const segFiles: string[] = [];
  for (let i = 0; i < ov.meta.segments.length; i++) {
    segFiles.push(join(segDir, `s${i + 1}.xz`));
    writeFileSync(segFiles[i], await ov.segment(i));
  }
  const row: SynthesisRow = { pair: p.name, segments: ov.meta.segments.length, compressedBytes: ov.meta.segments.reduce((t, s) => t + s.compressedSize, 0), xzd: { wall: [], cpu: [] }, raw: { wall: [], engine: [], cpu: [] }, qcow2: { wall: [], engine: [], cpu: [] }, load: [] };
  await ov.close();
  const outDir = join(work, "synth");
  for (let i = 0; i < reps; i++) {
    log(`${p.name}: round ${i + 1}/${reps}: xz -d -T1, synthesis raw, synthesis qcow2`);
    row.load.push(loadavg()[0]);
    const x = timed("xz", ["-d", "-T1", "-c", "--", ...segFiles], { outFile: "/dev/null" });
    row.xzd.wall.push(x.wall);
    row.xzd.cpu.push(x.user + x.sys);
    for (const fmt of ["raw", "qcow2"] as const) {
      const { run, json } = cloudletSynth(p, home, packed, outDir, fmt);
      row[fmt].wall.push(run.wall);
      row[fmt].engine.push(json.seconds);
      row[fmt].cpu.push(run.user + run.sys);
      if (i === 0) {
        const memOk = same(join(outDir, "memory.raw"), p.customMem);
        const diskOk = fmt === "raw" ? same(join(outDir, "disk.raw"), p.customDiskRaw) : spawnSync("qemu-img", ["compare", "-q", "-f", "qcow2", "-F", "raw", join(outDir, "disk.qcow2"), p.customDiskRaw]).status === 0;
        if (!memOk || !diskOk) throw new Error(`${p.name}: synthesis (${fmt}) is NOT byte-identical (disk ${diskOk}, memory ${memOk})`);
      }
    }
  }
  rmSync(outDir, { recursive: true, force: true });
  return row;
}

/** The markdown table of {@link measureSynthesis} rows. */
function synthesisTable(rows: SynthesisRow[]): string {
  const L: string[] = [];
  L.push("| pair | segments | `xz -d -T1` wall / CPU s | synthesis raw: engine / process wall / CPU s | qcow2: engine / wall / CPU s | raw vs xz: by engine / by CPU | qcow2 vs xz: by engine / by CPU | best round, engine (raw / qcow2) | 1-min load |");
  L.push("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const r of rows) {
    const xw = median(r.xzd.wall);
    const xc = median(r.xzd.cpu);
    const cell = (m: SynthesisRow["raw"]) => `${f2(median(m.engine))} / ${f2(median(m.wall))} / ${f2(median(m.cpu))}`;
    const ratio = (m: SynthesisRow["raw"]) => `**${f2(xw / median(m.engine))}x** / ${f2(xc / median(m.cpu))}x`;
    // Best round: the round whose xz and synthesis both ran on the least loaded machine.
    const best = (m: SynthesisRow["raw"]) => f2(Math.max(...m.engine.map((e, i) => r.xzd.wall[i] / e)));
    L.push(`| ${r.pair} | ${r.segments} (${mb(r.compressedBytes)} MiB) | ${f2(xw)} / ${f2(xc)} | ${cell(r.raw)} | ${cell(r.qcow2)} | ${ratio(r.raw)} | ${ratio(r.qcow2)} | ${best(r.raw)}x / ${best(r.qcow2)}x | ${r.load.map(f1).join(", ")} |`);
  }
  L.push("");
  L.push("Medians of the rounds. \"by engine\": `xz -d` wall / the engine's own seconds (after node start-up: base open, output set-up, decode, check, apply, fsync, rename); \"by CPU\": xz's CPU / the synthesis process's CPU (user + sys, all threads, node start-up included). The target is >= 0.8x with 2 workers.");
  return L.join("\n");
}

interface PartResult {
  bytes: number;
  create: { wall: number; cpu: number; rssMiB: number };
  decode: { wall: number; cpu: number; rssMiB: number };
  verified: boolean;
  note?: string;
}

/** Peer results per (tool, base, custom): pairs that share an image (the memory) measure it once. */
const peerCache = new Map<string, PartResult>();

const PEERS = ["xdelta3 -e -9 -S djw", "zstd --patch-from --long=31 -19", "xz -9 -T1 of changed 4 KiB chunks"] as const;

/** Encodes and decodes one image with one peer. */
function peerPart(tool: (typeof PEERS)[number], base: string, custom: string, work: string, tag: string): PartResult {
  const key = `${tool}|${base}|${custom}`;
  const hit = peerCache.get(key);
  if (hit) return hit;
  log(`${tag}: ${tool}`);
  const out = join(work, `${tag.replace(/\W/g, "_")}.out`);
  const t = (r: Run) => ({ wall: r.wall, cpu: r.user + r.sys, rssMiB: r.rssMiB });
  let res: PartResult;
  if (tool === PEERS[0]) {
    const d = join(work, `${tag.replace(/\W/g, "_")}.xd3`);
    const c = timed("xdelta3", ["-e", "-9", "-S", "djw", "-f", "-s", base, custom, d]);
    const x = timed("xdelta3", ["-d", "-f", "-s", base, d, out]);
    res = { bytes: size(d), create: t(c), decode: t(x), verified: same(out, custom) };
  } else if (tool === PEERS[1]) {
    const z = join(work, `${tag.replace(/\W/g, "_")}.zst`);
    const c = timed("zstd", ["-q", "-f", `--patch-from=${base}`, "--long=31", "-19", custom, "-o", z]);
    const x = timed("zstd", ["-q", "-f", "-d", `--patch-from=${base}`, "--long=31", z, "-o", out]);
    res = { bytes: size(z), create: t(c), decode: t(x), verified: same(out, custom) };
  } else {
    const payload = join(work, `${tag.replace(/\W/g, "_")}.chunks`);
    const cc = changedChunks(base, custom, payload);
    const x = payload + ".xz";
    const cr = timed("xz", ["-9", "-T1", "-k", "-f", "-c", payload], { outFile: x });
    const back = payload + ".back";
    const dr = timed("xz", ["-d", "-T1", "-c", x], { outFile: back });
    const applied = applyChunks(base, back, out, size(custom));
    res = {
      bytes: size(x),
      create: { wall: cc.seconds + cr.wall, cpu: cc.seconds + cr.user + cr.sys, rssMiB: cr.rssMiB },
      decode: { wall: dr.wall + applied, cpu: dr.user + dr.sys + applied, rssMiB: dr.rssMiB },
      verified: same(out, custom),
      note: `${cc.chunks} changed chunks (${mb(size(payload))} MiB with indexes)`,
    };
    rmSync(payload, { force: true });
    rmSync(back, { force: true });
  }
  rmSync(out, { force: true });
  peerCache.set(key, res);
  return res;
}

function measurePeers(p: Pair, work: string): PeerResult[] {
  return PEERS.map((tool) => {
    const disk = peerPart(tool, p.baseDisk, p.customDiskRaw, work, `${p.name}-disk`);
    const mem = peerPart(tool, p.baseMem, p.customMem, work, `${p.name}-memory`);
    const sum = (a: PartResult["create"], b: PartResult["create"]) => ({ wall: a.wall + b.wall, cpu: a.cpu + b.cpu, rssMiB: Math.max(a.rssMiB, b.rssMiB) });
    return {
      tool,
      bytes: { disk: disk.bytes, memory: mem.bytes, total: disk.bytes + mem.bytes },
      create: sum(disk.create, mem.create),
      decode: sum(disk.decode, mem.decode),
      verified: disk.verified && mem.verified,
      note: tool === PEERS[2] ? `create includes the full-image compare that finds the changed chunks, decode includes applying them onto a sparse copy of the base; disk: ${disk.note}, memory: ${mem.note}` : undefined,
    };
  });
}

// ---------------------------------------------------------------------------
// The honest peer (cloudlet's own classes, one xz -9e stream per image; bench/_honest_peer.ts)
// and cloudlet's --profile choices, measured on the same pair in the same run.

interface HonestResult {
  bytes: { disk: number; memory: number; total: number };
  /** CPU seconds of the two xz -9e runs (the classes come from cloudlet's overlay, not timed). */
  cpu: number;
  /** xz -d -T1 of both streams. */
  decode: { wall: number; cpu: number };
}

function measureHonest(p: Pair, overlay: string, work: string): HonestResult {
  log(`${p.name}: honest peer (cloudlet's classes, xz -9e per image)`);
  const dir = join(work, "honest");
  rmSync(dir, { recursive: true, force: true });
  const run = timed(process.execPath, ["--import", "tsx", join(REPO, "bench/_honest_peer.ts"), overlay, "--keep", dir]);
  const j = JSON.parse(run.stdout.trim().split("\n").pop()!);
  const streams = readdirSync(dir).filter((f) => f.endsWith(".xz")).map((f) => join(dir, f));
  const d = timed("xz", ["-d", "-T1", "-c", "--", ...streams], { outFile: "/dev/null" });
  rmSync(dir, { recursive: true, force: true });
  return { bytes: { disk: j.bytes.disk, memory: j.bytes.memory, total: j.bytes.total }, cpu: j.cpu, decode: { wall: d.wall, cpu: d.user + d.sys } };
}

const PROFILES_MEASURED = ["fast", "balanced", "small"] as const;

interface ProfileResult {
  profile: string;
  bytes: number;
  segments: number;
  create: { wall: number; cpu: number; rssMiB: number };
  /** Synthesis, qcow2 out (engine seconds, process CPU). */
  synth: { internal: number; cpu: number; rssMiB: number };
}

/** One creation and one synthesis per --profile, interleaved in one loop so that the load is shared alike. */
function measureProfiles(p: Pair, home: string, work: string): ProfileResult[] {
  return PROFILES_MEASURED.map((profile) => {
    log(`${p.name}: cloudlet overlay --profile ${profile}`);
    const out = join(work, `profile-${profile}.overlay`);
    rmSync(out, { force: true });
    const { run, json } = cloudletCreate(p, home, out, ["--profile", profile]);
    const synth = cloudletSynth(p, home, out, join(work, "profile-synth"), "qcow2");
    rmSync(join(work, "profile-synth"), { recursive: true, force: true });
    rmSync(out, { force: true });
    return {
      profile,
      bytes: json.bytes,
      segments: json.segments,
      create: { wall: run.wall, cpu: run.user + run.sys, rssMiB: run.rssMiB },
      synth: { internal: synth.json.seconds, cpu: synth.run.user + synth.run.sys, rssMiB: synth.run.rssMiB },
    };
  });
}

/** The report's lines for the honest peer and the profiles of one pair. */
function reportHonest(cl: CloudletResult, peers: PeerResult[], honest: HonestResult | undefined, profiles: ProfileResult[] | undefined): string[] {
  const L: string[] = [];
  if (honest) {
    const r = cl.bytes / honest.bytes.total;
    L.push("Honest peer (the same classes and dedup as cloudlet, taken from its overlay; each image's records then payload as ONE `xz -9e -T1` stream: the lower bound of what independent segments cost):", "");
    L.push("| | disk B | memory B | total B | cloudlet / it | xz CPU s | decode s (wall / CPU) |");
    L.push("|---|---:|---:|---:|---:|---:|---:|");
    L.push(`| honest peer | ${honest.bytes.disk} | ${honest.bytes.memory} | ${honest.bytes.total} | **${f2(r)}** | ${f2(honest.cpu)} | ${f2(honest.decode.wall)} / ${f2(honest.decode.cpu)} |`);
    for (const pe of peers) L.push(`| ${pe.tool} | ${pe.bytes.disk} | ${pe.bytes.memory} | ${pe.bytes.total} | ${f2(cl.bytes / pe.bytes.total)} | ${f2(pe.create.cpu)} | ${f2(pe.decode.wall)} / ${f2(pe.decode.cpu)} |`);
    L.push("");
    L.push(`- size against the honest peer: cloudlet ${cl.bytes} B / ${honest.bytes.total} B = **${f2(r)}x** (target <= 0.90x): **${r <= 0.9 ? "met" : "missed"}**`, "");
  }
  if (profiles?.length) {
    const bal = profiles.find((x) => x.profile === "balanced");
    L.push("`--profile` (one run each, interleaved; synthesis with qcow2 output):", "");
    L.push("| profile | overlay B | vs balanced | vs honest peer | segments | create CPU s | create wall s | create RSS MiB | synthesis engine s | synthesis CPU s |");
    L.push("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (const x of profiles) {
      L.push(`| ${x.profile} | ${x.bytes} | ${bal ? f2(x.bytes / bal.bytes) : "–"} | ${honest ? f2(x.bytes / honest.bytes.total) : "–"} | ${x.segments} | ${f2(x.create.cpu)} | ${f2(x.create.wall)} | ${f1(x.create.rssMiB)} | ${f2(x.synth.internal)} | ${f2(x.synth.cpu)} |`);
    }
    L.push("");
  }
  return L;
}

interface BigResult {
  prepBig: CloudletResult["prep"];
  small: { wall: number[]; internal: number[]; cpu: number[] };
  big: { wall: number[]; internal: number[]; cpu: number[]; rssMiB: number };
  synthBig: { qcow2: { wall: number; internal: number; rssMiB: number }; raw: { wall: number; internal: number; rssMiB: number }; verified: boolean };
  rawSmall?: { wall: number; internal: number; cpu: number; rssMiB: number };
  rawBig?: { wall: number; internal: number; cpu: number; rssMiB: number };
}

function measureBig(home: string, work: string, reps: number, smallVm: Pair, smallMkfs: Pair | null): BigResult {
  const b = join(DATA, "big");
  const big: Pair = { ...smallVm, name: "vm-8G", baseDisk: join(b, "base.raw"), customDisk: join(b, "custom.qcow2"), customDiskRaw: join(b, "custom.qcow2") };
  log("8 GiB: base preparation");
  const prepBig = prep(home, big.baseDisk, big.baseMem);
  const res: BigResult = { prepBig, small: { wall: [], internal: [], cpu: [] }, big: { wall: [], internal: [], cpu: [], rssMiB: 0 }, synthBig: { qcow2: { wall: 0, internal: 0, rssMiB: 0 }, raw: { wall: 0, internal: 0, rssMiB: 0 }, verified: false } };
  // Interleave 1 GiB and 8 GiB runs so that machine noise hits both alike.
  let overlay = "";
  for (let i = 0; i < reps; i++) {
    log(`1 GiB vs 8 GiB creation ${i + 1}/${reps}`);
    const s = cloudletCreate(smallVm, home, join(work, `s${i}.overlay`));
    res.small.wall.push(s.run.wall);
    res.small.internal.push(s.json.seconds);
    res.small.cpu.push(s.run.user + s.run.sys);
    overlay = join(work, `b${i}.overlay`);
    const g = cloudletCreate(big, home, overlay);
    res.big.wall.push(g.run.wall);
    res.big.internal.push(g.json.seconds);
    res.big.cpu.push(g.run.user + g.run.sys);
    res.big.rssMiB = Math.max(res.big.rssMiB, g.run.rssMiB);
    rmSync(join(work, `s${i}.overlay`), { force: true });
  }
  const outDir = join(work, "synth-big");
  log("8 GiB: synthesis (qcow2)");
  let r = cloudletSynth(big, home, overlay, outDir, "qcow2");
  res.synthBig.qcow2 = { wall: r.run.wall, internal: r.json.seconds, rssMiB: r.run.rssMiB };
  const cmpDisk = join(b, "custom.qcow2");
  res.synthBig.verified = spawnSync("qemu-img", ["compare", "-q", join(outDir, "disk.qcow2"), cmpDisk]).status === 0 && same(join(outDir, "memory.raw"), big.customMem);
  log("8 GiB: synthesis (raw)");
  r = cloudletSynth(big, home, overlay, outDir, "raw");
  res.synthBig.raw = { wall: r.run.wall, internal: r.json.seconds, rssMiB: r.run.rssMiB };
  rmSync(outDir, { recursive: true, force: true });
  if (smallMkfs) {
    // Raw custom disks: no changed-extent list, so every chunk is read and hashed.
    log("raw custom disk: 1 GiB vs 8 GiB creation (informational)");
    const bigMkfs: Pair = { ...smallMkfs, baseDisk: join(b, "base.raw"), customDisk: join(b, "custom-mkfs.raw"), customDiskRaw: join(b, "custom-mkfs.raw") };
    const s = cloudletCreate(smallMkfs, home, join(work, "rs.overlay"));
    res.rawSmall = { wall: s.run.wall, internal: s.json.seconds, cpu: s.run.user + s.run.sys, rssMiB: s.run.rssMiB };
    const g = cloudletCreate(bigMkfs, home, join(work, "rb.overlay"));
    res.rawBig = { wall: g.run.wall, internal: g.json.seconds, cpu: g.run.user + g.run.sys, rssMiB: g.run.rssMiB };
  }
  return res;
}

// ---------------------------------------------------------------------------
// Report.

const MiB = 1 << 20;
const f1 = (x: number) => x.toFixed(1);
const f2 = (x: number) => x.toFixed(2);
const mb = (x: number) => (x / MiB).toFixed(2);

function machine(): string[] {
  const cpu = cpus()[0]?.model ?? "unknown";
  const ver = (c: string, a: string[]) => spawnSync(c, a, { encoding: "utf8" }).stdout?.split("\n")[0]?.trim() ?? "?";
  return [
    `- CPU: ${cpu}, ${availableParallelism()} cores, ${Math.round(totalmem() / 2 ** 30)} GiB RAM; 1-min load when this report was rendered ${loadavg()[0].toFixed(2)}`,
    `- node ${process.version}; ${ver("xz", ["--version"])}; ${(ver("xdelta3", ["-V"]) || spawnSync("xdelta3", ["-V"], { encoding: "utf8" }).stderr.split("\n")[0]).replace(/, Copyright.*/, "")}; ${ver("zstd", ["--version"])}; ${ver("qemu-img", ["--version"])}`,
  ];
}

/** Everything one run measured (also written as JSON, and re-rendered by --from-json). */
interface Results {
  all: Record<string, { pair: Pair; cl: CloudletResult; peers: PeerResult[]; honest?: HonestResult; profiles?: ProfileResult[] }>;
  big: BigResult | null;
  /** Wall-clock seconds of the whole run. */
  runSeconds?: number;
  /** 1-minute load averages sampled during the run. */
  loads?: number[];
}

function report({ all, big, runSeconds, loads: ld }: Results): string {
  const L: string[] = [];
  L.push("## Machine", "", ...machine(), "");
  for (const { pair, cl, peers, honest, profiles } of Object.values(all)) {
    L.push(`## Pair ${pair.name}`, "", pair.description, "");
    L.push(`- base disk ${mb(size(pair.baseDisk))} MiB, base memory ${mb(size(pair.baseMem))} MiB; custom disk given to cloudlet: ${pair.customDisk.replace(DATA + "/", "")}`);
    L.push(`- base preparation (once per base${cl.prep.seconds < 0.5 ? "; already prepared by an earlier pair with the same base, so this only opened it" : ""}): ${f2(cl.prep.seconds)} s (process ${f2(cl.prep.wall)} s, peak RSS ${f1(cl.prep.rssMiB)} MiB), prepared data ${mb(cl.prep.indexBytes)} MiB`);
    L.push(`- cloudlet overlay: ${cl.bytes} B in ${cl.segments} segments; payload ${mb(cl.rawPayloadBytes)} MiB -> ${mb(cl.compressedSegmentBytes)} MiB; rewrites ${mb(cl.rebuiltBytes)} MiB of image`);
    L.push("");
    const peerMin = peers.length ? Math.min(...peers.map((p) => p.bytes.total)) : NaN;
    const bestPeer = peers.find((p) => p.bytes.total === peerMin);
    L.push("| tool | disk B | memory B | total B | / smallest peer | create s (wall) | create CPU s | decode s (wall) | decode CPU s | peak RSS MiB (create/decode) | verified |");
    L.push("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    const clCreate = median(cl.create.wall);
    const clSynth = median(cl.synth.raw.wall);
    L.push(`| **cloudlet** (packed, xz -6, 2 threads) | – | – | ${cl.bytes} | ${f2(cl.bytes / peerMin)} | ${f2(clCreate)} | ${f2(median(cl.create.cpu))} | ${f2(clSynth)} (raw out) | ${f2(median(cl.synth.raw.cpu))} | ${f1(cl.create.rssMiB)} / ${f1(cl.synth.raw.rssMiB)} | ${cl.synth.verified ? "yes" : "NO"} |`);
    if (peers.length) {
      const best = (f: (p: PeerResult) => number) => Math.min(...peers.map(f));
      L.push(`| *cloudlet / best peer* | | | | ${f2(cl.bytes / peerMin)} | ${f2(clCreate / best((p) => p.create.wall))} | ${f2(median(cl.create.cpu) / best((p) => p.create.cpu))} | ${f2(clSynth / best((p) => p.decode.wall))} | ${f2(median(cl.synth.raw.cpu) / best((p) => p.decode.cpu))} | | |`);
    }
    for (const p of peers) {
      L.push(`| ${p.tool} | ${p.bytes.disk} | ${p.bytes.memory} | ${p.bytes.total} | ${f2(p.bytes.total / peerMin)} | ${f2(p.create.wall)} | ${f2(p.create.cpu)} | ${f2(p.decode.wall)} | ${f2(p.decode.cpu)} | ${f1(p.create.rssMiB)} / ${f1(p.decode.rssMiB)} | ${p.verified ? "yes" : "NO"} |`);
    }
    L.push("");
    L.push(`cloudlet times are medians of ${cl.create.wall.length} runs (process wall clock, node start + WASM load included; the engine's own figure: create ${f2(median(cl.create.internal))} s, synthesis ${f2(median(cl.synth.raw.internal))} s). Peers ran once each (xdelta3 and xz single-threaded; zstd with its default worker setting); cloudlet used 2 worker threads.`);
    L.push(`cloudlet synthesis: raw output ${cl.synth.raw.wall.map(f2).join(", ")} s; qcow2 output (default) ${cl.synth.qcow2.wall.map(f2).join(", ")} s (engine ${f2(median(cl.synth.qcow2.internal))} s, RSS ${f1(cl.synth.qcow2.rssMiB)} MiB); --threads 1, raw: ${f2(cl.synth.raw1thread.wall)} s (engine ${f2(cl.synth.raw1thread.internal)} s).`);
    if (peers.length) L.push(`Peer notes: ${peers.filter((p) => p.note).map((p) => `${p.tool}: ${p.note}`).join(". ")}.`);
    L.push("");
    L.push("Class breakdown (`cloudlet inspect --json`; chunks / bytes of rebuilt image):", "");
    const kinds = Object.keys(cl.classes).filter((k) => Object.values(cl.classes[k]).some((c) => c.chunks));
    L.push(`| class | ${kinds.join(" | ")} | total |`);
    L.push(`|---|${kinds.map(() => "---:").join("|")}|---:|`);
    for (const c of Object.keys(cl.classTotals)) {
      const cell = (x: { chunks: number; bytes: number }) => `${x.chunks} / ${mb(x.bytes)} MiB`;
      L.push(`| ${c} | ${kinds.map((k) => cell(cl.classes[k][c])).join(" | ")} | ${cell(cl.classTotals[c])} |`);
    }
    L.push("");
    // Targets.
    const xzdT = median(cl.xzd.wall);
    const xzdRate = cl.compressedSegmentBytes / xzdT;
    const synRate = cl.compressedSegmentBytes / median(cl.synth.raw.internal);
    const synRateQ = cl.compressedSegmentBytes / median(cl.synth.qcow2.internal);
    const synRate1 = cl.compressedSegmentBytes / cl.synth.raw1thread.internal;
    const xzdCpu = median(cl.xzd.cpu);
    const synCpu = median(cl.synth.raw.cpu);
    const synCpuQ = median(cl.synth.qcow2.cpu);
    L.push(...reportHonest(cl, peers, honest, profiles));
    L.push("Targets:", "");
    if (!peers.length) L.push(`- size: peers not run (--no-peers)`);
    else L.push(`- size: cloudlet ${cl.bytes} B vs smallest peer (${bestPeer?.tool}) ${peerMin} B = **${f2(cl.bytes / peerMin)}x** (target <= 0.90x): **${cl.bytes / peerMin <= 0.9 ? "met" : "missed"}**`);
    L.push(`- synthesis throughput over the overlay's compressed segment bytes (${mb(cl.compressedSegmentBytes)} MiB): \`xz -d -T1\` on the split segments ${f2(xzdT)} s = ${mb(xzdRate)} MiB/s; cloudlet synthesis (engine time) raw out ${mb(synRate)} MiB/s = **${f2(synRate / xzdRate)}x**, qcow2 out ${mb(synRateQ)} MiB/s = **${f2(synRateQ / xzdRate)}x**, --threads 1 raw ${mb(synRate1)} MiB/s = ${f2(synRate1 / xzdRate)}x (target >= 0.80x): **${synRateQ / xzdRate >= 0.8 && synRate / xzdRate >= 0.8 ? "met" : synRateQ / xzdRate >= 0.8 || synRate / xzdRate >= 0.8 ? "met for one output format only" : "missed"}**; by process wall clock: raw ${f2(cl.compressedSegmentBytes / median(cl.synth.raw.wall) / xzdRate)}x, qcow2 ${f2(cl.compressedSegmentBytes / median(cl.synth.qcow2.wall) / xzdRate)}x; by CPU time (xz -d ${f2(xzdCpu)} s; cloudlet process, all threads, raw ${f2(synCpu)} s, qcow2 ${f2(synCpuQ)} s): raw ${f2(xzdCpu / synCpu)}x, qcow2 ${f2(xzdCpu / synCpuQ)}x`);
    L.push("");
  }
  if (big) {
    const s = median(big.small.internal);
    const g = median(big.big.internal);
    const sc = median(big.small.cpu);
    const gc = median(big.big.cpu);
    L.push("## The same change in a 1 GiB and an 8 GiB disk (pair vm, qcow2 top layer)", "");
    L.push(`- base preparation, 8 GiB disk + 256 MiB memory: ${f2(big.prepBig.seconds)} s, peak RSS ${f1(big.prepBig.rssMiB)} MiB, prepared data ${mb(big.prepBig.indexBytes)} MiB`);
    L.push(`- creation, 1 GiB: wall ${big.small.wall.map(f2).join(", ")} s (engine ${big.small.internal.map(f2).join(", ")} s), CPU ${big.small.cpu.map(f2).join(", ")} s`);
    L.push(`- creation, 8 GiB: wall ${big.big.wall.map(f2).join(", ")} s (engine ${big.big.internal.map(f2).join(", ")} s), CPU ${big.big.cpu.map(f2).join(", ")} s, peak RSS ${f1(big.big.rssMiB)} MiB`);
    L.push(`- ratio 8 GiB / 1 GiB (medians, runs interleaved): **${f2(gc / sc)}x CPU time**, ${f2(g / s)}x engine wall time (target <= 1.2x): **${gc / sc <= 1.2 ? "met" : "missed"}** by CPU time${g / s <= 1.2 ? "" : " (wall time is too noisy on this shared machine to judge)"}`);
    L.push(`- synthesis, 8 GiB: qcow2 out ${f2(big.synthBig.qcow2.wall)} s (RSS ${f1(big.synthBig.qcow2.rssMiB)} MiB, ${big.synthBig.verified ? "identical" : "NOT IDENTICAL"}), raw out ${f2(big.synthBig.raw.wall)} s (RSS ${f1(big.synthBig.raw.rssMiB)} MiB)`);
    const peak = Math.max(big.big.rssMiB, big.synthBig.qcow2.rssMiB, big.synthBig.raw.rssMiB);
    L.push(`- peak RSS with the 8 GiB disk (creation and synthesis; base preparation ${f1(big.prepBig.rssMiB)} MiB reported apart): **${f1(peak)} MiB** (target <= 300 MB = 286 MiB): **${peak <= 300e6 / MiB ? "met" : "missed"}**`);
    if (big.rawSmall && big.rawBig) {
      L.push(`- informational, raw custom disk (pair mkfs, no extent list, so every chunk is read and hashed): 1 GiB ${f2(big.rawSmall.internal)} s wall / ${f2(big.rawSmall.cpu)} s CPU, 8 GiB ${f2(big.rawBig.internal)} s wall / ${f2(big.rawBig.cpu)} s CPU = ${f2(big.rawBig.cpu / big.rawSmall.cpu)}x CPU; RSS ${f1(big.rawSmall.rssMiB)} / ${f1(big.rawBig.rssMiB)} MiB`);
    }
    L.push("");
  }
  if (runSeconds !== undefined && ld?.length) L.push(`Benchmark run time: ${f1(runSeconds)} s. 1-minute load average during the run: min ${f2(Math.min(...ld))}, median ${f2(median(ld))}, max ${f2(Math.max(...ld))} (${availableParallelism()} cores; above ${availableParallelism()} means other work shared the CPUs, so wall times are inflated and CPU times are the steadier figure).`);
  return L.join("\n");
}

// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    options: {
      "prepare-base": { type: "boolean", default: false },
      home: { type: "string" },
      "base-disk": { type: "string" },
      "base-mem": { type: "string" },
      reps: { type: "string", default: "3" },
      pairs: { type: "string", default: "vm,mkfs" },
      "no-build": { type: "boolean", default: false },
      "no-peers": { type: "boolean", default: false },
      "no-big": { type: "boolean", default: false },
      "no-profiles": { type: "boolean", default: false },
      json: { type: "boolean", default: false },
      "from-json": { type: "string" },
      "free-memory": { type: "boolean", default: false },
      synthesis: { type: "boolean", default: false },
      hosts: { type: "string", default: "qemu" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  });
  if (v.help) {
    process.stdout.write("usage: node --import tsx bench/overlay_bench.ts [--reps N] [--pairs vm,mkfs] [--no-build] [--no-peers] [--no-big] [--no-profiles] [--json] [--from-json RESULTS.json]\n       node --import tsx bench/overlay_bench.ts --synthesis [--reps N] [--pairs vm,mkfs] [--no-build] [--json]\n");
    return;
  }
  if (v["prepare-base"]) return prepareBase(v.home!, v["base-disk"]!, v["base-mem"]!);
  if (v["free-memory"]) {
    const { measureFreeMemory, freeMemoryTable } = await import("./free_memory_bench.ts");
    const home = join(DATA, "runs", `free-memory-${new Date().toISOString().replace(/[:.]/g, "-")}`);
    const hosts = v.hosts!.split(",").map((h) => h.trim()) as Array<"qemu" | "virsh">;
    const rows = await measureFreeMemory({ repo: REPO, home, hosts, reps: Number(v.reps), guestDir: join(REPO, ".build/test-home/guest"), log });
    writeFileSync(join(DATA, "free-memory-results.json"), JSON.stringify(rows, null, 2));
    process.stdout.write(v.json ? JSON.stringify(rows, null, 2) + "\n" : freeMemoryTable(rows) + "\n");
    rmSync(home, { recursive: true, force: true });
    return;
  }
  if (v.synthesis) {
    const reps = Number(v.reps);
    if (!v["no-build"]) {
      const r = spawnSync("bash", [join(REPO, "bench/fixtures/build-all.sh")], { stdio: ["ignore", "inherit", "inherit"] });
      if (r.status !== 0) throw new Error("fixture build failed");
    }
    const runDir = join(DATA, "runs", `synthesis-${new Date().toISOString().replace(/[:.]/g, "-")}`);
    const ps = pairs();
    const rows: SynthesisRow[] = [];
    for (const name of v.pairs!.split(",").map((x) => x.trim()).filter(Boolean)) {
      if (!ps[name]) throw new Error(`unknown pair ${name} (vm, mkfs)`);
      const work = join(runDir, name);
      mkdirSync(work, { recursive: true });
      rows.push(await measureSynthesis(ps[name], join(runDir, "home"), work, reps));
    }
    writeFileSync(join(DATA, "synthesis-results.json"), JSON.stringify(rows, null, 2));
    process.stdout.write((v.json ? JSON.stringify(rows, null, 2) : synthesisTable(rows)) + "\n");
    rmSync(runDir, { recursive: true, force: true });
    return;
  }
  if (v["from-json"]) {
    process.stdout.write(report(JSON.parse(readFileSync(v["from-json"], "utf8")) as Results) + "\n");
    return;
  }
  const started = performance.now();
  const reps = Number(v.reps);
  if (!Number.isInteger(reps) || reps < 1) throw new Error("--reps must be a positive integer");
  if (!v["no-build"]) {
    log("building fixtures (bench/fixtures/build-all.sh; cached)");
    const r = spawnSync("bash", [join(REPO, "bench/fixtures/build-all.sh")], { stdio: ["ignore", "inherit", "inherit"] });
    if (r.status !== 0) throw new Error("fixture build failed");
  }
  const runDir = join(DATA, "runs", new Date().toISOString().replace(/[:.]/g, "-"));
  mkdirSync(runDir, { recursive: true });
  const home = join(runDir, "home");
  const ps = pairs();
  const wanted = v.pairs!.split(",").map((s) => s.trim()).filter(Boolean);
  const all: Results["all"] = {};
  for (const name of wanted) {
    const pair = ps[name];
    if (!pair) throw new Error(`unknown pair ${name} (vm, mkfs)`);
    for (const f of [pair.baseDisk, pair.baseMem, pair.customDisk, pair.customDiskRaw, pair.customMem]) if (!existsSync(f)) throw new Error(`missing input ${f}; run bench/fixtures/build-all.sh`);
    const work = join(runDir, name);
    mkdirSync(work, { recursive: true });
    const cl = measureCloudlet(pair, home, work, reps);
    const honest = measureHonest(pair, join(work, `c${reps - 1}.overlay`), work);
    const profiles = v["no-profiles"] ? undefined : measureProfiles(pair, home, work);
    const peers = v["no-peers"] ? [] : measurePeers(pair, work);
    all[name] = { pair, cl, peers, honest, profiles };
  }
  let big: BigResult | null = null;
  if (!v["no-big"] && ps.vm) {
    const work = join(runDir, "big");
    mkdirSync(work, { recursive: true });
    big = measureBig(home, work, reps, ps.vm, wanted.includes("mkfs") ? ps.mkfs : null);
  }
  const results: Results = { all, big, runSeconds: (performance.now() - started) / 1000, loads };
  const text = report(results);
  writeFileSync(join(DATA, "overlay-results.json"), JSON.stringify(results, null, 2));
  writeFileSync(join(runDir, "results.json"), JSON.stringify(results, null, 2));
  writeFileSync(join(runDir, "report.md"), text + "\n");
  process.stdout.write(v.json ? JSON.stringify(results, null, 2) + "\n" : text + "\n");
  log(`report in ${join(runDir, "report.md")}; delete ${runDir} to reclaim its space`);
}

await main();
