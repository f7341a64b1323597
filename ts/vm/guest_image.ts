/**
 * The built-in tiny guest, made only from Debian packages and cached under a
 * directory the caller chooses (`<cloudletHome>/guest`):
 *
 * ```text
 *   <cache>/debs/linux-image-*.deb          apt-get download
 *   <cache>/kernel-<pkg>_<ver>/             dpkg -x, plus vmlinux (PVH ELF from the bzImage's xz payload)
 *   <cache>/minbase-<suite>/                debootstrap --variant=minbase, slimmed
 *   <cache>/image/                          the guest: vmlinux, initramfs.gz, rootfs.raw, guest.json
 *   <cache>/.<name>.part-<pid>-<hex>        anything being built; renamed into place when complete
 * ```
 *
 * Every step builds under a `.part` name and renames when complete, and
 * `guest.json` is written last, so an interrupted build never looks complete.
 * A complete `image/` is reused as it is: rebuilding `rootfs.raw` would
 * invalidate every snapshot whose disk uses it as a backing file.
 *
 * Port of /work/scratch/guest/build-guest.sh (see docs/vm-hosts.md).
 */
import { promises as fsp, constants } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { gzip } from "node:zlib";
import { CloudletError } from "../errors.ts";
import { partName } from "../node/files.ts";
import { requireExecutable, runCommand, runCommandOk } from "../node/command.ts";

/** Text that /sbin/cloudlet-init prints on ttyS0 once the guest is up. */
export const GUEST_READY_MARKER = "CLOUDLET-READY";

/** Kernel command line for the built-in guest (static user-mode network 10.0.2.15/24). */
export const GUEST_APPEND = "console=ttyS0 root=/dev/vda rw init=/sbin/cloudlet-init quiet loglevel=1 panic=1 cl.net=static";

/** Layout version of `image/`; a different value makes the cache rebuild it (2: virtio_balloon and the page reporting order). */
const GUEST_FORMAT = 2;

/** Fixed file-system UUID (and htree hash seed) so that rebuilds of identical content stay close. */
const ROOTFS_UUID = "c10d1e7a-0000-4000-8000-000000000001";

/**
 * Modules the initramfs loads; their dependencies come from each .ko's modinfo. crc32c is needed by ext4 through the crypto API, not as a symbol.
 * virtio_balloon reports free pages to the host, which punches them out of the RAM file (docs/vm-hosts.md, "Free memory").
 */
const WANT_MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "virtio_balloon", "crc32c_generic", "ext4"];

/**
 * Free page reporting granularity of the built-in guest, as a buddy order
 * (`page_reporting.page_reporting_order`; runs of 2^order pages). The kernel's
 * default is the pageblock order, 9 (2 MiB on x86), which misses the runs that
 * page cache and tmpfs frees leave between pages still in use. Order 3 (32 KiB)
 * caught nearly all of them in the measurement in docs/vm-hosts.md ("Free
 * memory"), with 8x fewer reports per byte than order 0.
 */
export const GUEST_PAGE_REPORTING_ORDER = 3;

/** The paths of a built guest. */
export interface GuestImage {
  /** The cache's `image/` directory. */
  dir: string;
  /** Uncompressed PVH kernel (`-kernel`). */
  kernel: string;
  /** busybox initramfs (`-initrd`). */
  initrd: string;
  /** ext4 root file system, raw. */
  rootfs: string;
  /** Kernel command line. */
  append: string;
  /** Text the guest prints on the serial console when it is ready. */
  readyMarker: string;
  /** e.g. "6.1.0-56-amd64". */
  kernelVersion: string;
}

/** Steps of a guest build, in order. */
export type GuestBuildPhase = "kernel-download" | "kernel-extract" | "initramfs" | "debootstrap" | "rootfs" | "done";

/** Progress of a long build step; `total` 0 means not known yet. */
export interface GuestBuildProgress {
  phase: GuestBuildPhase;
  done: number;
  total: number;
  /** What the step is doing now, for a status line. */
  detail?: string;
}

