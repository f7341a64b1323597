// The seed's whole flow on real VMs, through the CLI, with both host adapters:
// base on the built-in guest -> overlay with a customisation script -> synthesis,
// then checks from the host: the custom page through the forwarded port, the file,
// and a counter that kept counting (resumed, not rebooted). Then export/import of a
// base into another home, and the error paths, each leaving no process or file behind.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { promises as fsp } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { cloudlet, CLOUDLET } from "./_cli.ts";
import { runTool } from "./_tools.ts";
import { addCachedBase, ensureLibvirtd, freshHome, get, ok, qemuCount, TEST_HOME, untilAnswer, WEBAPP } from "./_vm_fixture.ts";

/** Nothing left behind: no temporary base, run or VM directory, no QEMU of this home. */
async function clean(home: string): Promise<void> {
  const bases = await fsp.readdir(join(home, "bases")).catch(() => [] as string[]);
  assert.deepEqual(bases.filter((n) => n.startsWith(".")), [], "no temporary base directories");
  assert.deepEqual(await fsp.readdir(join(home, "runs")).catch(() => []), [], "no run directories");
  assert.equal(await qemuCount(home), 0, "no QEMU left running");
}

for (const host of ["qemu", "virsh"] as const) {
  test(`the whole flow with --host ${host}: base, overlay with a script, synthesis that resumes`, async () => {
    if (host === "virsh") await ensureLibvirtd();
    const home = await freshHome(`flow-${host}`);
    const H = ["--home", home, "--host", host];
    const base = ok(await cloudlet(["base", ...H, "--name", "tiny", "--json"]));
    assert.match(base.id, /^[0-9a-f]{64}$/);
    const listed = ok(await cloudlet(["list-base", "--home", home, "--json"]));
    assert.equal(listed[0].id, base.id);
    const ovPath = join(home, "webapp.overlay");
    const ov = ok(await cloudlet(["overlay", "tiny", ...H, "--script", WEBAPP, "-o", ovPath, "--json", "--", "-redir", "tcp:0::80"]));
    assert.equal(ov.baseId, base.id);
    assert.deepEqual(ov.launch.portForwards, [{ proto: "tcp", hostPort: 0, guestPort: 80 }]);
    const vm = ok(await cloudlet(["synthesis", "tiny", ovPath, ...H, "--json"]));
    try {
      const port = vm.ports[0].hostPort;
      const page = await untilAnswer(`http://127.0.0.1:${port}/`);
      assert.match(page, /Hello from a synthesized cloudlet VM/);
      const s1 = await get(`http://127.0.0.1:${port}/cgi-bin/status`);
      assert.match(s1, /created .* by the customisation script/, "the file written before the snapshot is there");
      const c1 = Number(/counter=(\d+)/.exec(s1)?.[1]);
      await new Promise((r) => setTimeout(r, 2500));
      const c2 = Number(/counter=(\d+)/.exec(await get(`http://127.0.0.1:${port}/cgi-bin/status`))?.[1]);
      // The counter was started by the script before the snapshot and keeps counting: a
      // rebooted guest would have neither the counter nor the HTTP server.
      assert.ok(c1 >= 1 && c2 > c1, `counter continued: ${c1} then ${c2}`);
      const ps = ok(await cloudlet(["ps", "--home", home, "--json"]));
      assert.deepEqual(ps.map((v: { id: string; state: string }) => [v.id, v.state]), [[vm.vmId, "running"]]);
      const verify = ok(await cloudlet(["synthesis", "tiny", ovPath, ...H, "--no-run", "--json"]));
      assert.equal(verify.verified, true);
    } finally {
      ok(await cloudlet(["stop", vm.vmId, "--home", home, "--json"]));
    }
    assert.equal(await get(`http://127.0.0.1:${vm.ports[0].hostPort}/`), "", "stopped VM no longer answers");
    await clean(home);
    if (host === "qemu") await exportImport(home, ovPath);
    await fsp.rm(home, { recursive: true, force: true });
  });
}

/** export-base, import-base into another home, synthesis there. */
async function exportImport(home: string, ovPath: string): Promise<void> {
  const file = join(home, "tiny.base");
  ok(await cloudlet(["export-base", "tiny", file, "--home", home, "--json"]));
  const other = await freshHome("flow-import");
  const imported = ok(await cloudlet(["import-base", file, "--home", other, "--json"]));
  assert.equal(imported.name, "tiny");
  const vm = ok(await cloudlet(["synthesis", imported.id.slice(0, 12), ovPath, "--home", other, "--json"]));
  try {
    assert.match(await untilAnswer(`http://127.0.0.1:${vm.ports[0].hostPort}/`), /Hello from a synthesized cloudlet VM/);
  } finally {
    ok(await cloudlet(["stop", vm.vmId, "--home", other, "--json"]));
  }
  // A damaged export is refused and registers nothing.
  const bytes = new Uint8Array(await fsp.readFile(file));
  bytes[bytes.length >> 1] ^= 0xff;
  const bad = join(home, "bad.base");
  await fsp.writeFile(bad, bytes);
  const third = await freshHome("flow-import-bad");
  const r = await cloudlet(["import-base", bad, "--home", third]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /corrupt|damaged|mismatch/);
  assert.deepEqual(ok(await cloudlet(["list-base", "--home", third, "--json"])), []);
  for (const h of [other, third]) await fsp.rm(h, { recursive: true, force: true });
}

