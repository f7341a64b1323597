/**
 * OverlayReader: opens an overlay in either layout and hands out its meta and
 * segment bytes, with every size and offset checked against the meta before
 * anything is read. Runtime-neutral: a host supplies file access.
 */
import type { Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import { decodeMeta, decodePackedHead, decodePackHeader, HEADER_BYTES, LIMITS, metaBodyLength, type OverlayMeta, segmentFileName } from "./format.ts";
import type { ByteSource } from "./io.ts";

/** Opens files by name relative to the overlay; null when missing. */
export type OpenFile = (name: string) => Promise<ByteSource | null>;

/** An opened overlay. */
export interface OverlayReader {
  /** The validated meta. */
  readonly meta: OverlayMeta;
  /** The meta's bytes as stored (header + body), when the reader has them. */
  readonly metaBytes?: Uint8Array;
  /** Label for messages. */
  readonly name: string;
  /** Bytes of the whole overlay (meta + segments). */
  readonly totalBytes: number;
  /** The compressed bytes of segment `i` (0-based), exactly as long as the meta says. */
  segment(i: number): Promise<Uint8Array>;
  /** The file that holds segment `i`, for messages. */
  segmentFile(i: number): string;
  /**
   * False while segment `i` has not arrived (a reader fed over a link, where
   * asking for it early raises its priority). Readers without it hold every
   * segment.
   */
  segmentArrived?(i: number): boolean;
}

async function readExact(src: ByteSource, offset: number, length: number, what: string): Promise<Uint8Array> {
  const b = await src.read(offset, length);
  if (b.length !== length) throw new CloudletError("TRUNCATED", `${what} is truncated: expected ${length} bytes at offset ${offset}, found ${b.length}`, src.name);
  return b;
}

/** Reads and validates a meta from the start of `src` (a meta file or meta bytes). */
export async function readMeta(core: Core, src: ByteSource, offset = 0): Promise<{ meta: OverlayMeta; length: number; bytes: Uint8Array }> {
  // Short reads are named by the decoder, after the magic: a file that is no meta says so.
  const head = await src.read(offset, HEADER_BYTES);
  const bodyLen = metaBodyLength(head, src.name);
  const all = await readExact(src, offset, HEADER_BYTES + bodyLen, "overlay meta");
  return { meta: decodeMeta(core, all, src.name), length: HEADER_BYTES + bodyLen, bytes: all };
}

/** Opens a packed overlay (`NAME.overlay`). */
export async function openPacked(core: Core, src: ByteSource): Promise<OverlayReader> {
  const head = await src.read(0, HEADER_BYTES);
  // The header alone first: its checked meta length bounds what is read next.
  const { metaLength } = decodePackHeader(core, head, src.name);
  if (src.size < HEADER_BYTES + metaLength) throw new CloudletError("TRUNCATED", `packed overlay is truncated: ${src.size} bytes, but its header and meta alone take ${HEADER_BYTES + metaLength}`, src.name);
  const metaBytes = await readExact(src, HEADER_BYTES, metaLength, "overlay meta");
  const { header: h, meta } = decodePackedHead(core, head, metaBytes, src.name);
  const offsets: number[] = [];
  let off = h.dataOffset;
  for (const s of meta.segments) {
    offsets.push(off);
    off += s.compressedSize;
  }
  if (src.size < h.totalLength) throw new CloudletError("TRUNCATED", `packed overlay is truncated: ${src.size} of ${h.totalLength} bytes present`, src.name);
  if (src.size > h.totalLength) throw new CloudletError("BAD_META", `packed overlay has ${src.size - h.totalLength} unexpected trailing bytes`, src.name);
  return {
    meta,
    metaBytes,
    name: src.name,
    totalBytes: h.totalLength,
    segmentFile: () => src.name,
    segment: (i) => {
      const seg = meta.segments[i];
      return readExact(src, offsets[i], seg.compressedSize, `segment ${i + 1}`);
    },
  };
}

/**
 * Opens the seed layout: `STEM.overlay-meta` plus `STEM-1.xz` ... `pathOf`
 * turns a segment file name into the path shown in messages.
 */
export async function openSplit(core: Core, metaSrc: ByteSource, stem: string, open: OpenFile, pathOf: (name: string) => string = (n) => n): Promise<OverlayReader> {
  if (metaSrc.size > LIMITS.metaBytes) throw new CloudletError("BAD_META", `meta file is ${metaSrc.size} bytes, over the ${LIMITS.metaBytes}-byte limit`, metaSrc.name);
  const { meta, length, bytes: metaBytes } = await readMeta(core, metaSrc);
  if (metaSrc.size !== length) throw new CloudletError("BAD_META", "overlay meta has trailing bytes", metaSrc.name);
  const total = length + meta.segments.reduce((t, s) => t + s.compressedSize, 0);
  return {
    meta,
    metaBytes,
    name: metaSrc.name,
    totalBytes: total,
    segmentFile: (i) => pathOf(segmentFileName(stem, i)),
    segment: async (i) => {
      const name = segmentFileName(stem, i);
      const f = await open(name);
      if (!f) throw new CloudletError("MISSING_SEGMENT", `segment ${i + 1} is missing (${name} not found)`, pathOf(name));
      const want = meta.segments[i].compressedSize;
      if (f.size < want) throw new CloudletError("TRUNCATED", `segment ${i + 1} is truncated: ${f.size} of ${want} bytes`, f.name);
      if (f.size > want) throw new CloudletError("CORRUPT_SEGMENT", `segment ${i + 1} is ${f.size} bytes but the meta says ${want}`, f.name);
      return readExact(f, 0, want, `segment ${i + 1}`);
    },
  };
}