/** Options for {@link buildGuestImage}. */
export interface GuestBuildOptions {
  /** Cache directory, e.g. `<cloudletHome>/guest`. */
  cacheDir: string;
  onProgress?: (p: GuestBuildProgress) => void;
  signal?: AbortSignal;
  /** Debian suite for debootstrap; default "bookworm". */
  suite?: string;
  /** Debian mirror for debootstrap; default http://deb.debian.org/debian. */
  mirror?: string;
  /** Size of rootfs.raw (sparse); default 512 MiB. */
  rootfsMiB?: number;
  /** Static busybox to install; default /bin/busybox (busybox-static). */
  busybox?: string;
  /** Throw away `image/` and build it again (the downloads stay cached). */
  rebuild?: boolean;
}

interface Manifest {
  format: number;
  kernelVersion: string;
  kernelPackage: string;
  suite: string;
  append: string;
  readyMarker: string;
  files: Record<"kernel" | "initrd" | "rootfs", { name: string; size: number }>;
  builtAt: string;
}

/** The complete cached guest in `cacheDir`, or null when there is none. */
export async function loadGuestImage(cacheDir: string): Promise<GuestImage | null> {
  const dir = join(cacheDir, "image");
  let m: Manifest;
  try {
    m = JSON.parse(await fsp.readFile(join(dir, "guest.json"), "utf8")) as Manifest;
  } catch {
    return null;
  }
  if (m.format !== GUEST_FORMAT) return null;
  for (const f of Object.values(m.files)) {
    const st = await fsp.stat(join(dir, f.name)).catch(() => null);
    if (!st || st.size !== f.size) return null;
  }
  return {
    dir,
    kernel: join(dir, m.files.kernel.name),
    initrd: join(dir, m.files.initrd.name),
    rootfs: join(dir, m.files.rootfs.name),
    append: m.append,
    readyMarker: m.readyMarker,
    kernelVersion: m.kernelVersion,
  };
}

/** Builds the tiny guest into `cacheDir` (root only), or returns the cached one. */
export async function buildGuestImage(opts: GuestBuildOptions): Promise<GuestImage> {
  const cache = opts.cacheDir;
  if (!opts.rebuild) {
    const cached = await loadGuestImage(cache);
    if (cached) {
      opts.onProgress?.({ phase: "done", done: 1, total: 1, detail: "cached" });
      return cached;
    }
  }
  const b = new GuestBuild(opts);
  try {
    return await b.run();
  } catch (e) {
    await b.discard();
    if (opts.signal?.aborted && !(e instanceof CloudletError && e.code === "CANCELLED")) throw new CloudletError("CANCELLED", "guest build cancelled", cache, { cause: e });
    throw e;
  }
}

class GuestBuild {
  private readonly cache: string;
  private readonly suite: string;
  private readonly busybox: string;
  /** Temporary paths this build owns; removed when it fails. */
  private readonly parts = new Set<string>();

  constructor(private readonly o: GuestBuildOptions) {
    this.cache = o.cacheDir;
    this.suite = o.suite ?? "bookworm";
    this.busybox = o.busybox ?? "/bin/busybox";
  }

  private progress(phase: GuestBuildPhase, done: number, total: number, detail?: string) {
    this.o.onProgress?.({ phase, done, total, detail });
  }

  private checkAbort() {
    if (this.o.signal?.aborted) throw new CloudletError("CANCELLED", "guest build cancelled", this.cache);
  }

  private part(final: string): string {
    const p = partName(final);
    this.parts.add(p);
    return p;
  }

  /** Removes what this build left under temporary names. */
  async discard() {
    for (const p of this.parts) await fsp.rm(p, { recursive: true, force: true }).catch(() => {});
    this.parts.clear();
  }

