// xz streams in WASM: round trips, interop with the xz CLI in both directions, bad input.
import { test } from "node:test";
import assert from "node:assert/strict";
import { core } from "./_core.ts";
import { assertBytes } from "./_bytes.ts";
import { runTool } from "./_tools.ts";
import { randomBytes, vectorInput } from "../ts/core/vectors.ts";
import { PRESET_X86 } from "../ts/overlay/codec.ts";

const xzTool = (args: string[], input: Uint8Array) => runTool("xz", args, input);

async function pipe(data: Uint8Array, t: TransformStream<Uint8Array, Uint8Array>, step: number): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const w = t.writable.getWriter();
  const reading = (async () => {
    for await (const p of t.readable as unknown as AsyncIterable<Uint8Array>) parts.push(p);
  })();
  const writing = (async () => {
    for (let o = 0; o < data.length; o += step) await w.write(data.subarray(o, o + step));
    await w.close();
  })();
  await Promise.all([reading, writing]);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) (out.set(p, o), (o += p.length));
  return out;
}

test("xz round-trips at several presets and sizes", () => {
  for (const [pattern, len] of [["random", 0], ["random", 1], ["mixed", 100_000], ["zero", 1 << 20], ["mixed", (5 << 20) + 3]] as const) {
    const data = vectorInput(pattern, 3, len);
    for (const preset of [0, 6, 9]) {
      const z = core.xzCompress(data, preset, 1 << 20);
      assertBytes(core.xzDecompressExact(z, data.length), data, `${pattern}/${len}/-${preset}`);
    }
  }
});

test("the xz CLI decodes our output, and we decode the CLI's", async () => {
  const data = vectorInput("mixed", 9, 3 << 20);
  assertBytes(await xzTool(["-d", "-c"], core.xzCompress(data, 6)), data);
  assertBytes(await xzTool(["-d", "-c"], await pipe(data, core.xzCompressStream(3), 100_000)), data);
  for (const args of [["-z", "-c", "-T1"], ["-z", "-c", "-9", "-T1"], ["-z", "-c", "-1", "--check=sha256"]]) {
    const theirs = await xzTool(args, data);
    assertBytes(await pipe(theirs, core.xzDecompressStream(), 7777), data, args.join(" "));
    assertBytes(core.xzDecompressExact(theirs, data.length), data);
  }
  // Two streams back to back, as `xz -d` accepts.
  const two = new Uint8Array([...(await xzTool(["-z", "-c"], data.subarray(0, 1000))), ...(await xzTool(["-z", "-c"], data.subarray(1000, 5000)))]);
  assertBytes(await pipe(two, core.xzDecompressStream(), 333), data.subarray(0, 5000));
});

test("PRESET_X86 puts the x86 BCJ filter first: xz -d reads it, it is smaller for machine code, a bad preset is still refused", async () => {
  // x86-like code: many E8 (call rel32) with targets that repeat as absolute addresses once the filter converts them.
  const code = new Uint8Array(1 << 20);
  for (let o = 0; o + 5 <= code.length; o += 8) {
    const target = 0x4000 + ((o * 7) % 64) * 16;
    code[o] = 0xe8;
    new DataView(code.buffer).setInt32(o + 1, target - (o + 5), true);
    code[o + 5] = 0x48;
    code[o + 6] = 0x89;
    code[o + 7] = 0xc7;
  }
  const plain = core.xzCompress(code, 6);
  const x86 = core.xzCompress(code, 6 | PRESET_X86);
  assertBytes(await xzTool(["-d", "-c"], x86), code);
  assertBytes(core.xzDecompressExact(x86, code.length), code);
  assert.ok(x86.length < plain.length / 2, `x86 filter: ${x86.length} vs ${plain.length} bytes`);
  assert.throws(() => core.xzCompress(code, 10 | PRESET_X86), /preset/);
});

test("streams with other LZMA2 literal/position bits (lc, lp, pb) decode in this core: LZMA2 carries them in its chunk headers", async () => {
  // What a writer choosing lc/lp/pb per segment would emit; this core (and so every older reader) must read it.
  const data = vectorInput("mixed", 11, (1 << 20) + 5);
  for (const bits of ["lc=0,lp=3,pb=3", "lc=1,lp=3,pb=3", "lc=0,lp=2,pb=2", "lc=4,lp=0,pb=0", "lc=0,lp=0,pb=0"]) {
    for (const x86 of [[], ["--x86"]]) {
      const z = await xzTool(["-z", "-c", "-T1", ...x86, `--lzma2=preset=6,dict=1MiB,${bits}`], data);
      assertBytes(core.xzDecompressExact(z, data.length), data, bits);
      assertBytes(await pipe(z, core.xzDecompressStream(), 4099), data, `${bits} streamed`);
    }
  }
});

test("pulls are bounded: a 64 MiB zero stream decodes in pieces of at most 1 MiB", async () => {
  const z = await xzTool(["-z", "-c", "-T1"], new Uint8Array(64 << 20));
  const d = core.xzDecoder();
  d.push(z);
  d.finishInput();
  let total = 0;
  let biggest = 0;
  while (!d.done) {
    const p = d.pull(1 << 20);
    total += p.length;
    biggest = Math.max(biggest, p.length);
    assertBytes(p, new Uint8Array(p.length));
  }
  d.dispose();
  assert.equal(total, 64 << 20);
  assert.ok(biggest <= 1 << 20);
});

test("bad xz input is refused with a reason", async () => {
  const data = randomBytes(5, 300_000);
  const z = core.xzCompress(data, 6);
  assert.throws(() => core.xzDecompressExact(z.subarray(0, z.length - 10), data.length), /truncated/);
  assert.throws(() => core.xzDecompressExact(z, data.length + 1), /fewer bytes/);
  assert.throws(() => core.xzDecompressExact(z, data.length - 1), /more bytes/);
  const flipped = z.slice();
  flipped[z.length >> 1] ^= 0x10;
  assert.throws(() => core.xzDecompressExact(flipped, data.length), /corrupt|xz/);
  assert.throws(() => core.xzDecompressExact(new TextEncoder().encode("not xz at all"), 5), /not an xz stream/);
  await assert.rejects(pipe(z.subarray(0, z.length - 20), core.xzDecompressStream(), 1000), /truncated/);
  const big = await xzTool(["-z", "-c", "-9", "-T1"], data);
  assert.throws(() => core.xzDecompressExact(big, data.length, 16 << 20), /memory/);
});
