/**
 * CachedSource: a {@link ByteSource} wrapper that reads whole blocks and
 * keeps the most recently used ones, within a fixed budget. Verifying an
 * overlay against its base reads the base one 4 KiB chunk at a time, often
 * near the previous read; over HTTP or a Blob each read costs a round trip,
 * so blocks of 64 KiB turn most of them into cache hits.
 */
import type { ByteSource } from "../overlay/io.ts";

/** Default block size. */
export const BLOCK_BYTES = 64 << 10;
/** Default number of blocks kept (16 MiB with the default block size). */
export const BLOCK_COUNT = 256;

/** A block-cached view of another source. */
export class CachedSource implements ByteSource {
  readonly #src: ByteSource;
  readonly #blockBytes: number;
  readonly #maxBlocks: number;
  /** Block number -> bytes, in least- to most-recently-used order. */
  readonly #blocks = new Map<number, Promise<Uint8Array>>();

  /** @param src the source @param blockBytes bytes per block @param maxBlocks blocks kept */
  constructor(src: ByteSource, blockBytes = BLOCK_BYTES, maxBlocks = BLOCK_COUNT) {
    this.#src = src;
    this.#blockBytes = blockBytes;
    this.#maxBlocks = maxBlocks;
  }

  get size(): number {
    return this.#src.size;
  }

  get name(): string {
    return this.#src.name;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const end = Math.min(this.size, offset + length);
    if (end <= offset) return new Uint8Array(0);
    const bb = this.#blockBytes;
    const first = Math.floor(offset / bb);
    const last = Math.floor((end - 1) / bb);
    if (first === last) {
      const b = await this.#block(first);
      return b.slice(offset - first * bb, end - first * bb);
    }
    const out = new Uint8Array(end - offset);
    for (let k = first; k <= last; k++) {
      const b = await this.#block(k);
      const from = Math.max(offset, k * bb);
      const to = Math.min(end, (k + 1) * bb);
      out.set(b.subarray(from - k * bb, to - k * bb), from - offset);
    }
    return out;
  }

  #block(k: number): Promise<Uint8Array> {
    let p = this.#blocks.get(k);
    if (p) {
      this.#blocks.delete(k);
      this.#blocks.set(k, p);
      return p;
    }
    p = this.#src.read(k * this.#blockBytes, this.#blockBytes);
    // A failed read must not stay cached.
    p.catch(() => this.#blocks.delete(k));
    this.#blocks.set(k, p);
    while (this.#blocks.size > this.#maxBlocks) this.#blocks.delete(this.#blocks.keys().next().value!);
    return p;
  }
}
