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
import { join } from "node:path";
import initSqlJs, { type Database, type SqlJsStatic } from "sql.js";
import { CloudletError } from "../errors.ts";
import type { MachineConfig } from "../overlay/format.ts";
import { AtomicFile, outputError } from "./files.ts";

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

let sqlPromise: Promise<SqlJsStatic> | undefined;
function sql(): Promise<SqlJsStatic> {
  // Load the .wasm from bytes: Node 20 cannot fetch file: URLs.
  sqlPromise ??= initSqlJs({ wasmBinary: readFileSync(createRequire(import.meta.url).resolve("sql.js/dist/sql-wasm.wasm")) as unknown as ArrayBuffer });
  return sqlPromise;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** The registry of one cloudlet home. */
export class Registry {
  readonly file: string;
  readonly lockFile: string;
  /** @param home the cloudlet home */
  constructor(readonly home: string) {
    this.file = join(home, "registry.sqlite");
    this.lockFile = join(home, "registry.lock");
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

  private async lock(timeoutMs = 15000): Promise<() => Promise<void>> {
    await fsp.mkdir(this.home, { recursive: true }).catch((e) => {
      throw outputError(e, this.home);
    });
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const fh = await fsp.open(this.lockFile, "wx");
        await fh.writeFile(String(process.pid));
        await fh.close();
        return () => fsp.rm(this.lockFile, { force: true });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw outputError(e, this.lockFile);
      }
      const holder = Number(await fsp.readFile(this.lockFile, "utf8").catch(() => "0"));
      if (holder && !pidAlive(holder)) {
        // The writer died holding the lock: its write never landed (rename is atomic).
        await fsp.rm(this.lockFile, { force: true });
        continue;
      }
      if (Date.now() > deadline) throw new CloudletError("OUTPUT_FAILED", `the registry is locked by process ${holder}; try again when it finishes`, this.lockFile);
      await new Promise((r) => setTimeout(r, 25 + Math.random() * 50));
    }
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

  /** Finds a base by id, unique id prefix (>= 6 hex digits), or name. */
  async getBase(ref: string): Promise<BaseRow> {
    const all = await this.listBases();
    const hits = all.filter((b) => b.id === ref || b.name === ref || (ref.length >= 6 && b.id.startsWith(ref)));
    if (hits.length === 1) return hits[0];
    if (hits.length > 1) throw new CloudletError("BASE_UNKNOWN", `"${ref}" matches ${hits.length} bases; use more of the id`);
    throw new CloudletError("BASE_UNKNOWN", `no base "${ref}" in ${this.home} (see cloudlet list-base)`);
  }

  /** Adds (or replaces) a base. */
  addBase(b: BaseRow): Promise<void> {
    return this.write((db) => {
      db.run("INSERT OR REPLACE INTO bases VALUES (?,?,?,?,?,?,?,?,?,?,?)", [b.id, b.name, b.created, b.dir, b.diskSize, b.memorySize, JSON.stringify(b.machine), b.vcpus, b.boot ? JSON.stringify(b.boot) : null, b.host, b.source]);
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
