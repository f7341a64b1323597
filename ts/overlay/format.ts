/**
 * The cloudlet VM overlay format, version 2 (reads 1 and 2). This module owns it: every byte
 * that is written or read goes through here.
 *
 * An overlay is a meta plus segments. It is stored either in the seed's
 * layout (`NAME.overlay-meta` + `NAME-1.xz` ... `NAME-N.xz`) or packed into
 * one file (`NAME.overlay`) that can be streamed meta-first and read by range.
 *
 * ```text
 * META (NAME.overlay-meta, and bytes [64, 64+M) of a packed file)
 *   0   8  magic "CLOVMETA"
 *   8   4  format version, u32 LE (2; 1 read)   -- not the package version
 *  12   4  flags, u32 LE (0; reserved)
 *  16   8  body length M-64, u64 LE (<= LIMITS.metaBytes)
 *  24  32  BLAKE3 of the body
 *  56   8  reserved (0)
 *  64  ..  body: UTF-8 JSON, see OverlayMeta / docs/overlay-format.md
 *
 * PACKED FILE (NAME.overlay)
 *   0   8  magic "CLOVPACK" ("CLOVPART" while being written: never complete)
 *   8   4  format version, u32 LE (2; 1 read)
 *  12   4  flags (0)
 *  16   8  meta offset (64)
 *  24   8  meta length M
 *  32   8  data offset D (64 + M)
 *  40   8  total file length
 *  48  16  first 16 bytes of BLAKE3 of bytes [0, 48)
 *  64   M  META, exactly as above
 *   D  ..  segment 1, segment 2, ... back to back; each is one standard .xz
 *          stream whose length the meta's segment table gives
 *
 * SEGMENT (the payload inside each .xz stream, before compression)
 *   0   4  magic "CLSG"
 *   4   4  segment format version, u32 LE (1)
 *   8   4  record count R
 *  12   4  data chunk count K
 *  16 24R  records, sorted by (kind, chunk index), strictly ascending:
 *            +0 u8 kind   (ImageKind)     +1 u8 class (ChunkClass)
 *            +2 u16 reserved (0)          +4 u32 reserved (0)
 *            +8 u64 chunk index           +16 u64 arg:
 *               BaseMemory/BaseDisk: byte offset of the equal chunk in the base
 *               Self: record number (in this segment) of a Raw/Xor record
 *               Raw/Xor: data slot (0, 1, 2, ... in record order)
 *   ..  4096K  data slots: the chunk (Raw) or chunk XOR same-offset base chunk (Xor)
 * ```
 *
 * Every segment decodes on its own: its records point only into the base or
 * into the same segment. The meta records, per segment, the BLAKE3 of the
 * compressed bytes (checked before decoding) and a hash over the digests of
 * the rebuilt chunks (checked after applying), which together verify every
 * rebuilt chunk:
 *
 *   rebuilt_hash = BLAKE3( for each record, in order:
 *                          u8 kind || u64 LE chunk index || BLAKE3-256(rebuilt 4096 bytes) )
 *
 * (built only by RebuiltHash below, for the writer and for synthesis alike).
 * A packed file's head is decoded only by decodePackedHead below: the meta
 * fills [64, D) exactly, and the segment table sums to the total length.
 *
 * Chunks past the end of an image are padded with zeros; base reads past the
 * end of a base image read zeros. Enum values below are part of the format:
 * do not change or reuse numbers.
 */
import type { Core } from "../core/core.ts";
import { toHex } from "../core/vectors.ts";
import { CloudletError } from "../errors.ts";

/**
 * Format version written. Separate from the package version. Version 2 added
 * the optional boot set (`boot_set` in the meta, {@link BootSet}); nothing
 * else changed, so version 1 overlays are read as before (without one).
 */
export const FORMAT_VERSION = 2;
/** Format versions read. */
export const READ_VERSIONS: readonly number[] = [1, 2];
const versionNotSupported = (version: number) => `overlay format version ${version} is not supported (this cloudlet reads versions ${READ_VERSIONS.join(" and ")})`;
/** Segment payload version. */
export const SEGMENT_VERSION = 1;
/** Chunk size: disk blocks and memory pages alike. */
export const CHUNK = 4096;
/** Bytes of the fixed META header and of the packed-file header. */
export const HEADER_BYTES = 64;
/** Bytes of one segment record. */
export const RECORD_BYTES = 24;
/** Bytes of the segment payload header. */
export const SEGMENT_HEADER_BYTES = 16;

const enc = new TextEncoder();
/** Magic of a complete meta. */
export const META_MAGIC = enc.encode("CLOVMETA");
/** Magic of a complete packed overlay. */
export const PACK_MAGIC = enc.encode("CLOVPACK");
/** Magic of a packed overlay that is still being written. */
export const PART_MAGIC = enc.encode("CLOVPART");
const SEG_MAGIC = enc.encode("CLSG");

/** Limits that bound what a hostile overlay can make us allocate or do. */
export const LIMITS = {
  /** Largest meta (header + JSON body). */
  metaBytes: 64 << 20,
  /** Most segments in one overlay. */
  segments: 1 << 20,
  /** Largest compressed segment. */
  segmentCompressed: 80 << 20,
  /** Largest decoded segment payload. */
  segmentRaw: 80 << 20,
  /**
   * Largest image (disk, memory or device state): 8 TiB, the largest disk a
   * qcow2 with 4 KiB clusters can address within QEMU's 32 MiB L1 limit.
   */
  imageBytes: 2 ** 43,
  /** Most chunk ranges over all segments. */
  ranges: 1 << 24,
  /** Most port forwards. */
  portForwards: 256,
} as const;

