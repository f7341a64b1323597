/** Launching a synthesized VM from its rebuilt files and recording it in the home. */
import { CloudletError } from "../errors.ts";
import { type SynthesizedFiles } from "./file_synthesis.ts";
import { type BaseRow } from "../home/registry.ts";
import type { RunningVm } from "../vm/vm_host.ts";
import { makeHost } from "../vm/host_choice.ts";
import { type VmJobContext } from "./context.ts";
import { baseFiles } from "./base_create.ts";

/**
 * Resumes synthesized files as a VM. Detached by default (it outlives the
 * command); the server keeps its VMs attached, so a crashed server's VMs are
 * orphans that the next start cleans up.
 */
export async function launchSynthesized(ctx: VmJobContext, base: BaseRow, files: SynthesizedFiles, o: { runDir: string; hostAddress?: string; autoPorts?: boolean; name?: string; detach?: boolean }): Promise<RunningVm> {
  const meta = files.meta;
  if (!files.state) throw new CloudletError("BAD_INPUT", "the overlay carries no device state, so its VM cannot be resumed (made in file mode without --state?)", files.dir);
  const vm = await makeHost(ctx.hostChoice).start(
    {
      name: o.name ?? "synth",
      runDir: o.runDir,
      boot: baseFiles(base).boot,
      disk: { path: files.disk, format: "qcow2" },
      memory: { path: files.memory, sizeMiB: Math.round(meta.imageSizes[1] / (1 << 20)) },
      machine: base.machine,
      vcpus: base.vcpus,
      portForwards: meta.launch.portForwards.map((p) => (o.autoPorts ? { ...p, hostPort: 0 } : p)),
      hostAddress: o.hostAddress,
      incoming: { statePath: files.state },
    },
    ctx.signal,
  );
  try {
    await vm.resume(ctx.signal);
    if (o.detach ?? true) await vm.detach();
    return vm;
  } catch (e) {
    await vm.stop().catch(() => {});
    throw e;
  }
}
