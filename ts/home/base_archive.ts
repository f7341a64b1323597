/**
 * Exported bases: one file (a sparse tar) holding the base's disk, memory,
 * device state and boot files, plus `manifest.json` with the base record and
 * the BLAKE3 of every file. Import checks the archive's member names (no
 * paths of its own choosing), every file's hash, and recomputes the base id
 * from the images before the base is registered.
 */
import { promises as fsp } from "node:fs";
import { basename, join } from "node:path";
import { homePaths } from "./paths.ts";
import type { Core } from "../core/core.ts";
import { toHex } from "../core/vectors.ts";
import { CloudletError } from "../errors.ts";
import type { ProgressFn } from "../overlay/io.ts";
import { openBase } from "./base_cache.ts";
import { FileSource, outputError, partName } from "../node/files.ts";
import { runTool } from "../node/process.ts";
import { BASE_NAME_RE, type BaseRow, Registry } from "./registry.ts";
import { type MachineConfig, validMachine } from "../overlay/format.ts";

const MANIFEST = "manifest.json";
const FORMAT = "cloudlet-base-export";

interface Manifest {
  format: string;
  version: number;
  base: Omit<BaseRow, "dir">;
  files: Record<string, { size: number; blake3: string }>;
}

async function hashFile(core: Core, path: string, progress?: ProgressFn, base = 0, total = 0): Promise<string> {
  const f = await FileSource.open(path);
  try {
    const h = core.hasher("blake3");
    for (let o = 0; o < f.size; o += 4 << 20) {
      h.update(await f.read(o, 4 << 20));
      progress?.({ phase: "hash", done: base + Math.min(f.size, o + (4 << 20)), total });
    }
    return toHex(h.digest());
  } finally {
    await f.close();
  }
}

/** The boot files an export may carry, by the names the built-in guest gives them. */
const BOOT_KERNEL = "vmlinux";
const BOOT_INITRD = "initramfs.gz";

/**
 * Checks every field of an imported manifest's base record: nothing in it
 * may name a path of its own choosing, reach QEMU's command line unchecked,
 * or carry a size the images do not have.
 */
function checkManifestBase(b: unknown, file: string): Omit<BaseRow, "dir"> {
  const bad = (what: string): never => {
    throw new CloudletError("BAD_INPUT", `the archive's manifest has a bad ${what}`, file);
  };
  const r = (b ?? {}) as Record<string, unknown>;
  const size = (v: unknown, what: string) => (Number.isSafeInteger(v) && (v as number) > 0 ? (v as number) : bad(what));
  if (typeof r.id !== "string" || !/^[0-9a-f]{64}$/.test(r.id)) bad("base id");
  if (typeof r.name !== "string" || !BASE_NAME_RE.test(r.name)) bad("base name");
  if (typeof r.created !== "string" || r.created.length > 64) bad("creation time");
  const machine = r.machine as MachineConfig | undefined;
  if (!machine || typeof machine !== "object" || typeof machine.machine !== "string" || typeof machine.cpu !== "string" || !validMachine(machine)) bad("machine config");
  if (!Number.isSafeInteger(r.vcpus) || (r.vcpus as number) < 1 || (r.vcpus as number) > 256) bad("vCPU count");
  if (r.host !== "qemu" && r.host !== "virsh") bad("host adapter");
  if (r.boot !== null) {
    const boot = r.boot as Record<string, unknown> | undefined;
    if (!boot || boot.kernel !== BOOT_KERNEL || boot.initrd !== BOOT_INITRD) bad("boot files");
    if (typeof boot!.append !== "string" || boot!.append.length > 4096 || /[\0\n\r]/.test(boot!.append)) bad("kernel command line");
  }
  return {
    id: r.id as string,
    name: r.name as string,
    created: r.created as string,
    diskSize: size(r.diskSize, "disk size"),
    memorySize: size(r.memorySize, "memory size"),
    machine: { machine: machine!.machine, cpu: machine!.cpu, ramMiB: machine!.ramMiB, ...(machine!.freePageReporting === true ? { freePageReporting: true } : {}) },
    vcpus: r.vcpus as number,
    boot: r.boot as BaseRow["boot"],
    host: r.host as BaseRow["host"],
    source: typeof r.source === "string" ? r.source.slice(0, 1024) : "",
  };
}

