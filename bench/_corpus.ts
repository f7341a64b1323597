/**
 * The benchmark corpus: real binaries from this machine, so that hashing and
 * xz see the byte mix a VM image holds (code, tables, text, some zero runs),
 * not synthetic noise. Built once and cached under `.build/bench-data/`
 * (gitignored); its SHA-256 identifies it in every report.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** Root of the repository. */
export const REPO = fileURLToPath(new URL("..", import.meta.url));
/** Where corpora and derived files are cached. */
export const DATA_DIR = join(REPO, ".build", "bench-data");
/** Directories the corpus is a tar of, in this order. */
export const CORPUS_SOURCES = ["/usr/lib/python3.11", "/usr/bin"];

/** A cached corpus file and what it holds. */
export interface Corpus {
  /** Path of the corpus file. */
  readonly path: string;
  /** Its size in bytes. */
  readonly bytes: number;
  /** Hex SHA-256 of the file: the identity of the data behind a report. */
  readonly sha256: string;
  /** One line saying what the bytes are. */
  readonly description: string;
  /** Bytes of tar member data per source directory, and of ELF files. */
  readonly composition: Record<string, number>;
}

/**
 * The first `mib` MiB of a deterministic tar (names sorted, fixed mtime and
 * owner) of {@link CORPUS_SOURCES}; made on first use, then reused as is.
 */
export function ensureCorpus(mib: number): Corpus {
  const bytes = mib << 20;
  const path = join(DATA_DIR, `corpus-${mib}MiB.tar`);
  if (!existsSync(path)) {
    mkdirSync(DATA_DIR, { recursive: true });
    const tmp = `${path}.part`;
    // tar is cut off by head (SIGPIPE), so only the size says whether it worked.
    const tar = `tar --sort=name --mtime='2024-01-01 00:00Z' --owner=0 --group=0 --numeric-owner -cf - ${CORPUS_SOURCES.join(" ")} 2>/dev/null`;
    execFileSync("bash", ["-c", `${tar} | head -c ${bytes} > '${tmp}'; true`]);
    if (statSync(tmp).size !== bytes) {
      rmSync(tmp, { force: true });
      throw new Error(`the tar of ${CORPUS_SOURCES.join(" ")} is smaller than ${mib} MiB: choose a smaller --size`);
    }
    renameSync(tmp, path);
  }
  const data = readFileSync(path);
  const sha256 = createHash("sha256").update(data).digest("hex");
  const composition = tarComposition(data);
  const pct = (n: number) => `${((100 * n) / data.length).toFixed(0)}%`;
  const parts = CORPUS_SOURCES.map((s) => `${s} ${pct(composition[s] ?? 0)}`).join(", ");
  const description =
    `first ${mib} MiB of a name-sorted tar of ${CORPUS_SOURCES.join(" + ")} (${parts}; ELF files ${pct(composition.elf ?? 0)}, ` +
    `tar headers/padding ${pct(data.length - (composition.files ?? 0))})`;
  return { path, bytes: data.length, sha256, description, composition };
}

/**
 * The `.xz` of a corpus made by the xz CLI at `preset` (single-threaded),
 * cached next to it. Decoders are benchmarked on this file, so they also
 * prove that they read what the reference tool writes.
 */
export function ensureXz(corpus: Corpus, preset: number): string {
  const path = corpus.path.replace(/\.tar$/, `.p${preset}.xz`);
  if (!existsSync(path) || statSync(path).mtimeMs < statSync(corpus.path).mtimeMs) {
    const tmp = `${path}.part`;
    execFileSync("bash", ["-c", `xz -z -T1 -${preset} -c '${corpus.path}' > '${tmp}'`]);
    renameSync(tmp, path);
  }
  return path;
}

/** Bytes of member data per source, of ELF members, and in all (a truncated last member counts what is present). */
function tarComposition(tar: Uint8Array): Record<string, number> {
  const out: Record<string, number> = { files: 0, elf: 0 };
  for (const s of CORPUS_SOURCES) out[s] = 0;
  const text = (a: number, b: number) => {
    const s = Buffer.from(tar.subarray(a, b)).toString("latin1");
    const nul = s.indexOf("\0");
    return nul < 0 ? s : s.slice(0, nul);
  };
  let longName: string | undefined;
  for (let o = 0; o + 512 <= tar.length; ) {
    if (tar[o] === 0) break; // end-of-archive block
    const size = parseInt(text(o + 124, o + 136).trim() || "0", 8);
    const type = String.fromCharCode(tar[o + 156] || 48);
    const prefix = text(o + 345, o + 500);
    const name = longName ?? (prefix ? `${prefix}/${text(o, o + 100)}` : text(o, o + 100));
    const body = o + 512;
    longName = undefined;
    if (type === "L") {
      longName = text(body, body + size);
    } else if (type === "0") {
      const present = Math.max(0, Math.min(size, tar.length - body));
      out.files += present;
      const src = CORPUS_SOURCES.find((s) => `/${name}`.startsWith(`${s}/`));
      if (src) out[src] += present;
      if (present >= 4 && tar[body] === 0x7f && tar[body + 1] === 0x45 && tar[body + 2] === 0x4c && tar[body + 3] === 0x46) out.elf += present;
    }
    o = body + Math.ceil(size / 512) * 512;
  }
  return out;
}
