/**
 * readAhead: an {@link OverlayReader} that, when segment i is asked for,
 * also starts reading the next `depth` segments, so reading (an HTTP Range
 * round trip, a Blob slice) overlaps decoding. Memory stays bounded: at most
 * `depth` + 1 compressed segments are held. Meant for one pass in order.
 */
import type { OverlayReader } from "../overlay/reader.ts";

/** Wraps `r` so that in-order reads prefetch up to `depth` segments ahead. */
export function readAhead(r: OverlayReader, depth = 2): OverlayReader {
  const pending = new Map<number, Promise<Uint8Array>>();
  const start = (i: number) => {
    if (i >= r.meta.segments.length || pending.has(i)) return;
    const p = r.segment(i);
    p.catch(() => {}); // observed when that segment is asked for
    pending.set(i, p);
  };
  return {
    meta: r.meta,
    name: r.name,
    totalBytes: r.totalBytes,
    segmentFile: (i) => r.segmentFile(i),
    segment(i) {
      // Drop prefetches the caller skipped past (out-of-order use).
      for (const k of pending.keys()) if (k < i) pending.delete(k);
      start(i);
      const p = pending.get(i)!;
      pending.delete(i);
      for (let k = 1; k <= depth; k++) start(i + k);
      return p;
    },
  };
}
