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
