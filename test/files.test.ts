// Host file I/O: overlapping positional reads and writes on one handle land
// at the right offsets under both runtimes (Deno's FileHandle shares a cursor).
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { AtomicFile, FileSource } from "../ts/node/files.ts";
import { scratchDir } from "./_images.ts";

test("400 overlapping writes and reads on one handle hit their own offsets", async () => {
  const dir = await scratchDir("files");
  const path = join(dir, "f.bin");
  const f = await AtomicFile.create(path);
  await Promise.all(Array.from({ length: 400 }, (_, i) => f.write(new Uint8Array(4096).fill(i % 251), i * 4096)));
  await f.commit();
  assert.equal((await fsp.stat(path)).size, 400 * 4096);
  const src = await FileSource.open(path);
  const got = await Promise.all(Array.from({ length: 400 }, (_, i) => src.read(i * 4096, 4096)));
  await src.close();
  got.forEach((b, i) => assert.ok(b.length === 4096 && b[0] === i % 251 && b[4095] === i % 251, `chunk ${i}`));
  await fsp.rm(dir, { recursive: true, force: true });
});

test("a durable AtomicFile flushes in the background as it is written, and close still syncs; a non-durable one never flushes", async () => {
  const dir = await scratchDir("files");
  for (const durable of [true, false]) {
    const path = join(dir, `f-${durable}.bin`);
    const f = await AtomicFile.create(path, durable);
    // Spy on the handle: every fdatasync and fsync it is asked for.
    const calls: string[] = [];
    const datasync = f.fh.datasync.bind(f.fh);
    const sync = f.fh.sync.bind(f.fh);
    f.fh.datasync = () => (calls.push("datasync"), datasync());
    f.fh.sync = () => (calls.push("sync"), sync());
    const piece = 1 << 20;
    for (let i = 0; i < 40; i++) await f.write(new Uint8Array(piece).fill(i + 1), i * piece);
    const beforeClose = calls.length;
    await f.commit();
    if (durable) {
      assert.ok(beforeClose >= 1 && calls.slice(0, beforeClose).every((c) => c === "datasync"), `background flushes while writing 40 MiB: ${calls}`);
      assert.equal(calls.at(-1), "sync", "the fsync before the rename still comes");
    } else assert.deepEqual(calls, [], "nothing flushed");
    const src = await FileSource.open(path);
    for (const i of [0, 17, 39]) {
      const b = await src.read(i * piece, piece);
      assert.ok(b[0] === i + 1 && b[piece - 1] === i + 1, `piece ${i}`);
    }
    await src.close();
  }
  // Aborted while a background flush is still running: it is waited for, and the part file goes.
  const path = join(dir, "aborted.bin");
  const f = await AtomicFile.create(path);
  const datasync = f.fh.datasync.bind(f.fh);
  let flushes = 0;
  f.fh.datasync = () => (flushes++, new Promise<void>((r) => setTimeout(r, 200)).then(datasync));
  for (let i = 0; i < 20; i++) await f.write(new Uint8Array(1 << 20).fill(7), i << 20);
  assert.equal(flushes, 1, "one flush at a time");
  await f.abort();
  assert.deepEqual((await fsp.readdir(dir)).filter((n) => n.includes("aborted")), [], "no part file left");
  await fsp.rm(dir, { recursive: true, force: true });
});

test("FileSource.readInto reads in place, short only at the end of the file", async () => {
  const dir = await scratchDir("files");
  const path = join(dir, "r.bin");
  await fsp.writeFile(path, new Uint8Array(10000).map((_, i) => i & 0xff));
  const src = await FileSource.open(path);
  const dst = new Uint8Array(8192).fill(0xaa);
  assert.equal(await src.readInto(4000, dst.subarray(100, 4196)), 4096);
  assert.ok(dst[99] === 0xaa && dst[100] === (4000 & 0xff) && dst[4195] === (8095 & 0xff) && dst[4196] === 0xaa);
  dst.fill(0xaa);
  assert.equal(await src.readInto(9000, dst), 1000, "past the end: only what there is");
  assert.equal(dst[999], 9999 & 0xff);
  assert.equal(dst[1000], 0xaa, "the rest untouched");
  await src.close();
  await fsp.rm(dir, { recursive: true, force: true });
});
