/** Output folders that appear whole or not at all: written under a hidden part name, renamed into place. */
import { processAlive } from "./process.ts";
import { promises as fsp } from "node:fs";
import { hostname } from "node:os";
import { basename, dirname, join, resolve, sep } from "node:path";
import { CloudletError } from "../errors.ts";
import { outputError } from "./files.ts";

/** The final name of a temporary part file (`DIR/.NAME.part-PID-HEX` -> `DIR/NAME`); other paths as they are. */
export function finalName(path: string): string {
  const m = /^\.(.+)\.part-\d+-[0-9a-f]+$/.exec(basename(path));
  return m ? join(dirname(path), m[1]) : path;
}

/** `child` is `parent` or lies inside it (both real, absolute paths). */
function insideOrSame(child: string, parent: string): boolean {
  return child === parent || child.startsWith(parent.endsWith(sep) ? parent : parent + sep);
}

/** The real path of `path`, following symlinks; for a path that does not exist yet, that of its nearest existing ancestor joined with the rest. */
export async function plannedRealPath(path: string): Promise<string> {
  const rest: string[] = [];
  for (let head = resolve(path); ; ) {
    try {
      return join(await fsp.realpath(head), ...rest);
    } catch {
      const up = dirname(head);
      if (up === head) return resolve(path);
      rest.unshift(basename(head));
      head = up;
    }
  }
}

/**
 * Refuses an output directory that is, contains or lies inside an input
 * file, or that is or contains one of `homes` (the cloudlet home, a prepared
 * base): --force replaces the whole directory, and must never delete an
 * input. Real paths are compared, so symlinks do not hide an input.
 */
export async function refuseOutputOverInputs(outDir: string, inputs: string[], homes: string[] = []): Promise<void> {
  const out = await plannedRealPath(outDir);
  const real = async (p: string) => fsp.realpath(p).catch(() => null); // a label (a network overlay) or a missing file is no file to lose
  for (const [list, alsoInside] of [[inputs, true], [homes, false]] as const) {
    for (const input of new Set(list)) {
      const r = await real(input);
      if (!r) continue;
      if (insideOrSame(r, out) || (alsoInside && insideOrSame(out, r))) {
        throw new CloudletError("BAD_ARGUMENT", `the output directory ${r === out ? "is" : insideOrSame(r, out) ? "contains" : "lies inside"} the input ${input}: writing it would replace that input; choose another -o`, outDir);
      }
    }
  }
}


/** The temporary-directory prefix of a run into `outDir`: it records this host and process, so a later run can tell a dead run's leftovers. */
function partPrefix(outDir: string): string {
  return `.${basename(outDir)}.part-${hostname().replace(/[^A-Za-z0-9.]/g, "_")}@${process.pid}-`;
}

/**
 * Removes the temporary directories that killed runs into `outDir` left
 * beside it: only those made on this host by a process that no longer
 * runs (see docs/decisions.md). Best effort: a failure leaves them.
 */
async function removeDeadParts(outDir: string): Promise<void> {
  const name = basename(outDir);
  const host = hostname().replace(/[^A-Za-z0-9.]/g, "_");
  const escaped = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const re = new RegExp(`^\\.${escaped(name)}\\.part-${escaped(host)}@(\\d+)-[A-Za-z0-9]{6}(\\.old)?$`);
  const entries = await fsp.readdir(dirname(outDir)).catch(() => [] as string[]);
  for (const e of entries) {
    const m = re.exec(e);
    if (m && Number(m[1]) !== process.pid && !processAlive(Number(m[1]))) await fsp.rm(join(dirname(outDir), e), { recursive: true, force: true }).catch(() => {});
  }
}

/** Checks the output directory and makes a temporary sibling to build in. */
export async function prepareOutputDir(outDir: string, force: boolean): Promise<string> {
  try {
    const entries = await fsp.readdir(outDir).catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return [] as string[];
      throw e;
    });
    if (entries.length && !force) throw new CloudletError("OUTPUT_FAILED", "output directory is not empty (use --force to replace it)", outDir);
    await fsp.mkdir(dirname(outDir), { recursive: true });
    await removeDeadParts(outDir);
    const tmp = await fsp.mkdtemp(join(dirname(outDir), partPrefix(outDir)));
    // The directory becomes the output: give it normal permissions (mkdtemp makes 0700).
    await fsp.chmod(tmp, 0o755);
    return tmp;
  } catch (e) {
    throw outputError(e, outDir);
  }
}

/** Writes a small file of an output and flushes it to disk (the images flush as they commit). */
export async function writeFileDurable(path: string, data: string | Uint8Array): Promise<void> {
  const fh = await fsp.open(path, "w");
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Flushes a directory's entries to disk (its files' names, a rename into it).
 * Only file systems that cannot sync a directory are passed over.
 */
async function syncDir(dir: string): Promise<void> {
  let fh: Awaited<ReturnType<typeof fsp.open>> | null = null;
  try {
    fh = await fsp.open(dir, "r");
    await fh.sync();
  } catch (e) {
    if (!["EINVAL", "EISDIR", "ENOTSUP", "EBADF", "EPERM", "EACCES"].includes((e as NodeJS.ErrnoException).code ?? "")) throw e;
  } finally {
    await fh?.close();
  }
}

/**
 * Moves the finished temporary directory into place: its entries are on disk
 * before the rename, and the rename is on disk before this returns, so a
 * power cut leaves either no output or a whole one.
 */
export async function finishOutputDir(tmpDir: string, outDir: string): Promise<void> {
  try {
    await syncDir(tmpDir);
    const old = `${tmpDir}.old`;
    const had = await fsp.rename(outDir, old).then(() => true, () => false);
    await fsp.rename(tmpDir, outDir);
    await syncDir(dirname(outDir));
    if (had) await fsp.rm(old, { recursive: true, force: true });
  } catch (e) {
    throw outputError(e, outDir);
  }
}
