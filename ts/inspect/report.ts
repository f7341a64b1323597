/**
 * The inspector model: what is in an overlay and why it is the size it is.
 * Runtime-neutral; the CLI prints it and the browser page draws it.
 */
import { CHUNK, CLASS_COUNT, CLASS_NAMES, KIND_NAMES, type OverlayMeta } from "../overlay/format.ts";
import { printable } from "../printable.ts";

/** Counts and logical bytes of one (kind, class) cell. */
export interface ClassCell {
  /** Chunks. */
  chunks: number;
  /** Bytes of the rebuilt image they cover (chunks x 4096). */
  bytes: number;
}

/** One segment's numbers. */
export interface SegmentRow {
  /** 1-based segment number. */
  number: number;
  /** Compressed bytes. */
  compressed: number;
  /** Payload bytes. */
  raw: number;
  /** raw / compressed. */
  ratio: number;
  /** Records. */
  records: number;
  /** Data chunks (raw + xor). */
  dataChunks: number;
  /** Records per image (from its ranges): which images the segment rebuilds, and how much of each. */
  holds: Record<string, number>;
}

/** Everything `cloudlet inspect` shows. */
export interface InspectReport {
  /** Overlay file. */
  file: string;
  /** Format version. */
  formatVersion: number;
  /** Creator info. */
  creator: OverlayMeta["creator"];
  /** Base id and shape. */
  base: OverlayMeta["base"];
  /** Rebuilt image sizes by kind name. */
  imageSizes: Record<string, number>;
  /** Totals. */
  sizes: {
    /** The whole overlay on disk (meta + segments). */
    overlay: number;
    /** All segments, compressed. */
    compressed: number;
    /** All segment payloads. */
    raw: number;
    /** Bytes of the images the overlay rewrites (changed chunks x 4096). */
    rebuilt: number;
    /** overall rebuilt / overlay. */
    ratio: number;
  };
  /** Per kind, per class. */
  classes: Record<string, Record<string, ClassCell>>;
  /** Per class over all kinds. */
  classTotals: Record<string, ClassCell>;
  /** Segment table. */
  segments: SegmentRow[];
  /** Launch config. */
  launch: OverlayMeta["launch"];
  /**
   * Memory that was free at the snapshot (holes in the memory image: never
   * written, or reported free by the guest), when the overlay records it.
   */
  memoryFree?: { bytes: number; of: number; reportingBalloon: boolean };
  /** The boot set (format version 2), when the overlay has one: its segments, why, and its share of the overlay. */
  bootSet?: { segments: number; reason: string; pages: number; chunks: number; basePages: number; compressed: number; raw: number; fraction: number };
}

/** Builds the report from a meta. */
export function inspectMeta(meta: OverlayMeta, file: string, overlayBytes: number): InspectReport {
  const classes: Record<string, Record<string, ClassCell>> = {};
  const classTotals: Record<string, ClassCell> = {};
  CLASS_NAMES.forEach((c) => (classTotals[c] = { chunks: 0, bytes: 0 }));
  KIND_NAMES.forEach((k, ki) => {
    classes[k] = {};
    for (let ci = 0; ci < CLASS_COUNT; ci++) {
      const n = meta.classCounts[ki][ci];
      classes[k][CLASS_NAMES[ci]] = { chunks: n, bytes: n * CHUNK };
      classTotals[CLASS_NAMES[ci]].chunks += n;
      classTotals[CLASS_NAMES[ci]].bytes += n * CHUNK;
    }
  });
  const compressed = meta.segments.reduce((t, s) => t + s.compressedSize, 0);
  const raw = meta.segments.reduce((t, s) => t + s.rawSize, 0);
  const rebuilt = meta.segments.reduce((t, s) => t + s.records, 0) * CHUNK;
  return {
    file,
    formatVersion: meta.version,
    creator: meta.creator,
    base: meta.base,
    imageSizes: Object.fromEntries(KIND_NAMES.map((k, i) => [k, meta.imageSizes[i]])),
    sizes: { overlay: overlayBytes, compressed, raw, rebuilt, ratio: overlayBytes ? rebuilt / overlayBytes : 0 },
    classes,
    classTotals,
    segments: meta.segments.map((s, i) => ({
      number: i + 1,
      compressed: s.compressedSize,
      raw: s.rawSize,
      ratio: s.rawSize / s.compressedSize,
      records: s.records,
      dataChunks: s.dataChunks,
      holds: segmentHolds(s.ranges),
    })),
    launch: meta.launch,
    ...(meta.launch.memoryFreeBytes !== undefined
      ? { memoryFree: { bytes: meta.launch.memoryFreeBytes, of: meta.imageSizes[1], reportingBalloon: meta.base.machine.freePageReporting === true } }
      : {}),
    ...(meta.bootSet
      ? (() => {
          const lead = meta.segments.slice(0, meta.bootSet.segments);
          const bc = lead.reduce((t, s) => t + s.compressedSize, 0);
          const b = meta.bootSet;
          return { bootSet: { segments: b.segments, reason: b.reason, pages: b.pages, chunks: b.chunks, basePages: b.basePages.reduce((t, r) => t + r[1], 0), compressed: bc, raw: lead.reduce((t, s) => t + s.rawSize, 0), fraction: compressed ? bc / compressed : 0 } };
        })()
      : {}),
  };
}

