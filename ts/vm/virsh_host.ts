/**
 * VirshHost: launches transient libvirt domains through `virsh` (`--connect
 * URI` passes through, default qemu:///system). The domain is the QemuHost
 * machine expressed in libvirt XML, with what libvirt 9.0 cannot say put in
 * `<qemu:commandline>`:
 *
 * - guest RAM in our own memory-backend-file (libvirt's file-backed memory
 *   lives at a per-run path that it deletes on stop), made the machine's RAM
 *   with a second `-machine memory-backend=clmem` (the last one wins);
 * - user networking with hostfwd (libvirt's `<interface type='user'>` has no
 *   port forwarding without passt) and its NIC at a fixed PCI slot;
 * - `-incoming defer` for a restore.
 *
 * QMP goes through `virsh qemu-monitor-command`. libvirt starts QEMU with
 * `-sandbox spawn=deny`, so `exec:` migration URIs kill it; the state file is
 * opened here and passed with `--pass-fds 3` + `getfd`, then `fd:clsnap`.
 * QEMU runs as libvirt-qemu: the run directory and the memory file are
 * handed to that user while the domain runs, then given back.
 */
import { promises as fsp, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { CloudletError } from "../errors.ts";
import { accelFromEnv, decideAccel, lastLines, lookupId, requireExecutable, requireKvmAccess, runCommand, type AccelChoice, type AccelDecision } from "../node/command.ts";
import type { RunningVm, VmHost, VmSpec } from "./vm_host.ts";
import { processAlive } from "../node/process.ts";
import { BALLOON_PCI_SLOT } from "./qemu_host.ts";
import { connectArgs, type VmRecord } from "./vm_records.ts";
import { sleep, validateSpec, VmSession, type StateChannel } from "./vm_session.ts";

/** Options for {@link VirshHost}. */
export interface VirshHostOptions {
  /** libvirt URI for `virsh --connect`; default `$LIBVIRT_DEFAULT_URI` or qemu:///system. */
  connect?: string;
  /** virsh binary; default virsh. */
  binary?: string;
  /**
   * Accelerator: "tcg" gives `<domain type='qemu'>`, "kvm" `<domain type='kvm'>`,
   * "auto" KVM when KVM guests run here, else TCG (see {@link decideAccel});
   * default `$CLOUDLET_ACCEL` or "tcg".
   */
  accel?: AccelChoice;
}

/** The resolved launch parameters that {@link domainXml} turns into a domain. */
export interface DomainLaunch {
  domain: string;
  accel: "tcg" | "kvm";
  portForwards: VmSpec["portForwards"];
  /** VNC port (needs spec.vnc), or null. */
  vncPort: number | null;
}

/** Launches VMs as transient libvirt domains through virsh. */
export class VirshHost implements VmHost {
  readonly kind = "virsh" as const;
  readonly connect: string;
  readonly binary: string;
  readonly accel: AccelChoice;
  private decided: Promise<AccelDecision> | null = null;

  constructor(opts: VirshHostOptions = {}) {
    this.connect = opts.connect ?? process.env.LIBVIRT_DEFAULT_URI ?? "qemu:///system";
    this.binary = opts.binary ?? "virsh";
    this.accel = accelFromEnv(opts.accel);
  }

  /** The accelerator domains of this host get (decided once with the host's QEMU; see {@link decideAccel}). */
  resolveAccel(): Promise<AccelDecision> {
    return (this.decided ??= decideAccel(this.accel));
  }

  /** Starts a VM (see {@link VmHost.start}). */
  async start(spec: VmSpec, signal?: AbortSignal): Promise<RunningVm> {
    requireLocalUri(this.connect);
    await validateSpec(spec);
    const virsh = requireExecutable(this.binary, "libvirt-clients libvirt-daemon-system");
    requireKvmAccess();
    await checkLibvirtd(virsh, this.connect, signal);
    const { accel } = await this.resolveAccel();
    return new VirshSession(spec, virsh, this.connect, accel).begin(signal);
  }
}

/**
 * True for a libvirt URI of this machine: no host part (`qemu:///system`,
 * `qemu+unix:///system?socket=...`). A host (`qemu+ssh://h/system`,
 * `qemu+tcp://h/system`) is remote, even if it names this machine.
 */
export function isLocalUri(uri: string): boolean {
  const m = /^[a-z0-9]+(?:\+([a-z0-9]+))?:\/\/([^/?]*)/i.exec(uri);
  if (!m) return false;
  return m[2] === "" && (m[1] === undefined || m[1] === "unix");
}

/** Refuses a remote libvirt URI with what to do instead. */
export function requireLocalUri(uri: string): void {
  if (!isLocalUri(uri)) {
    throw new CloudletError("BAD_ARGUMENT", `--connect ${uri} names a remote libvirt host; cloudlet drives local libvirt only (qemu:///system, qemu:///session): the VM's memory file, serial console and snapshot descriptors must be on this machine. Run cloudlet on that host instead (cloudlet serve there takes overlays over the network).`);
  }
}

/** Fails with instructions when libvirtd does not answer at `uri`. */
export async function checkLibvirtd(virsh: string, uri: string, signal?: AbortSignal): Promise<void> {
  const r = await runCommand(virsh, [...connectArgs(uri), "uri"], { timeoutMs: 20_000, signal });
  if (r.code === 0) return;
  const why = virshMessage(r.stderr);
  if (/connect|socket|No such file|Connection refused/i.test(why)) {
    throw new CloudletError("HOST_TOOL", `libvirtd is not running (virsh --connect ${uri}: ${why}): start it as root with "virtlogd -d; libvirtd -d" (or "systemctl start libvirtd")`);
  }
  throw new CloudletError("HOST_TOOL", `virsh --connect ${uri} failed: ${why || `exit ${r.code}`}`);
}

/** The libvirt domain XML for `spec` (FINDINGS.md's domain; a restore adds `-incoming defer`). */
export function domainXml(spec: VmSpec, l: DomainLaunch): string {
  const x = xmlEscape;
  const mem = spec.memory.sizeMiB;
  const host = spec.hostAddress ?? "127.0.0.1";
  const fwd = l.portForwards.map((f) => `,hostfwd=${f.proto}:${host}:${f.hostPort}-:${f.guestPort}`).join("");
  const args = [
    "-object", `memory-backend-file,id=clmem,size=${mem}M,mem-path=${qemuOpt(spec.memory.path)},share=${spec.memory.share === false ? "off" : "on"}`,
    "-machine", "memory-backend=clmem",
    "-netdev", `user,id=n0${fwd}`,
    "-device", "virtio-net-pci,netdev=n0,id=vnet0,mac=52:54:00:12:34:56,bus=pci.0,addr=0x5",
    ...(spec.incoming ? ["-incoming", "defer"] : []),
  ];
  const os = spec.boot
    ? `    <kernel>${x(spec.boot.kernel)}</kernel>
    <initrd>${x(spec.boot.initrd)}</initrd>
    <cmdline>${x(spec.boot.append)}</cmdline>`
    : `    <boot dev='hd'/>`;
  return `<domain type='${l.accel === "kvm" ? "kvm" : "qemu"}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>${x(l.domain)}</name>
  <description>${x(spec.runDir)}</description>
  <memory unit='MiB'>${mem}</memory>
  <vcpu>${spec.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='${x(spec.machine.machine)}'>hvm</type>
${os}
  </os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>${x(spec.machine.cpu)}</model></cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='${spec.disk.format}' cache='writeback' discard='unmap' detect_zeroes='unmap'/>
      <source file='${x(spec.disk.path)}'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </disk>
    <serial type='unix'>
      <source mode='bind' path='${x(join(spec.runDir, "serial.sock"))}'/>
      <log file='${x(join(spec.runDir, "serial.log"))}' append='on'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
${spec.machine.freePageReporting ? `    <memballoon model='virtio' freePageReporting='on'><address type='pci' domain='0x0000' bus='0x00' slot='${BALLOON_PCI_SLOT}' function='0x0'/></memballoon>` : "    <memballoon model='none'/>"}
${spec.vnc && l.vncPort !== null ? `    <graphics type='vnc' port='${l.vncPort}' autoport='no' listen='${x(host)}'/>\n    <video><model type='vga'/></video>\n` : ""}  </devices>
  <qemu:commandline>
${args.map((a) => `    <qemu:arg value='${x(a)}'/>`).join("\n")}
  </qemu:commandline>
</domain>
`;
}

class VirshSession extends VmSession {
  private pid: number | null = null;
  private created = false;
  private domainGone = false;
  private watcher: ReturnType<typeof setInterval> | null = null;
  /** Owners to give back when the domain has ended. */
  private readonly owners = new Map<string, { uid: number; gid: number }>();

  constructor(
    spec: VmSpec,
    private readonly virsh: string,
    private readonly uri: string,
    private readonly accel: "tcg" | "kvm",
  ) {
    super(spec);
  }

  private get domain() {
    return this.vmName;
  }

  private async run(args: string[], opts: { timeoutMs?: number; signal?: AbortSignal } = {}) {
    return runCommand(this.virsh, [...connectArgs(this.uri), ...args], { timeoutMs: opts.timeoutMs ?? 60_000, signal: opts.signal });
  }

  protected async launch(signal: AbortSignal): Promise<void> {
    const spec = this.spec;
    await this.resolvePorts();
    await this.prepareRunDir();
    await this.prepareMemory();
    if (signal.aborted) return;
    await this.handToQemu();
    const xmlPath = join(spec.runDir, "domain.xml");
    await fsp.writeFile(xmlPath, domainXml(spec, { domain: this.domain, accel: this.accel, portForwards: this.portForwards, vncPort: this.vncPort }));
    // Not cancellable: killing virsh would not stop libvirtd from creating the domain. A cancel
    // meanwhile is acted on right after (begin() destroys the domain).
    const r = await this.run(["create", ...(spec.incoming ? ["--paused"] : []), xmlPath]);
    if (r.code !== 0) throw await this.startError(r.stderr);
    this.created = true;
    this.pid = readLibvirtPid(this.domain);
    await this.writeRecord();
    this.watch();
  }

  private async startError(stderr: string): Promise<CloudletError> {
    const text = `${stderr}\n${await this.logTail()}`;
    const rule = /Could not set up host forwarding rule '([^']*)'/.exec(text);
    if (rule) return new CloudletError("CONFLICT", `QEMU could not listen for the port forward ${rule[1]}: the host port is in use; stop what listens there, or give --auto-ports to use free host ports`);
    return new CloudletError("HOST_TOOL", `virsh create failed: ${virshMessage(stderr)}`);
  }

  /** Polls until the domain's QEMU is gone; the exit status belongs to libvirtd, so none is known. */
  private watch() {
    const local = this.pid !== null;
    let busy = false;
    this.watcher = setInterval(async () => {
      if (busy || this.domainGone) return;
      busy = true;
      try {
        const alive = local ? processAlive(this.pid!) : await this.domainActive();
        if (!alive) this.onGone();
      } finally {
        busy = false;
      }
    }, local ? 100 : 1000);
  }

  protected override unref(): void {
    // A detached VM must not keep this process alive.
    (this.watcher as { unref?: () => void } | null)?.unref?.();
  }

  private onGone() {
    if (this.domainGone) return;
    this.domainGone = true;
    if (this.watcher) clearInterval(this.watcher);
    void this.markExited(null, null);
  }

  private async domainActive(): Promise<boolean> {
    const r = await this.run(["domstate", this.domain], { timeoutMs: 15_000 }).catch(() => null);
    return !!r && r.code === 0 && !/shut off|crashed/.test(r.stdout);
  }

  private async domainExists(): Promise<boolean> {
    const r = await this.run(["domstate", this.domain], { timeoutMs: 15_000 }).catch(() => null);
    return !!r && r.code === 0;
  }

  protected recordFields(): Pick<VmRecord, "host" | "pid" | "domain" | "connect" | "owners"> {
    return { host: "virsh", pid: this.pid, domain: this.domain, connect: this.uri, owners: [...this.owners].map(([path, o]) => ({ path, ...o })) };
  }

  protected async monitor<T>(cmd: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T> {
    return this.monitorWith<T>(cmd, args, [], timeoutMs);
  }

  /** `virsh qemu-monitor-command`; `fdFile` opens a file as fd 3 (">" to write, "<" to read) for --pass-fds. */
  private async monitorWith<T>(cmd: string, args: Record<string, unknown> | undefined, fdFile: [">" | "<", string] | [], timeoutMs = 60_000): Promise<T> {
    const json = JSON.stringify(args ? { execute: cmd, arguments: args } : { execute: cmd });
    const base = [...connectArgs(this.uri), "qemu-monitor-command", this.domain, ...(fdFile.length ? ["--pass-fds", "3"] : []), json];
    // The shell opens the file, so the descriptor exists in virsh without passing fds through node.
    const r = fdFile.length
      ? await runCommand("sh", ["-c", `f=$1; shift; exec "$@" 3${fdFile[0]}"$f"`, "sh", fdFile[1], this.virsh, ...base], { timeoutMs })
      : await runCommand(this.virsh, base, { timeoutMs });
    if (r.code !== 0) {
      if (this.domainGone || (this.pid !== null && !processAlive(this.pid))) throw new CloudletError("GUEST", `QMP ${cmd}: the VM is gone`);
      throw new CloudletError("HOST_TOOL", `QMP ${cmd} through virsh failed: ${virshMessage(r.stderr)}`);
    }
    let msg: { return?: T; error?: { desc?: string } };
    try {
      msg = JSON.parse(r.stdout);
    } catch {
      throw new CloudletError("HOST_TOOL", `virsh qemu-monitor-command ${cmd} printed no JSON: ${lastLines(r.stdout, 2)}`);
    }
    if (msg.error) throw new CloudletError("HOST_TOOL", `QMP ${cmd} failed: ${msg.error.desc ?? JSON.stringify(msg.error)}`);
    return msg.return as T;
  }

  protected async stateSink(file: string): Promise<StateChannel> {
    await this.monitorWith("getfd", { fdname: "clsnap" }, [">", file]);
    return this.fdChannel(file);
  }

  protected async stateSource(file: string): Promise<StateChannel> {
    await this.monitorWith("getfd", { fdname: "clsnap" }, ["<", file]);
    return this.fdChannel(null);
  }

  private fdChannel(written: string | null): StateChannel {
    // QEMU writes through the passed descriptor itself: once the migration is
    // complete the bytes are in the file, and only the fsync is left to do.
    const finished = async () => {
      if (!written) return;
      const fh = await fsp.open(written, "r+");
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    };
    return { uri: "fd:clsnap", finished, close: async () => {} };
  }

  protected async kill(_graceful: boolean): Promise<void> {
    if (!this.created || this.domainGone) return;
    // destroy sends SIGTERM (QEMU flushes its disk cache), then SIGKILL if needed.
    await this.run(["destroy", this.domain], { timeoutMs: 60_000 }).catch(() => null);
    const deadline = Date.now() + 15_000;
    while (!this.domainGone && Date.now() < deadline) {
      if (this.pid !== null ? !processAlive(this.pid) : !(await this.domainActive())) this.onGone();
      else await sleep(20);
    }
  }

  protected async continueGuest(): Promise<void> {
    const r = await this.run(["resume", this.domain]);
    if (r.code !== 0) throw new CloudletError("HOST_TOOL", `virsh resume failed: ${virshMessage(r.stderr)}`);
  }

  protected async logTail(): Promise<string> {
    const lines = (await fsp.readFile(libvirtLogPath(this.domain), "utf8").catch(() => "")).split("\n");
    // libvirt's log starts with the command line (continued lines end in " \"); QEMU's messages follow.
    const start = lines.findLastIndex((l) => / \\$/.test(l) || /^-msg timestamp/.test(l)) + 1;
    return lastLines(lines.slice(start).filter((l) => !/is tainted:/.test(l)).join("\n"), 6);
  }

  protected override async afterExit(): Promise<void> {
    if (this.watcher) clearInterval(this.watcher);
    // libvirtd tears the domain down after QEMU is gone (about 1-2 s: labels, log); wait for it so that
    // nothing it does afterwards undoes the cleanup below.
    for (let i = 0; this.created && i < 300 && (await this.domainExists()); i++) await sleep(50);
    for (const [p, o] of this.owners) await fsp.chown(p, o.uid, o.gid).catch(() => {});
    if (isLocal(this.uri)) await fsp.rm(libvirtLogPath(this.domain), { force: true }).catch(() => {});
  }

  /**
   * Gives the run directory and memory file to the user QEMU runs as (it
   * creates and maps files there), and notes the owners of the files libvirt
   * relabels itself: it gives the disk back but not its read-only backing file.
   */
  private async handToQemu() {
    if (!isLocal(this.uri)) return;
    const ids = qemuUserIds();
    if (!ids) return;
    await assertReachable(ids, [
      this.spec.memory.path,
      this.spec.disk.path,
      ...(this.spec.boot ? [this.spec.boot.kernel, this.spec.boot.initrd] : []),
      ...(await backingChain(this.spec.disk.path)),
    ]);
    const relabeled = [...(await backingChain(this.spec.disk.path)), ...(this.spec.boot ? [this.spec.boot.kernel, this.spec.boot.initrd] : [])];
    for (const p of relabeled) {
      const st = await fsp.stat(p).catch(() => null);
      // Owned by the QEMU user already: another running domain relabeled it, and the first one to end gives it back.
      if (st && st.uid !== ids.uid && !this.owners.has(p)) this.owners.set(p, { uid: st.uid, gid: st.gid });
    }
    for (const p of [this.spec.runDir, this.spec.memory.path]) {
      const st = await fsp.stat(p);
      if (st.uid === ids.uid && st.gid === ids.gid) continue;
      this.owners.set(p, { uid: st.uid, gid: st.gid });
      await fsp.chown(p, ids.uid, ids.gid);
    }
  }
}

