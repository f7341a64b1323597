/**
 * Messages between the inspector page and its Web Worker. Everything here is
 * structured-cloneable: Blobs travel by reference (no bytes are copied), and
 * class arrays and chunk bytes are transferred.
 *
 * ```text
 *   page                                   worker (own WASM instance)
 *   init {wasm bytes}              ->      loadCore
 *   open {files, base roles}       ->      sort files, open reader   -> reply OpenedOverlay
 *   scan                           ->      per segment: fetch, hash, decode, rebuild-check
 *                                  <-      event "segment" (classes transferred), "progress"
 *                                  <-      reply ScanSummary
 *   detail {kind, index}           ->      decode that segment (cached) -> reply ChunkDetail
 *   selftest {vectors}             ->      kernel vectors in the worker -> reply VectorResult[]
 *   plan                           ->      the open overlay as the upload protocol sends it -> reply UploadPlan
 * ```
 */
import type { ChunkDetail } from "../ts/inspect/chunk_detail.ts";
import type { ErrorInfo, SegmentCheck } from "../ts/inspect/segment_check.ts";
import type { KernelVectors, VectorResult } from "../ts/inspect/vector_check.ts";
import type { OverlayMeta } from "../ts/overlay/format.ts";

/** Where one file's bytes come from. */
export type FileSpec =
  /** A dropped or chosen file. */
  | { type: "blob"; name: string; blob: Blob }
  /** A file the local inspect server lists; read with HTTP Range. */
  | { type: "http"; name: string; url: string; size: number };

/** Requests, page to worker. Each carries an id that its reply repeats. */
export type Request =
  | { op: "init"; id: number; wasm: ArrayBuffer }
  | { op: "open"; id: number; files: FileSpec[]; baseDisk?: FileSpec; baseMemory?: FileSpec }
  | { op: "scan"; id: number }
  | { op: "detail"; id: number; kind: number; index: number }
  | { op: "selftest"; id: number; vectors: KernelVectors }
  | { op: "plan"; id: number };

/** What the worker opened. */
export interface OpenedOverlay {
  /** The validated meta. */
  meta: OverlayMeta;
  /** The packed file or meta file name. */
  name: string;
  /** Layout. */
  layout: "packed" | "split";
  /** Bytes of the whole overlay. */
  totalBytes: number;
  /** Base disk file name, when a base disk is at hand. */
  baseDisk: string | null;
  /** Base memory file name, when at hand. */
  baseMemory: string | null;
  /** Files that were given but not used. */
  unused: string[];
}

/** The end of a scan. */
export interface ScanSummary {
  /** Segments that passed every check that could run. */
  ok: number;
  /** Segments that failed. */
  failed: number;
  /** Segments whose rebuilt hash was checked. */
  rebuiltChecked: number;
  /** Milliseconds. */
  ms: number;
  /** The worker's WASM memory at the end, in bytes. */
  wasmBytes: number;
}

/**
 * How to upload the open overlay (docs/protocol.md): the packed header and
 * meta for the meta step, then each segment's bytes, which are a slice of
 * one of the given files (the packed file, or a seed-layout NAME-N.xz).
 */
export interface UploadPlan {
  /** Packed header + meta (made from the meta file for the seed layout). */
  head: Uint8Array;
  /** Segment i: `size` bytes at `offset` of the file named `file`. */
  segments: Array<{ file: string; offset: number; size: number }>;
}

/** Replies and events, worker to page. */
export type Reply =
  | { op: "reply"; id: number; ok: true; value: unknown }
  | { op: "reply"; id: number; ok: false; error: ErrorInfo }
  | { op: "segment"; check: SegmentCheck; bytesDone: number; bytesTotal: number };

export type { ChunkDetail, VectorResult };