  async run(): Promise<GuestImage> {
    if (process.getuid?.() !== 0) throw new CloudletError("HOST_TOOL", "building the guest needs root (debootstrap and mke2fs -d write root-owned files): run as root", this.cache);
    for (const t of ["apt-get", "apt-cache", "dpkg", "debootstrap", "mke2fs", "xz"]) requireExecutable(t);
    await this.checkBusybox();
    await fsp.mkdir(this.cache, { recursive: true });
    await removeStaleParts(this.cache);

    const kernel = await this.kernel();
    this.checkAbort();
    const image = this.part(join(this.cache, "image"));
    await fsp.mkdir(image);
    await linkOrCopy(kernel.vmlinux, join(image, "vmlinux"));
    await this.initramfs(kernel.modules, join(image, "initramfs.gz"));
    this.checkAbort();
    const minbase = await this.minbase();
    this.checkAbort();
    await this.rootfs(minbase, join(image, "rootfs.raw"));
    this.checkAbort();

    const size = async (n: string) => (await fsp.stat(join(image, n))).size;
    const manifest: Manifest = {
      format: GUEST_FORMAT,
      kernelVersion: kernel.version,
      kernelPackage: kernel.pkg,
      suite: this.suite,
      append: GUEST_APPEND,
      readyMarker: GUEST_READY_MARKER,
      files: {
        kernel: { name: "vmlinux", size: await size("vmlinux") },
        initrd: { name: "initramfs.gz", size: await size("initramfs.gz") },
        rootfs: { name: "rootfs.raw", size: await size("rootfs.raw") },
      },
      builtAt: new Date().toISOString(),
    };
    await fsp.writeFile(join(image, "guest.json"), JSON.stringify(manifest, null, 2) + "\n");
    await this.commitImage(image);
    await this.discard();
    const g = await loadGuestImage(this.cache);
    if (!g) throw new CloudletError("OUTPUT_FAILED", "the guest image is incomplete after building it", join(this.cache, "image"));
    this.progress("done", 1, 1);
    return g;
  }

