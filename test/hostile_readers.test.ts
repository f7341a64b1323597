// Hostile files against both readers (the CLI's file reader and the server's
// meta step, plus the stream reader): one packed-head rule from format.ts,
// no terminal escapes from a file reach the terminal, a damaged meta is
// named as a meta, and `inspect --verify` names a wrong base by its ids.
// Also: format.ts owns the rebuilt-hash preimage, and the bytes it gives are
// the golden v1 overlay's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { promises as fsp, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { core } from "./_core.ts";
import { cloudlet, CLOUDLET, type CliResult } from "./_cli.ts";
import { scratchDir, writeImageSet, type ImageSet } from "./_images.ts";
import { goldenImages } from "./golden/_images.ts";
import { decodeMeta, decodePackedHead, decodePackHeader, encodeMeta, encodePackHeader, HEADER_BYTES, type OverlayMeta, RebuiltHash, segmentFileName } from "../ts/overlay/format.ts";
import { openPackedStream } from "../ts/overlay/stream_reader.ts";
import { printable, printableJson } from "../ts/printable.ts";
import { toHex } from "../ts/core/vectors.ts";

let dir: string;
let home: string;
let set: ImageSet;
let other: ImageSet;
let packed: string;
let splitMeta: string;

await (async () => {
  dir = await scratchDir("hostile-readers");
  home = join(dir, "home");
  set = await writeImageSet(join(dir, "a"), 41, 4 << 20, 2 << 20, 10);
  // Another base of the very same sizes: only its bytes (and so its id) differ.
  other = await writeImageSet(join(dir, "b"), 42, 4 << 20, 2 << 20, 1);
  packed = join(dir, "app.overlay");
  splitMeta = join(dir, "seed.overlay-meta");
  for (const out of [packed, splitMeta]) {
    const r = await cloudlet(["overlay", "--home", home, "--base-disk", set.baseDisk, "--base-mem", set.baseMem, "--disk", set.disk, "--mem", set.mem, "-o", out, "--segment-size", "64K"]);
    assert.equal(r.code, 0, r.stderr);
  }
})();

/** The CLI failed cleanly: exit 1, one line naming `file` and matching `what`, no stack. */
function failedCleanly(r: CliResult, file: string, what: RegExp): void {
  assert.equal(r.code, 1, `exit code; stderr: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line, got: ${r.stderr}`);
  assert.ok(lines[0].startsWith(`cloudlet: ${file}: `), `names ${file}: ${lines[0]}`);
  assert.match(lines[0], what);
  assert.doesNotMatch(r.stderr, /\bat .*\.ts:\d+/, "no stack trace");
}

/** The parts of a packed overlay: header fields, meta bytes, segment bytes. */
function unpack(bytes: Uint8Array): { meta: OverlayMeta; metaBytes: Uint8Array; segments: Uint8Array } {
  const h = decodePackHeader(core, bytes.subarray(0, HEADER_BYTES), "t");
  const metaBytes = bytes.subarray(HEADER_BYTES, h.dataOffset);
  return { meta: decodeMeta(core, metaBytes, "t"), metaBytes, segments: bytes.subarray(h.dataOffset) };
}

/** A packed overlay with a valid header around `metaBytes`, `gap` bytes of junk after it, then the segments. */
function pack(metaBytes: Uint8Array, segments: Uint8Array, gap = 0): Uint8Array {
  const metaLength = metaBytes.length + gap;
  const dataOffset = HEADER_BYTES + metaLength;
  const out = new Uint8Array(dataOffset + segments.length);
  out.set(encodePackHeader(core, { metaLength, dataOffset, totalLength: out.length }, false), 0);
  out.set(metaBytes, HEADER_BYTES);
  out.fill(0x4a, HEADER_BYTES + metaBytes.length, dataOffset);
  out.set(segments, dataOffset);
  return out;
}

const readBytes = async (p: string) => new Uint8Array(await fsp.readFile(p));
const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;

// ---------------------------------------------------------------------------
// 10.11: one packed-head rule for the CLI, the stream reader and the server.

const JUNK_RULE = /the meta is \d+ bytes but the packed header gives it \d+ \(bytes between the meta and segment 1\)/;

