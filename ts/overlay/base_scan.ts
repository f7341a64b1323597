/**
 * Base-side preparation, done once per base: per-chunk digests of the base
 * disk and memory, the base index, and the base id. Runtime-neutral; hosts
 * persist the result next to the base (see ts/home/base_cache.ts).
 */
import { type BaseIndex, type Core, Source } from "../core/core.ts";
import { CHUNK, computeBaseId, type MachineConfig } from "./format.ts";
import { type ByteSource, type ProgressFn, readChunks } from "./io.ts";

/** Bytes of a stored chunk digest: a BLAKE3-256 prefix. */
export const SHORT_DIGEST = 16;
/** Chunks per batch when scanning (4 MiB). */
export const SCAN_BATCH = 1024;

/**
 * The stored short digests of a base's chunks, read on demand, so that
 * memory follows the change rather than the size of the base images.
 */
export interface DigestSource {
  /**
   * Digests of chunks [first, first+count) of the base disk (kind 0) or
   * memory (kind 1), SHORT_DIGEST bytes each. Chunks past the end of the
   * image read as the all-zero chunk, as the images do.
   */
  read(kind: 0 | 1, first: number, count: number): Promise<Uint8Array>;
}

/** Fills `out` from `have` and pads the rest with the zero-chunk digest prefix. */
export function padDigests(have: Uint8Array, count: number, zeroPrefix: Uint8Array): Uint8Array {
  if (have.length === count * SHORT_DIGEST) return have;
  const out = new Uint8Array(count * SHORT_DIGEST);
  out.set(have);
  for (let i = have.length / SHORT_DIGEST; i < count; i++) out.set(zeroPrefix, i * SHORT_DIGEST);
  return out;
}

/** A DigestSource over digest arrays in memory. */
export function arrayDigests(core: Core, disk: Uint8Array, memory: Uint8Array): DigestSource {
  const zero = zeroChunkDigest(core).subarray(0, SHORT_DIGEST);
  return {
    read: (kind, first, count) => {
      const a = kind === 0 ? disk : memory;
      return Promise.resolve(padDigests(a.subarray(first * SHORT_DIGEST, Math.min(a.length, (first + count) * SHORT_DIGEST)), count, zero));
    },
  };
}

/** What the engine knows about a base VM. */
export interface BaseView {
  /** Base id (hex). */
  id: string;
  /** Machine config (part of the id). */
  machine: MachineConfig;
  /** Base disk bytes. */
  disk: ByteSource;
  /** Base memory bytes. */
  memory: ByteSource;
  /** First 16 bytes of BLAKE3 of every base disk chunk and memory page. */
  digests: DigestSource;
  /** Index over non-zero base memory pages, then base disk chunks (memory wins ties). */
  index: BaseIndex | null;
}

/** Result of scanning a base. */
export interface BaseScan {
  /** Base id. */
  id: string;
  /** Short digests of the disk chunks. */
  diskDigests: Uint8Array;
  /** Short digests of the memory pages. */
  memDigests: Uint8Array;
  /** The index. */
  index: BaseIndex;
}

/** BLAKE3 of one all-zero chunk. */
export function zeroChunkDigest(core: Core): Uint8Array {
  return core.hash("blake3", new Uint8Array(CHUNK));
}

/** Chunk runs [first, end) known to read as zero (file holes), per image; they are not read. */
export interface KnownZero {
  disk?: Array<[number, number]>;
  memory?: Array<[number, number]>;
}

function insideRuns(runs: Array<[number, number]> | undefined, first: number, end: number): boolean {
  return !!runs?.some(([a, b]) => a <= first && end <= b);
}

/**
 * Disk offsets the base index covers: every 4 KiB chunk, or (512) also every
 * 512-byte step between them, as the original did, so that a page holding a
 * disk block of a file system that is not 4 KiB-aligned on its disk (an old
 * MBR partition at sector 63) still matches. 512 costs 8x the disk entries
 * and hashing at base preparation; the base id does not depend on it.
 */
export type DiskStride = 4096 | 512;

/** Hashes the base images, builds the index and computes the base id. */
export async function scanBase(core: Core, disk: ByteSource, memory: ByteSource, machine: MachineConfig, progress?: ProgressFn, signal?: AbortSignal, known: KnownZero = {}, diskStride: DiskStride = 4096): Promise<BaseScan> {
  const total = disk.size + memory.size;
  let done = 0;
  const chunksOf = (s: ByteSource) => Math.ceil(s.size / CHUNK);
  const builder = core.indexBuilder(chunksOf(disk) * (CHUNK / diskStride) + chunksOf(memory));
  const digestLists: Uint8Array[] = [];
  const listHashes: Uint8Array[] = [];
  // Memory first: on equal content the index keeps the first insertion, and
  // classification prefers a base-memory match over a base-disk match.
  const zeroDigest = zeroChunkDigest(core);
  for (const [src, source, holes] of [[memory, Source.Memory, known.memory], [disk, Source.Disk, known.disk]] as const) {
    const n = chunksOf(src);
    const short = new Uint8Array(n * SHORT_DIGEST);
    const listHash = core.hasher("blake3");
    for (let first = 0; first < n; first += SCAN_BATCH) {
      signal?.throwIfAborted();
      const count = Math.min(SCAN_BATCH, n - first);
      let digests: Uint8Array;
      let zero: Uint8Array;
      const later: Array<[Uint8Array, number, Uint8Array]> = [];
      if (insideRuns(holes, first, first + count)) {
        // A hole: all zero without reading it (the id is the same as if read).
        digests = new Uint8Array(count * 32);
        for (let i = 0; i < count; i++) digests.set(zeroDigest, i * 32);
        zero = new Uint8Array(count).fill(1);
      } else {
        // With a 512-byte stride, one more chunk is read so that the shifted windows of the last one are whole.
        const shifted = source === Source.Disk && diskStride < CHUNK;
        const data = await readChunks(src, first, shifted ? count + 1 : count);
        const aligned = shifted ? data.subarray(0, count * CHUNK) : data;
        digests = core.hashChunks("blake3", aligned);
        zero = core.zeroChunks(aligned);
        // Added after the aligned run below: on equal content an aligned block wins.
        for (let shift = diskStride; shifted && shift < CHUNK; shift += diskStride) {
          const window = data.subarray(shift, shift + count * CHUNK);
          later.push([core.hashChunks("blake3", window), first * CHUNK + shift, core.zeroChunks(window).map((z) => z ^ 1)]);
        }
      }
      listHash.update(digests);
      for (let i = 0; i < count; i++) {
        short.set(digests.subarray(i * 32, i * 32 + SHORT_DIGEST), (first + i) * SHORT_DIGEST);
        zero[i] ^= 1; // mask: 1 = index this chunk (it is not zero)
      }
      builder.addRun(digests, source, first * CHUNK, CHUNK, zero);
      for (const [d, off, mask] of later.splice(0)) builder.addRun(d, Source.Disk, off, CHUNK, mask);
      done += Math.min(count * CHUNK, src.size - first * CHUNK);
      progress?.({ phase: "index base", done, total });
    }
    digestLists.push(short);
    listHashes.push(listHash.digest());
  }
  const index = builder.finish();
  const [memDigests, diskDigests] = digestLists;
  const id = computeBaseId(core, machine, disk.size, memory.size, listHashes[1], listHashes[0]);
  return { id, diskDigests, memDigests, index };
}
