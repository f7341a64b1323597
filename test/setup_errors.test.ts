// A machine that is not set up gets a typed error that says what to run,
// with its own exit code — never "internal error (please report)", exit 70:
// a missing .wasm build (a copy of the CLI without it; the real build is
// left alone), a missing host tool, a /dev/kvm without the kvm group's
// permission (a device node of our own; the real /dev/kvm is left alone).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, chmodSync, chownSync, mkdirSync, realpathSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { cloudlet, CLOUDLET } from "./_cli.ts";
import { scratchDir } from "./_images.ts";
import { CloudletError, exitCodeOf } from "../ts/errors.ts";
import { requireExecutable, requireKvmAccess, runCommand } from "../ts/node/command.ts";
import { runToolOk } from "../ts/node/process.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const GOLDEN = join(ROOT, "test/golden/v1/golden.overlay");
const isRoot = process.getuid?.() === 0;
const isCode = (code: string, message: RegExp) => (e: unknown) => {
  // By name: a copy of the tree has its own CloudletError class.
  assert.ok(e instanceof Error && e.name === "CloudletError", String(e));
  assert.equal((e as CloudletError).code, code);
  assert.match((e as CloudletError).userMessage, message);
  return true;
};

/** A copy of the command's sources without the WASM build (`keepGlue`: with the wasm-bindgen glue, without the .wasm). */
async function unbuiltCopy(name: string, keepGlue: boolean): Promise<string> {
  const dir = await scratchDir(name);
  for (const d of ["bin", "cli", "ts"]) {
    cpSync(join(ROOT, d), join(dir, d), { recursive: true, filter: (src) => !/\/ts\/(core\/_wasm|component\/_gen)(\/|$)/.test(src) });
  }
  for (const f of ["package.json", "deno.json"]) cpSync(join(ROOT, f), join(dir, f));
  symlinkSync(realpathSync(join(ROOT, "node_modules")), join(dir, "node_modules"));
  if (keepGlue) {
    mkdirSync(join(dir, "ts/core/_wasm"));
    for (const f of ["cloudlet_core.js", "cloudlet_core.d.ts"]) cpSync(join(ROOT, "ts/core/_wasm", f), join(dir, "ts/core/_wasm", f));
  }
  return dir;
}