test("10.11 junk between meta and segments: the CLI, the stream reader and the server refuse it with one rule", async () => {
  const good = await readBytes(packed);
  const { metaBytes, segments } = unpack(good);
  const junk = join(dir, "junk.overlay");
  await fsp.writeFile(junk, pack(metaBytes, segments, 16));
  // The file reader (inspect and synthesis open it the same way).
  failedCleanly(await cloudlet(["inspect", junk, "--home", home]), junk, JUNK_RULE);
  const synth = await cloudlet(["synthesis", "--home", home, "--base-disk", set.baseDisk, "--base-mem", set.baseMem, junk, "-o", join(dir, "junk-out")]);
  failedCleanly(synth, junk, JUNK_RULE);
  // The stream reader (a packed overlay arriving as a stream).
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(pack(metaBytes, segments, 16));
      c.close();
    },
  });
  await assert.rejects(openPackedStream(core, stream, "junk-stream"), (e: Error) => JUNK_RULE.test(e.message));
  // The rule itself, in format.ts: the meta may not run past its slot either.
  const head = pack(metaBytes, segments, 0).subarray(0, HEADER_BYTES);
  assert.equal(decodePackedHead(core, head, metaBytes, "t").header.metaLength, metaBytes.length);
  const short = encodePackHeader(core, { metaLength: metaBytes.length - 8, dataOffset: HEADER_BYTES + metaBytes.length - 8, totalLength: good.length - 8 }, false);
  assert.throws(() => decodePackedHead(core, short, metaBytes.subarray(0, metaBytes.length - 8), "t"), /the meta runs into segment 1/);

  // The server's meta step, on a real `cloudlet serve`.
  const token = "hostile-readers-token-0123456789";
  const tokenFile = join(dir, "token");
  await fsp.writeFile(tokenFile, token + "\n", { mode: 0o600 });
  const child = spawn(CLOUDLET, ["serve", "--home", join(dir, "serve-home"), "--listen", "127.0.0.1:0", "--token-file", tokenFile], { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (log += d));
  const exited = new Promise<void>((r) => child.on("close", () => r()));
  try {
    for (let i = 0; i < 150 && !/listening on/.test(log); i++) await new Promise((r) => setTimeout(r, 100));
    const port = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(log)?.[1];
    assert.ok(port, `server started: ${log}`);
    const api = `http://127.0.0.1:${port}/v1/sessions`;
    const auth = { authorization: `Bearer ${token}` };
    const putMeta = async (body: Uint8Array) => {
      const created = await fetch(api, { method: "POST", headers: { ...auth, "content-type": "application/json" }, body: "{}" });
      assert.equal(created.status, 201);
      const { id } = await created.json();
      const r = await fetch(`${api}/${id}/meta`, { method: "PUT", headers: auth, body: body.slice() });
      const answer = await r.json();
      await fetch(`${api}/${id}`, { method: "DELETE", headers: auth }).then((d) => d.body?.cancel());
      return { status: r.status, error: answer.error as { code: string; message: string } };
    };
    const withJunk = pack(metaBytes, segments, 16);
    const refused = await putMeta(withJunk.subarray(0, HEADER_BYTES + metaBytes.length + 16));
    assert.equal(refused.status, 400);
    assert.equal(refused.error.code, "BAD_META");
    assert.match(refused.error.message, JUNK_RULE);
    // Control: the same head without the junk passes the format and reaches the base check.
    const fine = await putMeta(good.subarray(0, HEADER_BYTES + metaBytes.length));
    assert.equal(fine.error.code, "WRONG_BASE", fine.error.message);
  } finally {
    child.kill("SIGINT");
    await exited;
  }
});

// ---------------------------------------------------------------------------
// 10.12: control characters from a file never reach the terminal.

const EVIL = "\x1b[2J\x1b]0;pwned\x07\0\r\x9b31m\u202eevil\n";

/** The split overlay again, with `edit` applied to its meta and every hash recomputed. */
async function splitWith(name: string, edit: (m: OverlayMeta) => void): Promise<string> {
  const d = join(dir, name);
  await fsp.mkdir(d, { recursive: true });
  const meta = decodeMeta(core, await readBytes(splitMeta), splitMeta);
  edit(meta);
  for (let i = 0; i < meta.segments.length; i++) await fsp.copyFile(join(dir, `seed-${i + 1}.xz`), join(d, `seed-${i + 1}.xz`));
  const path = join(d, "seed.overlay-meta");
  await fsp.writeFile(path, encodeMeta(core, meta));
  return path;
}

test("10.12 printable(): every control character becomes a visible escape, NUL and \\r included", () => {
  assert.equal(printable(EVIL), "\\x1b[2J\\x1b]0;pwned\\x07\\x00\\r\\x9b31m\\u202eevil\\n");
  assert.equal(printable(printable(EVIL)), printable(EVIL), "idempotent: a message printed twice is not escaped twice");
  assert.equal(printable("plain text, ünïcödé and emoji 🙂"), "plain text, ünïcödé and emoji 🙂");
  // JSON stays JSON, and the same value.
  const j = printableJson({ s: EVIL });
  assert.doesNotMatch(j, CONTROL);
  assert.equal(JSON.parse(j).s, EVIL);
});