/** Which image a chunk belongs to. Part of the format: never reuse numbers. */
export enum ImageKind {
  /** The disk. */
  Disk = 0,
  /** Guest RAM. */
  Memory = 1,
  /** Device state (the QEMU migration stream). It has no base. */
  State = 2,
}
/** Names of image kinds, indexed by value. */
export const KIND_NAMES = ["disk", "memory", "state"] as const;
/** Number of image kinds. */
export const KIND_COUNT = 3;

/** How a changed chunk is stored. Part of the format: never reuse numbers. */
export enum ChunkClass {
  /** All zero: nothing stored. */
  Zero = 0,
  /** Equal to a base-memory page: its offset is stored. */
  BaseMemory = 1,
  /** Equal to a base-disk block: its offset is stored. */
  BaseDisk = 2,
  /** A repeat of a Raw/Xor chunk in the same segment. */
  Self = 3,
  /** Stored as is. */
  Raw = 4,
  /** Stored as XOR against the same-offset base chunk. */
  Xor = 5,
}
/** Names of chunk classes, indexed by value. */
export const CLASS_NAMES = ["zero", "base_memory", "base_disk", "self", "raw", "xor"] as const;
/** Number of chunk classes. */
export const CLASS_COUNT = 6;

/** The machine a base VM runs on; part of the base id. */
export interface MachineConfig {
  /** QEMU machine type, e.g. "pc-i440fx-7.2". */
  machine: string;
  /** QEMU CPU model, e.g. "qemu64". */
  cpu: string;
  /** Guest RAM in MiB. */
  ramMiB: number;
  /**
   * A virtio balloon with free page reporting (the guest hands free pages back;
   * see docs/vm-hosts.md). Part of the device set, so of the base id; absent on
   * bases made before it existed, which keep their ids and launch without it.
   */
  freePageReporting?: boolean;
}

/**
 * What a QEMU machine type or CPU model may look like. They reach QEMU's
 * command line and libvirt XML, so a comma (QEMU option syntax), quote or
 * space from an overlay, an imported base or a typo is refused here.
 */
export const MACHINE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** True if `m` names a machine type and CPU model QEMU may be given, with a sane RAM size. */
export function validMachine(m: MachineConfig): boolean {
  return MACHINE_NAME_RE.test(m.machine) && MACHINE_NAME_RE.test(m.cpu) && Number.isSafeInteger(m.ramMiB) && m.ramMiB >= 0 && m.ramMiB <= 1 << 24;
}

/** A host-to-guest port forward. */
export interface PortForward {
  /** Protocol. */
  proto: "tcp" | "udp";
  /** Host port; 0 means "pick a free one at launch". */
  hostPort: number;
  /** Guest port. */
  guestPort: number;
}

/** How to launch the synthesized VM. */
export interface LaunchConfig {
  /** Ports to forward. */
  portForwards: PortForward[];
  /** Guest RAM in MiB. */
  memoryMiB: number;
  /** Virtual CPUs. */
  vcpus: number;
  /** Bytes of the memory image that were free at the snapshot (holes: never written, or reported free by the guest); optional, informational. */
  memoryFreeBytes?: number;
  /** Where the VM's app answers, as a template (`http://{host}:{port:80}/`; see launch.ts); absent unless given. */
  appUrl?: string;
}

/** One entry of the segment table. */
export interface SegmentInfo {
  /** Bytes of the .xz stream. */
  compressedSize: number;
  /** Bytes of the decoded payload. */
  rawSize: number;
  /** BLAKE3 of the .xz stream, hex. */
  hash: string;
  /** BLAKE3 over the rebuilt chunks (see the module docs), hex. */
  rebuiltHash: string;
  /** Number of records. */
  records: number;
  /** Number of data slots (Raw + Xor records). */
  dataChunks: number;
  /** Chunks covered, as [kind, first chunk index, count] runs in record order. */
  ranges: Array<[number, number, number]>;
}

/** Per (kind, class): number of chunks. Informational, for inspect. */
export type ClassCounts = number[][];

/**
 * The boot set (format version 2): the leading segments that hold the
 * overlay's working set, recorded when it was made (device state first, then
 * the memory pages and disk chunks a warm-up touched, in first-touch order).
 * Early start applies them before it resumes the VM.
 */
export interface BootSet {
  /** How many leading segments form it (at least 1). */
  segments: number;
  /** Why, e.g. `warmup-url http://{host}:{port:80}/` or `warmup-script NAME`. */
  reason: string;
  /** Memory pages the warm-up touched that the overlay stores, all in the boot set. */
  pages: number;
  /** Disk chunks the warm-up read that the overlay stores, all in the boot set. */
  chunks: number;
  /**
   * Memory pages the warm-up touched that equal the base's (so no segment
   * holds them), as ascending [first page, count] runs: early start sends
   * them from the base before the resume too, so the guest does not fault on
   * them one by one. Empty when none.
   */
  basePages: Array<[number, number]>;
}