  private async checkBusybox() {
    let bytes: Uint8Array;
    try {
      bytes = await fsp.readFile(this.busybox);
    } catch {
      throw new CloudletError("HOST_TOOL", `${this.busybox} not found: apt-get install busybox-static`);
    }
    // A dynamic busybox names its ELF interpreter; the guest's initramfs has no libc.
    if (Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).includes("/lib64/ld-linux-x86-64.so.2")) {
      throw new CloudletError("HOST_TOOL", `${this.busybox} is not statically linked: apt-get install busybox-static`);
    }
  }

  /** Puts the finished image in place; another build that finished first wins. */
  private async commitImage(image: string) {
    const final = join(this.cache, "image");
    if (await loadGuestImage(this.cache)) {
      if (!this.o.rebuild) return; // a concurrent build finished first: keep its files
    }
    const old = await fsp.stat(final).then(() => this.part(join(this.cache, "image.old")), () => null);
    if (old) await fsp.rename(final, old);
    await fsp.rename(image, final);
    this.parts.delete(image);
    if (old) await fsp.rm(old, { recursive: true, force: true });
  }

  private async kernel(): Promise<{ pkg: string; version: string; vmlinux: string; modules: { name: string; path: string }[] }> {
    const debs = join(this.cache, "debs");
    await fsp.mkdir(debs, { recursive: true });
    this.progress("kernel-download", 0, 1, "resolving linux-image-amd64");
    const dep = await runCommand("apt-cache", ["depends", "linux-image-amd64"], { signal: this.o.signal });
    let pkg = /Depends: (linux-image-\d\S*-amd64)/.exec(dep.stdout)?.[1];
    const cached = (await fsp.readdir(debs)).filter((f) => f.startsWith("linux-image-") && f.endsWith(".deb")).sort();
    let deb = cached.find((f) => pkg && f.startsWith(`${pkg}_`));
    if (!pkg) {
      // apt lists may be missing on a fresh machine; a deb downloaded earlier still serves.
      deb = cached.at(-1);
      if (!deb) throw new CloudletError("HOST_TOOL", "apt-cache does not know linux-image-amd64: run apt-get update (as root) and try again");
      pkg = deb.split("_")[0];
    }
    if (!deb) {
      this.progress("kernel-download", 0, 1, `apt-get download ${pkg}`);
      const tmp = this.part(join(debs, "download"));
      await fsp.mkdir(tmp);
      await runCommandOk("apt-get", ["download", pkg], { cwd: tmp, signal: this.o.signal, what: `apt-get download ${pkg}` });
      const got = (await fsp.readdir(tmp)).find((f) => f.endsWith(".deb"));
      if (!got) throw new CloudletError("HOST_TOOL", `apt-get download ${pkg} produced no .deb`);
      await fsp.rename(join(tmp, got), join(debs, got));
      await fsp.rm(tmp, { recursive: true, force: true });
      this.parts.delete(tmp);
      deb = got;
    }
    this.progress("kernel-download", 1, 1, deb);
    this.checkAbort();

    const dir = join(this.cache, `kernel-${deb.replace(/\.deb$/, "")}`);
    let info = await readKernelInfo(dir);
    if (!info) {
      // Keep only what the guest uses: the whole package is 400 MB of modules.
      this.progress("kernel-extract", 0, 3, `dpkg -x ${deb}`);
      const tmp = this.part(dir);
      const x = join(tmp, "deb");
      await fsp.mkdir(tmp);
      await runCommandOk("dpkg", ["-x", join(debs, deb), x], { signal: this.o.signal, what: `dpkg -x ${deb}` });
      const version = (await fsp.readdir(join(x, "lib/modules")))[0];
      this.progress("kernel-extract", 1, 3, "vmlinux from the bzImage's xz payload");
      await extractVmlinux(join(x, "boot", `vmlinuz-${version}`), join(tmp, "vmlinux"), this.o.signal);
      this.progress("kernel-extract", 2, 3, "modules");
      const order = await moduleLoadOrder(join(x, "lib/modules", version), WANT_MODULES);
      await fsp.mkdir(join(tmp, "modules"));
      for (const m of order) await fsp.copyFile(m.path, join(tmp, "modules", `${m.name}.ko`));
      await fsp.rm(x, { recursive: true, force: true });
      const k: KernelInfo = { version, want: WANT_MODULES, order: order.map((m) => m.name) };
      await fsp.writeFile(join(tmp, "kernel.json"), JSON.stringify(k) + "\n");
      await fsp.rm(dir, { recursive: true, force: true });
      await fsp.rename(tmp, dir);
      this.parts.delete(tmp);
      this.progress("kernel-extract", 3, 3);
      info = k;
    }
    return { pkg, version: info.version, vmlinux: join(dir, "vmlinux"), modules: info.order.map((name) => ({ name, path: join(dir, "modules", `${name}.ko`) })) };
  }

  private async initramfs(order: { name: string; path: string }[], out: string) {
    this.progress("initramfs", 0, order.length + 1, order.map((m) => m.name).join(" "));
    const applets = (await runCommandOk(this.busybox, ["--list"])).split("\n").filter((a) => a && a !== "busybox");
    const cpio = new CpioWriter();
    for (const d of ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"]) cpio.dir(d);
    // The kernel opens /dev/console for /init before devtmpfs is mounted; without it the initramfs prints nowhere.
    cpio.charDevice("dev/console", 5, 1, 0o600);
    cpio.file("bin/busybox", await fsp.readFile(this.busybox), 0o755);
    for (const a of applets) cpio.symlink(`bin/${a}`, "busybox");
    for (const [i, m] of order.entries()) {
      cpio.file(`lib/modules/${m.name}.ko`, await fsp.readFile(m.path), 0o644);
      this.progress("initramfs", i + 1, order.length + 1, m.name);
    }
    cpio.file("lib/modules/load-order", new TextEncoder().encode(order.map((m) => m.name).join("\n") + "\n"), 0o644);
    cpio.file("init", new TextEncoder().encode(INITRAMFS_INIT), 0o755);
    const gz = await promisify(gzip)(cpio.finish(), { level: 9 });
    await fsp.writeFile(out, gz);
    this.progress("initramfs", order.length + 1, order.length + 1);
  }

  private async minbase(): Promise<string> {
    const dir = join(this.cache, `minbase-${this.suite}`);
    if (await isFile(join(dir, "etc/debian_version"))) return dir;
    const tmp = this.part(dir);
    const mirror = this.o.mirror ?? "http://deb.debian.org/debian";
    let retrieved = 0;
    let done = 0;
    let total = 0;
    const log: string[] = [];
    this.progress("debootstrap", 0, 0, `debootstrap --variant=minbase ${this.suite}`);
    const r = await runCommand("debootstrap", ["--variant=minbase", this.suite, tmp, mirror], {
      signal: this.o.signal,
      onLine: (l) => {
        log.push(l);
        if (log.length > 40) log.shift();
        const m = /^I: (Retrieving|Extracting|Unpacking|Configuring) (\S+)/.exec(l);
        if (!m) return;
        if (m[1] === "Retrieving") retrieved++;
        // The package count is known once downloading ends; each package is then extracted, unpacked and configured.
        else if (!total) total = retrieved * 4 + 3;
        done++;
        this.progress("debootstrap", done, total, `${m[1].toLowerCase()} ${m[2]}`);
      },
    });
    if (r.code !== 0) throw new CloudletError("HOST_TOOL", `debootstrap ${this.suite} failed (exit ${r.code}; is ${mirror} reachable?): ${log.slice(-8).join(" | ")}`);
    // Slim down: documentation, locales and apt caches are not needed in the guest.
    for (const d of ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian", "var/cache/apt/archives", "var/lib/apt/lists"]) {
      await emptyDir(join(tmp, d));
    }
    for (const f of ["var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin"]) await fsp.rm(join(tmp, f), { force: true });
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.rename(tmp, dir);
    this.parts.delete(tmp);
    return dir;
  }

  private async rootfs(minbase: string, out: string) {
    const steps = 3;
    this.progress("rootfs", 0, steps, "copying minbase");
    const stage = this.part(join(this.cache, "rootfs-stage"));
    await runCommandOk("cp", ["-a", "--reflink=auto", minbase, stage], { signal: this.o.signal, what: "copying the minbase tree" });
    this.progress("rootfs", 1, steps, "busybox applets and cloudlet-init");
    await customizeRootfs(stage, this.busybox);
    this.progress("rootfs", 2, steps, "mke2fs -t ext4 -d");
    const size = `${this.o.rootfsMiB ?? 512}M`;
    await runCommandOk(
      "mke2fs",
      ["-q", "-F", "-t", "ext4", "-L", "cloudlet-root", "-U", ROOTFS_UUID, "-E", `root_owner=0:0,hash_seed=${ROOTFS_UUID}`, "-m", "0", "-d", stage, out, size],
      { signal: this.o.signal, what: "mke2fs -d (writing rootfs.raw)" },
    );
    await fsp.rm(stage, { recursive: true, force: true });
    this.parts.delete(stage);
    this.progress("rootfs", steps, steps);
  }
}

