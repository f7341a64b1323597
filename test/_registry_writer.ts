// Adds N bases to a registry: a separate process for the concurrency test.
import { Registry } from "../ts/home/registry.ts";
const [home, prefix, n] = process.argv.slice(2);
const reg = new Registry(home);
for (let i = 0; i < Number(n); i++) {
  await reg.addBase({ id: `${prefix}${String(i).padStart(4, "0")}`.padEnd(64, "0"), name: `${prefix}-${i}`, created: new Date().toISOString(), dir: "/nowhere", diskSize: 1, memorySize: 1, machine: { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: 256 }, vcpus: 1, boot: null, host: "qemu", source: "test" });
}