function baseFileNames(b: Pick<BaseRow, "boot">): string[] {
  return ["disk.raw", "memory.raw", "state.bin", ...(b.boot ? [b.boot.kernel, b.boot.initrd] : [])];
}

/** How an export is compressed: GNU tar runs the compressor (zstd is fast, xz smaller); import recognises either by itself. */
export type ExportCompression = "none" | "zstd" | "xz";

const COMPRESS_FLAG: Record<ExportCompression, string[]> = { none: [], zstd: ["--zstd"], xz: ["--xz"] };

/** Writes base `ref` of `home` to `file`, atomically, compressed as asked. */
export async function exportBase(core: Core, home: string, ref: string, file: string, progress?: ProgressFn, compression: ExportCompression = "none"): Promise<{ bytes: number; base: BaseRow }> {
  const base = await new Registry(home).getBase(ref);
  const names = baseFileNames(base);
  const sizes = await Promise.all(names.map((n) => fsp.stat(join(base.dir, n)).then((s) => s.size)));
  const total = sizes.reduce((a, b) => a + b, 0);
  const files: Manifest["files"] = {};
  let done = 0;
  for (const [i, n] of names.entries()) {
    files[n] = { size: sizes[i], blake3: await hashFile(core, join(base.dir, n), progress, done, total) };
    done += sizes[i];
  }
  const { dir: _dir, ...rest } = base;
  const manifest: Manifest = { format: FORMAT, version: 1, base: rest, files };
  const stage = await fsp.mkdtemp(join(base.dir, ".export-"));
  const tmp = partName(file);
  try {
    await fsp.writeFile(join(stage, MANIFEST), JSON.stringify(manifest, null, 2) + "\n");
    const r = await runTool("tar", ["--sparse", ...COMPRESS_FLAG[compression], "-cf", tmp, "-C", stage, MANIFEST, "-C", base.dir, ...names]);
    if (r.code !== 0) throw /No space/.test(r.stderr) ? outputError(Object.assign(new Error(r.stderr), { code: "ENOSPC" }), file) : new CloudletError("OUTPUT_FAILED", `tar failed: ${r.stderr.trim()}`, file);
    await fsp.rename(tmp, file).catch((e) => {
      throw outputError(e, file);
    });
    return { bytes: (await fsp.stat(file)).size, base };
  } finally {
    await fsp.rm(tmp, { force: true });
    await fsp.rm(stage, { recursive: true, force: true });
  }
}

/**
 * The registered base the archive's manifest names, if `home` has it (and
 * its files): then nothing needs reading past the manifest. The registry's
 * copy was verified when it was made, so the manifest's claim is only a key.
 */
async function alreadyPresent(home: string, file: string): Promise<BaseRow | null> {
  // --occurrence=1 stops at the first manifest.json, the archive's first member.
  const r = await runTool("tar", ["-xOf", file, "--occurrence=1", MANIFEST]);
  let id: unknown;
  try {
    id = (JSON.parse(r.stdout) as Manifest).base?.id;
  } catch {
    return null;
  }
  if (typeof id !== "string" || !/^[0-9a-f]{64}$/.test(id)) return null;
  const b = await new Registry(home).findBaseById(id);
  return b && (await fsp.access(join(b.dir, "disk.raw")).then(() => true, () => false)) ? b : null;
}

