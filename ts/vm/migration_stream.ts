/**
 * QEMU's migration stream (QEMU 7.2, Debian 12), the parts cloudlet reads and
 * writes: a saved device-state file is parsed, and a postcopy source stream is
 * written from it. Runtime-neutral: no `node:` imports.
 *
 * ```text
 *   stream   = be32 "QEVM" | be32 3 | configuration | item* | EOF(0x00) | [VMDESCRIPTION(0x06) be32 len json]
 *   config   = 0x07 | be32 len | machine name | subsection*          (capabilities, target-page-bits, uuid)
 *   subsect  = 0x05 | u8 len | name | be32 version | fields
 *   START    = 0x01 | be32 section_id | u8 len | idstr | be32 instance | be32 version | data | footer
 *   FULL     = 0x04 | (same header as START)                         | data | footer
 *   PART/END = 0x02/0x03 | be32 section_id                           | data | footer
 *   footer   = 0x7e | be32 section_id
 *   command  = 0x08 | be16 cmd | be16 len | data                     (PACKAGED: be32 len | stream items)
 *
 *   ram setup (START "ram" v4) = be64 (total bytes | MEM_SIZE) | { u8 len | idstr | be64 length
 *                                 | [be64 addr if x-ignore-shared] }* | be64 EOS
 *   ram pages (PART/END)       = { be64 (offset | flags) | [u8 len | idstr unless CONTINUE]
 *                                 | PAGE: 4096 bytes | ZERO: u8 fill }* | be64 EOS
 *   return path (dest -> src)  = be16 type | be16 len | data          (SHUT, PONG, REQ_PAGES[_ID])
 * ```
 *
 * Device sections carry no length, so they cannot be split without knowing
 * every device's fields; the saved file's device part (every FULL section after
 * the RAM section's END, up to its EOF) is carried as one opaque blob.
 */
import { CloudletError } from "../errors.ts";

/** Stream item types (migration/savevm.c). Never change these numbers: QEMU defines them. */
export const VM = {
  EOF: 0x00,
  SECTION_START: 0x01,
  SECTION_PART: 0x02,
  SECTION_END: 0x03,
  SECTION_FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  SECTION_FOOTER: 0x7e,
} as const;

/** MIG_CMD_* (migration/savevm.c's enum qemu_vm_cmd: PACKAGED is 7, ENABLE_COLO 8, POSTCOPY_RESUME 9). */
export const MIG_CMD = {
  OPEN_RETURN_PATH: 1,
  PING: 2,
  POSTCOPY_ADVISE: 3,
  POSTCOPY_LISTEN: 4,
  POSTCOPY_RUN: 5,
  POSTCOPY_RAM_DISCARD: 6,
  PACKAGED: 7,
} as const;

/** RAM_SAVE_FLAG_* (migration/ram.c). ZERO was called COMPRESS before QEMU 2.x. */
export const RAM_FLAG = {
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
} as const;

/** MIG_RP_MSG_* (migration/migration.c): messages on the return path. */
export const RP_MSG = {
  SHUT: 1,
  PONG: 2,
  REQ_PAGES_ID: 3,
  REQ_PAGES: 4,
} as const;

const MAGIC = 0x5145564d; // "QEVM"
const FILE_VERSION = 3;
/** The RAM section's version in QEMU 2.x to 10.x. */
const RAM_SECTION_VERSION = 4;
/** QEMU's MAX_VM_CMD_PACKAGED_SIZE: the destination refuses a bigger package. */
export const MAX_PACKAGED_BYTES = 1 << 24;
/** Target page size of x86 (TARGET_PAGE_BITS 12); also the host page size of every block cloudlet uses. */
export const PAGE_SIZE = 4096;
/** Flag bits live in the low bits of a page header's offset. */
const FLAG_MASK = PAGE_SIZE - 1;

/** One RAM block as the RAM section's setup lists it. */
export interface RamBlock {
  /** The RAMBlock idstr: "mem" for `memory-backend-*,id=mem`, "pc.bios", "/rom@etc/acpi/tables", ... */
  id: string;
  /** used_length in bytes. */
  length: number;
}

