/**
 * The registry of base VMs, in a SQLite database
 * (sql.js, SQLite compiled to WASM) at `<home>/registry.sqlite`.
 *
 * sql.js keeps the database in memory, so every write is read-modify-write
 * of the whole file: under an exclusive lock file (`registry.lock`, holding
 * the writer's pid; a dead holder's lock is taken over), the file is read,
 * changed, exported and renamed into place. Readers never see a half-written
 * database, and the CLI and the server can share one home.
 */
import { promises as fsp, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { homePaths } from "./paths.ts";
import initSqlJs, { type Database, type SqlJsStatic } from "sql.js";
import { CloudletError } from "../errors.ts";
import { matchIdPrefix } from "../core/ids.ts";
import type { MachineConfig } from "../overlay/format.ts";
import { AtomicFile } from "../node/files.ts";
import { acquirePidLock } from "../node/pid_lock.ts";

/** Files that boot a guest kernel directly (the built-in guest); null for BIOS boot of the disk. */
export interface BootFiles {
  /** Kernel image, relative to the base directory. */
  kernel: string;
  /** Initramfs, relative to the base directory. */
  initrd: string;
  /** Kernel command line. */
  append: string;
}

/** A base VM in the registry. */
export interface BaseRow {
  /** Base id (hex). */
  id: string;
  /** A short name the user can use instead of the id. */
  name: string;
  /** ISO time of creation. */
  created: string;
  /** Directory holding disk.raw, memory.raw, state.bin and the prepared index. */
  dir: string;
  /** Base disk bytes. */
  diskSize: number;
  /** Base memory bytes. */
  memorySize: number;
  /** Machine config. */
  machine: MachineConfig;
  /** Virtual CPUs (a snapshot restores only with the same count). */
  vcpus: number;
  /** Direct-boot files, if any. */
  boot: BootFiles | null;
  /** Which host adapter made the snapshot (snapshots are not portable between them). */
  host: "qemu" | "virsh";
  /** Where the disk came from. */
  source: string;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS bases (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, created TEXT NOT NULL, dir TEXT NOT NULL,
  disk_size INTEGER NOT NULL, memory_size INTEGER NOT NULL, machine TEXT NOT NULL, vcpus INTEGER NOT NULL,
  boot TEXT, host TEXT NOT NULL, source TEXT NOT NULL);
`;

/** What a base name may look like (it is used on command lines and in file names). */
export const BASE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** A default base name made from a file name: the allowed characters only. */
export function baseNameFrom(fileName: string): string {
  const n = fileName.replace(/\.(raw|img)$/, "").replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 64);
  return n || "base";
}

let sqlPromise: Promise<SqlJsStatic> | undefined;
function sql(): Promise<SqlJsStatic> {
  // Load the .wasm from bytes: Node 20 cannot fetch file: URLs.
  sqlPromise ??= initSqlJs({ wasmBinary: readFileSync(createRequire(import.meta.url).resolve("sql.js/dist/sql-wasm.wasm")) as unknown as ArrayBuffer });
  return sqlPromise;
}

/** The registry of one cloudlet home. */
export class Registry {
  readonly file: string;
  readonly lockFile: string;
  /** @param home the cloudlet home */
  constructor(readonly home: string) {
    ({ registry: this.file, registryLock: this.lockFile } = homePaths(home));
  }

  private async load(): Promise<Database> {
    const SQL = await sql();
    let bytes: Uint8Array | undefined;
    try {
      bytes = new Uint8Array(await fsp.readFile(this.file));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw new CloudletError("MISSING_INPUT", `cannot read the registry: ${(e as Error).message}`, this.file);
    }
    let db: Database;
    try {
      db = new SQL.Database(bytes);
      db.exec(SCHEMA);
    } catch (e) {
      throw new CloudletError("BAD_INPUT", `the registry database is damaged (${(e as Error).message})`, this.file);
    }
    return db;
  }

  private lock(timeoutMs = 15000): Promise<() => Promise<void>> {
    return acquirePidLock(this.lockFile, timeoutMs, (holder) => new CloudletError("OUTPUT_FAILED", `the registry is locked by process ${holder}; try again when it finishes`, this.lockFile));
  }

  /** Runs `fn` on a private copy of the database, for reading. */
  async read<T>(fn: (db: Database) => T): Promise<T> {
    const db = await this.load();
    try {
      return fn(db);
    } finally {
      db.close();
    }
  }

  /** Runs `fn` under the lock and saves the result atomically. */
  async write<T>(fn: (db: Database) => T): Promise<T> {
    const unlock = await this.lock();
    try {
      const db = await this.load();
      try {
        const r = fn(db);
        const f = await AtomicFile.create(this.file);
        try {
          await f.write(db.export(), 0);
          await f.commit();
        } catch (e) {
          await f.abort();
          throw e;
        }
        return r;
      } finally {
        db.close();
      }
    } finally {
      await unlock();
    }
  }

  /** All bases, newest first. */
  listBases(): Promise<BaseRow[]> {
    return this.read((db) => rows(db, "SELECT * FROM bases ORDER BY created DESC").map(toBase));
  }

  /** Finds a base by id, name, or unique id prefix (an ambiguous prefix's error says how many characters are needed). */
  async getBase(ref: string): Promise<BaseRow> {
    const all = await this.listBases();
    const named = all.find((b) => b.id === ref) ?? all.find((b) => b.name === ref);
    if (named) return named;
    const id = matchIdPrefix(ref, all.map((b) => b.id), "base", "cloudlet list-base");
    if (id) return all.find((b) => b.id === id)!;
    throw new CloudletError("BASE_UNKNOWN", `no base "${ref}" in ${this.home} (see cloudlet list-base)`);
  }

  /** The base with id `id`, or null: how an overlay's base is found when no base is given. */
  async findBaseById(id: string): Promise<BaseRow | null> {
    return (await this.listBases()).find((b) => b.id === id) ?? null;
  }

  /**
   * Adds (or replaces) a base and returns the name it is stored under. Names
   * are unique: a name another base holds is refused (`onTaken: "fail"`, for
   * a name the user chose) or gets a `-2`, `-3`, ... suffix (`"suffix"`, for
   * a default or imported name).
   */
  async addBase(b: BaseRow, onTaken: "fail" | "suffix" = "fail"): Promise<string> {
    if (!BASE_NAME_RE.test(b.name)) throw new CloudletError("BAD_ARGUMENT", `base name "${b.name}" is not allowed: use 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit`);
    return this.write((db) => {
      const taken = (n: string) => db.exec("SELECT id FROM bases WHERE name = ? AND id != ?", [n, b.id]).length > 0;
      let name = b.name;
      if (taken(name)) {
        if (onTaken === "fail") throw new CloudletError("BAD_ARGUMENT", `a base named "${name}" already exists in ${this.home}: choose another --name, or del-base it first`);
        for (let i = 2; taken(name); i++) name = `${b.name.slice(0, 58)}-${i}`;
      }
      db.run("INSERT OR REPLACE INTO bases VALUES (?,?,?,?,?,?,?,?,?,?,?)", [b.id, name, b.created, b.dir, b.diskSize, b.memorySize, JSON.stringify(b.machine), b.vcpus, b.boot ? JSON.stringify(b.boot) : null, b.host, b.source]);
      return name;
    });
  }

  /** Removes a base; true when it existed. */
  removeBase(id: string): Promise<boolean> {
    return this.write((db) => {
      db.run("DELETE FROM bases WHERE id = ?", [id]);
      return db.getRowsModified() > 0;
    });
  }
}

type Row = Record<string, number | string | null>;

function rows(db: Database, q: string): Row[] {
  const res = db.exec(q);
  if (!res.length) return [];
  const { columns, values } = res[0];
  return values.map((v) => Object.fromEntries(columns.map((c, i) => [c, v[i] as number | string | null])));
}

function toBase(r: Row): BaseRow {
  return {
    id: String(r.id),
    name: String(r.name),
    created: String(r.created),
    dir: String(r.dir),
    diskSize: Number(r.disk_size),
    memorySize: Number(r.memory_size),
    machine: JSON.parse(String(r.machine)),
    vcpus: Number(r.vcpus),
    boot: r.boot ? JSON.parse(String(r.boot)) : null,
    host: r.host === "virsh" ? "virsh" : "qemu",
    source: String(r.source),
  };
}
