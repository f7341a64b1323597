/**
 * Base preparation on disk: the base digests and index are built once per
 * base and stored in a directory beside it, keyed by the base id. In file
 * mode (`--base-disk/--base-mem`) the directory lives in the cloudlet home's
 * index cache, keyed by the files' identity (path, size, mtime, inode). That
 * identity is only a hint (a file changed in place can keep it): synthesis
 * hashes the base bytes again and checks them against the overlay's base id
 * (verifyBaseBytes in ts/overlay/synthesis.ts, docs/decisions.md).
 *
 * ```text
 *   DIR/base.json       {version, id, machine, disk/memory sizes, file identities}
 *   DIR/disk.digests    16-byte BLAKE3 prefix per 4 KiB disk chunk
 *   DIR/memory.digests  16-byte BLAKE3 prefix per 4 KiB memory page
 *   DIR/index.bin       the serialised BaseIndex (see core-rs/src/index.rs)
 * ```
 */
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import type { Core } from "../core/core.ts";
import { toHex } from "../core/vectors.ts";
import { CloudletError } from "../errors.ts";
import { arrayDigests, type BaseView, type DigestSource, type DiskStride, padDigests, scanBase, SHORT_DIGEST, zeroChunkDigest } from "../overlay/base_scan.ts";
import { CHUNK, type MachineConfig } from "../overlay/format.ts";
import { holeChunkRuns } from "../node/disk_image.ts";
import type { ProgressFn } from "../overlay/io.ts";
import { AtomicFile, FileSource, outputError } from "../node/files.ts";

const CACHE_VERSION = 1;

/** Identity of a file: changes when its contents may have changed. */
export interface FileIdentity {
  path: string;
  size: number;
  mtimeMs: number;
  ino: number;
  dev: number;
}

/** The stored description of a prepared base. */
export interface BaseRecord {
  version: number;
  id: string;
  /** Disk offsets the index covers (absent in older records: 4096). */
  diskStride?: DiskStride;
  machine: MachineConfig;
  diskSize: number;
  memorySize: number;
  disk: FileIdentity;
  memory: FileIdentity;
}

/** Stats a file for its identity; MISSING_INPUT when absent. */
export async function fileIdentity(path: string): Promise<FileIdentity> {
  try {
    const real = await fsp.realpath(path);
    const st = await fsp.stat(real);
    if (!st.isFile()) throw new CloudletError("MISSING_INPUT", "is not a regular file", path);
    return { path: real, size: st.size, mtimeMs: Math.floor(st.mtimeMs), ino: st.ino, dev: st.dev };
  } catch (e) {
    if (e instanceof CloudletError) throw e;
    throw new CloudletError("MISSING_INPUT", (e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : `cannot read: ${(e as Error).message}`, path);
  }
}

/** Same file, probably unchanged: inode and device (not the path, so a base directory can be renamed), size and mtime. */
function sameIdentity(a: FileIdentity, b: FileIdentity): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.ino === b.ino && a.dev === b.dev;
}

/** The index-cache directory for a pair of base files. */
export function cacheDirFor(core: Core, cacheRoot: string, disk: FileIdentity, memory: FileIdentity, machine: MachineConfig): string {
  const key = toHex(core.hash("blake3", new TextEncoder().encode(JSON.stringify({ disk, memory, machine })))).slice(0, 32);
  return join(cacheRoot, key);
}

/** Reads a prepared base's record, or null when absent or stale. */
export async function readBaseRecord(dir: string): Promise<BaseRecord | null> {
  try {
    const rec = JSON.parse(await fsp.readFile(join(dir, "base.json"), "utf8")) as BaseRecord;
    return rec.version === CACHE_VERSION ? rec : null;
  } catch {
    return null;
  }
}

/** Options for {@link openBase}. */
export interface OpenBaseOptions {
  /** Base disk (raw). */
  disk: string;
  /** Base memory image. */
  memory: string;
  /** Machine config (part of the base id). */
  machine: MachineConfig;
  /** Directory holding (or to hold) the prepared base data. */
  dir: string;
  /** Load the index (overlay creation needs it; synthesis does not). */
  needIndex: boolean;
  /** Disk offsets the index must cover (default 4096); a 512 index serves 4096 too. */
  diskStride?: DiskStride;
  /** Progress while preparing. */
  progress?: ProgressFn;
  /** Cancellation. */
  signal?: AbortSignal;
}

