/**
 * Segment checks for the inspector: fetch one segment, verify the BLAKE3 of
 * its compressed bytes, decode it, validate its records against the meta,
 * and, when the base is at hand (or the segment needs none), rebuild its
 * chunks into nowhere to verify `rebuilt_hash`. The same code paths as
 * synthesis (`fetchSegment`, `applySegment`), so the inspector passes
 * exactly what synthesis would. Runtime-neutral.
 *
 * Memory: one segment at a time (its compressed bytes, its payload, and
 * applySegment's 4 MiB batch); what survives is one class byte per record.
 */
import type { Core } from "../core/core.ts";
import { CloudletError, isCloudletError } from "../errors.ts";
import { InlineCodec, type SegmentCodec } from "../overlay/codec.ts";
import { ChunkClass, type SegmentRecords } from "../overlay/format.ts";
import type { ByteSource, ImageSink } from "../overlay/io.ts";
import type { OverlayReader } from "../overlay/reader.ts";
import { applySegment, fetchSegment } from "../overlay/synthesis.ts";

/** Base images, for the rebuilt-chunk check and XOR views. */
export interface BaseSources {
  /** Base disk (raw). */
  disk: ByteSource | null;
  /** Base memory. */
  memory: ByteSource | null;
  /** The base id of these images, when known: verification then refuses another base by name, up front. */
  id?: string;
}

/** A user-facing error, as plain data (it crosses a worker boundary). */
export interface ErrorInfo {
  /** CloudletError code, or "INTERNAL". */
  code: string;
  /** The message. */
  message: string;
  /** The file concerned, if any. */
  file: string | null;
}

/** The outcome of checking one segment. */
export interface SegmentCheck {
  /** 0-based segment number. */
  segment: number;
  /** Class byte per record, or null when the segment failed. */
  classes: Uint8Array | null;
  /** "ok" when the rebuilt chunks matched rebuilt_hash; "skipped" when that needs a base that was not given. */
  rebuilt: "ok" | "skipped" | "failed";
  /** What went wrong, when something did. */
  error: ErrorInfo | null;
  /** Milliseconds spent. */
  ms: number;
}

/** Turns any thrown value into {@link ErrorInfo}. */
export function errorInfo(e: unknown): ErrorInfo {
  if (isCloudletError(e)) return { code: e.code, message: e.message, file: e.file ?? null };
  return { code: "INTERNAL", message: (e as Error)?.message ?? String(e), file: null };
}

/** True when rebuilding any record of `r` reads the base. */
export function needsBase(r: SegmentRecords): boolean {
  for (const c of r.classes) if (c === ChunkClass.BaseMemory || c === ChunkClass.BaseDisk || c === ChunkClass.Xor) return true;
  return false;
}

/** A sink that drops what it is given: the check only needs the rebuilt hash. */
const discard: ImageSink = {
  writeChunks: () => Promise.resolve(),
  zeroChunks: () => Promise.resolve(),
  finish: () => Promise.resolve(),
  abort: () => Promise.resolve(),
};

/** Fetches, decodes and verifies segment `i`; never throws for a bad segment (the result says). */
export async function checkSegment(core: Core, reader: OverlayReader, i: number, base: BaseSources | null, codec: SegmentCodec = new InlineCodec(core)): Promise<SegmentCheck & { records: SegmentRecords | null }> {
  const t0 = performance.now();
  let records: SegmentRecords | null = null;
  try {
    records = await fetchSegment(core, reader, codec, i);
    const haveBase = base !== null && base.disk !== null && base.memory !== null;
    if (!haveBase && needsBase(records)) {
      return { segment: i, classes: records.classes, rebuilt: "skipped", error: null, ms: performance.now() - t0, records };
    }
    await (await applySegment(core, reader.meta, i, records, [base?.disk ?? null, base?.memory ?? null, null], [discard, discard, discard], reader.segmentFile(i), [0, 0, 0])).written;
    return { segment: i, classes: records.classes, rebuilt: "ok", error: null, ms: performance.now() - t0, records };
  } catch (e) {
    const err = isCloudletError(e) ? e : new CloudletError("CORRUPT_SEGMENT", `segment ${i + 1}: ${(e as Error)?.message ?? e}`, reader.segmentFile(i));
    // Decoded but not rebuilt: the classes are known, the chunks are not trustworthy.
    return { segment: i, classes: null, rebuilt: "failed", error: errorInfo(err), ms: performance.now() - t0, records: null };
  }
}