/** Writes the uncompressed kernel ELF (it carries the PVH entry note) found in a bzImage's xz payload. */
async function extractVmlinux(bzImage: string, out: string, signal?: AbortSignal) {
  const bz = await fsp.readFile(bzImage);
  const at = bz.indexOf(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]));
  if (at < 0) throw new CloudletError("BAD_INPUT", "no xz payload in the kernel image (kernel not built with CONFIG_KERNEL_XZ)", bzImage);
  const fh = await fsp.open(out, "w");
  try {
    // --single-stream: the bzImage continues after the xz stream; ignore what follows.
    await runCommandOk("xz", ["-dc", "--single-stream"], { input: bz.subarray(at), stdoutFd: fh.fd, signal, what: "xz -d (vmlinux from the bzImage)" });
  } finally {
    await fh.close();
  }
  const head = Buffer.alloc(4);
  const r = await fsp.open(out, "r");
  await r.read(head, 0, 4, 0);
  await r.close();
  if (!head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) throw new CloudletError("BAD_INPUT", "the kernel's xz payload is not an ELF file", bzImage);
}

/** Modules named in `want` and what they depend on, dependencies first (from each .ko's `depends=` modinfo). */
async function moduleLoadOrder(modRoot: string, want: string[]): Promise<{ name: string; path: string }[]> {
  const paths = new Map<string, string>();
  const walk = async (d: string) => {
    for (const e of await fsp.readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.name.endsWith(".ko")) paths.set(e.name.slice(0, -3).replace(/-/g, "_"), p);
    }
  };
  await walk(join(modRoot, "kernel"));
  const order: { name: string; path: string }[] = [];
  const seen = new Set<string>();
  const visit = async (raw: string) => {
    const name = raw.replace(/-/g, "_");
    if (seen.has(name)) return;
    seen.add(name);
    const path = paths.get(name);
    if (!path) throw new CloudletError("BAD_INPUT", `kernel module ${name} not found (is it built in, or compressed?)`, modRoot);
    const text = (await fsp.readFile(path)).toString("latin1");
    const deps = /(?:^|\0)depends=([^\0]*)/.exec(text)?.[1] ?? "";
    for (const d of deps.split(",").filter(Boolean)) await visit(d);
    order.push({ name, path });
  };
  for (const m of want) await visit(m);
  return order;
}