/** A device-state file (a migration stream saved with x-ignore-shared), split into what a postcopy source needs. */
export interface SavedDeviceState {
  /** The machine type the stream was saved from ("pc-i440fx-7.2"). */
  machine: string;
  /** Capabilities the configuration section recorded (x-ignore-shared). */
  capabilities: string[];
  /** The RAM section's section id, reused so the device sections' ids stay unique. */
  ramSectionId: number;
  /** Every RAM block, in the order of the saved setup. */
  blocks: RamBlock[];
  /** The block whose pages the file lacks (shared guest RAM): its pages come from the caller. */
  mainBlock: RamBlock;
  /**
   * Pages of the other blocks (ROMs, ACPI tables), by block id then page index:
   * the bytes, or a number for a page filled with that byte.
   */
  blockPages: Map<string, Map<number, Uint8Array | number>>;
  /** Every device section (FULL, with footers) after the RAM section, as saved. */
  devices: Uint8Array;
}

/** A bounds-checked big-endian reader over a saved stream; errors name the file and offset. */
class StreamReader {
  pos = 0;
  private readonly view: DataView;

  constructor(
    readonly bytes: Uint8Array,
    private readonly file: string,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  fail(what: string, at = this.pos): never {
    throw new CloudletError("BAD_INPUT", `not a QEMU device-state stream cloudlet can use: ${what} at byte ${at}`, this.file);
  }

  need(n: number) {
    if (this.pos + n > this.bytes.length) this.fail(`it ends inside an item (${n} more bytes needed)`);
  }

  u8(): number {
    this.need(1);
    return this.bytes[this.pos++];
  }

  peek(): number {
    this.need(1);
    return this.bytes[this.pos];
  }

  be32(): number {
    this.need(4);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }

  be64(): number {
    this.need(8);
    const v = this.view.getBigUint64(this.pos);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail("a 64-bit value out of range", this.pos - 8);
    return Number(v);
  }

  take(n: number): Uint8Array {
    this.need(n);
    const v = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  str(n: number): string {
    return new TextDecoder().decode(this.take(n));
  }

  footer(sectionId: number) {
    const at = this.pos;
    if (this.u8() !== VM.SECTION_FOOTER || this.be32() !== sectionId) this.fail(`a missing section footer for section ${sectionId}`, at);
  }
}

/** Parses a device-state file saved with x-ignore-shared (see {@link SavedDeviceState}); BAD_INPUT error naming `file` otherwise. */
export function parseDeviceState(bytes: Uint8Array, file: string): SavedDeviceState {
  const r: StreamReader = new StreamReader(bytes, file);
  if (bytes.length < 8 || r.be32() !== MAGIC) r.fail("no QEVM magic", 0);
  const version = r.be32();
  if (version !== FILE_VERSION) r.fail(`stream version ${version} (expected ${FILE_VERSION})`, 4);
  if (r.u8() !== VM.CONFIGURATION) r.fail("no configuration section", 8);
  const machine = r.str(r.be32());
  const capabilities: string[] = [];
  while (r.peek() === VM.SUBSECTION) {
    r.u8();
    const name = r.str(r.u8());
    r.be32(); // subsection version
    if (name === "configuration/capabilities") {
      for (let n = r.be32(); n > 0; n--) capabilities.push(r.str(r.u8()));
    } else if (name === "configuration/target-page-bits") r.be32();
    else if (name === "configuration/uuid") r.take(16);
    else r.fail(`an unknown configuration subsection "${name}"`);
  }
  const ignoreShared = capabilities.includes("x-ignore-shared");

  // The RAM section: setup (START), then pages (PART...), then END.
  let at = r.pos;
  if (r.u8() !== VM.SECTION_START) r.fail("no RAM section after the configuration", at);
  const ramSectionId = r.be32();
  if (r.str(r.u8()) !== "ram") r.fail('the first section is not "ram"', at);
  r.be32(); // instance id
  if (r.be32() !== RAM_SECTION_VERSION) r.fail(`RAM section version is not ${RAM_SECTION_VERSION}`, at);
  at = r.pos;
  const head = r.be64();
  if (!(head & RAM_FLAG.MEM_SIZE)) r.fail("the RAM setup does not start with its size", at);
  let total = head - (head & FLAG_MASK);
  const blocks: RamBlock[] = [];
  while (total > 0) {
    const id = r.str(r.u8());
    const length = r.be64();
    if (ignoreShared) r.be64(); // the block's guest address
    if (length > total || length % PAGE_SIZE) r.fail(`RAM block "${id}" has a bad length ${length}`);
    blocks.push({ id, length });
    total -= length;
  }
  if (r.be64() !== RAM_FLAG.EOS) r.fail("the RAM setup does not end with EOS");
  r.footer(ramSectionId);

  const blockPages = new Map<string, Map<number, Uint8Array | number>>(blocks.map((b) => [b.id, new Map()]));
  let last: RamBlock | null = null;
  for (;;) {
    at = r.pos;
    const type = r.u8();
    if (type !== VM.SECTION_PART && type !== VM.SECTION_END) r.fail(`a section of type ${type} inside the RAM section`, at);
    if (r.be32() !== ramSectionId) r.fail("a section other than RAM before the RAM section ended", at);
    for (;;) {
      at = r.pos;
      const word = r.be64();
      const flags = word & FLAG_MASK;
      const offset = word - flags;
      if (flags === RAM_FLAG.EOS) break;
      if (!(flags & (RAM_FLAG.PAGE | RAM_FLAG.ZERO)) || flags & ~(RAM_FLAG.PAGE | RAM_FLAG.ZERO | RAM_FLAG.CONTINUE)) r.fail(`RAM page flags 0x${flags.toString(16)}`, at);
      if (!(flags & RAM_FLAG.CONTINUE)) {
        const id = r.str(r.u8());
        last = blocks.find((b) => b.id === id) ?? r.fail(`a page of unknown RAM block "${id}"`, at);
      }
      if (!last) r.fail("a CONTINUE page before any block", at);
      if (offset >= last.length) r.fail(`a page beyond the end of RAM block "${last.id}"`, at);
      blockPages.get(last.id)!.set(offset / PAGE_SIZE, flags & RAM_FLAG.PAGE ? r.take(PAGE_SIZE) : r.u8());
    }
    r.footer(ramSectionId);
    if (type === VM.SECTION_END) break;
  }

  // Devices run from here to the EOF byte; a VMDESCRIPTION (JSON) may follow it.
  const start = r.pos;
  const end = findEof(bytes);
  if (end === null || end < start) r.fail("no end-of-stream marker after the device sections", start);
  if (end > start && bytes[start] !== VM.SECTION_FULL) r.fail("the device part does not start with a full section", start);

  const withoutPages = blocks.filter((b) => blockPages.get(b.id)!.size === 0);
  if (withoutPages.length !== 1) {
    r.fail(`${withoutPages.length} RAM blocks without pages (expected exactly one, the shared guest RAM saved with x-ignore-shared)`, 0);
  }
  const mainBlock = withoutPages[0];
  for (const b of blocks) {
    if (b === mainBlock) continue;
    const have = blockPages.get(b.id)!.size;
    if (have !== b.length / PAGE_SIZE) r.fail(`RAM block "${b.id}" has ${have} of its ${b.length / PAGE_SIZE} pages`, 0);
  }
  return { machine, capabilities, ramSectionId, blocks, mainBlock, blockPages, devices: bytes.slice(start, end) };
}

/** Where the final EOF byte is: before a VMDESCRIPTION whose length reaches the end exactly, or the last byte. */
function findEof(bytes: Uint8Array): number | null {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // The description is JSON, which holds no 0x06 byte, so the marker is the last 0x06 in the file.
  const p = bytes.lastIndexOf(VM.VMDESCRIPTION);
  if (p > 0 && p + 5 <= bytes.length && view.getUint32(p + 1) === bytes.length - p - 5 && bytes[p - 1] === VM.EOF) return p - 1;
  if (bytes.length && bytes[bytes.length - 1] === VM.EOF) return bytes.length - 1;
  return null;
}

/** Builds stream bytes in growing chunks (big-endian, as QEMU's qemu_put_be*). */
export class StreamWriter {
  private buf = new Uint8Array(1 << 16);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private room(n: number) {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(v: number): this {
    this.room(1);
    this.buf[this.length++] = v;
    return this;
  }

  be16(v: number): this {
    this.room(2);
    this.view.setUint16(this.length, v);
    this.length += 2;
    return this;
  }

  be32(v: number): this {
    this.room(4);
    this.view.setUint32(this.length, v);
    this.length += 4;
    return this;
  }

  be64(v: number): this {
    this.room(8);
    this.view.setBigUint64(this.length, BigInt(v));
    this.length += 8;
    return this;
  }

  bytes(b: Uint8Array): this {
    this.room(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
    return this;
  }

  /** A u8 length and the string (idstr, section and subsection names). */
  shortString(s: string): this {
    const b = new TextEncoder().encode(s);
    if (b.length > 255) throw new CloudletError("BAD_INPUT", `name too long for a migration stream: ${s}`);
    return this.u8(b.length).bytes(b);
  }

  /** Takes the bytes written so far and starts empty. */
  take(): Uint8Array {
    const out = this.buf.slice(0, this.length);
    this.length = 0;
    return out;
  }
}

/** Writes the stream header and a configuration section naming `machine` (no capabilities: the destination runs without x-ignore-shared). */
export function writeHeader(w: StreamWriter, machine: string): void {
  const name = new TextEncoder().encode(machine);
  w.be32(MAGIC).be32(FILE_VERSION).u8(VM.CONFIGURATION).be32(name.length).bytes(name);
}

/** Writes a MIG_CMD command. */
export function writeCommand(w: StreamWriter, cmd: number, data: Uint8Array = new Uint8Array(0)): void {
  if (cmd === MIG_CMD.PACKAGED) throw new Error("writeCommand: use writePackaged");
  w.u8(VM.COMMAND).be16(cmd).be16(data.length).bytes(data);
}

/** Writes MIG_CMD_PACKAGED holding `inner` (which the destination loads as a stream of its own). */
export function writePackaged(w: StreamWriter, inner: Uint8Array): void {
  if (inner.length > MAX_PACKAGED_BYTES) {
    throw new CloudletError("BAD_INPUT", `device state of ${inner.length} bytes is more than QEMU's ${MAX_PACKAGED_BYTES}-byte postcopy package`);
  }
  w.u8(VM.COMMAND).be16(MIG_CMD.PACKAGED).be16(4).be32(inner.length).bytes(inner);
}

/** The POSTCOPY_ADVISE payload of QEMU 7.2: be64 summary of every block's page size, be64 target page size. */
export function postcopyAdvise(pageSizeSummary = PAGE_SIZE, targetPageSize = PAGE_SIZE): Uint8Array {
  const w = new StreamWriter();
  return w.be64(pageSizeSummary).be64(targetPageSize).take();
}

/**
 * The POSTCOPY_RAM_DISCARD payload: version 0, the block id, a nil byte, then
 * (be64 start, be64 length) byte ranges the destination drops.
 */
export function postcopyDiscard(block: string, ranges: [start: number, length: number][]): Uint8Array {
  const w = new StreamWriter().u8(0).shortString(block).u8(0);
  for (const [start, length] of ranges) w.be64(start).be64(length);
  return w.take();
}

/** A be32 payload (PING). */
export function be32Payload(v: number): Uint8Array {
  return new StreamWriter().be32(v).take();
}

/** Writes the RAM section's START: the block list that ram_load checks against the destination's blocks. */
export function writeRamSetup(w: StreamWriter, sectionId: number, blocks: RamBlock[]): void {
  w.u8(VM.SECTION_START).be32(sectionId).shortString("ram").be32(0).be32(RAM_SECTION_VERSION);
  w.be64(blocks.reduce((s, b) => s + b.length, 0) | RAM_FLAG.MEM_SIZE);
  for (const b of blocks) w.shortString(b.id).be64(b.length);
  w.be64(RAM_FLAG.EOS).u8(VM.SECTION_FOOTER).be32(sectionId);
}

/** Writes RAM pages as one section; `sectionType` is PART or END. */
export class RamSectionWriter {
  private lastBlock: string | null = null;
  pages = 0;

  constructor(
    private readonly w: StreamWriter,
    private readonly sectionId: number,
    sectionType: number = VM.SECTION_PART,
  ) {
    w.u8(sectionType).be32(sectionId);
  }

  /** Adds one page: its bytes, or a fill byte (a zero page costs 9 bytes). */
  page(block: string, index: number, data: Uint8Array | number): void {
    let flags: number = typeof data === "number" ? RAM_FLAG.ZERO : RAM_FLAG.PAGE;
    if (typeof data !== "number" && isZeroPage(data)) {
      data = 0;
      flags = RAM_FLAG.ZERO;
    }
    if (typeof data !== "number" && data.length !== PAGE_SIZE) throw new Error(`page ${index} of ${block} is ${data.length} bytes, not ${PAGE_SIZE}`);
    const same = this.lastBlock === block;
    this.w.be64(index * PAGE_SIZE + flags + (same ? RAM_FLAG.CONTINUE : 0));
    if (!same) this.w.shortString(block);
    this.lastBlock = block;
    if (typeof data === "number") this.w.u8(data);
    else this.w.bytes(data);
    this.pages++;
  }

  /** Ends the section (EOS and footer). */
  end(): void {
    this.w.be64(RAM_FLAG.EOS).u8(VM.SECTION_FOOTER).be32(this.sectionId);
  }
}

/** True when every byte of `b` is zero. */
export function isZeroPage(b: Uint8Array): boolean {
  const words = b.byteOffset % 4 === 0 && b.length % 4 === 0 ? new Uint32Array(b.buffer, b.byteOffset, b.length / 4) : b;
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  return true;
}

/** A message the destination sent on the return path. */
export type ReturnPathMessage =
  | { type: "shut"; error: boolean }
  | { type: "pong"; value: number }
  | { type: "req-pages"; block: string | null; offset: number; length: number }
  | { type: "other"; code: number };

/** Splits return-path bytes into messages; keeps a partial message for the next call. */
export class ReturnPathParser {
  private pending = new Uint8Array(0);

  /** Feeds bytes; returns the complete messages. `block` is null for REQ_PAGES (the block of the previous request). */
  push(chunk: Uint8Array): ReturnPathMessage[] {
    const buf = this.pending.length ? concat(this.pending, chunk) : chunk;
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const out: ReturnPathMessage[] = [];
    let p = 0;
    while (p + 4 <= buf.length) {
      const type = view.getUint16(p);
      const len = view.getUint16(p + 2);
      if (p + 4 + len > buf.length) break;
      const d = p + 4;
      if (type === RP_MSG.SHUT && len >= 4) out.push({ type: "shut", error: view.getUint32(d) !== 0 });
      else if (type === RP_MSG.PONG && len >= 4) out.push({ type: "pong", value: view.getUint32(d) });
      else if ((type === RP_MSG.REQ_PAGES || type === RP_MSG.REQ_PAGES_ID) && len >= 12) {
        const offset = Number(view.getBigUint64(d));
        const length = view.getUint32(d + 8);
        let block: string | null = null;
        if (type === RP_MSG.REQ_PAGES_ID && len >= 13) block = new TextDecoder().decode(buf.subarray(d + 13, d + 13 + buf[d + 12]));
        out.push({ type: "req-pages", block, offset, length });
      } else out.push({ type: "other", code: type });
      p = d + len;
    }
    this.pending = buf.slice(p);
    return out;
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