/** The overlay meta. */
export interface OverlayMeta {
  /** Format version (FORMAT_VERSION). */
  version: number;
  /** Chunk size (CHUNK). */
  chunkSize: number;
  /** The base this overlay applies to. */
  base: {
    /** Base id: BLAKE3 over base disk, base memory and machine config, hex. */
    id: string;
    /** Base disk size in bytes. */
    diskSize: number;
    /** Base memory size in bytes. */
    memorySize: number;
    /** Machine config. */
    machine: MachineConfig;
  };
  /** Sizes of the rebuilt images, indexed by ImageKind. */
  imageSizes: [number, number, number];
  /** Segment table. */
  segments: SegmentInfo[];
  /** How to launch the rebuilt VM. */
  launch: LaunchConfig;
  /** Who made the overlay. */
  creator: { tool: string; version: string; created: string };
  /** Chunk counts per [kind][class], as recorded at creation. */
  classCounts: ClassCounts;
  /** The boot set (version 2 only); absent when none was recorded (file mode, or no warm-up). */
  bootSet?: BootSet;
}

function fail(file: string, msg: string): never {
  throw new CloudletError("BAD_META", msg, file);
}

function u64(view: DataView, off: number): number {
  const v = view.getBigUint64(off, true);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.POSITIVE_INFINITY : Number(v);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Encodes a meta: 64-byte header + canonical JSON body. */
export function encodeMeta(core: Core, meta: OverlayMeta): Uint8Array {
  const body = enc.encode(JSON.stringify(metaToJson(meta)));
  const out = new Uint8Array(HEADER_BYTES + body.length);
  const v = new DataView(out.buffer);
  out.set(META_MAGIC, 0);
  v.setUint32(8, meta.version, true);
  v.setBigUint64(16, BigInt(body.length), true);
  out.set(core.hash("blake3", body), 24);
  out.set(body, HEADER_BYTES);
  return out;
}

/**
 * Reads the fixed meta header and returns the body length. Throws BAD_META
 * before anything large is allocated when the header is wrong or hostile.
 */
export function metaBodyLength(header: Uint8Array, file: string): number {
  // The magic first: a file that is no meta at all is named so, however short.
  if (header.length >= 8 && !sameBytes(header.subarray(0, 8), META_MAGIC)) fail(file, "not a cloudlet overlay meta (bad magic)");
  if (header.length < HEADER_BYTES) throw new CloudletError("TRUNCATED", `overlay meta is truncated (${header.length} of ${HEADER_BYTES} header bytes)`, file);
  const v = new DataView(header.buffer, header.byteOffset, HEADER_BYTES);
  const version = v.getUint32(8, true);
  if (!READ_VERSIONS.includes(version)) fail(file, versionNotSupported(version));
  if (v.getUint32(12, true) !== 0 || v.getBigUint64(56, true) !== 0n) fail(file, "meta header has non-zero reserved fields (written by a newer cloudlet?)");
  const len = u64(v, 16);
  if (len > LIMITS.metaBytes - HEADER_BYTES) fail(file, `meta body of ${len} bytes exceeds the ${LIMITS.metaBytes}-byte limit`);
  return len;
}

/** Decodes and validates a whole meta (header + body). */
export function decodeMeta(core: Core, bytes: Uint8Array, file: string): OverlayMeta {
  const len = metaBodyLength(bytes, file);
  if (bytes.length < HEADER_BYTES + len) throw new CloudletError("TRUNCATED", `overlay meta is truncated (${bytes.length} of ${HEADER_BYTES + len} bytes)`, file);
  if (bytes.length > HEADER_BYTES + len) fail(file, "overlay meta has trailing bytes");
  const body = bytes.subarray(HEADER_BYTES, HEADER_BYTES + len);
  if (!sameBytes(core.hash("blake3", body), bytes.subarray(24, 56))) fail(file, "overlay meta is corrupt (checksum mismatch)");
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch {
    fail(file, "overlay meta body is not valid JSON");
  }
  const meta = validateMeta(json, file);
  const headerVersion = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES).getUint32(8, true);
  if (meta.version !== headerVersion) fail(file, `the meta header says format version ${headerVersion} but its body says ${meta.version}`);
  return meta;
}

/** Packed-file header fields. */
export interface PackHeader {
  /** Meta length. */
  metaLength: number;
  /** Offset of segment 1. */
  dataOffset: number;
  /** Whole file length. */
  totalLength: number;
}

/** Encodes the 64-byte header of a packed overlay; `partial` writes the in-progress magic. */
export function encodePackHeader(core: Core, h: PackHeader, partial: boolean): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES);
  const v = new DataView(out.buffer);
  out.set(partial ? PART_MAGIC : PACK_MAGIC, 0);
  v.setUint32(8, FORMAT_VERSION, true);
  v.setBigUint64(16, BigInt(HEADER_BYTES), true);
  v.setBigUint64(24, BigInt(h.metaLength), true);
  v.setBigUint64(32, BigInt(h.dataOffset), true);
  v.setBigUint64(40, BigInt(h.totalLength), true);
  out.set(core.hash("blake3", out.subarray(0, 48)).subarray(0, 16), 48);
  return out;
}

