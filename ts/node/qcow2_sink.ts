/**
 * Qcow2Sink: writes a rebuilt disk as a qcow2 (v3, 4 KiB clusters) whose
 * backing file is the raw base disk. Synthesis then costs what the overlay
 * holds, not what the disk holds: only changed chunks are written.
 *
 * ```text
 *   cluster 0        header, backing-format extension, backing file name
 *   clusters 1..     data clusters, appended as chunks arrive
 *   then             L2 tables (512 entries, 2 MiB of guest space each)
 *   then             L1 table
 *   then             refcount blocks (16-bit refcounts), refcount table
 * ```
 *
 * Chunks that the overlay says are zero get the v3 "reads as zero" L2 flag
 * and no data cluster. Every allocated cluster has refcount 1, so L1/L2
 * entries carry the COPIED flag. `qemu-img check` accepts the result.
 */
import { CHUNK } from "../overlay/format.ts";
import type { ImageSink } from "../overlay/io.ts";
import { AtomicFile } from "./files.ts";

const CLUSTER = 4096;
const L2_ENTRIES = CLUSTER / 8;
const COPIED = 1n << 63n;
const ZERO_FLAG = 1n;
const REFS_PER_BLOCK = CLUSTER / 2;

/** A qcow2 image over a raw backing file, written as a stream of changed chunks. */
export class Qcow2Sink implements ImageSink {
  private nextCluster = 1;
  private readonly l2 = new Map<number, BigUint64Array>();
  private constructor(
    readonly file: AtomicFile,
    readonly size: number,
    readonly backing: string,
  ) {}

  /** Creates the sink for `path`: a `size`-byte disk over the raw file `backing` (absolute path); `durable` as for AtomicFile. */
  static async create(path: string, size: number, backing: string, durable = true): Promise<Qcow2Sink> {
    return new Qcow2Sink(await AtomicFile.create(path, durable), size, backing);
  }

  private table(chunk: number): BigUint64Array {
    const i = Math.floor(chunk / L2_ENTRIES);
    let t = this.l2.get(i);
    if (!t) {
      t = new BigUint64Array(L2_ENTRIES);
      this.l2.set(i, t);
    }
    return t;
  }

  async writeChunks(first: number, data: Uint8Array): Promise<void> {
    const count = Math.min(data.length / CHUNK, Math.ceil(this.size / CHUNK) - first);
    // Consecutive new chunks land in consecutive clusters: one write per run.
    // Clusters are allocated synchronously (concurrent calls cannot split a
    // run), and the writes are queued in order on the file without waiting
    // for each other here.
    let runStart = -1;
    let runCluster = 0;
    let runLen = 0;
    const writes: Promise<void>[] = [];
    const flush = () => {
      if (runLen) writes.push(this.file.write(data.subarray(runStart * CHUNK, (runStart + runLen) * CHUNK), runCluster * CLUSTER));
      runLen = 0;
    };
    for (let i = 0; i < count; i++) {
      const t = this.table(first + i);
      const slot = (first + i) % L2_ENTRIES;
      const existing = t[slot] & ~COPIED & ~ZERO_FLAG;
      let cluster: number;
      if (existing) cluster = Number(existing) / CLUSTER;
      else {
        cluster = this.nextCluster++;
        t[slot] = BigInt(cluster * CLUSTER) | COPIED;
      }
      if (runLen && cluster === runCluster + runLen && i === runStart + runLen) runLen++;
      else {
        flush();
        runStart = i;
        runCluster = cluster;
        runLen = 1;
      }
    }
    flush();
    await Promise.all(writes);
  }

  async zeroChunks(first: number, count: number): Promise<void> {
    const end = Math.min(first + count, Math.ceil(this.size / CHUNK));
    for (let c = first; c < end; c++) {
      const t = this.table(c);
      const slot = c % L2_ENTRIES;
      const existing = t[slot] & ~COPIED & ~ZERO_FLAG;
      // An already allocated cluster keeps its allocation but must read as zero.
      if (existing) await this.file.write(new Uint8Array(CLUSTER), Number(existing));
      else t[slot] = ZERO_FLAG;
    }
  }

