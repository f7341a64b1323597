/**
 * Overlay files on disk, in both layouts: opening either one for reading,
 * and atomic writers for both.
 *
 *   NAME.overlay                       packed (default)
 *   NAME.overlay-meta + NAME-N.xz      the seed's layout (`--layout split`)
 *
 * Writers put everything under temporary names and rename at the end, meta
 * last, so an interrupted run never leaves an overlay that looks complete.
 */
import { promises as fsp } from "node:fs";
import { basename, dirname, join } from "node:path";
import type { Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import { encodePackHeader, HEADER_BYTES, META_SUFFIX, PACKED_SUFFIX, requireOverlayLayout, segmentFileName } from "../overlay/format.ts";
import { openPacked, openSplit, type OverlayReader } from "../overlay/reader.ts";
import type { OverlayOutput } from "../overlay/writer.ts";
import type { ProgressFn } from "../overlay/io.ts";
import { AtomicFile, FileSource } from "./files.ts";

export { META_SUFFIX, PACKED_SUFFIX } from "../overlay/format.ts";

/** Which layout an output path asks for, and the file names it implies. */
export function outputLayout(path: string, layout?: "packed" | "split"): { layout: "packed" | "split"; path: string; stem: string } {
  if (path.endsWith(META_SUFFIX)) return { layout: "split", path, stem: path.slice(0, -META_SUFFIX.length) };
  if (path.endsWith(PACKED_SUFFIX)) {
    const stem = path.slice(0, -PACKED_SUFFIX.length);
    return layout === "split" ? { layout, path: stem + META_SUFFIX, stem } : { layout: "packed", path, stem };
  }
  return (layout ?? "packed") === "packed" ? { layout: "packed", path: path + PACKED_SUFFIX, stem: path } : { layout: "split", path: path + META_SUFFIX, stem: path };
}

/** An opened overlay file set; close it when done. */
export interface OpenedOverlay extends OverlayReader {
  /** Releases open files. */
  close(): Promise<void>;
}

/** Opens an overlay in either layout, telling them apart by their magic (else by their name). */
export async function openOverlay(core: Core, path: string): Promise<OpenedOverlay> {
  const src = await FileSource.open(path);
  const opened: FileSource[] = [src];
  const close = async () => {
    for (const f of opened) await f.close();
  };
  try {
    if (requireOverlayLayout(await src.read(0, 8), path) === "split") {
      const stem = path.endsWith(META_SUFFIX) ? path.slice(0, -META_SUFFIX.length) : path;
      const dir = dirname(stem);
      const reader = await openSplit(
        core,
        src,
        basename(stem),
        async (name) => {
          const f = await FileSource.openOptional(join(dir, name));
          if (f) opened.push(f);
          return f;
        },
        (name) => join(dir, name),
      );
      return { ...reader, close };
    }
    const reader = await openPacked(core, src);
    return { ...reader, close };
  } catch (e) {
    await close();
    throw e;
  }
}

/** Writes the seed layout: NAME-N.xz segments, then NAME.overlay-meta. */
export class SplitOverlayOutput implements OverlayOutput {
  private readonly segments: AtomicFile[] = [];
  /** @param stem path without suffix; files are STEM.overlay-meta and STEM-N.xz */
  constructor(readonly stem: string) {}

  async writeSegment(i: number, xz: Uint8Array): Promise<void> {
    const f = await AtomicFile.create(join(dirname(this.stem), segmentFileName(basename(this.stem), i)));
    this.segments.push(f);
    await f.write(xz, 0);
    await f.close();
  }

  async commit(meta: Uint8Array): Promise<void> {
    const metaFile = await AtomicFile.create(this.stem + META_SUFFIX);
    try {
      await metaFile.write(meta, 0);
      await metaFile.close();
      // An older meta of the same name must not point at new segments meanwhile.
      await fsp.rm(this.stem + META_SUFFIX, { force: true });
      for (const s of this.segments) await s.commit();
      await removeStaleSegments(this.stem, this.segments.length);
      await metaFile.commit();
    } catch (e) {
      await metaFile.abort();
      throw e;
    }
  }

  async abort(): Promise<void> {
    for (const s of this.segments) await s.abort();
  }
}

async function removeStaleSegments(stem: string, count: number): Promise<void> {
  const dir = dirname(stem);
  const base = basename(stem);
  const re = new RegExp(`^${base.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}-(\\d+)\\.xz$`);
  for (const name of await fsp.readdir(dir)) {
    const m = re.exec(name);
    if (m && Number(m[1]) > count) await fsp.rm(join(dir, name), { force: true });
  }
}

/**
 * Writes a packed overlay. Segments are spooled to a temporary file while
 * they are produced (their sizes and hashes go into the meta, which comes
 * first in the file), then header + meta + segments are written under a
 * temporary name with the in-progress magic, fixed up and renamed.
 */
export class PackedOverlayOutput implements OverlayOutput {
  private spool: AtomicFile | null = null;
  private spoolBytes = 0;
  private out: AtomicFile | null = null;
  /** @param path final path (NAME.overlay) @param core for the header checksum @param progress reports the final copy of the segments behind the meta */
  constructor(
    readonly path: string,
    private readonly core: Core,
    private readonly progress?: ProgressFn,
  ) {}

  async writeSegment(_i: number, xz: Uint8Array): Promise<void> {
    // The spool is scratch (removed once copied), so it is not fsynced.
    this.spool ??= await AtomicFile.create(this.path + ".segments", false);
    await this.spool.write(xz, this.spoolBytes);
    this.spoolBytes += xz.length;
  }

  async commit(meta: Uint8Array): Promise<void> {
    const out = (this.out = await AtomicFile.create(this.path));
    const dataOffset = HEADER_BYTES + meta.length;
    const h = { metaLength: meta.length, dataOffset, totalLength: dataOffset + this.spoolBytes };
    await out.write(encodePackHeader(this.core, h, true), 0);
    await out.write(meta, HEADER_BYTES);
    if (this.spool) {
      await this.spool.close();
      const src = await FileSource.open(this.spool.tmp);
      try {
        for (let o = 0; o < this.spoolBytes; o += 4 << 20) {
          const n = Math.min(4 << 20, this.spoolBytes - o);
          await out.write(await src.read(o, n), dataOffset + o);
          this.progress?.({ phase: "pack", done: o + n, total: this.spoolBytes });
        }
      } finally {
        await src.close();
      }
      await this.spool.abort();
      this.spool = null;
    }
    await out.write(encodePackHeader(this.core, h, false), 0);
    await out.commit();
  }

  async abort(): Promise<void> {
    await this.spool?.abort();
    await this.out?.abort();
  }
}

/** A missing overlay gets the same error as any missing input. */
export function overlayMissing(path: string): CloudletError {
  return new CloudletError("MISSING_INPUT", "no such overlay", path);
}