/** Decodes a packed header; refuses a partial (still being written) file. */
export function decodePackHeader(core: Core, b: Uint8Array, file: string): PackHeader {
  // The magic first: a file that is no packed overlay at all is named so, however short.
  const magic = b.subarray(0, 8);
  if (b.length >= 8 && sameBytes(magic, PART_MAGIC)) fail(file, "this overlay was never completed (its writer was interrupted); create it again");
  if (b.length >= 8 && !sameBytes(magic, PACK_MAGIC)) fail(file, "not a cloudlet packed overlay (bad magic)");
  if (b.length < HEADER_BYTES) throw new CloudletError("TRUNCATED", `packed overlay is truncated (${b.length} of ${HEADER_BYTES} header bytes)`, file);
  if (!sameBytes(core.hash("blake3", b.subarray(0, 48)).subarray(0, 16), b.subarray(48, 64))) fail(file, "packed overlay header is corrupt (checksum mismatch)");
  const v = new DataView(b.buffer, b.byteOffset, HEADER_BYTES);
  const version = v.getUint32(8, true);
  if (!READ_VERSIONS.includes(version)) fail(file, versionNotSupported(version));
  if (v.getUint32(12, true) !== 0) fail(file, "packed overlay header has unknown flags (written by a newer cloudlet?)");
  const metaOffset = u64(v, 16);
  const metaLength = u64(v, 24);
  const dataOffset = u64(v, 32);
  const totalLength = u64(v, 40);
  if (metaOffset !== HEADER_BYTES || metaLength < HEADER_BYTES || metaLength > LIMITS.metaBytes || dataOffset !== HEADER_BYTES + metaLength || totalLength < dataOffset) {
    fail(file, "packed overlay header has inconsistent offsets");
  }
  return { metaLength, dataOffset, totalLength };
}

/**
 * Refuses a header whose total length disagrees with the meta's segment
 * table: the table, not the declared total, says how many bytes follow, so a
 * reader or a server that limits sizes must check the two agree.
 */
export function checkPackTotal(h: PackHeader, meta: OverlayMeta, file: string): void {
  const sum = h.dataOffset + meta.segments.reduce((t, s) => t + s.compressedSize, 0);
  if (sum !== h.totalLength) fail(file, `segment table sums to ${sum} bytes but the header says ${h.totalLength}`);
}

/** The decoded head of a packed overlay: its header and its meta. */
export interface PackedHead {
  /** The packed header. */
  header: PackHeader;
  /** The validated meta. */
  meta: OverlayMeta;
}

/**
 * Decodes the head of a packed overlay: the 64-byte header, then the meta
 * bytes the header says follow it (`metaBytes`, exactly `header.metaLength`
 * of them). The one rule every reader and the server apply: the meta fills
 * [64, dataOffset) exactly, with nothing between it and segment 1, and the
 * segment table agrees with the declared total.
 */
export function decodePackedHead(core: Core, headerBytes: Uint8Array, metaBytes: Uint8Array, file: string): PackedHead {
  const header = decodePackHeader(core, headerBytes, file);
  if (metaBytes.length < header.metaLength) throw new CloudletError("TRUNCATED", `packed overlay is truncated: its meta has ${metaBytes.length} of ${header.metaLength} bytes`, file);
  if (metaBytes.length > header.metaLength) fail(file, `the packed header says the meta is ${header.metaLength} bytes, but ${metaBytes.length} were given`);
  // Checked before the body is hashed: a meta whose own length disagrees
  // with the packed header leaves bytes between the meta and segment 1 (or
  // cuts the meta short), which no reader may skip over.
  const own = HEADER_BYTES + metaBodyLength(metaBytes, file);
  if (own !== header.metaLength) fail(file, `the meta is ${own} bytes but the packed header gives it ${header.metaLength} (${own < header.metaLength ? "bytes between the meta and segment 1" : "the meta runs into segment 1"})`);
  const meta = decodeMeta(core, metaBytes, file);
  checkPackTotal(header, meta, file);
  return { header, meta };
}

/** Which layout an overlay file is in. */
export type OverlayLayout = "packed" | "split";

/** Suffix of a packed overlay file. */
export const PACKED_SUFFIX = ".overlay";
/** Suffix of a seed-layout meta file. */
export const META_SUFFIX = ".overlay-meta";

/**
 * The layout of an overlay file, from its first bytes (`head`, up to 8), or
 * when those are no overlay magic, from its name; null when neither says.
 * A damaged or cut `.overlay-meta` is a meta, and is named as one.
 */
export function overlayLayoutOf(head: Uint8Array, name: string): OverlayLayout | null {
  const magic = head.subarray(0, 8);
  if (sameBytes(magic, META_MAGIC)) return "split";
  if (sameBytes(magic, PACK_MAGIC) || sameBytes(magic, PART_MAGIC)) return "packed";
  if (name.endsWith(META_SUFFIX)) return "split";
  if (name.endsWith(PACKED_SUFFIX)) return "packed";
  return null;
}

/** As {@link overlayLayoutOf}, but a file that neither magic nor name marks as an overlay is refused. */
export function requireOverlayLayout(head: Uint8Array, name: string): OverlayLayout {
  const layout = overlayLayoutOf(head, name);
  if (layout) return layout;
  if (head.length < 8) throw new CloudletError("TRUNCATED", `not a cloudlet overlay: the file has only ${head.length} byte${head.length === 1 ? "" : "s"}, too few for an overlay's magic`, name);
  fail(name, "not a cloudlet overlay: it starts with neither a packed overlay's magic (CLOVPACK) nor an overlay meta's (CLOVMETA)");
}