/** Adds busybox, configuration and /sbin/cloudlet-init to a minbase tree. */
async function customizeRootfs(root: string, busybox: string) {
  // Unlink first: a symlink in the tree (resolv.conf often is one) must not lead the write out of it.
  const w = async (p: string, text: string, mode = 0o644) => {
    await fsp.rm(join(root, p), { force: true });
    await fsp.writeFile(join(root, p), text, { mode });
    await fsp.chmod(join(root, p), mode);
  };
  await fsp.copyFile(busybox, join(root, "usr/bin/busybox"));
  await fsp.chmod(join(root, "usr/bin/busybox"), 0o755);
  await fsp.mkdir(join(root, "usr/local/bin"), { recursive: true });
  const applets = (await runCommandOk(busybox, ["--list"])).split("\n").filter(Boolean);
  const skip = new Set(["busybox", "init", "linuxrc", "sh", "ash", "[", "[["]);
  for (const a of applets) {
    if (skip.has(a)) continue;
    let present = false;
    for (const d of ["usr/bin", "usr/sbin", "bin", "sbin"]) {
      if (await fsp.lstat(join(root, d, a)).then(() => true, () => false)) present = true;
    }
    // Only what minbase lacks (httpd, nc, ip, udhcpc, ps, ...): Debian's own tools stay.
    if (!present) await fsp.symlink("/usr/bin/busybox", join(root, "usr/local/bin", a));
  }
  await w("etc/hostname", "cloudlet\n");
  await w("etc/hosts", "127.0.0.1 localhost\n127.0.1.1 cloudlet\n");
  await w("etc/resolv.conf", "nameserver 10.0.2.3\n");
  await w("etc/fstab", "/dev/vda / ext4 rw,relatime 0 1\n");
  await fsp.mkdir(join(root, "www"), { recursive: true });
  await fsp.mkdir(join(root, "usr/share/udhcpc"), { recursive: true });
  await w("usr/share/udhcpc/default.script", UDHCPC_SCRIPT, 0o755);
  await w("sbin/cloudlet-init", CLOUDLET_INIT, 0o755);
  await w("root/.profile", "export PS1='cl# '\n");
  const shadow = join(root, "etc/shadow");
  await fsp.writeFile(shadow, (await fsp.readFile(shadow, "utf8")).replace(/^root:[^:]*:/m, "root::"));
}

/** A `newc` cpio archive built in memory (the initramfs is a few MB), with fixed owners and times. */
class CpioWriter {
  private readonly parts: Uint8Array[] = [];
  private ino = 1;

  dir(name: string, mode = 0o755) {
    this.entry(name, 0o040000 | mode, new Uint8Array(0));
  }
  file(name: string, data: Uint8Array, mode: number) {
    this.entry(name, 0o100000 | mode, data);
  }
  symlink(name: string, target: string) {
    this.entry(name, 0o120777, new TextEncoder().encode(target));
  }
  charDevice(name: string, major: number, minor: number, mode: number) {
    this.entry(name, 0o020000 | mode, new Uint8Array(0), major, minor);
  }
  finish(): Uint8Array {
    this.entry("TRAILER!!!", 0, new Uint8Array(0));
    return Buffer.concat(this.parts);
  }

