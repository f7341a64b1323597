/**
 * cloudlet as a library: the declared public API, for Node 20+ and Deno 2.
 *
 * ```ts
 * import { loadCoreFromDisk, createOverlay, openOverlay, inspectMeta, renderReport, synthesize } from "cloudlet";
 * const core = await loadCoreFromDisk();
 * const made = await createOverlay(core, { baseDisk, baseMem, disk, mem, out: "app.overlay", home });
 * const ov = await openOverlay(core, made.path);
 * console.log(renderReport(inspectMeta(ov.meta, made.path, ov.totalBytes)));
 * await ov.close();
 * await synthesize(core, { baseDisk, baseMem, overlay: made.path, outDir: "out", home });
 * ```
 *
 * Only what is listed here is public; every other module is internal and may
 * move. This file is a flat list of re-exports on purpose: when the modules
 * behind it move, only its import paths change.
 */

// --- the core ------------------------------------------------------------------------------
/** Reads and instantiates the WASM core shipped with the package (Node and Deno). */
export { loadCoreFromDisk } from "./node/core_file.ts";
/** Instantiates the core from the bytes of `cloudlet_core_bg.wasm` (any runtime, browsers too). */
export { loadCore } from "./core/core.ts";
/** The loaded WASM core: hashing, xz, XOR and the base index. Every job takes one. */
export type { Core } from "./core/core.ts";

// --- files: make, rebuild, open ----------------------------------------------------------------
/** Creates an overlay (packed `.overlay` or split `.overlay-meta`) from a custom VM's image files against a base's. */
export { createOverlayFiles, createOverlayFiles as createOverlay } from "./jobs/file_overlay.ts";
/** Rebuilds a custom VM's files (disk, memory, device state) from a base and an overlay, atomically into a directory. */
export { synthesizeFiles, synthesizeFiles as synthesize } from "./jobs/file_synthesis.ts";
/** Options and results of createOverlay and synthesize. */
export type { CreateOverlayOptions, CreatedOverlay } from "./jobs/file_overlay.ts";
export type { SynthesizeOptions, SynthesizedFiles } from "./jobs/file_synthesis.ts";
/** The QEMU machine recorded for image files when none is given: pc-i440fx-7.2, qemu64, RAM from the memory size. */
export { defaultMachine } from "./home/machine_defaults.ts";
/** The file names synthesize writes into its output directory. */
export { SYNTH_FILES } from "./jobs/file_synthesis.ts";
/** The package version, recorded in every overlay as its creator. */
export { CLOUDLET_VERSION } from "./version.ts";
/** Opens an overlay file of either layout; its meta is decoded and checked first. */
export { openOverlay } from "./node/overlay_files.ts";
/** An opened overlay: its meta, segment reads, and close(). */
export type { OpenedOverlay } from "./node/overlay_files.ts";
/** The cloudlet home directory: the override, else $CLOUDLET_HOME, else /var/lib/cloudlet (root) or ~/.cloudlet. */
export { cloudletHome } from "./home/paths.ts";

// --- inspect and verify --------------------------------------------------------------------
/** Summarises an overlay's meta: base, sizes, chunk classes per kind, segments. */
export { inspectMeta } from "./inspect/report.ts";
/** Renders an inspect report as the text `cloudlet inspect` prints. */
export { renderReport } from "./inspect/report.ts";
/** Formats a byte count for people, as the CLI prints it. */
export { formatBytes } from "./inspect/report.ts";
/** The inspect report and its rows. */
export type { InspectReport, SegmentRow, ClassCell } from "./inspect/report.ts";
/** Checks every segment of an overlay (hash, decode, records, class counts; rebuilt chunks when the base is given). */
export { verifyOverlay } from "./inspect/verify.ts";
/** What verifyOverlay checked; the base images it may be given. */
export type { VerifyResult } from "./inspect/verify.ts";
export type { BaseSources } from "./inspect/segment_check.ts";
/** The segment codec on worker threads (one WASM instance each), for verifyOverlay; close() it when done. */
export { WorkerCodec } from "./node/codec_pool.ts";
/** The segment codec on the calling thread: any runtime, no workers. */
export { InlineCodec } from "./overlay/codec.ts";
/** What verifyOverlay decodes segments with. */
export type { SegmentCodec } from "./overlay/codec.ts";
/** A file read by position: what verifyOverlay reads base images through; close() it when done. */
export { FileSource } from "./node/files.ts";
/** Random access to bytes (a file, a buffer, an HTTP range source); progress reports. */
export type { ByteSource, ProgressFn, Progress } from "./overlay/io.ts";

// --- the format ------------------------------------------------------------------------------
/** Decodes and validates an overlay's meta (header + JSON body); a bad one is a CloudletError naming the file. */
export { decodeMeta } from "./overlay/format.ts";
/** The overlay format version this build writes, and the constants of its layout. */
export { FORMAT_VERSION, CHUNK, ImageKind, KIND_NAMES, ChunkClass, CLASS_NAMES } from "./overlay/format.ts";
/** The format's types: the meta and what it records. */
export type { OverlayMeta, MachineConfig, LaunchConfig, PortForward, SegmentInfo, ClassCounts, BootSet } from "./overlay/format.ts";
/** Parses a port forward as `cloudlet overlay --forward` takes it: tcp:HOST::GUEST or hostfwd=tcp::HOST-:GUEST. */
export { parsePortForward } from "./overlay/launch.ts";

// --- errors ------------------------------------------------------------------------------------
/** The one error type: a code, a one-line message and the file it concerns. */
export { CloudletError } from "./errors.ts";
/** Whether a value is a CloudletError: an error a user caused and can fix (print its userMessage, not a stack). */
export { isCloudletError } from "./errors.ts";
/** The process exit code the CLI uses for an error code. */
export { exitCodeOf } from "./errors.ts";
/** Every error code. */
export type { ErrorCode } from "./errors.ts";