/** Bytes of one entry of the rebuilt-hash preimage: u8 kind, u64 LE chunk index, BLAKE3-256 digest. */
export const REBUILT_ENTRY_BYTES = 41;

/**
 * Builds a segment's rebuilt hash (see the module docs) from its records in
 * order: the writer feeds it every record at once, synthesis in batches as
 * it rebuilds them. The only encoder of its preimage.
 */
export class RebuiltHash {
  private readonly hasher: ReturnType<Core["hasher"]>;
  /** @param core the loaded core (for BLAKE3) */
  constructor(core: Core) {
    this.hasher = core.hasher("blake3");
  }

  /**
   * Adds records `from` .. `from + count - 1` of `kinds` and `indexes`, whose
   * rebuilt chunks' digests are `digests` (32 bytes each, in the same order).
   */
  update(kinds: ArrayLike<number>, indexes: ArrayLike<number>, digests: Uint8Array, from = 0, count = kinds.length - from): void {
    const pre = new Uint8Array(count * REBUILT_ENTRY_BYTES);
    const v = new DataView(pre.buffer);
    for (let i = 0; i < count; i++) {
      const o = i * REBUILT_ENTRY_BYTES;
      const index = indexes[from + i];
      v.setUint8(o, kinds[from + i]);
      // u64 LE as two u32s: chunk indexes are safe integers, and this avoids a BigInt per record.
      v.setUint32(o + 1, index % 2 ** 32, true);
      v.setUint32(o + 5, Math.floor(index / 2 ** 32), true);
      pre.set(digests.subarray(i * 32, i * 32 + 32), o + 9);
    }
    this.hasher.update(pre);
  }

  /** The hash, hex, as the meta records it. */
  hex(): string {
    return toHex(this.hasher.digest());
  }
}

// ---------------------------------------------------------------------------
// JSON body: snake_case on disk, validated field by field.

function metaToJson(m: OverlayMeta): unknown {
  return {
    format: "cloudlet-overlay",
    version: m.version,
    chunk_size: m.chunkSize,
    base: {
      id: m.base.id,
      disk_size: m.base.diskSize,
      memory_size: m.base.memorySize,
      machine: { type: m.base.machine.machine, cpu: m.base.machine.cpu, ram_mib: m.base.machine.ramMiB, ...(m.base.machine.freePageReporting ? { free_page_reporting: true } : {}) },
    },
    image_sizes: { disk: m.imageSizes[0], memory: m.imageSizes[1], state: m.imageSizes[2] },
    launch: {
      port_forwards: m.launch.portForwards.map((p) => ({ proto: p.proto, host_port: p.hostPort, guest_port: p.guestPort })),
      memory_mib: m.launch.memoryMiB,
      vcpus: m.launch.vcpus,
      ...(m.launch.memoryFreeBytes !== undefined ? { memory_free_bytes: m.launch.memoryFreeBytes } : {}),
      // Only when set, so that overlays without one keep their exact bytes.
      ...(m.launch.appUrl !== undefined ? { app_url: m.launch.appUrl } : {}),
    },
    creator: m.creator,
    class_counts: Object.fromEntries(KIND_NAMES.map((k, i) => [k, Object.fromEntries(CLASS_NAMES.map((c, j) => [c, m.classCounts[i][j]]))])),
    segments: m.segments.map((s) => ({
      compressed_size: s.compressedSize,
      raw_size: s.rawSize,
      hash: s.hash,
      rebuilt_hash: s.rebuiltHash,
      records: s.records,
      data_chunks: s.dataChunks,
      ranges: s.ranges,
    })),
    // Version 2 only, and only when recorded: a meta without one keeps its exact v1 shape.
    ...(m.bootSet ? { boot_set: { segments: m.bootSet.segments, reason: m.bootSet.reason, pages: m.bootSet.pages, chunks: m.bootSet.chunks, base_pages: m.bootSet.basePages } } : {}),
  };
}

type Obj = Record<string, unknown>;

function obj(x: unknown, what: string, file: string): Obj {
  if (typeof x !== "object" || x === null || Array.isArray(x)) fail(file, `meta field ${what} must be an object`);
  return x as Obj;
}
function int(x: unknown, what: string, file: string, max = Number.MAX_SAFE_INTEGER, min = 0): number {
  if (typeof x !== "number" || !Number.isSafeInteger(x) || x < min || x > max) fail(file, `meta field ${what} must be an integer in [${min}, ${max}]`);
  return x;
}
function str(x: unknown, what: string, file: string, maxLen = 256): string {
  if (typeof x !== "string" || x.length > maxLen) fail(file, `meta field ${what} must be a string of at most ${maxLen} characters`);
  return x;
}
function hex32(x: unknown, what: string, file: string): string {
  const s = str(x, what, file, 64);
  if (!/^[0-9a-f]{64}$/.test(s)) fail(file, `meta field ${what} must be 64 lower-case hex digits`);
  return s;
}
function arr(x: unknown, what: string, file: string, max: number): unknown[] {
  if (!Array.isArray(x)) fail(file, `meta field ${what} must be an array`);
  if (x.length > max) fail(file, `meta field ${what} has ${x.length} entries, more than the limit of ${max}`);
  return x;
}

