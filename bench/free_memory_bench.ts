/**
 * Free memory benchmark (issue 14): the same customisation with free page
 * reporting on and off, on real VMs under TCG.
 *
 *   node --import tsx bench/overlay_bench.ts --free-memory [--hosts qemu,virsh] [--reps 1]
 *
 * A base on the built-in guest (512 MiB, reporting balloon) per host adapter;
 * then per mode (on, off) and rep: an overlay whose customisation serves a web
 * page, starts a ticker, and runs a process that writes 200 MiB of random
 * bytes and exits before the snapshot. Measured: overlay size, the memory part
 * (memory chunks stored as RAW or XOR, before xz; and the memory image's holes),
 * and the snapshot time including the wait for reporting to settle.
 * Needs root and the built-in guest (built on first use, cached in the home).
 */
import { promises as fsp, readFileSync } from "node:fs";
import { join } from "node:path";

/** One on/off measurement. */
export interface FreeMemoryRow {
  host: "qemu" | "virsh";
  mode: "on" | "off";
  overlayBytes: number;
  /** Memory chunks stored as RAW or XOR, bytes before compression. */
  memoryPartBytes: number;
  /** Memory image bytes that were holes at the snapshot. */
  memoryFreeBytes: number;
  /** Snapshot, including the settle wait, ms. */
  snapshotMs: number;
  settleMs: number;
  discardedBytes: number;
  /** Overlay creation after the snapshot (scan + encode), s. */
  encodeSeconds: number;
}

const SCRIPT_TAIL = `
# A process that allocates and writes 200 MiB, then exits: its pages are free at the snapshot.
dd if=/dev/urandom of=/dev/null bs=200M count=1 iflag=fullblock 2>&1 | tail -n 1
`;

/** Runs the on/off pair for each host; `home` gets a symlink to the guest cache `guestDir` when given. */
export async function measureFreeMemory(o: { repo: string; home: string; hosts: Array<"qemu" | "virsh">; reps: number; guestDir?: string; log: (s: string) => void }): Promise<FreeMemoryRow[]> {
  const { loadCoreFromDisk } = await import("../ts/node/core_file.ts");
  const { createBase } = await import("../ts/jobs/base_create.ts");
  const { overlayFromVm } = await import("../ts/jobs/vm_overlay.ts");
  const { ChunkClass, ImageKind } = await import("../ts/overlay/format.ts");
  const core = await loadCoreFromDisk();
  await fsp.mkdir(o.home, { recursive: true });
  if (o.guestDir) await fsp.symlink(o.guestDir, join(o.home, "guest")).catch(() => {});
  const script = readFileSync(join(o.repo, "examples/webapp.sh"), "utf8") + SCRIPT_TAIL;
  const rows: FreeMemoryRow[] = [];
  for (const host of o.hosts) {
    const ctx = { core, home: o.home, hostChoice: { host, connect: host === "virsh" ? "qemu:///system" : undefined }, say: (l: string) => o.log(`  ${host}: ${l}`) };
    const name = `fm-bench-${host}`;
    o.log(`${host}: base (512 MiB, reporting balloon)`);
    await createBase(ctx, { name, ready: {}, ramMiB: 512 });
    for (let rep = 0; rep < o.reps; rep++) {
      for (const mode of ["off", "on"] as const) {
        o.log(`${host}: overlay, free memory ${mode} (rep ${rep + 1})`);
        const out = join(o.home, `${host}-${mode}-${rep}.overlay`);
        const r = await overlayFromVm(ctx, { base: name, customize: { script, timeoutMs: 600_000 }, forwards: [{ proto: "tcp", hostPort: 0, guestPort: 80 }], out, freeMemory: mode === "on" });
        const row = r.meta.classCounts[ImageKind.Memory];
        rows.push({
          host,
          mode,
          overlayBytes: r.bytes,
          memoryPartBytes: (row[ChunkClass.Raw] + row[ChunkClass.Xor]) * 4096,
          memoryFreeBytes: r.meta.launch.memoryFreeBytes ?? 0,
          snapshotMs: r.snapshotMs,
          settleMs: r.freeMemory?.waitMs ?? 0,
          discardedBytes: r.freeMemory?.discardedBytes ?? 0,
          encodeSeconds: r.seconds,
        });
        await fsp.rm(out, { force: true });
      }
    }
  }
  return rows;
}

/** The rows as a markdown table. */
export function freeMemoryTable(rows: FreeMemoryRow[]): string {
  const mib = (b: number) => (b / (1 << 20)).toFixed(1);
  const L = [
    "| host | free memory | overlay | memory part (RAW+XOR, before xz) | free at snapshot (holes) | discarded during the wait | snapshot incl. settle | encode |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
  ];
  for (const r of rows) {
    L.push(`| ${r.host} | ${r.mode} | ${mib(r.overlayBytes)} MiB | ${mib(r.memoryPartBytes)} MiB | ${mib(r.memoryFreeBytes)} MiB | ${mib(r.discardedBytes)} MiB | ${(r.snapshotMs / 1000).toFixed(1)} s (settle ${(r.settleMs / 1000).toFixed(1)} s) | ${r.encodeSeconds.toFixed(1)} s |`);
  }
  return L.join("\n");
}