test("errors: unknown base, disk not raw, port in use, guest never ready, VM dies, Ctrl-C, libvirtd down, remote libvirt", async () => {
  const home = await freshHome("flow-errors");
  const H = ["--home", home];
  const unknown = await cloudlet(["synthesis", "nosuchbase", WEBAPP, ...H]);
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /no base "nosuchbase"/);

  const qcow = join(home, "disk.qcow2");
  await runTool("qemu-img", ["create", "-q", "-f", "qcow2", qcow, "64M"]);
  const notRaw = await cloudlet(["base", qcow, "--ready-marker", "x", ...H]);
  assert.equal(notRaw.code, 1);
  assert.match(notRaw.stderr, /disk\.qcow2: the disk is qcow2, not raw/);

  // The guest never prints the marker: the timeout shows the tail of the serial log.
  const guestRootfs = join(TEST_HOME, "guest", "image", "rootfs.raw");
  const never = await cloudlet(["base", guestRootfs, "--ready-marker", "THIS-NEVER-APPEARS", "--timeout", "6", ...H]);
  assert.equal(never.code, 1);
  assert.match(never.stderr, /the guest did not print "THIS-NEVER-APPEARS" within 6 s; (last serial output:\n.+|the serial log is empty)/s);
  assert.doesNotMatch(never.stderr, /\bat .*\.ts:\d+/);
  await clean(home);

  // A working base and overlay for the rest: the base from the fixture cache (the flow tests above make theirs).
  await addCachedBase(home);
  const ovPath = join(home, "fixed.overlay");
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", () => r()));
  const taken = (blocker.address() as { port: number }).port;
  ok(await cloudlet(["overlay", "tiny", ...H, "--script", WEBAPP, "-o", ovPath, "--json", "--", "-redir", `tcp:${taken}::80`]));
  const busy = await cloudlet(["synthesis", "tiny", ovPath, ...H]);
  blocker.close();
  assert.equal(busy.code, 75, "a host port in use is a conflict (CONFLICT, exit 75: docs/cli.md)");
  assert.match(busy.stderr, /--auto-ports/, "the message names --auto-ports");
  assert.match(busy.stderr, new RegExp(`${taken}.*(in use|busy)|(in use|busy).*${taken}`));
  assert.deepEqual(await fsp.readdir(join(home, "vms")).catch(() => []), [], "no VM directory kept");
  await clean(home);

  // The VM dies during customisation (the script powers it off).
  const kill = join(home, "poweroff.sh");
  await fsp.writeFile(kill, "echo o > /proc/sysrq-trigger\nsleep 30\n");
  const died = await cloudlet(["overlay", "tiny", ...H, "--script", kill, "-o", join(home, "x.overlay")]);
  assert.equal(died.code, 1);
  assert.match(died.stderr, /exited|died|ended|gone/i);
  await assert.rejects(fsp.access(join(home, "x.overlay")));
  await clean(home);

  // Ctrl-C while the base boots: exit 130, nothing left.
  const child = spawn(CLOUDLET, ["base", ...H, "--name", "interrupted"], { stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  child.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
  await new Promise((r) => setTimeout(r, 3500));
  child.kill("SIGINT");
  const code = await new Promise<number | null>((r) => child.on("close", r));
  assert.equal(code, 130, err);
  assert.match(err, /cancelled|interrupted/);
  await clean(home);

  // libvirtd unreachable: the message says how to start it.
  const down = await cloudlet(["base", ...H, "--host", "virsh", "--connect", "qemu:///system?socket=/nonexistent/libvirt-sock"]);
  assert.equal(down.code, 1);
  assert.match(down.stderr, /libvirtd -d/);
  // A remote libvirt is refused before anything starts (its files and console would be elsewhere).
  const remote = await cloudlet(["base", ...H, "--host", "virsh", "--connect", "qemu+ssh://elsewhere/system"]);
  assert.equal(remote.code, 2, remote.stderr);
  assert.match(remote.stderr, /names a remote libvirt host; cloudlet drives local libvirt only/);
  await clean(home);
  await fsp.rm(home, { recursive: true, force: true });
});