/** Validates a parsed JSON body against every structural rule and limit. */
export function validateMeta(json: unknown, file: string): OverlayMeta {
  const j = obj(json, "(root)", file);
  if (j.format !== "cloudlet-overlay") fail(file, "meta is not a cloudlet overlay (format field)");
  const version = int(j.version, "version", file);
  if (!READ_VERSIONS.includes(version)) fail(file, versionNotSupported(version));
  const chunkSize = int(j.chunk_size, "chunk_size", file);
  if (chunkSize !== CHUNK) fail(file, `chunk size ${chunkSize} is not supported (only ${CHUNK})`);

  const b = obj(j.base, "base", file);
  const mach = obj(b.machine, "base.machine", file);
  const base = {
    id: hex32(b.id, "base.id", file),
    diskSize: int(b.disk_size, "base.disk_size", file, LIMITS.imageBytes),
    memorySize: int(b.memory_size, "base.memory_size", file, LIMITS.imageBytes),
    machine: { machine: str(mach.type, "base.machine.type", file), cpu: str(mach.cpu, "base.machine.cpu", file), ramMiB: int(mach.ram_mib, "base.machine.ram_mib", file, 1 << 24) } as MachineConfig,
  };
  // Optional (free memory, issue 14): absent in older overlays, which v1 readers read as before.
  if (mach.free_page_reporting !== undefined) {
    if (mach.free_page_reporting !== true) fail(file, "meta field base.machine.free_page_reporting must be true when present");
    base.machine.freePageReporting = true;
  }
  if (!validMachine(base.machine)) fail(file, `meta field base.machine names a machine type or CPU model QEMU must not be given (${JSON.stringify(base.machine.machine)}, ${JSON.stringify(base.machine.cpu)})`);
  const is = obj(j.image_sizes, "image_sizes", file);
  const imageSizes: [number, number, number] = [
    int(is.disk, "image_sizes.disk", file, LIMITS.imageBytes),
    int(is.memory, "image_sizes.memory", file, LIMITS.imageBytes),
    int(is.state, "image_sizes.state", file, LIMITS.imageBytes),
  ];
  const chunksOf = imageSizes.map((s) => Math.ceil(s / CHUNK));

  const l = obj(j.launch, "launch", file);
  const launch: LaunchConfig = {
    portForwards: arr(l.port_forwards, "launch.port_forwards", file, LIMITS.portForwards).map((p, i) => {
      const o = obj(p, `launch.port_forwards[${i}]`, file);
      if (o.proto !== "tcp" && o.proto !== "udp") fail(file, `launch.port_forwards[${i}].proto must be tcp or udp`);
      return { proto: o.proto, hostPort: int(o.host_port, "host_port", file, 65535), guestPort: int(o.guest_port, "guest_port", file, 65535, 1) };
    }),
    memoryMiB: int(l.memory_mib, "launch.memory_mib", file, 1 << 24),
    vcpus: int(l.vcpus, "launch.vcpus", file, 1024, 1),
  };
  if (l.memory_free_bytes !== undefined) launch.memoryFreeBytes = int(l.memory_free_bytes, "launch.memory_free_bytes", file, imageSizes[1]);
  if (l.app_url !== undefined) {
    const url = str(l.app_url, "launch.app_url", file, 1024);
    if (!/^https?:\/\/[^\s]+$/.test(url)) fail(file, "meta field launch.app_url must be an http(s) address template without spaces");
    launch.appUrl = url;
  }
  const c = obj(j.creator, "creator", file);
  const creator = { tool: str(c.tool, "creator.tool", file), version: str(c.version, "creator.version", file), created: str(c.created, "creator.created", file) };

  const cc = obj(j.class_counts, "class_counts", file);
  const classCounts = KIND_NAMES.map((k) => {
    const row = obj(cc[k], `class_counts.${k}`, file);
    return CLASS_NAMES.map((n) => int(row[n], `class_counts.${k}.${n}`, file));
  });

  const segs = arr(j.segments, "segments", file, LIMITS.segments);
  let totalRanges = 0;
  // Every chunk may be covered by at most one record in the whole overlay:
  // each range's start and end as one number (kind * 2^51 + chunk), typed so
  // that a meta at the limits costs 16 bytes per range here, not an object each.
  const nRanges = segs.reduce((t: number, s) => t + (Array.isArray((s as { ranges?: unknown })?.ranges) ? ((s as { ranges: unknown[] }).ranges.length) : 0), 0);
  if (nRanges > LIMITS.ranges) fail(file, `meta has ${nRanges} chunk ranges; the limit is ${LIMITS.ranges}`);
  const starts = new Float64Array(nRanges);
  const ends = new Float64Array(nRanges);
  let nCovered = 0;
  const segments: SegmentInfo[] = segs.map((s, i) => {
    const what = `segments[${i}]`;
    const o = obj(s, what, file);
    const records = int(o.records, `${what}.records`, file, Math.floor(LIMITS.segmentRaw / RECORD_BYTES));
    const dataChunks = int(o.data_chunks, `${what}.data_chunks`, file, records);
    const rawSize = int(o.raw_size, `${what}.raw_size`, file, LIMITS.segmentRaw);
    if (rawSize !== SEGMENT_HEADER_BYTES + records * RECORD_BYTES + dataChunks * CHUNK) fail(file, `${what}: raw_size ${rawSize} does not match its ${records} records and ${dataChunks} data chunks`);
    const rangesRaw = arr(o.ranges, `${what}.ranges`, file, LIMITS.ranges - totalRanges);
    totalRanges += rangesRaw.length;
    let count = 0;
    let prev = -1;
    const ranges = rangesRaw.map((r, k) => {
      const ra = arr(r, `${what}.ranges[${k}]`, file, 3);
      if (ra.length !== 3) fail(file, `${what}.ranges[${k}] must be [kind, first, count]`);
      const kind = int(ra[0], `${what}.ranges[${k}] kind`, file, KIND_COUNT - 1);
      const first = int(ra[1], `${what}.ranges[${k}] first`, file);
      const n = int(ra[2], `${what}.ranges[${k}] count`, file, Number.MAX_SAFE_INTEGER, 1);
      if (first + n > chunksOf[kind]) fail(file, `${what}: range ${KIND_NAMES[kind]} chunks ${first}..${first + n - 1} lies past the end of the ${imageSizes[kind]}-byte ${KIND_NAMES[kind]} image`);
      // Strictly ascending (kind, index) within the segment.
      const key = kind * 2 ** 51 + first;
      if (key <= prev) fail(file, `${what}: ranges are not in ascending order`);
      prev = kind * 2 ** 51 + first + n - 1;
      count += n;
      starts[nCovered] = key;
      ends[nCovered++] = key + n;
      // The parsed triple itself, now checked: no second copy per range.
      return ra as [number, number, number];
    });
    if (count !== records) fail(file, `${what}: ranges cover ${count} chunks but the segment has ${records} records`);
    return {
      compressedSize: int(o.compressed_size, `${what}.compressed_size`, file, LIMITS.segmentCompressed, 1),
      rawSize,
      hash: hex32(o.hash, `${what}.hash`, file),
      rebuiltHash: hex32(o.rebuilt_hash, `${what}.rebuilt_hash`, file),
      records,
      dataChunks,
      ranges,
    };
  });
  const order = new Uint32Array(nCovered);
  for (let i = 0; i < nCovered; i++) order[i] = i;
  order.sort((a, b) => starts[a] - starts[b]);
  for (let i = 1; i < nCovered; i++) {
    const prevEnd = ends[order[i - 1]];
    const start = starts[order[i]];
    if (start < prevEnd) {
      const kind = Math.floor(start / 2 ** 51);
      fail(file, `segments overlap: ${KIND_NAMES[kind]} chunk ${start - kind * 2 ** 51} is covered twice`);
    }
  }
  const meta: OverlayMeta = { version, chunkSize, base, imageSizes, segments, launch, creator, classCounts };
  if (j.boot_set !== undefined) {
    if (version < 2) fail(file, "meta field boot_set needs format version 2, but the meta says version 1");
    const bs = obj(j.boot_set, "boot_set", file);
    const memPages = chunksOf[ImageKind.Memory];
    let prevEnd = -2;
    const basePages = arr(bs.base_pages, "boot_set.base_pages", file, LIMITS.ranges - totalRanges).map((r, k) => {
      const ra = arr(r, `boot_set.base_pages[${k}]`, file, 2);
      if (ra.length !== 2) fail(file, `boot_set.base_pages[${k}] must be [first, count]`);
      const first = int(ra[0], `boot_set.base_pages[${k}] first`, file, memPages);
      const n = int(ra[1], `boot_set.base_pages[${k}] count`, file, memPages, 1);
      if (first + n > memPages) fail(file, `boot_set.base_pages[${k}]: pages ${first}..${first + n - 1} lie past the end of the ${imageSizes[ImageKind.Memory]}-byte memory image`);
      // Ascending and not touching: one canonical form per page set.
      if (first <= prevEnd + 1) fail(file, "boot_set.base_pages are not ascending, separate runs");
      prevEnd = first + n - 1;
      return ra as [number, number];
    });
    meta.bootSet = {
      segments: int(bs.segments, "boot_set.segments", file, segments.length, 1),
      reason: str(bs.reason, "boot_set.reason", file, 1024),
      pages: int(bs.pages, "boot_set.pages", file, memPages),
      chunks: int(bs.chunks, "boot_set.chunks", file, chunksOf[ImageKind.Disk]),
      basePages,
    };
  }
  return meta;
}

