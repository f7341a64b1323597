/** Which VM adapter runs a job: QEMU directly, or libvirt through virsh. */
import { QemuHost } from "./qemu_host.ts";
import { VirshHost } from "./virsh_host.ts";
import type { AccelChoice } from "../node/command.ts";

/** Which host adapter, and how to reach libvirt. */
export interface HostChoice {
  host: "qemu" | "virsh";
  /** virsh --connect URI. */
  connect?: string;
  /** --accel; default `$CLOUDLET_ACCEL`, else TCG. */
  accel?: AccelChoice;
}

/** The adapter for a choice. */
export function makeHost(c: HostChoice): QemuHost | VirshHost {
  return c.host === "virsh" ? new VirshHost({ connect: c.connect, accel: c.accel }) : new QemuHost({ accel: c.accel });
}