  async finish(): Promise<void> {
    const l1Size = Math.max(1, Math.ceil(this.size / (CLUSTER * L2_ENTRIES)));
    // L2 tables.
    const l1 = new BigUint64Array(l1Size);
    const l2Indexes = [...this.l2.keys()].sort((a, b) => a - b);
    const l2Start = this.nextCluster;
    const l2Buf = new Uint8Array(l2Indexes.length * CLUSTER);
    const l2View = new DataView(l2Buf.buffer);
    l2Indexes.forEach((li, k) => {
      const t = this.l2.get(li)!;
      for (let s = 0; s < L2_ENTRIES; s++) l2View.setBigUint64(k * CLUSTER + s * 8, t[s]);
      l1[li] = BigInt((l2Start + k) * CLUSTER) | COPIED;
    });
    if (l2Buf.length) await this.file.write(l2Buf, l2Start * CLUSTER);
    // L1 table.
    const l1Start = l2Start + l2Indexes.length;
    const l1Clusters = Math.ceil((l1Size * 8) / CLUSTER);
    const l1Buf = new Uint8Array(l1Clusters * CLUSTER);
    const l1View = new DataView(l1Buf.buffer);
    for (let i = 0; i < l1Size; i++) l1View.setBigUint64(i * 8, l1[i]);
    await this.file.write(l1Buf, l1Start * CLUSTER);
    // Refcounts: cover every cluster, including the refcount structures themselves.
    const used = l1Start + l1Clusters;
    let blocks = 0;
    let tableClusters = 0;
    for (;;) {
      const total = used + blocks + tableClusters;
      const b = Math.ceil(total / REFS_PER_BLOCK);
      const tc = Math.ceil((b * 8) / CLUSTER);
      if (b === blocks && tc === tableClusters) break;
      blocks = b;
      tableClusters = tc;
    }
    const total = used + blocks + tableClusters;
    const rcBlocksStart = used;
    const rcTableStart = used + blocks;
    const rc = new Uint8Array(blocks * CLUSTER);
    const rcView = new DataView(rc.buffer);
    for (let c = 0; c < total; c++) rcView.setUint16(c * 2, 1);
    await this.file.write(rc, rcBlocksStart * CLUSTER);
    const rt = new Uint8Array(tableClusters * CLUSTER);
    const rtView = new DataView(rt.buffer);
    for (let b = 0; b < blocks; b++) rtView.setBigUint64(b * 8, BigInt((rcBlocksStart + b) * CLUSTER));
    await this.file.write(rt, rcTableStart * CLUSTER);
    // Header last: until here the file has no valid magic.
    const h = new Uint8Array(CLUSTER);
    const v = new DataView(h.buffer);
    const enc = new TextEncoder();
    const name = enc.encode(this.backing);
    const fmt = enc.encode("raw");
    const headerLen = 104;
    const extStart = headerLen;
    // Backing format extension (0xe2792aca), padded to 8 bytes, then the end marker.
    v.setUint32(extStart, 0xe2792aca);
    v.setUint32(extStart + 4, fmt.length);
    h.set(fmt, extStart + 8);
    const endExt = extStart + 8 + Math.ceil(fmt.length / 8) * 8;
    v.setUint32(endExt, 0);
    v.setUint32(endExt + 4, 0);
    const nameOff = endExt + 8;
    if (nameOff + name.length > CLUSTER) throw new Error("backing file path too long for the qcow2 header");
    h.set(name, nameOff);
    h.set([0x51, 0x46, 0x49, 0xfb], 0);
    v.setUint32(4, 3);
    v.setBigUint64(8, BigInt(nameOff));
    v.setUint32(16, name.length);
    v.setUint32(20, 12);
    v.setBigUint64(24, BigInt(this.size));
    v.setUint32(32, 0);
    v.setUint32(36, l1Size);
    v.setBigUint64(40, BigInt(l1Start * CLUSTER));
    v.setBigUint64(48, BigInt(rcTableStart * CLUSTER));
    v.setUint32(56, tableClusters);
    v.setUint32(60, 0);
    v.setBigUint64(64, 0n);
    v.setBigUint64(72, 0n);
    v.setBigUint64(80, 0n);
    v.setBigUint64(88, 0n);
    v.setUint32(96, 4);
    v.setUint32(100, headerLen);
    await this.file.write(h, 0);
    await this.file.truncate(total * CLUSTER);
    await this.file.close();
  }

  /** Renames into place. */
  commit(): Promise<void> {
    return this.file.commit();
  }

  abort(): Promise<void> {
    return this.file.abort();
  }
}