// ---------------------------------------------------------------------------
// Segment payloads.

/** Decoded records of one segment, struct-of-arrays. */
export interface SegmentRecords {
  /** ImageKind per record. */
  kinds: Uint8Array;
  /** ChunkClass per record. */
  classes: Uint8Array;
  /** Chunk index per record. */
  indexes: Float64Array;
  /** Class-specific argument per record (see the module docs). */
  args: Float64Array;
  /** The data slots, CHUNK bytes each. */
  data: Uint8Array;
}

/** Builds a segment payload from records and their data slots. */
export function encodeSegment(r: Omit<SegmentRecords, "data">, count: number, data: Uint8Array, dataChunks: number): Uint8Array {
  const out = new Uint8Array(SEGMENT_HEADER_BYTES + count * RECORD_BYTES + dataChunks * CHUNK);
  const v = new DataView(out.buffer);
  out.set(SEG_MAGIC, 0);
  v.setUint32(4, SEGMENT_VERSION, true);
  v.setUint32(8, count, true);
  v.setUint32(12, dataChunks, true);
  for (let i = 0; i < count; i++) {
    const o = SEGMENT_HEADER_BYTES + i * RECORD_BYTES;
    out[o] = r.kinds[i];
    out[o + 1] = r.classes[i];
    v.setBigUint64(o + 8, BigInt(r.indexes[i]), true);
    v.setBigUint64(o + 16, BigInt(r.args[i]), true);
  }
  out.set(data.subarray(0, dataChunks * CHUNK), SEGMENT_HEADER_BYTES + count * RECORD_BYTES);
  return out;
}