test("10.12 terminal escapes in creator.tool: inspect prints them inert, --json keeps the value", async () => {
  const evil = await splitWith("evil-creator", (m) => {
    m.creator.tool = EVIL;
    m.creator.version = "1\x1b[8m";
  });
  const packedEvil = join(dir, "evil-creator.overlay");
  const e = await readBytes(evil);
  await fsp.writeFile(packedEvil, pack(e, unpack(await readBytes(packed)).segments));
  for (const ov of [evil, packedEvil]) {
    const text = await cloudlet(["inspect", ov, "--home", home]);
    assert.equal(text.code, 0, text.stderr);
    assert.doesNotMatch(text.stdout, CONTROL, "no control character but newline in the text output");
    assert.ok(text.stdout.includes("made by \\x1b[2J\\x1b]0;pwned\\x07\\x00\\r\\x9b31m\\u202eevil\\n 1\\x1b[8m at"), text.stdout);
    assert.equal(text.stdout.split("\n").filter((l) => l.startsWith("format ")).length, 1, "the value cannot add lines");
    const json = await cloudlet(["inspect", ov, "--json", "--home", home]);
    assert.equal(json.code, 0, json.stderr);
    assert.doesNotMatch(json.stdout, CONTROL, "no raw control character in the JSON either");
    assert.equal(JSON.parse(json.stdout).creator.tool, EVIL, "--json gives the exact value");
  }
});

