// The checks every golden overlay (test/golden/vN, both layouts, made by
// test/golden/make_golden.ts from the frozen images of test/golden/_images.ts)
// must pass in every later cloudlet: read it, inspect it exactly as recorded,
// verify it and rebuild the recorded images from it, whatever FORMAT_VERSION
// it writes itself. Never regenerate a golden: a new format version adds test/golden/vN.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { core } from "./_core.ts";
import { cloudlet } from "./_cli.ts";
import { scratchDir } from "./_images.ts";
import { goldenImages } from "./golden/_images.ts";
import { openOverlay } from "../ts/node/overlay_files.ts";
import { decodeMeta, FORMAT_VERSION, type OverlayMeta } from "../ts/overlay/format.ts";

/** Registers the golden tests of format `version`; `what` names the extra facts `checkMeta` asserts of its meta. */
export async function goldenSuite(version: number, what = "", checkMeta: (meta: OverlayMeta) => void = () => {}): Promise<void> {
  const name = `v${version}`;
  const DIR = fileURLToPath(new URL(`./golden/${name}/`, import.meta.url)).replace(/\/$/, "");
  const expected = JSON.parse(readFileSync(join(DIR, "expected.json"), "utf8"));
  const LAYOUTS = [
    ["packed", "golden.overlay"],
    ["split", "golden.overlay-meta"],
  ] as const;
  const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
  const tmp = await scratchDir(`golden-${name}`);
  const images = goldenImages();
  for (const [file, b] of Object.entries(images)) writeFileSync(join(tmp, file), b);
  // The same base with one byte of its memory changed: another base.
  const otherMem = images.baseMem.slice();
  otherMem[12345] ^= 1;
  writeFileSync(join(tmp, "otherMem"), otherMem);
  const base = ["--base-disk", join(tmp, "baseDisk"), "--base-mem", join(tmp, "baseMem")];
  const home = ["--home", join(tmp, "home")];
  /** What the CLI prints, with this checkout's path written as the recording has it. */
  const relative = (s: string) => s.split(DIR).join(`test/golden/${name}`);

  test(`the golden images and files are the ones recorded (${name} is never regenerated)`, () => {
    for (const [file, b] of Object.entries(images)) assert.equal(sha256(b), expected.images[file], `generated ${file}`);
    for (const [file, hash] of Object.entries(expected.files)) assert.equal(sha256(readFileSync(join(DIR, file))), hash, file);
    // Both layouts say their version in their own bytes: the packed header and the meta header.
    const packed = readFileSync(join(DIR, "golden.overlay"));
    assert.equal(new TextDecoder().decode(packed.subarray(0, 8)), "CLOVPACK");
    assert.equal(packed.readUInt32LE(8), version);
    const meta = readFileSync(join(DIR, "golden.overlay-meta"));
    assert.equal(new TextDecoder().decode(meta.subarray(0, 8)), "CLOVMETA");
    assert.equal(meta.readUInt32LE(8), version);
    assert.ok(FORMAT_VERSION >= version, `this cloudlet writes format ${FORMAT_VERSION}`);
  });

  for (const [layout, file] of LAYOUTS) {
    const path = join(DIR, file);

    test(`${layout}: the library reads it as version ${version}${what}, every class present`, async () => {
      const ov = await openOverlay(core, path);
      try {
        assert.equal(ov.meta.version, version);
        checkMeta(ov.meta);
        assert.equal(ov.meta.segments.length, 2);
        assert.deepEqual(ov.meta.launch.portForwards, [{ proto: "tcp", hostPort: 8080, guestPort: 80 }]);
        // Every chunk class occurs (zero, base_memory, base_disk, self, raw, xor), in disk and in memory but raw.
        const [disk, memory] = ov.meta.classCounts;
        assert.ok(disk.every((n) => n > 0), `disk classes ${disk}`);
        assert.ok(memory.every((n) => n > 0), `memory classes ${memory}`);
      } finally {
        await ov.close();
      }
      if (layout === "split") assert.equal(decodeMeta(core, readFileSync(path), path).version, version);
    });

    test(`${layout}: inspect prints what was recorded, as text and --json`, async () => {
      const text = await cloudlet(["inspect", path, ...home]);
      assert.equal(text.code, 0, text.stderr);
      assert.equal(relative(text.stdout), readFileSync(join(DIR, `inspect-${layout}.txt`), "utf8"));
      const json = await cloudlet(["inspect", path, "--json", ...home]);
      assert.equal(json.code, 0, json.stderr);
      assert.deepEqual(JSON.parse(relative(json.stdout)), JSON.parse(readFileSync(join(DIR, `inspect-${layout}.json`), "utf8")));
    });

    test(`${layout}: inspect --verify against the base checks every segment and rebuilt chunk`, async () => {
      const r = await cloudlet(["inspect", path, "--verify", ...base, "--json", ...home]);
      assert.equal(r.code, 0, r.stderr);
      const v = JSON.parse(r.stdout);
      assert.equal(v.verified, true);
      assert.deepEqual(v.verification, { segments: 2, rebuilt: 2, rebuiltSkipped: 0, baseChecked: true });
    });

    test(`${layout}: synthesis rebuilds the recorded images, byte for byte`, async () => {
      const out = join(tmp, `synth-${layout}`);
      const r = await cloudlet(["synthesis", ...base, path, "-o", out, "--disk-format", "raw", ...home]);
      assert.equal(r.code, 0, r.stderr);
      const wrong = await cloudlet(["synthesis", "--base-disk", join(tmp, "baseDisk"), "--base-mem", join(tmp, "otherMem"), path, "-o", `${out}-wrong`, "--disk-format", "raw", "--json", ...home]);
      assert.equal(wrong.code, 1, wrong.stderr);
      assert.equal(JSON.parse(wrong.stdout.trim().split("\n").pop()!).error.code, "WRONG_BASE");
      for (const [f, hash] of Object.entries(expected.layouts[layout].rebuilt)) assert.equal(sha256(readFileSync(join(out, f))), hash, f);
      // And those are the custom images the overlay was made from.
      assert.equal(sha256(readFileSync(join(out, "disk.raw"))), expected.images.disk);
      assert.equal(sha256(readFileSync(join(out, "memory.raw"))), expected.images.mem);
      assert.equal(sha256(readFileSync(join(out, "state.bin"))), expected.images.state);
    });
  }
}
