/**
 * A base made of small generated images, registered in a home directly (no
 * VM boots), a file-mode overlay on it cut in 64 KiB segments, and a
 * `cloudlet serve` on that home: what the server and CLI tests that need a
 * base in the registry share.
 */
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { spawn, type ChildProcess } from "node:child_process";
import { cloudlet, CLOUDLET } from "./_cli.ts";
import { scratchDir, writeImageSet, type ImageSet } from "./_images.ts";
import { core } from "./_core.ts";
import { decodeMeta, decodePackHeader, HEADER_BYTES, type OverlayMeta } from "../ts/overlay/format.ts";
import { Registry } from "../ts/home/registry.ts";

/** Options for {@link registeredBase}. */
export interface RegisteredBaseOptions {
  /** Names the scratch folder. */
  name: string;
  /** Seed of the generated images (each test file its own, so their bases differ). */
  seed: number;
  /** Written to `tokenFile` for `cloudlet serve --token-file`. */
  token: string;
  /** Also give the base a stand-in device state (`state.bin`), so that export-base can pack it. */
  deviceState?: boolean;
}

/** What {@link registeredBase} made. */
export interface RegisteredBase {
  /** The scratch folder holding all of it. */
  dir: string;
  /** The home where the base is registered (name "gen"). */
  home: string;
  tokenFile: string;
  /** The packed overlay file, its bytes and its metadata. */
  overlay: string;
  bytes: Uint8Array;
  meta: OverlayMeta;
  /** Header + meta: the body of a session's meta step. */
  headAndMeta: Uint8Array;
  /** Segment data. */
  data: Uint8Array;
  /** The generated images (the base's, and the customised ones the overlay rebuilds). */
  images: ImageSet;
}

/** Generates the images, makes the overlay with the CLI, and registers its base in a new home. */
export async function registeredBase(o: RegisteredBaseOptions): Promise<RegisteredBase> {
  const dir = await scratchDir(o.name);
  const home = join(dir, "home");
  await fsp.mkdir(home, { recursive: true });
  const images = await writeImageSet(join(dir, "img"), o.seed, 1 << 20, 1 << 20, 30);
  const overlay = join(dir, "app.overlay");
  const r = await cloudlet(["overlay", "--home", home, "--base-disk", images.baseDisk, "--base-mem", images.baseMem, "--disk", images.disk, "--mem", images.mem, "--segment-size", "64K", "-o", overlay]);
  assert.equal(r.code, 0, r.stderr);
  const bytes = new Uint8Array(await fsp.readFile(overlay));
  const head = decodePackHeader(core, bytes.subarray(0, HEADER_BYTES), overlay);
  const meta = decodeMeta(core, bytes.subarray(HEADER_BYTES, HEADER_BYTES + head.metaLength), overlay);
  const baseDir = join(home, "bases", meta.base.id);
  await fsp.mkdir(baseDir, { recursive: true });
  await fsp.copyFile(images.baseDisk, join(baseDir, "disk.raw"));
  await fsp.copyFile(images.baseMem, join(baseDir, "memory.raw"));
  if (o.deviceState) await fsp.writeFile(join(baseDir, "state.bin"), "device state stand-in\n");
  await new Registry(home).addBase({ id: meta.base.id, name: "gen", created: new Date().toISOString(), dir: baseDir, diskSize: meta.base.diskSize, memorySize: meta.base.memorySize, machine: meta.base.machine, vcpus: 1, boot: null, host: "qemu", source: "test" });
  const tokenFile = join(dir, "token");
  await fsp.writeFile(tokenFile, o.token + "\n", { mode: 0o600 });
  return { dir, home, tokenFile, overlay, bytes, meta, headAndMeta: bytes.subarray(0, head.dataOffset), data: bytes.subarray(head.dataOffset), images };
}

/** A running `cloudlet serve`. */
export interface Served {
  port: number;
  child: ChildProcess;
  /** What the server printed on stderr so far. */
  log: () => string;
  /** Ends it with SIGINT (unless it has exited) and waits for it. */
  stop(): Promise<void>;
}

/** Starts `cloudlet serve` for `home` on a free loopback port, with `extra` arguments. */
export async function serve(s: { home: string; tokenFile: string }, extra: string[] = []): Promise<Served> {
  const child = spawn(CLOUDLET, ["serve", "--home", s.home, "--listen", "127.0.0.1:0", "--token-file", s.tokenFile, "--no-announce", ...extra], { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (log += d));
  const exited = new Promise<void>((r) => child.on("close", () => r()));
  for (let i = 0; i < 200 && !/listening on/.test(log); i++) await new Promise((r) => setTimeout(r, 100));
  const m = /listening on https?:\/\/[^:]+:(\d+)/.exec(log);
  assert.ok(m, `server did not start: ${log}`);
  return {
    port: Number(m[1]),
    child,
    log: () => log,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGINT");
      await exited;
    },
  };
}