  private entry(name: string, mode: number, data: Uint8Array, rmajor = 0, rminor = 0) {
    const nameBytes = new TextEncoder().encode(name + "\0");
    const hex = (n: number) => n.toString(16).padStart(8, "0");
    const fields = [this.ino++, mode, 0, 0, 1, 0, data.length, 0, 0, rmajor, rminor, nameBytes.length, 0];
    const header = new TextEncoder().encode("070701" + fields.map(hex).join(""));
    this.parts.push(header, nameBytes, new Uint8Array(pad4(header.length + nameBytes.length)), data, new Uint8Array(pad4(data.length)));
  }
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** What a cached kernel directory holds besides vmlinux. */
interface KernelInfo {
  version: string;
  want: string[];
  order: string[];
}

async function readKernelInfo(dir: string): Promise<KernelInfo | null> {
  try {
    const k = JSON.parse(await fsp.readFile(join(dir, "kernel.json"), "utf8")) as KernelInfo;
    if (k.want.join(",") !== WANT_MODULES.join(",") || !(await isFile(join(dir, "vmlinux")))) return null;
    return k;
  } catch {
    return null;
  }
}

async function isFile(p: string): Promise<boolean> {
  return fsp.stat(p).then((s) => s.isFile(), () => false);
}

async function emptyDir(d: string) {
  const entries = await fsp.readdir(d).catch(() => [] as string[]);
  for (const e of entries) await fsp.rm(join(d, e), { recursive: true, force: true });
}

async function linkOrCopy(src: string, dst: string) {
  try {
    await fsp.link(src, dst);
  } catch {
    await fsp.copyFile(src, dst, constants.COPYFILE_FICLONE);
  }
}

/** Removes `.part` leftovers of builds whose process is gone (interrupted by a crash or kill -9). */
async function removeStaleParts(cache: string) {
  for (const e of await fsp.readdir(cache)) {
    const m = /^\..+\.part-(\d+)-[0-9a-f]+$/.exec(e);
    if (!m) continue;
    const pid = Number(m[1]);
    let alive = pid !== process.pid;
    if (alive) {
      try {
        process.kill(pid, 0);
      } catch {
        alive = false;
      }
    }
    if (!alive && pid !== process.pid) await fsp.rm(join(cache, e), { recursive: true, force: true });
  }
}

const INITRAMFS_INIT = `#!/bin/busybox sh
# cloudlet initramfs: load virtio/ext4 modules, mount root, switch_root into init=
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
echo 1 > /proc/sys/kernel/printk 2>/dev/null
for m in $(cat /lib/modules/load-order); do insmod /lib/modules/$m.ko 2>/dev/null || echo "initramfs: insmod $m failed"; done
# Report free pages from ${GUEST_PAGE_REPORTING_ORDER} up (set after virtio_balloon registered: registering resets it to the driver's order).
echo ${GUEST_PAGE_REPORTING_ORDER} > /sys/module/page_reporting/parameters/page_reporting_order 2>/dev/null
root=/dev/vda; rootfstype=ext4; rootflags=rw; init=/sbin/cloudlet-init
for a in $(cat /proc/cmdline); do
  case "$a" in root=*) root=\${a#root=};; rootfstype=*) rootfstype=\${a#rootfstype=};;
    rootflags=*) rootflags=\${a#rootflags=};; init=*) init=\${a#init=};; esac
done
i=0; while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if ! mount -t "$rootfstype" -o "$rootflags" "$root" /newroot; then
  echo "initramfs: cannot mount $root; emergency shell"; exec setsid cttyhack sh
fi
mkdir -p /newroot/dev && mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot "$init"
echo "initramfs: switch_root failed"; exec sh
`;

const UDHCPC_SCRIPT = `#!/bin/sh
# minimal udhcpc hook for busybox udhcpc
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/\${mask:-24}" dev "$interface"
    [ -n "$router" ] && { ip route del default 2>/dev/null; for r in $router; do ip route add default via "$r" dev "$interface"; break; done; }
    [ -n "$dns" ] && { : > /etc/resolv.conf; for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done; } ;;
esac
exit 0
`;

const CLOUDLET_INIT = `#!/bin/sh
# cloudlet-init: PID 1 of the cloudlet guest (run via init=/sbin/cloudlet-init).
# Kernel cmdline knobs: cl.net=static|dhcp|none (default static: 10.0.2.15/24 gw 10.0.2.2, QEMU user-net)
#                       cl.console=/dev/ttyS0   cl.shell=/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=vt100
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys  || mount -t sysfs sys /sys
mountpoint -q /dev  || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run; mount -t tmpfs tmpfs /tmp
mount -o remount,rw / 2>/dev/null
echo 1 > /proc/sys/kernel/printk
hostname -F /etc/hostname
net=static; con=/dev/ttyS0; shell=/bin/sh
for a in $(cat /proc/cmdline); do
  case "$a" in cl.net=*) net=\${a#cl.net=};; cl.console=*) con=\${a#cl.console=};; cl.shell=*) shell=\${a#cl.shell=};; esac
done
ip link set lo up
case "$net" in
  static) ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 ;;
  dhcp)   ip link set eth0 up && busybox udhcpc -i eth0 -n -q -t 5 -T 1 -s /usr/share/udhcpc/default.script >/dev/null 2>&1 ;;
esac
stty -F "$con" sane 115200 2>/dev/null
[ -x /etc/cloudlet/rc.local ] && /etc/cloudlet/rc.local
echo "${GUEST_READY_MARKER} boot_id=$(cat /proc/sys/kernel/random/boot_id) uptime=$(cut -d' ' -f1 /proc/uptime) net=$(ip -4 -o addr show eth0 2>/dev/null | awk '{print $4}')" > "$con"
# root shell on the serial console without login; respawn forever (PID 1 must never exit).
# The shell (dash) reaps orphans re-parented to PID 1 only while waiting, so we loop here.
while :; do
  setsid -c "$shell" -l < "$con" > "$con" 2>&1
  sleep 0.2
done
`;
