/**
 * The bytes behind one changed chunk, for the inspector's hex view: what the
 * segment stores for it, what synthesis rebuilds, the base chunk at the same
 * offset, and the rebuilt chunk XOR that base chunk. Runtime-neutral.
 */
import type { Core } from "../core/core.ts";
import { CHUNK, ChunkClass, ImageKind, type SegmentRecords } from "../overlay/format.ts";
import { type ByteSource, readChunks } from "../overlay/io.ts";
import type { BaseSources } from "./segment_check.ts";

/** Everything the page shows about one chunk. */
export interface ChunkDetail {
  /** ImageKind. */
  kind: number;
  /** Chunk index. */
  index: number;
  /** ChunkClass. */
  cls: number;
  /** 0-based segment. */
  segment: number;
  /** Record number in the segment. */
  record: number;
  /** The record's argument: base byte offset (BASE_*), leader record (SELF), data slot (RAW/XOR). */
  arg: number;
  /** The data slot's bytes (the chunk for RAW, the delta for XOR; the leader's for SELF), or null. */
  stored: Uint8Array | null;
  /** The rebuilt chunk, or null when it needs a base that was not given. */
  rebuilt: Uint8Array | null;
  /** The base chunk at the same offset, or null (no base given, or device state, which has no base). */
  base: Uint8Array | null;
  /** rebuilt XOR base, or null when either is missing. */
  diff: Uint8Array | null;
  /** Bytes of `diff` that are not zero (-1 when there is no diff). */
  changedBytes: number;
}

async function chunkAt(src: ByteSource | null, offset: number): Promise<Uint8Array | null> {
  if (!src) return null;
  const out = new Uint8Array(CHUNK);
  if (offset < src.size) out.set(await src.read(offset, Math.min(CHUNK, src.size - offset)));
  return out;
}

/** Builds the detail of record `rec` of a decoded segment. */
export async function chunkDetail(core: Core, r: SegmentRecords, segment: number, rec: number, base: BaseSources | null): Promise<ChunkDetail> {
  const kind = r.kinds[rec];
  const cls = r.classes[rec];
  const arg = r.args[rec];
  const sameKindBase = kind === ImageKind.Disk ? (base?.disk ?? null) : kind === ImageKind.Memory ? (base?.memory ?? null) : null;
  const baseChunk = sameKindBase ? await readChunks(sameKindBase, r.indexes[rec], 1) : null;
  const leader = cls === ChunkClass.Self ? arg : rec;
  const slot = r.classes[leader] === ChunkClass.Raw || r.classes[leader] === ChunkClass.Xor ? r.args[leader] : -1;
  const stored = slot >= 0 ? r.data.slice(slot * CHUNK, slot * CHUNK + CHUNK) : null;
  let rebuilt: Uint8Array | null = null;
  switch (cls) {
    case ChunkClass.Zero:
      rebuilt = new Uint8Array(CHUNK);
      break;
    case ChunkClass.BaseMemory:
      rebuilt = await chunkAt(base?.memory ?? null, arg);
      break;
    case ChunkClass.BaseDisk:
      rebuilt = await chunkAt(base?.disk ?? null, arg);
      break;
    case ChunkClass.Raw:
    case ChunkClass.Xor:
    case ChunkClass.Self: {
      const leaderKind = r.kinds[leader];
      if (r.classes[leader] === ChunkClass.Raw) rebuilt = stored;
      else {
        // The delta is against the base chunk at the leader's own offset.
        const leaderBase = leaderKind === ImageKind.Disk ? (base?.disk ?? null) : leaderKind === ImageKind.Memory ? (base?.memory ?? null) : null;
        rebuilt = leaderBase && stored ? core.xor(stored, await readChunks(leaderBase, r.indexes[leader], 1)) : null;
      }
      break;
    }
  }
  const diff = rebuilt && baseChunk ? core.xor(rebuilt, baseChunk) : null;
  let changedBytes = -1;
  if (diff) {
    changedBytes = 0;
    for (const b of diff) if (b) changedBytes++;
  }
  return { kind, index: r.indexes[rec], cls, segment, record: rec, arg, stored, rebuilt, base: baseChunk, diff, changedBytes };
}

/** The record number of chunk `index` of `kind` in a decoded segment, or -1. */
export function findRecord(r: SegmentRecords, kind: number, index: number): number {
  let lo = 0;
  let hi = r.kinds.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const k = r.kinds[mid];
    const i = r.indexes[mid];
    if (k === kind && i === index) return mid;
    if (k < kind || (k === kind && i < index)) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}
