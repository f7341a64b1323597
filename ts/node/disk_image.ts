/**
 * Custom disks as the overlay writer sees them: a byte source plus, for a
 * qcow2 top layer over the base disk, the list of extents that may have
 * changed (from `qemu-img map`). Reading a qcow2 needs no NBD: the map gives
 * the host offset of every data extent of the top layer, and everything
 * else comes from the backing file or reads as zero.
 */
import { promises as fsp } from "node:fs";
import { CloudletError } from "../errors.ts";
import type { ByteSource, ChangedExtent } from "../overlay/io.ts";
import { FileSource } from "./files.ts";
import { runToolOk } from "./process.ts";

/** One entry of `qemu-img map --output=json`. */
interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/** An opened custom disk. */
export interface CustomDisk {
  /** Its contents (the guest-visible bytes). */
  source: ByteSource;
  /** Extents that may differ from the base, when known (qcow2 over the base). */
  changed?: ChangedExtent[];
  /** Detected format. */
  format: "raw" | "qcow2";
  /** Releases files. */
  close(): Promise<void>;
}

/** True when the file starts with the qcow2 magic. */
export async function isQcow2(path: string): Promise<boolean> {
  const f = await FileSource.open(path);
  try {
    const m = await f.read(0, 4);
    return m.length === 4 && m[0] === 0x51 && m[1] === 0x46 && m[2] === 0x49 && m[3] === 0xfb;
  } finally {
    await f.close();
  }
}

/** Guest-visible bytes of a qcow2 image, read through its map. */
class Qcow2Source implements ByteSource {
  constructor(
    readonly name: string,
    readonly size: number,
    private readonly file: FileSource,
    private readonly backing: FileSource | null,
    private readonly map: MapEntry[],
  ) {}

  private find(pos: number): number {
    let lo = 0;
    let hi = this.map.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.map[mid].start <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const len = Math.max(0, Math.min(length, this.size - offset));
    const out = new Uint8Array(len);
    let pos = offset;
    let i = this.find(pos);
    while (pos < offset + len && i < this.map.length) {
      const e = this.map[i];
      const end = Math.min(e.start + e.length, offset + len);
      if (end <= pos) {
        i++;
        continue;
      }
      const n = end - pos;
      if (e.zero || !e.present) {
        // zeros: nothing to copy
      } else if (e.depth === 0 && e.offset !== undefined) {
        out.set(await this.file.read(e.offset + (pos - e.start), n), pos - offset);
      } else if (e.depth >= 1 && this.backing) {
        out.set(await this.backing.read(pos, n), pos - offset);
      } else {
        throw new CloudletError("BAD_INPUT", "qcow2 image has compressed or encrypted clusters, which cloudlet cannot read directly; convert it with `qemu-img convert -O raw`", this.name);
      }
      pos = end;
      i++;
    }
    return out;
  }
}

/**
 * The data and hole extents of a raw file (`qemu-img map`, which asks the
 * file system with SEEK_DATA/SEEK_HOLE), covering the whole file; holes are
 * `zero`. Null when the map cannot be had, in which case callers read everything.
 */
export async function rawExtents(path: string): Promise<ChangedExtent[] | null> {
  try {
    const map = JSON.parse(await runToolOk("qemu-img", ["map", "-f", "raw", "--output=json", path], { file: path })) as MapEntry[];
    return map.map((e) => ({ start: e.start, length: e.length, zero: e.zero && !e.data }));
  } catch {
    return null;
  }
}

/** Chunk runs [first, end) that lie wholly inside holes of a raw file. */
export async function holeChunkRuns(path: string, chunk: number): Promise<Array<[number, number]>> {
  const ext = await rawExtents(path);
  if (!ext) return [];
  return ext.filter((e) => e.zero).map((e) => [Math.ceil(e.start / chunk), Math.floor((e.start + e.length) / chunk)] as [number, number]).filter(([a, b]) => b > a);
}

/**
 * Opens a custom disk. For a qcow2 whose backing file is `baseDisk`, the
 * changed extents come from the top layer; a raw disk is read except for its
 * holes (which read as zero); otherwise every chunk is compared by hash.
 */
export async function openCustomDisk(path: string, baseDisk: string): Promise<CustomDisk> {
  if (!(await isQcow2(path))) {
    const source = await FileSource.open(path);
    // Every byte is covered: data extents are scanned, holes are known zero.
    return { source, changed: (await rawExtents(path)) ?? undefined, format: "raw", close: () => source.close() };
  }
  const info = JSON.parse(await runToolOk("qemu-img", ["info", "-U", "--output=json", path], { file: path })) as {
    "virtual-size": number;
    "full-backing-filename"?: string;
    "backing-filename-format"?: string;
  };
  const backingPath = info["full-backing-filename"];
  if (backingPath && info["backing-filename-format"] && info["backing-filename-format"] !== "raw") {
    throw new CloudletError("BAD_INPUT", `qcow2 backing file ${backingPath} is ${info["backing-filename-format"]}; cloudlet needs a raw base disk`, path);
  }
  const map = (JSON.parse(await runToolOk("qemu-img", ["map", "-U", "--output=json", path], { file: path })) as MapEntry[]).sort((a, b) => a.start - b.start);
  const file = await FileSource.open(path);
  const backing = backingPath ? await FileSource.open(backingPath) : null;
  const source = new Qcow2Source(path, info["virtual-size"], file, backing, map);
  let changed: ChangedExtent[] | undefined;
  if (backingPath && (await fsp.realpath(backingPath)) === (await fsp.realpath(baseDisk))) {
    changed = map.filter((e) => e.depth === 0).map((e) => ({ start: e.start, length: e.length, zero: e.zero && !e.data }));
  }
  return {
    source,
    changed,
    format: "qcow2",
    close: async () => {
      await file.close();
      await backing?.close();
    },
  };
}