/** Where libvirtd writes a domain's QEMU log on this machine. */
function libvirtLogPath(domain: string): string {
  return `/var/log/libvirt/qemu/${domain}.log`;
}

/** QEMU's pid from libvirt's pid file (local system daemon), or null. */
function readLibvirtPid(domain: string): number | null {
  try {
    const n = Number(readFileSync(`/run/libvirt/qemu/${domain}.pid`, "utf8").trim());
    return Number.isInteger(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}

/** True for URIs of the libvirtd on this machine. */
function isLocal(uri: string): boolean {
  return /^qemu(\+unix)?:\/\/\/system(\?|$)/.test(uri);
}

/** uid/gid QEMU runs as under the system libvirtd (qemu.conf `user`/`group`; Debian default libvirt-qemu), its groups, or null for root. */
function qemuUserIds(): { uid: number; gid: number; name: string; groups: number[] } | null {
  let conf = "";
  try {
    conf = readFileSync("/etc/libvirt/qemu.conf", "utf8");
  } catch {
    // defaults below
  }
  const setting = (k: string) => new RegExp(`^\\s*${k}\\s*=\\s*"([^"]*)"`, "m").exec(conf)?.[1];
  const user = setting("user") ?? "libvirt-qemu";
  const group = setting("group") ?? "libvirt-qemu";
  const uid = lookupId("/etc/passwd", user);
  const gid = lookupId("/etc/group", group);
  if (uid === null || gid === null || uid === 0) return null;
  const groups = new Set([gid]);
  try {
    for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
      const f = line.split(":");
      if (f[0] === user) groups.add(Number(f[3]));
    }
    for (const line of readFileSync("/etc/group", "utf8").split("\n")) {
      const f = line.split(":");
      if (f[3]?.split(",").includes(user)) groups.add(Number(f[2]));
    }
  } catch {
    // the configured group is enough
  }
  return { uid, gid, name: user, groups: [...groups] };
}

/**
 * Fails when QEMU (running as the libvirt user) cannot reach a file because a
 * directory above it is not searchable for that user, e.g. a cloudlet home
 * under /root (0700). libvirt relabels the files, never their directories.
 */
async function assertReachable(ids: { uid: number; name: string; groups: number[] }, paths: string[]): Promise<void> {
  for (const p of paths) {
    for (let d = dirname(resolve(p)); ; d = dirname(d)) {
      const st = await fsp.stat(d).catch(() => null);
      if (st) {
        const ok = st.uid === ids.uid ? st.mode & 0o100 : ids.groups.includes(st.gid) ? st.mode & 0o010 : st.mode & 0o001;
        if (!ok) {
          throw new CloudletError(
            "HOST_TOOL",
            `libvirt runs QEMU as ${ids.name}, which cannot reach ${p}: ${d} is not searchable for it. ` +
              `Keep VM files outside such directories (e.g. CLOUDLET_HOME=/var/lib/cloudlet), "chmod o+x ${d}", or set user = "root" in /etc/libvirt/qemu.conf`,
            p,
          );
        }
      }
      if (d === "/") break;
    }
  }
}

/** The disk and its backing files (qcow2 headers, followed to a raw file), as absolute paths. */
async function backingChain(disk: string): Promise<string[]> {
  const out: string[] = [];
  let cur: string | null = disk;
  while (cur && out.length < 16 && !out.includes(cur)) {
    out.push(cur);
    const path: string = cur;
    cur = null;
    const fh = await fsp.open(path, "r").catch(() => null);
    if (!fh) break;
    try {
      const h = Buffer.alloc(20);
      await fh.read(h, 0, 20, 0);
      if (h.readUInt32BE(0) !== 0x514649fb) break; // "QFI\xfb": not qcow2
      const off = Number(h.readBigUInt64BE(8));
      const len = h.readUInt32BE(16);
      if (!off || !len || len > 4096) break;
      const name = Buffer.alloc(len);
      await fh.read(name, 0, len, off);
      cur = resolve(dirname(path), name.toString("utf8"));
    } finally {
      await fh.close();
    }
  }
  return out;
}

/** virsh's error lines without their "error: " prefixes, on one line. */
function virshMessage(stderr: string): string {
  return lastLines(stderr.replace(/^error: /gm, ""), 4);
}

function qemuOpt(v: string): string {
  return v.replace(/,/g, ",,");
}

function xmlEscape(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/'/g, "&apos;").replace(/"/g, "&quot;");
}
