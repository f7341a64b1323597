// A 1 GiB overlay streams through the browser inspector without being held
// in memory: the page reads the dropped file slice by slice (Blob.slice) or
// by HTTP Range from the inspect server, its worker decodes one segment at
// a time, and Chromium's peak memory stays a small fraction of the file.
//
// The overlay is written by the engine's writer (classification, segments,
// meta, packed file) from a generated 1 GiB memory image. Only the xz step
// differs: segments are stored as uncompressed LZMA2 chunks, a valid .xz
// stream that any decoder reads, because xz-compressing 1 GiB of random
// data would take minutes. CLOUDLET_WEB_LARGE_MIB sets the size (default 1024;
// 0 skips the test).
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, promises as fsp, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { crc32 } from "node:zlib";
import type { BrowserContext } from "playwright-core";
import { core } from "./_core.ts";
import { scratchDir } from "./_images.ts";
import { randomBytes } from "../ts/core/vectors.ts";
import { startInspectServer } from "../ts/server/inspect_server.ts";
import { PackedOverlayOutput } from "../ts/node/overlay_files.ts";
import { arrayDigests, scanBase } from "../ts/overlay/base_scan.ts";
import type { SegmentCodec } from "../ts/overlay/codec.ts";
import { CHUNK } from "../ts/overlay/format.ts";
import { BufferSource, type ByteSource } from "../ts/overlay/io.ts";
import { writeOverlay } from "../ts/overlay/writer.ts";
import { ensureInspectorBuilt } from "../web/build.ts";

const CHROMIUM = "/usr/bin/chromium";
const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const MIB = Number(process.env.CLOUDLET_WEB_LARGE_MIB ?? 1024);
/** Most resident memory any Chromium process may reach (a 1 GiB overlay must not fit in it twice). */
const PEAK_LIMIT = 400 << 20;
/** The browser does the same whichever runtime drives it: Node alone runs this minute-long test. */
const SKIP = "Deno" in globalThis ? "runs under Node only (the browser's behaviour does not depend on the runtime driving it)" : MIB <= 0 ? "CLOUDLET_WEB_LARGE_MIB=0" : false;

// --- a stored .xz stream (xz file format 1.0.4: stream, one block, LZMA2 uncompressed chunks, CRC32)

function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return out;
}

function le32(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
}

/** One .xz stream holding `data` in LZMA2 "uncompressed" chunks of up to 64 KiB. */
export function xzStored(data: Uint8Array): Uint8Array {
  const flags = [0x00, 0x01]; // check type CRC32
  const streamHeader = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, ...flags, ...le32(crc32(Uint8Array.from(flags)))];
  // Block header: size, flags (one filter, no sizes), LZMA2 filter with a 4 KiB dictionary, padding, CRC32.
  const bh = [0x02, 0x00, 0x21, 0x01, 0x00, 0x00, 0x00, 0x00];
  const blockHeader = [...bh, ...le32(crc32(Uint8Array.from(bh)))];
  const chunks = Math.ceil(data.length / 65536);
  const lzma2 = data.length + chunks * 3 + 1;
  const pad = (4 - (lzma2 % 4)) % 4;
  const unpadded = blockHeader.length + lzma2 + 4;
  const idx = [0x00, ...varint(1), ...varint(unpadded), ...varint(data.length)];
  while (idx.length % 4) idx.push(0);
  const index = [...idx, ...le32(crc32(Uint8Array.from(idx)))];
  const backward = le32(index.length / 4 - 1);
  const footerBody = [...backward, ...flags];
  const footer = [...le32(crc32(Uint8Array.from(footerBody))), ...footerBody, 0x59, 0x5a];
  const out = new Uint8Array(streamHeader.length + blockHeader.length + lzma2 + pad + 4 + index.length + footer.length);
  let o = 0;
  const put = (b: ArrayLike<number>) => (out.set(b, o), (o += b.length));
  put(streamHeader);
  put(blockHeader);
  for (let c = 0; c < chunks; c++) {
    const part = data.subarray(c * 65536, (c + 1) * 65536);
    put([c === 0 ? 0x01 : 0x02, (part.length - 1) >> 8, (part.length - 1) & 0xff]);
    put(part);
  }
  put([0x00]);
  o += pad;
  put(le32(crc32(data)));
  put(index);
  put(footer);
  return out;
}

/** A codec whose "compression" is storing: fast, and still standard .xz. */
const storedCodec: SegmentCodec = {
  parallelism: 1,
  compress: (raw) => Promise.resolve(xzStored(raw)),
  decompress: (xz, n) => Promise.resolve(core.xzDecompressExact(xz, n)),
  close: () => Promise.resolve(),
};

/** A memory image of `size` bytes, made on demand: chunk i is randomBytes(i + 1000). */
function generatedImage(size: number): ByteSource {
  return {
    name: "generated.mem",
    size,
    read(offset, length) {
      const end = Math.min(size, offset + length);
      const out = new Uint8Array(end - offset);
      for (let c = Math.floor(offset / CHUNK); c * CHUNK < end; c++) {
        const chunk = randomBytes(c + 1000, CHUNK);
        const from = Math.max(offset, c * CHUNK);
        out.set(chunk.subarray(from - c * CHUNK, Math.min(end, (c + 1) * CHUNK) - c * CHUNK), from - offset);
      }
      return Promise.resolve(out);
    },
  };
}