/** Imports an exported base into `home`, verifying it completely (a base already here is recognised from the manifest alone). */
export async function importBase(core: Core, home: string, file: string, progress?: ProgressFn, signal?: AbortSignal): Promise<{ base: BaseRow; existed: boolean }> {
  await fsp.access(file).catch(() => {
    throw new CloudletError("MISSING_INPUT", "no such file", file);
  });
  // The manifest is the first member: a base that is already here is known from it, before the rest is read.
  const present = await alreadyPresent(home, file);
  if (present) return { base: present, existed: true };
  const list = await runTool("tar", ["-tf", file]);
  if (list.code !== 0) throw new CloudletError("BAD_INPUT", "not a cloudlet base export (not a tar archive)", file);
  const members = list.stdout.split("\n").filter(Boolean);
  const allowed = new Set([MANIFEST, "disk.raw", "memory.raw", "state.bin", BOOT_KERNEL, BOOT_INITRD]);
  const bad = members.find((m) => !allowed.has(m));
  if (bad || !members.includes(MANIFEST) || new Set(members).size !== members.length) throw new CloudletError("BAD_INPUT", `not a cloudlet base export (unexpected member ${JSON.stringify(bad ?? "no manifest, or a repeated one")})`, file);
  // Regular files only: a link member would make the import read (or later write) a file outside the archive.
  const verbose = await runTool("tar", ["-tvf", file]);
  const notFile = verbose.stdout.split("\n").filter(Boolean).find((l) => l[0] !== "-");
  if (verbose.code !== 0 || notFile) throw new CloudletError("BAD_INPUT", `not a cloudlet base export (a member is not a regular file: ${JSON.stringify(notFile ?? "")})`, file);
  const bases = homePaths(home).bases;
  await fsp.mkdir(bases, { recursive: true });
  const stage = await fsp.mkdtemp(join(bases, ".import-"));
  try {
    const x = await runTool("tar", ["--sparse", "--no-same-owner", "-xf", file, "-C", stage, ...members]);
    if (x.code !== 0) throw new CloudletError("BAD_INPUT", `the archive is damaged: ${x.stderr.trim().split("\n").pop()}`, file);
    let m: Manifest;
    try {
      m = JSON.parse(await fsp.readFile(join(stage, MANIFEST), "utf8")) as Manifest;
    } catch {
      throw new CloudletError("BAD_INPUT", "the archive's manifest is not valid JSON", file);
    }
    if (!m || m.format !== FORMAT || m.version !== 1) throw new CloudletError("BAD_INPUT", `unsupported export format ${m?.format} v${m?.version}`, file);
    m.base = checkManifestBase(m.base, file);
    if (!m.files || typeof m.files !== "object") throw new CloudletError("BAD_INPUT", "the archive's manifest lists no files", file);
    const total = baseFileNames(m.base).reduce((t, n) => t + (Number(m.files[n]?.size) || 0), 0);
    let done = 0;
    for (const n of baseFileNames(m.base)) {
      const want = Object.hasOwn(m.files, n) ? m.files[n] : undefined;
      const st = await fsp.stat(join(stage, n)).catch(() => null);
      if (!want || !st) throw new CloudletError("BAD_INPUT", `the archive lacks ${n}`, file);
      if (st.size !== want.size || (await hashFile(core, join(stage, n), progress, done, total)) !== want.blake3) throw new CloudletError("BAD_INPUT", `${n} in the archive is corrupt (size or hash mismatch)`, file);
      done += want.size;
    }
    // The id must follow from the images themselves, not just from the manifest.
    const opened = await openBase(core, { disk: join(stage, "disk.raw"), memory: join(stage, "memory.raw"), machine: m.base.machine, dir: stage, needIndex: false, progress, signal });
    await opened.close();
    if (opened.id !== m.base.id) throw new CloudletError("BAD_INPUT", `the images hash to base ${opened.id}, not the ${m.base.id} the manifest claims`, file);
    await fsp.rm(join(stage, MANIFEST));
    const final = join(bases, m.base.id);
    const existed = await fsp.access(final).then(() => true, () => false);
    if (!existed) await fsp.rename(stage, final);
    const base: BaseRow = { ...m.base, dir: final, source: `imported from ${basename(file)}` } as BaseRow;
    base.name = await new Registry(home).addBase(base, "suffix");
    return { base, existed };
  } finally {
    await fsp.rm(stage, { recursive: true, force: true });
  }
}