/** Human-readable byte count. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let u = 0;
  let v = n;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

/** The report as text, for a terminal. */
export function renderReport(r: InspectReport): string {
  const lines: string[] = [];
  const pad = (s: string, n: number) => s.padEnd(n);
  const rpad = (s: string, n: number) => s.padStart(n);
  // Every string below comes from the file (or its name): shown through printable(), never raw.
  lines.push(`overlay      ${printable(r.file)}`);
  lines.push(`format       v${r.formatVersion}, made by ${printable(r.creator.tool)} ${printable(r.creator.version)} at ${printable(r.creator.created)}`);
  lines.push(`base id      ${printable(r.base.id)}`);
  lines.push(`base         disk ${formatBytes(r.base.diskSize)}, memory ${formatBytes(r.base.memorySize)}, ${printable(r.base.machine.machine)} / ${printable(r.base.machine.cpu)} / ${r.base.machine.ramMiB} MiB`);
  lines.push(`rebuilt      ${Object.entries(r.imageSizes).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${formatBytes(v)}`).join(", ")}`);
  lines.push(`sizes        overlay ${formatBytes(r.sizes.overlay)}, segments ${formatBytes(r.sizes.compressed)} compressed / ${formatBytes(r.sizes.raw)} raw, rebuilt ${formatBytes(r.sizes.rebuilt)} (${r.sizes.ratio.toFixed(1)}x)`);
  const fwd = r.launch.portForwards.map((p) => `${p.proto}:${p.hostPort || "auto"}->${p.guestPort}`).join(", ") || "none";
  lines.push(`launch       ${r.launch.memoryMiB} MiB, ${r.launch.vcpus} vCPU, ports ${fwd}`);
  if (r.bootSet) {
    const b = r.bootSet;
    lines.push(`boot set     segments 1-${b.segments} (${formatBytes(b.compressed)}, ${(b.fraction * 100).toFixed(1)}% of the segments): ${b.pages} memory pages, ${b.chunks} disk chunks, and ${b.basePages} base memory pages sent first; ${printable(b.reason)}`);
  }
  if (r.memoryFree) {
    const f = r.memoryFree;
    lines.push(`free memory  ${formatBytes(f.bytes)} of ${formatBytes(f.of)} free at the snapshot (${f.of ? ((100 * f.bytes) / f.of).toFixed(0) : 0}%; not stored), ${f.reportingBalloon ? "reported by the guest's balloon" : "no reporting balloon"}`);
  }
  lines.push("");
  const kinds = Object.keys(r.classes);
  lines.push(pad("class", 13) + kinds.map((k) => rpad(k, 22)).join("") + rpad("total", 22));
  for (const c of Object.keys(r.classTotals)) {
    const cell = (x: ClassCell) => rpad(`${x.chunks} / ${formatBytes(x.bytes)}`, 22);
    lines.push(pad(c, 13) + kinds.map((k) => cell(r.classes[k][c])).join("") + cell(r.classTotals[c]));
  }
  lines.push("");
  lines.push(`segments     ${r.segments.length}`);
  lines.push(rpad("#", 6) + rpad("compressed", 14) + rpad("raw", 14) + rpad("ratio", 8) + rpad("records", 10) + rpad("data", 8) + "  holds (records per image)");
  const show = r.segments.length > 40 ? [...r.segments.slice(0, 20), null, ...r.segments.slice(-20)] : r.segments;
  for (const s of show) {
    if (!s) {
      lines.push(rpad("…", 6));
      continue;
    }
    lines.push(rpad(String(s.number), 6) + rpad(formatBytes(s.compressed), 14) + rpad(formatBytes(s.raw), 14) + rpad(s.ratio.toFixed(2), 8) + rpad(String(s.records), 10) + rpad(String(s.dataChunks), 8) + "  " + holdsText(s.holds));
  }
  return lines.join("\n");
}

/** Records per image kind of one segment, from its ranges ([kind, first, count]). */
function segmentHolds(ranges: ReadonlyArray<readonly [number, number, number]>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [kind, , count] of ranges) out[KIND_NAMES[kind]] = (out[KIND_NAMES[kind]] ?? 0) + count;
  return out;
}

/** "disk 300, memory 200". */
function holdsText(h: Record<string, number>): string {
  return Object.entries(h).map(([k, n]) => `${k} ${n}`).join(", ");
}