/**
 * Parses and validates a decoded segment payload against its meta entry:
 * record order and coverage equal the meta's ranges, every argument is in
 * bounds, and data slots are used once each, in order.
 */
export function decodeSegment(raw: Uint8Array, meta: OverlayMeta, segNo: number, file: string): SegmentRecords {
  const seg = meta.segments[segNo];
  const bad = (msg: string): never => {
    throw new CloudletError("CORRUPT_SEGMENT", `segment ${segNo + 1}: ${msg}`, file);
  };
  if (raw.length !== seg.rawSize) bad(`decoded to ${raw.length} bytes, the meta says ${seg.rawSize}`);
  if (!sameBytes(raw.subarray(0, 4), SEG_MAGIC)) bad("payload has a bad magic");
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  if (v.getUint32(4, true) !== SEGMENT_VERSION) bad(`payload version ${v.getUint32(4, true)} is not supported`);
  const count = v.getUint32(8, true);
  const dataChunks = v.getUint32(12, true);
  if (count !== seg.records || dataChunks !== seg.dataChunks) bad("payload counts disagree with the meta");
  const kinds = new Uint8Array(count);
  const classes = new Uint8Array(count);
  const indexes = new Float64Array(count);
  const args = new Float64Array(count);
  let slot = 0;
  let rangeNo = 0;
  let inRange = 0;
  const baseSizes = [meta.base.diskSize, meta.base.memorySize, 0];
  for (let i = 0; i < count; i++) {
    const o = SEGMENT_HEADER_BYTES + i * RECORD_BYTES;
    const kind = raw[o];
    const cls = raw[o + 1];
    const index = u64(v, o + 8);
    const arg = u64(v, o + 16);
    if (raw[o + 2] | raw[o + 3] | v.getUint32(o + 4, true)) bad(`record ${i} has non-zero reserved bytes`);
    const [rk, rf, rn] = seg.ranges[rangeNo];
    if (kind !== rk || index !== rf + inRange) bad(`record ${i} (${KIND_NAMES[kind] ?? kind} chunk ${index}) is not the chunk the meta's ranges name`);
    if (++inRange === rn) {
      rangeNo++;
      inRange = 0;
    }
    switch (cls) {
      case ChunkClass.Zero:
        break;
      case ChunkClass.BaseMemory:
        if (arg % CHUNK !== 0 || arg >= baseSizes[ImageKind.Memory]) bad(`record ${i} is not a 4 KiB-aligned offset in the base memory (${arg})`);
        break;
      case ChunkClass.BaseDisk:
        if (arg % 512 !== 0 || arg >= baseSizes[ImageKind.Disk]) bad(`record ${i} is not a 512-byte-aligned offset in the base disk (${arg})`);
        break;
      case ChunkClass.Self:
        if (arg >= count || arg === i) bad(`record ${i} repeats a record that does not exist`);
        break;
      case ChunkClass.Xor:
        if (kind === ImageKind.State) bad(`record ${i} is an XOR delta of device state, which has no base`);
      // falls through
      case ChunkClass.Raw:
        if (arg !== slot) bad(`record ${i} uses data slot ${arg}, expected ${slot}`);
        slot++;
        break;
      default:
        bad(`record ${i} has unknown class ${cls}`);
    }
    kinds[i] = kind;
    classes[i] = cls;
    indexes[i] = index;
    args[i] = arg;
  }
  if (slot !== dataChunks) bad(`uses ${slot} data slots but holds ${dataChunks}`);
  for (let i = 0; i < count; i++) {
    if (classes[i] === ChunkClass.Self) {
      const t = classes[args[i]];
      if (t !== ChunkClass.Raw && t !== ChunkClass.Xor) bad(`record ${i} repeats record ${args[i]}, which holds no data`);
    }
  }
  return { kinds, classes, indexes, args, data: raw.subarray(SEGMENT_HEADER_BYTES + count * RECORD_BYTES) };
}

/** Hex BLAKE3 of bytes. */
export function hashHex(core: Core, b: Uint8Array): string {
  return toHex(core.hash("blake3", b));
}

/** The segment file name of segment `i` (0-based) in the seed layout. */
export function segmentFileName(stem: string, i: number): string {
  return `${stem}-${i + 1}.xz`;
}

/** Base id: BLAKE3 over a domain tag, the machine config, the image sizes and the chunk digest lists. */
export function computeBaseId(core: Core, machine: MachineConfig, diskSize: number, memorySize: number, diskDigestsHash: Uint8Array, memDigestsHash: Uint8Array): string {
  const cfg = enc.encode(JSON.stringify({ machine: machine.machine, cpu: machine.cpu, ram_mib: machine.ramMiB, ...(machine.freePageReporting ? { free_page_reporting: true } : {}), disk_size: diskSize, memory_size: memorySize }));
  const h = core.hasher("blake3");
  h.update(enc.encode("cloudlet-base-v1\0"));
  h.update(cfg);
  h.update(diskDigestsHash);
  h.update(memDigestsHash);
  return toHex(h.digest());
}
