/**
 * SegmentCodec: xz compression and decompression of segment payloads. Hosts
 * provide parallel versions (worker threads, Web Workers), each worker with
 * its own WASM instance; {@link InlineCodec} runs on the calling thread.
 */
import type { Core } from "../core/core.ts";
import type { ByteSource } from "./io.ts";

/** Per-stream choices of {@link SegmentCodec.compress}. */
export interface CompressOptions {
  /** Put the x86 BCJ filter before LZMA2. */
  x86?: boolean;
}

/** Flag or-ed into a preset for the core's encoder: the x86 BCJ filter first (core-rs/src/xz.rs PRESET_X86). */
export const PRESET_X86 = 0x100;

/** Compresses and decompresses segment payloads. */
export interface SegmentCodec {
  /** How many segments it works on at once. */
  readonly parallelism: number;
  /**
   * One standard .xz stream holding `raw`; with `x86`, the x86 BCJ filter
   * runs before LZMA2 (smaller for machine code; `xz -d` reads it).
   */
  compress(raw: Uint8Array, opts?: CompressOptions): Promise<Uint8Array>;
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
  /**
   * BLAKE3-256 of each CHUNK-byte chunk of the byte ranges `[offset,
   * length]` of `src`, read back to back (each range zero-padded to its
   * length past the end of `src`), read and hashed by a worker itself: the
   * calling thread neither reads nor allocates them. Returns null when this
   * codec cannot read `src` (the caller then reads and uses hashChunks).
   * Optional.
   */
  hashSourceRanges?(src: ByteSource, ranges: ReadonlyArray<readonly [number, number]>): Promise<Uint8Array> | null;
  /**
   * Synthesis's per-segment work in one step, off the calling thread where
   * the codec has workers: the BLAKE3 of `xz`; when it equals `expectHash`,
   * `xz` decoded as by {@link decompress} and the BLAKE3-256 of each
   * CHUNK-byte chunk of the output from byte `hashFrom` on (the data area).
   * A decode failure is returned in `error`, not thrown, so the caller can
   * tell a corrupt segment (wrong hash) from one that does not decode.
   * Optional: without it synthesis hashes and decodes in separate steps.
   */
  decodeHashed?(xz: Uint8Array, rawSize: number, expectHash: Uint8Array, hashFrom: number): Promise<DecodedHashed>;
  /** Releases workers. */
  close(): Promise<void>;
}

/** What {@link SegmentCodec.decodeHashed} returns. */
export interface DecodedHashed {
  /** BLAKE3 of the compressed bytes. */
  xzHash: Uint8Array;
  /** The decoded bytes; null when the hash differed or decoding failed. */
  raw: Uint8Array | null;
  /** BLAKE3 of each chunk of `raw` from `hashFrom` on, 32 bytes each; null with `raw`. */
  digests: Uint8Array | null;
  /** Why decoding failed, or null. */
  error: string | null;
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

/** Names of the size/speed profiles of `cloudlet overlay --profile`. */
export const PROFILE_NAMES = ["fast", "balanced", "small"] as const;
/** A size/speed profile. */
export type ProfileName = (typeof PROFILE_NAMES)[number];

/**
 * What each profile picks (docs/overlay-format.md, "Profiles", has the
 * measured costs). Order is image order in all three: clustering similar
 * chunks was measured and did not pay (bench/OVERLAY_RESULTS.md).
 */
export const PROFILES: Record<ProfileName, { segmentBytes: number; preset: number }> = {
  // xz -1: creation about 5x cheaper in CPU, overlay about 15-20% larger.
  fast: { segmentBytes: 1 << 20, preset: 1 },
  // The default: 1 MiB segments (fine-grained pipelining and early start), xz -6.
  balanced: { segmentBytes: 1 << 20, preset: DEFAULT_PRESET },
  // 4 MiB segments: the dictionary restarts a quarter as often; more encoder memory.
  small: { segmentBytes: 4 << 20, preset: DEFAULT_PRESET },
};

/** A codec on the calling thread. */
export class InlineCodec implements SegmentCodec {
  readonly parallelism = 1;
  /** @param core the loaded core @param preset xz preset 0-9 */
  constructor(
    private readonly core: Core,
    private readonly preset: number = DEFAULT_PRESET,
  ) {}
  compress(raw: Uint8Array, opts?: CompressOptions): Promise<Uint8Array> {
    return Promise.resolve(this.core.xzCompress(raw, this.preset | (opts?.x86 ? PRESET_X86 : 0)));
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
