/** `cloudlet base`: create a base VM: boot DISK (raw; default: the built-in tiny guest), wait until ready, snapshot and register it. */
import type { CAC } from "cac";
import { CloudletError } from "../../ts/errors.ts";
import { loadCoreFromDisk } from "../../ts/node/core_file.ts";
import { formatBytes } from "../../ts/inspect/report.ts";
import { createBase } from "../../ts/jobs/base_create.ts";
import { type Common, bar, out, num, diskStride, ACCEL_HELP, vmContext, interaction } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("base [disk]", "Create a base VM: boot DISK (raw; default: the built-in tiny guest), wait until ready, snapshot and register it")
    .option("--name <name>", "Name in the registry")
    .option("--ready-marker <text>", "Ready when a line of the serial console starts with TEXT (not when TEXT is inside a line: systemd echoes unit descriptions)")
    .option("--ready-regex <re>", "Ready when a line of the serial console matches this JavaScript regular expression")
    .option("--ready-script <file>", "Ready when this script, run in the guest over the serial console, exits 0")
    .option("--login <user[:file]>", "For --ready-script: log in as USER (password: first line of FILE) when the serial console asks for a login")
    .option("--console", "Interactive serial console; press Ctrl-] when the guest is ready")
    .option("--vnc", "Give the VM a VNC display; press Enter when the guest is ready")
    .option("--timeout <s>", "Time limit for the marker, or for the script including the wait for the guest's shell, seconds", { default: 180 })
    .option("--ram <mib>", "Guest RAM in MiB", { default: 256 })
    .option("--vcpus <n>", "Virtual CPUs", { default: 1 })
    .option("--machine <type>", "QEMU machine type", { default: "pc-i440fx-7.2" })
    .option("--cpu <model>", "QEMU CPU model", { default: "qemu64" })
    .option("--disk-stride <bytes>", "Index base-disk blocks every 4096 (default) or every 512 bytes (see cloudlet overlay --help)", { default: 4096 })
    .option("--no-balloon", "Give the VM no free-page-reporting balloon, so free guest pages travel in snapshots; part of the base id (default: a balloon)")
    .option("--no-free-memory", "Snapshot at once, without waiting for the guest to report its free memory (default: wait for it)")
    .option("--host <host>", "qemu (default) or virsh")
    .option("--connect <uri>", "Local libvirt URI for --host virsh (default qemu:///system)")
    .option("--accel <accel>", ACCEL_HELP)
    .action(async (disk: string | undefined, o: Common & Record<string, unknown>) => {
      const core = await loadCoreFromDisk();
      const p = bar(o);
      const ctx = vmContext(o, p, core);
      const ready = await interaction(o, "readyScript", "readyMarker");
      if (disk && !ready.readyMarker && !ready.readyRegex && ready.script === undefined && !ready.console && !ready.vnc) throw new CloudletError("BAD_ARGUMENT", "say how to tell the guest is ready: --ready-marker TEXT, --ready-regex RE, --ready-script FILE, --console or --vnc");
      const r = await createBase(ctx, { disk, name: o.name as string | undefined, ready, ramMiB: num(o.ram, "--ram", 16, 1 << 20), vcpus: num(o.vcpus, "--vcpus", 1, 256), machine: o.machine as string, cpu: o.cpu as string, diskStride: diskStride(o.diskStride), balloon: o.balloon !== false, freeMemory: o.freeMemory !== false });
      p.done();
      out(o, { ...r.base, seconds: r.seconds, existed: r.existed, freeMemory: r.freeMemory }, `base ${r.base.name} ${r.base.id}${r.existed ? " (already registered)" : ""}: disk ${formatBytes(r.base.diskSize)}, memory ${formatBytes(r.base.memorySize)}, ${r.seconds.toFixed(1)} s`);
    });
}
