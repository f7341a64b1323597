/**
 * SegmentCodec: xz compression and decompression of segment payloads. Hosts
 * provide parallel versions (worker threads, Web Workers), each worker with
 * its own WASM instance; {@link InlineCodec} runs on the calling thread.
 */
import type { Core } from "../core/core.ts";

/** Compresses and decompresses segment payloads. */
export interface SegmentCodec {
  /** How many segments it works on at once. */
  readonly parallelism: number;
  /** One standard .xz stream holding `raw`. */
  compress(raw: Uint8Array): Promise<Uint8Array>;
  /**
   * Decodes one .xz stream that must hold exactly `rawSize` bytes. Rejects
   * with an Error whose message says what is wrong (bad data, too long,
   * too short) without ever allocating more than `rawSize` + a small slack.
   */
  decompress(xz: Uint8Array, rawSize: number): Promise<Uint8Array>;
  /**
   * BLAKE3-256 of each CHUNK-byte chunk of `data` (32 bytes each), off the
   * calling thread where the codec has workers: synthesis verifies with it.
   * `data` may be handed to the worker (detached): pass a buffer the caller
   * no longer needs, or a copy. Optional: without it synthesis hashes on
   * the calling thread.
   */
  hashChunks?(data: Uint8Array): Promise<Uint8Array>;
  /** Releases workers. */
  close(): Promise<void>;
}

/**
 * The codec itself failed (a worker could not start or died, or the codec was
 * closed), not the data it was given: callers must not blame the overlay.
 */
export class CodecFailure extends Error {
  override name = "CodecFailure";
}

/** Default xz preset for segments: see docs/xz.md for the measurements. */
export const DEFAULT_PRESET = 6;

/** A codec on the calling thread. */
export class InlineCodec implements SegmentCodec {
  readonly parallelism = 1;
  /** @param core the loaded core @param preset xz preset 0-9 */
  constructor(
    private readonly core: Core,
    private readonly preset: number = DEFAULT_PRESET,
  ) {}
  compress(raw: Uint8Array): Promise<Uint8Array> {
    return Promise.resolve(this.core.xzCompress(raw, this.preset));
  }
  decompress(xz: Uint8Array, rawSize: number): Promise<Uint8Array> {
    return Promise.resolve().then(() => this.core.xzDecompressExact(xz, rawSize));
  }
  hashChunks(data: Uint8Array): Promise<Uint8Array> {
    return Promise.resolve().then(() => this.core.hashChunks("blake3", data));
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}
