/**
 * Colours and labels of chunk classes, shared by the charts, the maps and
 * the tables. Indexes are ChunkClass values, then PENDING and UNREADABLE.
 */

/** Fill colour per class byte. */
export const CLASS_COLORS = [
  "#9aa5b1", // zero
  "#3b82f6", // base_memory
  "#14b8a6", // base_disk
  "#a855f7", // self
  "#ef4444", // raw
  "#f59e0b", // xor
  "#d6dde6", // pending: not decoded yet
  "#111827", // unreadable: the segment failed its checks
];

/** Label per class byte. */
export const CLASS_LABELS = ["zero", "base memory", "base disk", "self", "raw", "xor", "not checked yet", "failed"];

/** What each class means, for tooltips and the legend. */
export const CLASS_HELP = [
  "all zero: nothing stored",
  "equal to a base memory page: only its offset is stored",
  "equal to a base disk block: only its offset is stored",
  "a repeat of another changed chunk in the same segment",
  "stored as is (4 KiB, compressed with its segment)",
  "stored as XOR against the base chunk at the same offset",
  "its segment has not been decoded yet",
  "its segment failed its checks",
];

/** Colour of chunks the overlay does not touch. */
export const UNCHANGED_COLOR = "#f1f4f8";

/** The boot set: its segments in the ratio chart, the bar under map cells with its chunks (and the "boot" badge's border in style.css); darker than XOR's amber, which the maps use. */
export const BOOT_COLOR = "#b45309";
