/**
 * The host layer for real VMs: the built-in tiny guest, two launchers behind
 * one interface (QemuHost, VirshHost), QMP, the serial console, host ports
 * and VM records. See docs/vm-hosts.md.
 */
export { buildGuestImage, loadGuestImage, GUEST_APPEND, GUEST_READY_MARKER } from "./guest_image.ts";
export type { GuestBuildOptions, GuestBuildPhase, GuestBuildProgress, GuestImage } from "./guest_image.ts";
export type { FreeMemoryReport, KernelBoot, MachineConfig, PortForward, RunningVm, SnapshotOptions, SnapshotResult, VmExit, VmHost, VmSpec } from "./vm_host.ts";
export { QemuHost, qemuArgs, probeKvm } from "./qemu_host.ts";
export type { QemuHostOptions } from "./qemu_host.ts";
export { VirshHost, domainXml, checkLibvirtd } from "./virsh_host.ts";
export type { VirshHostOptions } from "./virsh_host.ts";
export { QmpClient } from "./qmp.ts";
export type { QmpEvent } from "./qmp.ts";
export { SerialConsole, shq } from "./serial_console.ts";
export type { ScriptResult, SerialMatch } from "./serial_console.ts";
export { isPortFree, pickFreePorts, resolvePortForwards, resolveVncPort } from "./host_ports.ts";
export { cleanupOrphanVms, listVms, readVmRecord, stopVm } from "./vm_records.ts";
export type { VmRecord, VmStatus } from "./vm_records.ts";
export { createQcow2Layer } from "./qcow2_layer.ts";
