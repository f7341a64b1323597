/**
 * The byte I/O the engine needs, as small runtime-neutral interfaces. Hosts
 * implement them over files (Node/Deno), Blobs (browser) or sockets.
 */
import { CHUNK } from "./format.ts";

/** Random-access bytes of an image or an overlay file. */
export interface ByteSource {
  /** Size in bytes. */
  readonly size: number;
  /** A label for messages (usually the file path). */
  readonly name: string;
  /** Reads `length` bytes at `offset`; fewer only at the end of the source. */
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Optional: reads into `dst` from `offset` (fewer bytes only at the end
   * of the source) and resolves to the count, without a buffer of its own:
   * synthesis reads base chunks straight into place with it.
   */
  readInto?(offset: number, dst: Uint8Array): Promise<number>;
}

/** Reads chunks `[first, first+count)` of `src`, zero-padded past its end. */
export async function readChunks(src: ByteSource | null, first: number, count: number): Promise<Uint8Array> {
  const out = new Uint8Array(count * CHUNK);
  if (!src) return out;
  const off = first * CHUNK;
  if (off >= src.size) return out;
  const got = await src.read(off, Math.min(count * CHUNK, src.size - off));
  out.set(got);
  return out;
}

/** `length` bytes at byte `offset` of `src`; past its end reads zeros, as base images do. */
export async function readAt(src: ByteSource, offset: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  if (offset < src.size) out.set(await src.read(offset, Math.min(length, src.size - offset)));
  return out;
}

/** A byte source over an in-memory buffer. */
export class BufferSource implements ByteSource {
  /** @param bytes the contents @param name label for messages */
  constructor(
    readonly bytes: Uint8Array,
    readonly name = "buffer",
  ) {}
  get size(): number {
    return this.bytes.length;
  }
  read(offset: number, length: number): Promise<Uint8Array> {
    return Promise.resolve(this.bytes.slice(offset, offset + length));
  }
}

/** Destination of one rebuilt image. Chunks past `size` are cut off. Calls are made one at a time. */
export interface ImageSink {
  /**
   * Writes whole chunks starting at chunk `first`. `data` is the caller's
   * again once the promise resolves (synthesis reuses its buffers): a sink
   * that keeps bytes past that must copy them.
   */
  writeChunks(first: number, data: Uint8Array): Promise<void>;
  /** Makes chunks `[first, first+count)` read as zero. */
  zeroChunks(first: number, count: number): Promise<void>;
  /** Flushes and makes the image durable (still under its temporary name). */
  finish(): Promise<void>;
  /** Discards everything written. */
  abort(): Promise<void>;
}

/** A progress report: `done` of `total` bytes in `phase`. */
export interface Progress {
  /** What is happening, e.g. "scan memory", "compress", "apply". */
  phase: string;
  /** Bytes done. */
  done: number;
  /** Bytes in all (0 when unknown). */
  total: number;
}

/** Receives progress reports. */
export type ProgressFn = (p: Progress) => void;

/** A disk extent that changed relative to the base, from the qcow2 map or a scan. */
export interface ChangedExtent {
  /** Byte offset. */
  start: number;
  /** Byte length. */
  length: number;
  /** True when the extent now reads as zero without holding data. */
  zero: boolean;
}