/** Peak resident memory (VmHWM) of every Chromium process descended from this one, in bytes. */
function chromiumPeaks(): Array<{ pid: number; type: string; peak: number }> {
  const parent = new Map<number, number>();
  const pids = new Set<number>();
  for (const e of readdirSync("/proc")) {
    const pid = Number(e);
    if (!Number.isInteger(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      parent.set(pid, Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
      pids.add(pid);
    } catch {
      // gone
    }
  }
  const mine = (pid: number): boolean => {
    for (let p = parent.get(pid); p !== undefined && p > 1; p = parent.get(p)) if (p === process.pid) return true;
    return false;
  };
  const out: Array<{ pid: number; type: string; peak: number }> = [];
  for (const pid of pids) {
    if (!mine(pid)) continue;
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (!/chrom/i.test(cmd)) continue;
      const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
      out.push({ pid, type: /--type=([\w-]+)/.exec(cmd)?.[1] ?? "browser", peak: hwm ? Number(hwm[1]) * 1024 : 0 });
    } catch {
      // gone
    }
  }
  return out;
}

let dir: string;
let overlay: string;
let overlayBytes: number;
let segments: number;
let context: BrowserContext;
let webRoot: string;

if (!SKIP) await (async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run scripts/setup.sh`);
  const { chromium } = await import("playwright-core");
  dir = await scratchDir("web-large");
  const baseDisk = new BufferSource(randomBytes(1, 1 << 20), "base.raw");
  const baseMem = new BufferSource(randomBytes(2, 1 << 20), "base.mem");
  const machine = { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: MIB };
  const scan = await scanBase(core, baseDisk, baseMem, machine);
  overlay = join(dir, "large.overlay");
  const r = await writeOverlay({
    core,
    base: { id: scan.id, machine, disk: baseDisk, memory: baseMem, digests: arrayDigests(core, scan.diskDigests, scan.memDigests), index: scan.index },
    custom: { disk: { source: baseDisk }, memory: { source: generatedImage(MIB << 20) } },
    launch: { portForwards: [], memoryMiB: MIB, vcpus: 1 },
    codec: storedCodec,
    output: new PackedOverlayOutput(overlay, core),
    version: "test",
  });
  scan.index.close();
  segments = r.meta.segments.length;
  overlayBytes = (await fsp.stat(overlay)).size;
  webRoot = await ensureInspectorBuilt();
  context = await chromium.launchPersistentContext(join(dir, "chromium-profile"), { executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
})();

test(`a ${MIB} MiB overlay streams through the page from a dropped file and from the server, in bounded memory`, { timeout: 600_000, skip: SKIP }, async () => {
  assert.ok(overlayBytes > MIB * 0.99 * (1 << 20), `overlay is ${overlayBytes} bytes`);
  const runs: Array<{ how: string; seconds: number; wasm: number }> = [];
  const srv = await startInspectServer({ core, overlay, webRoot: await ensureInspectorBuilt() });
  try {
    for (const how of ["dropped file", "served by range"]) {
      const page = await context.newPage();
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(String(e)));
      try {
        const t0 = performance.now();
        if (how === "dropped file") {
          await page.goto(pathToFileURL(join(webRoot, "cloudlet-inspector.html")).href);
          await page.waitForSelector("body[data-ready=true]");
          await page.setInputFiles("#file-input", overlay);
        } else await page.goto(srv.url);
        await page.waitForSelector("#integrity[data-state=done], #integrity[data-state=failed]", { timeout: 540_000 });
        assert.equal(await page.getAttribute("#integrity", "data-state"), "done", (await page.textContent("#integrity"))!);
        assert.equal(await page.getAttribute("#integrity", "data-done"), String(segments));
        assert.equal(await page.getAttribute("[data-field='sizes.overlay']", "data-value"), String(overlayBytes));
        runs.push({ how, seconds: (performance.now() - t0) / 1000, wasm: Number(await page.getAttribute("#integrity", "data-wasm-bytes")) });
        assert.deepEqual(errors, []);
      } finally {
        await page.close();
      }
    }
  } finally {
    await srv.close();
  }
  const peaks = chromiumPeaks();
  const worst = Math.max(...peaks.map((p) => p.peak));
  console.log(`${MIB} MiB overlay, ${segments} segments: ${runs.map((r) => `${r.how} ${r.seconds.toFixed(1)} s, worker WASM ${(r.wasm / 2 ** 20).toFixed(0)} MiB`).join("; ")}; peak RSS per Chromium process: ${peaks.map((p) => `${p.type} ${(p.peak / 2 ** 20).toFixed(0)} MiB`).join(", ")}`);
  for (const r of runs) assert.ok(r.wasm < 64 << 20, `${r.how}: worker WASM memory ${r.wasm} bytes`);
  // Chromium's own processes start at 100-250 MiB; what the overlay adds must not scale with it.
  assert.ok(worst < PEAK_LIMIT, `a Chromium process peaked at ${(worst / 2 ** 20).toFixed(0)} MiB for a ${(overlayBytes / 2 ** 20).toFixed(0)} MiB overlay`);
});

test("close the browser and clean up", { skip: SKIP }, async () => {
  await context.close();
  await fsp.rm(dir, { recursive: true, force: true });
});
