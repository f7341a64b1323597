/**
 * Test images: a base (disk + memory) and a customised copy, with edits of
 * every kind the overlay classifies. Deterministic per seed.
 */
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "../ts/core/vectors.ts";

const C = 4096;

/** A tiny deterministic PRNG for edit positions. */
export class Rng {
  constructor(private x: number) {}
  /** Next integer in [0, n). */
  int(n: number): number {
    this.x ^= this.x << 13;
    this.x >>>= 0;
    this.x ^= this.x >>> 17;
    this.x ^= this.x << 5;
    this.x >>>= 0;
    return this.x % n;
  }
}

/** Paths of a generated base and custom VM. */
export interface ImageSet {
  dir: string;
  baseDisk: string;
  baseMem: string;
  disk: string;
  mem: string;
  /** Chunks of each edit kind made, for assertions. */
  edits: Record<string, number>;
}

/** Makes base images: text-like and binary-like data with zero runs. */
export function makeBase(seed: number, diskBytes: number, memBytes: number): { disk: Uint8Array; mem: Uint8Array } {
  const disk = randomBytes(seed, diskBytes);
  const mem = randomBytes(seed + 1, memBytes);
  const rng = new Rng(seed + 2);
  // Zero regions (free disk space, free memory) and compressible regions.
  for (const img of [disk, mem]) {
    const n = img.length / C;
    for (let i = 0; i < n; i++) {
      const r = rng.int(10);
      if (r < 3) img.fill(0, i * C, (i + 1) * C);
      else if (r < 5) for (let j = i * C; j < (i + 1) * C; j++) img[j] = "cloudlet base text "[j % 19].charCodeAt(0);
    }
  }
  // Memory shares pages with disk (page cache of files), as real guests do.
  for (let k = 0; k < mem.length / C / 8; k++) {
    const from = rng.int(disk.length / C);
    const to = rng.int(mem.length / C);
    mem.set(disk.subarray(from * C, from * C + C), to * C);
  }
  return { disk, mem };
}

/** Applies random edits of every class to copies of the base. */
export function customise(seed: number, base: { disk: Uint8Array; mem: Uint8Array }, editsPerKind: number): { disk: Uint8Array; mem: Uint8Array; edits: Record<string, number> } {
  const disk = base.disk.slice();
  const mem = base.mem.slice();
  const rng = new Rng(seed * 7 + 3);
  const edits: Record<string, number> = { zero: 0, fromMem: 0, fromDisk: 0, repeat: 0, fresh: 0, light: 0 };
  const repeated = randomBytes(seed + 99, C);
  for (let e = 0; e < editsPerKind * 6; e++) {
    const img = rng.int(2) ? disk : mem;
    const at = rng.int(img.length / C) * C;
    switch (e % 6) {
      case 0:
        img.fill(0, at, at + C);
        edits.zero++;
        break;
      case 1: {
        const from = rng.int(base.mem.length / C) * C;
        img.set(base.mem.subarray(from, from + C), at);
        edits.fromMem++;
        break;
      }
      case 2: {
        const from = rng.int(base.disk.length / C) * C;
        img.set(base.disk.subarray(from, from + C), at);
        edits.fromDisk++;
        break;
      }
      case 3:
        img.set(repeated, at);
        edits.repeat++;
        break;
      case 4:
        img.set(randomBytes(seed * 1000 + e, C), at);
        edits.fresh++;
        break;
      case 5:
        // A light edit: a few bytes of a page change (XOR territory).
        for (let k = 0; k < 8; k++) img[at + rng.int(C)] ^= 1 + rng.int(255);
        edits.light++;
        break;
    }
  }
  return { disk, mem, edits };
}

/** Writes a base and a customised copy under `dir`. */
export async function writeImageSet(dir: string, seed: number, diskBytes = 8 << 20, memBytes = 4 << 20, editsPerKind = 40): Promise<ImageSet> {
  await fsp.mkdir(dir, { recursive: true });
  const base = makeBase(seed, diskBytes, memBytes);
  const custom = customise(seed, base, editsPerKind);
  const p = (n: string) => join(dir, n);
  await fsp.writeFile(p("base.raw"), base.disk);
  await fsp.writeFile(p("base.mem"), base.mem);
  await fsp.writeFile(p("custom.raw"), custom.disk);
  await fsp.writeFile(p("custom.mem"), custom.mem);
  return { dir, baseDisk: p("base.raw"), baseMem: p("base.mem"), disk: p("custom.raw"), mem: p("custom.mem"), edits: custom.edits };
}

/** A fresh scratch directory under .build/test-tmp. */
export async function scratchDir(name: string): Promise<string> {
  const root = new URL("../.build/test-tmp/", import.meta.url).pathname;
  await fsp.mkdir(root, { recursive: true });
  return await fsp.mkdtemp(join(root, `${name}-`));
}
