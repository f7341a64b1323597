/** The machine a base is described by when nothing else says: QEMU machine type, CPU model, RAM. */
import { CloudletError } from "../errors.ts";
import { type MachineConfig, validMachine } from "../overlay/format.ts";

/** Default machine for file mode: the QEMU 7.2 PC and a fixed CPU model (see docs/vm-hosts.md). */
export function defaultMachine(memorySize: number, machine?: string, cpu?: string): MachineConfig {
  const m = { machine: machine ?? "pc-i440fx-7.2", cpu: cpu ?? "qemu64", ramMiB: Math.round(memorySize / (1 << 20)) };
  if (!validMachine(m)) throw new CloudletError("BAD_ARGUMENT", `--machine and --cpu take a QEMU name (letters, digits, ".", "_", "-"), not ${JSON.stringify(m.machine)} / ${JSON.stringify(m.cpu)}`);
  return m;
}