test("10.12 error messages that quote a file's content or name hold no control character", async () => {
  // A machine type the validator refuses is quoted in the message (C1 CSI, DEL and a bidi override in it).
  const evil = await splitWith("evil-machine", (m) => {
    m.base.machine.machine = "pc\x9b2J\x7f\u202e";
  });
  for (const args of [["inspect", evil], ["inspect", evil, "--json"]]) {
    const r = await cloudlet([...args, "--home", home]);
    assert.equal(r.code, 1, r.stderr);
    assert.doesNotMatch(r.stderr, CONTROL, `stderr: ${JSON.stringify(r.stderr)}`);
    assert.match(r.stderr, /names a machine type or CPU model QEMU must not be given \("pc\\x9b2J\\x7f\\u202e"/);
    if (args.includes("--json")) {
      assert.doesNotMatch(r.stdout, CONTROL);
      assert.equal(JSON.parse(r.stdout).error.code, "BAD_META");
    }
  }
  // A file whose name carries escapes, named in the error.
  const named = join(dir, "x\x1b]0;pwned\x07.overlay");
  await fsp.writeFile(named, "not an overlay at all");
  const r = await cloudlet(["inspect", named, "--home", home]);
  assert.equal(r.code, 1);
  assert.doesNotMatch(r.stderr, CONTROL, `stderr: ${JSON.stringify(r.stderr)}`);
  assert.ok(r.stderr.includes("x\\x1b]0;pwned\\x07.overlay: not a cloudlet packed overlay (bad magic)"), r.stderr);
});

// ---------------------------------------------------------------------------
// 10.13a: a damaged or cut .overlay-meta is named as a meta.

test("10.13a a broken .overlay-meta magic, or a meta cut to 0-1 bytes, is named as the meta, not a packed overlay", async () => {
  const good = await readBytes(splitMeta);
  const badMagic = await splitWith("bad-magic", () => {});
  const b = await readBytes(badMagic);
  b[0] ^= 0x20;
  await fsp.writeFile(badMagic, b);
  failedCleanly(await cloudlet(["inspect", badMagic, "--home", home]), badMagic, /^cloudlet: \S+: not a cloudlet overlay meta \(bad magic\)$/);
  for (const n of [0, 1, 40]) {
    const cut = join(dir, `cut${n}`, "seed.overlay-meta");
    await fsp.mkdir(join(dir, `cut${n}`), { recursive: true });
    await fsp.writeFile(cut, good.subarray(0, n));
    const r = await cloudlet(["inspect", cut, "--home", home]);
    failedCleanly(r, cut, new RegExp(`overlay meta is truncated \\(${n} of 64 header bytes\\)$`));
    assert.doesNotMatch(r.stderr, /packed/);
  }
  // With neither an overlay's magic nor an overlay's name, it says that.
  const stray = join(dir, "stray.bin");
  await fsp.writeFile(stray, "C");
  failedCleanly(await cloudlet(["inspect", stray, "--home", home]), stray, /not a cloudlet overlay: the file has only 1 byte, too few/);
  await fsp.writeFile(stray, new Uint8Array(100).fill(7));
  failedCleanly(await cloudlet(["inspect", stray, "--home", home]), stray, /not a cloudlet overlay: it starts with neither a packed overlay's magic \(CLOVPACK\) nor an overlay meta's \(CLOVMETA\)/);
});

// ---------------------------------------------------------------------------
// 10.13b: inspect --verify names a wrong base.

test("10.13b inspect --verify against another base of the same sizes names both base ids (WRONG_BASE)", async () => {
  const expected = unpack(await readBytes(packed)).meta.base.id;
  for (const ov of [packed, splitMeta]) {
    const r = await cloudlet(["inspect", ov, "--verify", "--base-disk", other.baseDisk, "--base-mem", other.baseMem, "--home", home]);
    failedCleanly(r, ov, /overlay was made for base [0-9a-f]{16}… but the given base is [0-9a-f]{16}…/);
    assert.ok(r.stderr.includes(`expected base id ${expected}`), r.stderr);
    const actual = /actual ([0-9a-f]{64})/.exec(r.stderr)?.[1];
    assert.ok(actual && actual !== expected, r.stderr);
    assert.doesNotMatch(r.stderr, /is the base intact/);
    const json = await cloudlet(["inspect", ov, "--verify", "--base-disk", other.baseDisk, "--base-mem", other.baseMem, "--json", "--home", home]);
    assert.equal(JSON.parse(json.stdout).error.code, "WRONG_BASE");
  }
  // Control: the right base verifies.
  const ok = await cloudlet(["inspect", packed, "--verify", "--base-disk", set.baseDisk, "--base-mem", set.baseMem, "--json", "--home", home]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(JSON.parse(ok.stdout).verification.rebuiltSkipped, 0);
});

// ---------------------------------------------------------------------------
// 11.2: format.ts owns the rebuilt-hash preimage; its bytes are v1's.

test("11.2 RebuiltHash encodes kind || u64 LE index || digest, in one call or in batches alike", () => {
  const kinds = Uint8Array.from([0, 1, 2]);
  const indexes = Float64Array.from([0, 2 ** 32 + 5, 2 ** 40 - 1]);
  const digests = new Uint8Array(96).map((_, i) => i * 7);
  // The preimage written out by hand, with BigInt for the u64.
  const pre = new Uint8Array(3 * 41);
  const v = new DataView(pre.buffer);
  for (let i = 0; i < 3; i++) {
    v.setUint8(i * 41, kinds[i]);
    v.setBigUint64(i * 41 + 1, BigInt(indexes[i]), true);
    pre.set(digests.subarray(i * 32, i * 32 + 32), i * 41 + 9);
  }
  const whole = new RebuiltHash(core);
  whole.update(kinds, indexes, digests);
  const batched = new RebuiltHash(core);
  batched.update(kinds, indexes, digests.subarray(0, 32), 0, 1);
  batched.update(kinds, indexes, digests.subarray(32), 1, 2);
  const want = toHex(core.hash("blake3", pre));
  assert.equal(whole.hex(), want);
  assert.equal(batched.hex(), want);
});

test("11.2 the writer still makes the golden v1 overlay's segments: same rebuilt hashes, same segment table", async () => {
  const golden = fileURLToPath(new URL("./golden/v1/golden.overlay-meta", import.meta.url));
  const want = decodeMeta(core, new Uint8Array(readFileSync(golden)), golden);
  const g = join(dir, "golden");
  await fsp.mkdir(g, { recursive: true });
  for (const [name, b] of Object.entries(goldenImages())) await fsp.writeFile(join(g, name), b);
  const out = join(g, "again.overlay-meta");
  // The options test/golden/make_golden.ts made v1 with.
  const r = await cloudlet(["overlay", "--home", home, "--base-disk", join(g, "baseDisk"), "--base-mem", join(g, "baseMem"), "--disk", join(g, "disk"), "--mem", join(g, "mem"), "--state", join(g, "state"), "--segment-size", "16K", "--forward", "tcp:8080::80", "--threads", "1", "-o", out]);
  assert.equal(r.code, 0, r.stderr);
  const got = decodeMeta(core, await readBytes(out), out);
  assert.deepEqual(got.segments.map((s) => s.rebuiltHash), want.segments.map((s) => s.rebuiltHash));
  // Since issue 15 the writer puts the x86 filter before LZMA2 in mostly-disk segments: the
  // compressed bytes (and so their size and hash) may differ, what they hold must not.
  const content = (s: OverlayMeta["segments"][number]) => ({ ...s, compressedSize: 0, hash: "" });
  assert.deepEqual(got.segments.map(content), want.segments.map(content));
  for (let i = 0; i < want.segments.length; i++) {
    const old = core.xzDecompressExact(readFileSync(join(dirname(golden), segmentFileName("golden", i))), want.segments[i].rawSize);
    const now = core.xzDecompressExact(await readBytes(join(g, segmentFileName("again", i))), got.segments[i].rawSize);
    assert.ok(Buffer.from(now).equals(Buffer.from(old)), `segment ${i + 1} holds the same payload`);
  }
});