/** Runs the copy's command (Node's, or Deno's under deno test, like _cli.ts). */
function runCopy(dir: string, args: string[]) {
  const r = spawnSync(join(dir, "bin", CLOUDLET.endsWith("-deno") ? "cloudlet-deno" : "cloudlet"), args, { encoding: "utf8" });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("exit codes: a setup problem has its own, after sysexits.h", () => {
  assert.equal(exitCodeOf("TOOL_MISSING"), 69);
  assert.equal(exitCodeOf("KVM_PERMISSION"), 77);
  assert.equal(exitCodeOf("NOT_BUILT"), 78);
  assert.equal(exitCodeOf("BAD_ARGUMENT"), 2);
  assert.equal(exitCodeOf("CANCELLED"), 130);
  assert.equal(exitCodeOf("BAD_META"), 1);
  assert.equal(exitCodeOf("HOST_TOOL"), 1);
});

test("no WASM build: --help still works; a command says to run scripts/setup.sh, NOT_BUILT, exit 78", async () => {
  const dir = await unbuiltCopy("unbuilt", false);
  const help = runCopy(dir, ["--help"]);
  assert.equal(help.code, 0, help.stderr);
  assert.match(help.stdout, /inspect <overlay>/);
  const glue = join(dir, "ts/core/_wasm/cloudlet_core.js");
  const r = runCopy(dir, ["inspect", GOLDEN]);
  assert.equal(r.code, 78, r.stderr);
  assert.equal(r.stderr, `cloudlet: ${glue}: the WASM core is not built: run scripts/setup.sh (or scripts/build-wasm.sh)\n`);
  const j = runCopy(dir, ["inspect", GOLDEN, "--json"]);
  assert.equal(j.code, 78);
  assert.deepEqual(JSON.parse(j.stdout), { error: { code: "NOT_BUILT", message: "the WASM core is not built: run scripts/setup.sh (or scripts/build-wasm.sh)", file: glue } });
  // The component's loader says the same of its build.
  const { loadComponentCoreFromDisk } = await import(join(dir, "ts/node/component_file.ts"));
  await assert.rejects(loadComponentCoreFromDisk(), isCode("NOT_BUILT", /_gen\/cloudlet_core\.js: the core component is not built: run scripts\/setup\.sh/));
});

test("the glue built but not the .wasm: NOT_BUILT names the .wasm", async () => {
  const dir = await unbuiltCopy("unbuilt-glue", true);
  const r = runCopy(dir, ["inspect", GOLDEN]);
  assert.equal(r.code, 78, r.stderr);
  assert.equal(r.stderr, `cloudlet: ${join(dir, "ts/core/_wasm/cloudlet_core_bg.wasm")}: the WASM core is not built: run scripts/setup.sh (or scripts/build-wasm.sh)\n`);
});

test("a missing tool: TOOL_MISSING naming the package and setup, exit 69", async () => {
  assert.throws(() => requireExecutable("cloudlet-no-such-tool"), isCode("TOOL_MISSING", /^cloudlet-no-such-tool not found: apt-get install cloudlet-no-such-tool \(scripts\/setup\.sh installs every tool cloudlet runs\)$/));
  await assert.rejects(runCommand("cloudlet-no-such-tool", []), isCode("TOOL_MISSING", /not found/));
  // The other runner (qemu-img for disk images, tar for base archives) says the same.
  await assert.rejects(runToolOk("/nonexistent/qemu-img", ["map"]), isCode("TOOL_MISSING", /^\/nonexistent\/qemu-img not found: apt-get install qemu-utils \(scripts\/setup\.sh/));
  assert.throws(() => requireExecutable("/nonexistent/qemu-img"), isCode("TOOL_MISSING", /^\/nonexistent\/qemu-img not found: apt-get install qemu-utils /));
  // The command, on a PATH that holds only what its launcher needs: building
  // the guest needs apt-get first (root only; as another user it says so first).
  const path = await scratchDir("path");
  for (const t of ["dirname", "readlink"]) symlinkSync(`/usr/bin/${t}`, join(path, t));
  symlinkSync(process.execPath, join(path, "node"));
  const r = await cloudlet(["guest", "--home", await scratchDir("guest-home"), "--json"], { env: { PATH: path } });
  if (!isRoot) return;
  assert.equal(r.code, 69, r.stderr);
  assert.equal(JSON.parse(r.stdout).error.code, "TOOL_MISSING");
  assert.match(r.stderr, /^cloudlet: apt-get not found: apt-get install apt \(scripts\/setup\.sh installs every tool cloudlet runs\)\n$/);
});

test("/dev/kvm without the kvm group's read-write: KVM_PERMISSION saying what to run", { skip: !isRoot && "mknod needs root" }, async () => {
  const dir = await scratchDir("kvm");
  chmodSync(dir, 0o755);
  const device = join(dir, "kvm");
  // The real /dev/kvm's numbers; only its inode is looked at.
  const made = spawnSync("mknod", [device, "c", "10", "232"]);
  assert.equal(made.status, 0, String(made.stderr));
  const groups = join(dir, "group");
  writeFileSync(groups, "root:x:0:\nkvm:x:107:\n");
  chmodSync(device, 0o600);
  assert.throws(
    () => requireKvmAccess({ device, groupFile: groups }),
    isCode("KVM_PERMISSION", new RegExp(`^${device}: has group id 0 and mode 0600, but libvirt and KVM guests need group kvm \\(107\\) with read-write access: run scripts/setup.sh \\(or: chgrp kvm ${device} && chmod 0660 ${device}\\)$`)),
  );
  chownSync(device, 0, 107);
  assert.throws(() => requireKvmAccess({ device, groupFile: groups }), isCode("KVM_PERMISSION", /mode 0600/));
  chmodSync(device, 0o660);
  requireKvmAccess({ device, groupFile: groups });
  requireKvmAccess({ device, groupFile: groups, open: true });
  // Nothing to check: no kvm group, no device, or not a device.
  writeFileSync(join(dir, "nokvm"), "root:x:0:\n");
  chmodSync(device, 0o600);
  requireKvmAccess({ device, groupFile: join(dir, "nokvm") });
  requireKvmAccess({ device: join(dir, "absent"), groupFile: groups });
  writeFileSync(join(dir, "plain"), "");
  requireKvmAccess({ device: join(dir, "plain"), groupFile: groups });
  // A user outside group kvm may not open a correct device, for a KVM guest.
  chmodSync(device, 0o660);
  const probe = `import { requireKvmAccess } from ${JSON.stringify(join(ROOT, "ts/node/command.ts"))};
try { requireKvmAccess({ device: ${JSON.stringify(device)}, groupFile: ${JSON.stringify(groups)}, open: true }); console.log("opened"); } catch (e) { console.log(e.code + " " + e.message); }`;
  const runtime = "Deno" in globalThis ? [join(ROOT, "node_modules/@deno/linux-x64-glibc/deno"), "eval", "--quiet", probe] : [process.execPath, "--import", "tsx", "--input-type=module", "-e", probe];
  const r = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", ...runtime], { encoding: "utf8", cwd: ROOT, env: { ...process.env, HOME: dir, DENO_DIR: join(dir, "deno") } });
  assert.equal(r.stdout.trim(), "KVM_PERMISSION this user may not open it for a KVM guest: add the user to group kvm (usermod -aG kvm USER, then log in again), or use the default TCG (unset CLOUDLET_ACCEL)", r.stderr);
});