/** An opened base: the engine's view plus a way to release files and WASM memory. */
export interface OpenedBase extends BaseView {
  /** Prepared-data directory. */
  dir: string;
  /** Releases the files and the index. */
  close(): Promise<void>;
}

/** Opens a base, preparing (scanning and indexing) it first when its data is missing or stale. */
export async function openBase(core: Core, o: OpenBaseOptions): Promise<OpenedBase> {
  const [diskId, memId] = await Promise.all([fileIdentity(o.disk), fileIdentity(o.memory)]);
  let rec = await readBaseRecord(o.dir);
  const stride = o.diskStride ?? 4096;
  const strideOk = !o.needIndex || (rec?.diskStride ?? 4096) <= stride;
  const fresh = rec && strideOk && sameIdentity(rec.disk, diskId) && sameIdentity(rec.memory, memId) && JSON.stringify(rec.machine) === JSON.stringify(o.machine);
  const disk = await FileSource.open(o.disk);
  const memory = await FileSource.open(o.memory);
  try {
    let index = null;
    let digests: DigestSource;
    const digestFiles: FileSource[] = [];
    if (!fresh) {
      // Holes (sparse regions) are known zero: no need to read them.
      const [diskHoles, memHoles] = await Promise.all([holeChunkRuns(o.disk, CHUNK), holeChunkRuns(o.memory, CHUNK)]);
      // Keep a finer index than asked for if one was there (it serves both).
      const build = Math.min(stride, rec && sameIdentity(rec.disk, diskId) ? (rec.diskStride ?? 4096) : 4096) as DiskStride;
      const scan = await scanBase(core, disk, memory, o.machine, o.progress, o.signal, { disk: diskHoles, memory: memHoles }, build);
      rec = { version: CACHE_VERSION, id: scan.id, diskStride: build, machine: o.machine, diskSize: disk.size, memorySize: memory.size, disk: diskId, memory: memId };
      await writePrepared(o.dir, rec, scan.diskDigests, scan.memDigests, scan.index.toBytes());
      digests = arrayDigests(core, scan.diskDigests, scan.memDigests);
      if (o.needIndex) index = scan.index;
      else scan.index.close();
    } else {
      // Read on demand: memory follows the change, not the size of the base.
      for (const n of ["disk.digests", "memory.digests"]) digestFiles.push(await FileSource.open(join(o.dir, n)));
      digests = fileDigests(core, digestFiles[0], digestFiles[1]);
      if (o.needIndex) {
        try {
          index = core.loadIndex(await fsp.readFile(join(o.dir, "index.bin")));
        } catch (e) {
          throw new CloudletError("BAD_INPUT", `the prepared base index is damaged (${(e as Error).message}); delete ${o.dir} to rebuild it`, join(o.dir, "index.bin"));
        }
      }
    }
    const r = rec!;
    return {
      id: r.id,
      machine: r.machine,
      disk,
      memory,
      digests,
      index,
      dir: o.dir,
      close: async () => {
        index?.close();
        for (const f of digestFiles) await f.close();
        await disk.close();
        await memory.close();
      },
    };
  } catch (e) {
    await disk.close();
    await memory.close();
    throw e;
  }
}

/** Digests read from the prepared files by range. */
function fileDigests(core: Core, disk: FileSource, memory: FileSource): DigestSource {
  const zero = zeroChunkDigest(core).subarray(0, SHORT_DIGEST);
  return {
    read: async (kind, first, count) => padDigests(await (kind === 0 ? disk : memory).read(first * SHORT_DIGEST, count * SHORT_DIGEST), count, zero),
  };
}

/** Writes the prepared data into `dir` (files first, base.json last, each atomically). */
async function writePrepared(dir: string, rec: BaseRecord, diskDigests: Uint8Array, memDigests: Uint8Array, index: Uint8Array): Promise<void> {
  try {
    await fsp.mkdir(dir, { recursive: true });
  } catch (e) {
    throw outputError(e, dir);
  }
  // A stale base.json must not vouch for new files while they are replaced.
  await fsp.rm(join(dir, "base.json"), { force: true });
  for (const [name, bytes] of [["disk.digests", diskDigests], ["memory.digests", memDigests], ["index.bin", index]] as const) {
    const f = await AtomicFile.create(join(dir, name));
    try {
      await f.write(bytes, 0);
      await f.commit();
    } catch (e) {
      await f.abort();
      throw e;
    }
  }
  const f = await AtomicFile.create(join(dir, "base.json"));
  await f.write(new TextEncoder().encode(JSON.stringify(rec, null, 2) + "\n"), 0);
  await f.commit();
}
