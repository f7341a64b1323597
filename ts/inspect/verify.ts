/**
 * verifyOverlay: every check an overlay can be given without writing a VM:
 * each segment's hash, decode and records (as synthesis does), the rebuilt
 * chunks against the meta's check where the base is given, and the meta's
 * class counts against the records the segments actually hold.
 * Runtime-neutral; one segment in memory at a time.
 */
import type { Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import type { SegmentCodec } from "../overlay/codec.ts";
import { CLASS_COUNT, CLASS_NAMES, KIND_NAMES } from "../overlay/format.ts";
import type { ProgressFn } from "../overlay/io.ts";
import type { OverlayReader } from "../overlay/reader.ts";
import { checkBase, verifyBaseBytes } from "../overlay/synthesis.ts";
import { type BaseSources, checkSegment } from "./segment_check.ts";

/** What {@link verifyOverlay} found (it throws on the first failure). */
export interface VerifyResult {
  /** Segments that decoded and matched their hashes. */
  segments: number;
  /** Segments whose rebuilt chunks were checked against rebuilt_hash. */
  rebuilt: number;
  /** Segments whose rebuilt check needs the base, which was not given. */
  rebuiltSkipped: number;
  /** The given base files hash to the overlay's base id (false when no base was given). */
  baseChecked: boolean;
}

/** Verifies `reader` segment by segment; throws the first failure as a CloudletError naming its file. */
export async function verifyOverlay(core: Core, reader: OverlayReader, base: BaseSources | null, codec: SegmentCodec, progress?: ProgressFn): Promise<VerifyResult> {
  const meta = reader.meta;
  if (base?.id) checkBase(meta, base.id, reader.name);
  const counts = KIND_NAMES.map(() => new Array<number>(CLASS_COUNT).fill(0));
  const total = meta.segments.reduce((t, s) => t + s.compressedSize, 0);
  let done = 0;
  let rebuilt = 0;
  let rebuiltSkipped = 0;
  // The rebuilt chunks cover only what the overlay references; the base id covers every base byte a VM would build on.
  const baseChecked = base?.disk && base.memory ? verifyBaseBytes(core, meta, base.disk, base.memory) : null;
  baseChecked?.catch(() => {}); // awaited below
  for (let i = 0; i < meta.segments.length; i++) {
    const c = await checkSegment(core, reader, i, base, codec);
    if (c.error) {
      // A rebuilt chunk that fails on a changed or wrong base: name the base, not the segment.
      if (c.error.code === "VERIFY_FAILED" && baseChecked) await baseChecked;
      throw new CloudletError(c.error.code as CloudletError["code"], c.error.message, c.error.file ?? reader.segmentFile(i));
    }
    const r = c.records!;
    for (let k = 0; k < r.kinds.length; k++) counts[r.kinds[k]][r.classes[k]]++;
    if (c.rebuilt === "ok") rebuilt++;
    else rebuiltSkipped++;
    done += meta.segments[i].compressedSize;
    progress?.({ phase: "verify", done, total });
  }
  for (let k = 0; k < KIND_NAMES.length; k++) {
    for (let cls = 0; cls < CLASS_COUNT; cls++) {
      if (counts[k][cls] !== meta.classCounts[k][cls]) {
        throw new CloudletError("BAD_META", `the meta's class_counts say ${meta.classCounts[k][cls]} ${KIND_NAMES[k]} ${CLASS_NAMES[cls]} chunks, but the segments hold ${counts[k][cls]}`, reader.name);
      }
    }
  }
  await baseChecked;
  return { segments: meta.segments.length, rebuilt, rebuiltSkipped, baseChecked: baseChecked !== null };
}
