/**
 * OverlayFileSet: makes sense of a bag of files (dropped on the page, or
 * listed by the inspect server): which one is the overlay, in which layout,
 * which are its segment files, and which are the base disk and memory.
 * Runtime-neutral; the files are {@link ByteSource}s.
 *
 *   NAME.overlay                          packed: one file, told by its magic
 *                                         (or, when that is damaged, its name)
 *   NAME.overlay-meta + NAME-1.xz ...     seed layout: the meta by its magic
 *                                         (or name), the segments by name
 *   anything else                         a base image when its size equals
 *                                         the base disk or memory size in the meta
 */
import type { Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import { META_SUFFIX, type OverlayMeta, overlayLayoutOf } from "../overlay/format.ts";
import type { ByteSource } from "../overlay/io.ts";
import { openPacked, openSplit, type OverlayReader } from "../overlay/reader.ts";

/** The overlay's files, sorted. */
export interface OverlayFileSet {
  /** Layout. */
  layout: "packed" | "split";
  /** The packed file or the meta. */
  main: ByteSource;
  /** Every other file, by name (segment files and base candidates). */
  others: Map<string, ByteSource>;
}

/** The base images found among the files. */
export interface BaseFiles {
  /** Base disk (raw), or null. */
  disk: ByteSource | null;
  /** Base memory image, or null. */
  memory: ByteSource | null;
}

/** The last path component of a name. */
export function baseName(name: string): string {
  return name.slice(Math.max(name.lastIndexOf("/"), name.lastIndexOf("\\")) + 1);
}

/** Finds the overlay among `files` by magic. */
export async function sortOverlayFiles(files: ByteSource[]): Promise<OverlayFileSet> {
  const found: Array<{ src: ByteSource; layout: "packed" | "split" }> = [];
  const others = new Map<string, ByteSource>();
  for (const f of files) {
    // By magic, else by name: a damaged NAME.overlay-meta is opened as a
    // meta, so the reader names what is wrong with it. A CLOVPART file is a
    // packed overlay whose writer never finished: openPacked says so.
    const layout = overlayLayoutOf(await f.read(0, Math.min(8, f.size)), baseName(f.name));
    if (layout) found.push({ src: f, layout });
    else others.set(baseName(f.name), f);
  }
  if (found.length === 0) {
    const names = files.map((f) => baseName(f.name)).join(", ") || "none";
    throw new CloudletError("BAD_ARGUMENT", `no cloudlet overlay among the files (${names}): open NAME.overlay, or NAME.overlay-meta together with its NAME-N.xz segment files`);
  }
  if (found.length > 1) throw new CloudletError("BAD_ARGUMENT", `more than one overlay among the files (${found.map((f) => baseName(f.src.name)).join(", ")}): open one at a time`);
  return { layout: found[0].layout, main: found[0].src, others };
}

/** Opens the overlay of a sorted file set; segment files are looked up by name. */
export function openFileSet(core: Core, set: OverlayFileSet): Promise<OverlayReader> {
  if (set.layout === "packed") return openPacked(core, set.main);
  const name = baseName(set.main.name);
  const stem = name.endsWith(META_SUFFIX) ? name.slice(0, -META_SUFFIX.length) : name;
  return openSplit(core, set.main, stem, (n) => Promise.resolve(set.others.get(n) ?? null));
}

/** The segment file names of a seed-layout overlay, so they are not taken for base images. */
function isSegmentFile(name: string): boolean {
  return /-\d+\.xz$/.test(name);
}

/**
 * Picks the base disk and memory from `candidates` by size (the meta records
 * both sizes); when both sizes are equal, names containing "mem" or "ram"
 * are the memory.
 */
export function matchBaseFiles(meta: OverlayMeta, candidates: Iterable<ByteSource>): BaseFiles {
  const list = [...candidates].filter((f) => !isSegmentFile(baseName(f.name)));
  const looksMem = (f: ByteSource) => /mem|ram/i.test(baseName(f.name));
  const pick = (size: number, preferMem: boolean, taken: ByteSource | null): ByteSource | null => {
    const fits = list.filter((f) => f.size === size && f !== taken && size > 0);
    return fits.find((f) => looksMem(f) === preferMem) ?? fits[0] ?? null;
  };
  const memory = pick(meta.base.memorySize, true, null);
  const disk = pick(meta.base.diskSize, false, memory);
  return { disk, memory };
}

/** Files that are neither the overlay, its segments nor a matched base image. */
export function unusedFiles(set: OverlayFileSet, base: BaseFiles): string[] {
  return [...set.others.values()].filter((f) => f !== base.disk && f !== base.memory && !(set.layout === "split" && isSegmentFile(baseName(f.name)))).map((f) => baseName(f.name));
}
