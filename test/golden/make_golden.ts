/**
 * Writes a golden overlay of the current format version, in both layouts,
 * with what `inspect` prints for it and the hashes of what synthesis
 * rebuilds: `node --import tsx test/golden/make_golden.ts test/golden/vN [--boot-set]`.
 * `--boot-set` (version 2 on) writes through the library with a recorded
 * working set, as `overlay --warmup-*` does, so the meta carries a boot set.
 * Run once per format version, when that version is new; never over an
 * existing version's directory (golden_vN.test.ts holds every version to
 * what it wrote then).
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { goldenImages } from "./_images.ts";
import { createOverlayFiles } from "../../ts/jobs/file_overlay.ts";
import { loadCoreFromDisk } from "../../ts/node/core_file.ts";
import { ImageKind } from "../../ts/overlay/format.ts";

const out = resolve(process.argv[2] ?? "");
if (!process.argv[2] || existsSync(out)) throw new Error(`usage: make_golden.ts NEW_DIR (${out} must not exist yet)`);
const CLI = fileURLToPath(new URL("../../bin/cloudlet", import.meta.url));
const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const tmp = mkdtempSync(join(tmpdir(), "golden-"));
const run = (args: string[]) => execFileSync(CLI, [...args, "--home", join(tmp, "home")], { encoding: "utf8" });
try {
  const img = goldenImages();
  for (const [name, b] of Object.entries(img)) writeFileSync(join(tmp, name), b);
  mkdirSync(out, { recursive: true });
  const common = ["--base-disk", join(tmp, "baseDisk"), "--base-mem", join(tmp, "baseMem")];
  const made = ["--disk", join(tmp, "disk"), "--mem", join(tmp, "mem"), "--state", join(tmp, "state"), "--segment-size", "16K", "--forward", "tcp:8080::80", "--threads", "1"];
  if (process.argv[3] === "--boot-set") {
    // A warm-up that touched: memory page 9 (XOR), disk chunk 33 (zero past the base disk's end, which reads as zero: unchanged, not stored), memory page 2
    // (RAW, leader of page 3), disk chunk 5 (RAW, leader of 6), memory page 20 (the base's: listed as a base page).
    const touches: Array<[number, number]> = [[ImageKind.Memory, 9], [ImageKind.Disk, 33], [ImageKind.Memory, 2], [ImageKind.Disk, 5], [ImageKind.Memory, 20]];
    const core = await loadCoreFromDisk();
    for (const file of ["golden.overlay", "golden.overlay-meta"]) {
      await createOverlayFiles(core, {
        baseDisk: join(tmp, "baseDisk"), baseMem: join(tmp, "baseMem"), disk: join(tmp, "disk"), mem: join(tmp, "mem"), state: join(tmp, "state"),
        out: join(out, file), home: join(tmp, "home"), segmentBytes: 16 << 10, threads: 1,
        launch: { portForwards: [{ proto: "tcp", hostPort: 8080, guestPort: 80 }] },
        workingSet: { touches, reason: "warmup-script golden.sh" },
      });
    }
  } else {
    run(["overlay", ...common, ...made, "-o", join(out, "golden.overlay")]);
    run(["overlay", ...common, ...made, "-o", join(out, "golden.overlay-meta")]);
  }
  const expected: Record<string, unknown> = { images: Object.fromEntries(Object.entries(img).map(([k, b]) => [k, sha256(b)])), layouts: {} };
  for (const [layout, file] of [["packed", "golden.overlay"], ["split", "golden.overlay-meta"]]) {
    const path = join(out, file);
    // Paths in the output are written as the test passes them: relative to the repository.
    const rel = (s: string) => s.split(out).join("test/golden/" + out.split("/").pop());
    writeFileSync(join(out, `inspect-${layout}.txt`), rel(run(["inspect", path])));
    writeFileSync(join(out, `inspect-${layout}.json`), rel(run(["inspect", path, "--json"])));
    const dir = join(tmp, `synth-${layout}`);
    run(["synthesis", ...common, path, "-o", dir, "--disk-format", "raw"]);
    (expected.layouts as Record<string, unknown>)[layout] = {
      rebuilt: Object.fromEntries(["disk.raw", "memory.raw", "state.bin"].map((f) => [f, sha256(readFileSync(join(dir, f)))])),
    };
  }
  expected.files = Object.fromEntries(readdirSync(out).filter((f) => f.startsWith("golden")).sort().map((f) => [f, sha256(readFileSync(join(out, f)))]));
  writeFileSync(join(out, "expected.json"), JSON.stringify(expected, null, 2) + "\n");
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
