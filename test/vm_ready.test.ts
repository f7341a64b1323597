// Readiness of a user's guest (issue 17, items 1-4 and 12): a guest that is slow to reach a shell, one
// whose serial console asks for a login, a ready marker echoed inside another line, the serial log of
// a failed run, and the accelerator choice. One VM boots a variant of the built-in guest (its root file
// system changed with debugfs: an rc.local that sleeps, and a getty stand-in as the console's shell);
// one `cloudlet base` run fails on purpose.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";
import { loadGuestImage } from "../ts/vm/guest_image.ts";
import { QemuHost } from "../ts/vm/qemu_host.ts";
import { decideAccel, kvmUsable, parseAccel } from "../ts/node/command.ts";
import { loginPromptIn, markerAtLineStart } from "../ts/vm/serial_console.ts";
import type { RunningVm, VmSpec } from "../ts/vm/vm_host.ts";
import { keepFailedLog, KEPT_LOGS } from "../ts/jobs/context.ts";
import { CloudletError } from "../ts/errors.ts";
import { cloudlet } from "./_cli.ts";
import { runTool } from "./_tools.ts";

const TEST_HOME = fileURLToPath(new URL("../.build/test-home", import.meta.url));
const GUEST_CACHE = join(TEST_HOME, "guest");
/** How long the variant's rc.local sleeps before the console gets its (login) shell: beyond the old 20 s limit. */
const SLOW_S = 25;
const PASSWORD = "s3cret";

// Runs before cloudlet-init starts the console's shell. The first line mimics systemd echoing a unit
// description that mentions the marker; only the last line starts with it.
const RC_LOCAL = `#!/bin/sh
echo "[  OK  ] Started slow.service - Prints SLOWMARK when the boot is done."
echo "slow-boot: sleeping ${SLOW_S} s before the console shell"
sleep ${SLOW_S}
echo "SLOWMARK boot finished"
`;

// A getty stand-in (cl.shell=): a login prompt, a password prompt without echo, then root's shell.
// Like agetty, it first drops what was typed before it ran (until 0.2 s pass without input).
const FAKE_LOGIN = `#!/bin/sh
stty -icanon min 0 time 2; cat > /dev/null; stty sane
while :; do
  printf '\\ncloudlet-test login: '
  read -r user || exit 0
  [ -n "$user" ] || continue
  stty -echo; printf 'Password: '; read -r pw; stty echo; echo
  if [ "$user" = root ] && [ "$pw" = "${PASSWORD}" ]; then exec /bin/sh -l; fi
  sleep 1; echo "Login incorrect"
done
`;

/** Starts the slow, login-asking variant of the built-in guest. */
async function startSlowLoginGuest(): Promise<{ vm: RunningVm; runDir: string; t0: number }> {
  const guest = await loadGuestImage(GUEST_CACHE);
  assert.ok(guest, `the built-in guest is not built in ${GUEST_CACHE} (run test/vm_guest.test.ts first)`);
  const runDir = join(TEST_HOME, "runs", `ready-${randomBytes(3).toString("hex")}`);
  await fsp.mkdir(runDir, { recursive: true });
  const disk = join(runDir, "rootfs.raw");
  await runTool("cp", ["--sparse=always", guest.rootfs, disk]);
  await fsp.writeFile(join(runDir, "rc.local"), RC_LOCAL);
  await fsp.writeFile(join(runDir, "cl-login"), FAKE_LOGIN);
  const cmds = [
    "mkdir /etc/cloudlet",
    `write ${join(runDir, "rc.local")} /etc/cloudlet/rc.local`,
    "sif /etc/cloudlet/rc.local mode 0100755",
    `write ${join(runDir, "cl-login")} /usr/local/bin/cl-login`,
    "sif /usr/local/bin/cl-login mode 0100755",
  ];
  await runTool("debugfs", ["-w", "-f", "-", disk], new TextEncoder().encode(cmds.join("\n") + "\n"));
  const spec: VmSpec = {
    name: "ready",
    runDir: join(runDir, "vm"),
    boot: { kernel: guest.kernel, initrd: guest.initrd, append: `${guest.append} cl.shell=/usr/local/bin/cl-login` },
    disk: { path: disk, format: "raw" },
    memory: { path: join(runDir, "mem.raw"), sizeMiB: 256 },
    machine: { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: 256 },
    vcpus: 1,
    portForwards: [],
  };
  const t0 = performance.now();
  return { vm: await new QemuHost({ accel: "tcg" }).start(spec), runDir, t0 };
}

// The VM and the two waits started at its boot, shared by the tests below (Deno's node:test has no before()).
let fixture: ReturnType<typeof startFixture> | null = null;
function startFixture() {
  return (async () => {
    const f = await startSlowLoginGuest();
    const waits: { ms: number; line: string }[] = [];
    // Both from the first moment: the script waits for a shell that comes after SLOW_S s and a login.
    const script = f.vm.console.run("id -u; echo ran-after-login", { timeoutMs: 240_000, login: { user: "root", password: PASSWORD }, onWait: (ms, line) => waits.push({ ms, line }) })
      .then((r) => ({ r, ms: performance.now() - f.t0 }));
    const ready = f.vm.waitReady("SLOWMARK", 240_000).then((line) => ({ line, ms: performance.now() - f.t0 }));
    script.catch(() => {});
    ready.catch(() => {});
    return { ...f, script, ready, waits };
  })();
}
function slowGuest() {
  return (fixture ??= startFixture());
}

test("item 4: a ready marker counts only at the start of a line, not inside a unit description", async (t) => {
  assert.equal(markerAtLineStart("[  OK  ] Started x.service - Prints READY.", "READY"), false);
  assert.equal(markerAtLineStart("\x1b[0mREADY boot_id=1\r", "READY"), true);
  const f = await slowGuest();
  const { line, ms } = await f.ready;
  t.diagnostic(`marker line after ${Math.round(ms)} ms: ${line}`);
  assert.equal(line, "SLOWMARK boot finished");
  assert.ok(ms > SLOW_S * 1000, `the marker was taken ${ms} ms after boot, before the guest's ${SLOW_S} s sleep ended`);
});

test("item 1: the wait for the guest's shell honours the run's timeout (beyond 20 s) and reports the serial tail", async (t) => {
  const f = await slowGuest();
  const { r, ms } = await f.script;
  t.diagnostic(`script answered ${Math.round(ms)} ms after boot; ${f.waits.length} progress reports, last: ${JSON.stringify(f.waits.at(-1))}`);
  assert.deepEqual(r, { output: "0\nran-after-login\n", exitCode: 0 });
  assert.ok(ms > SLOW_S * 1000);
  // About one report a second, with the time waited and what the guest printed last.
  assert.ok(f.waits.length >= 15, `${f.waits.length} progress reports`);
  assert.ok(f.waits.every((w, i) => i === 0 || w.ms >= f.waits[i - 1].ms));
  assert.ok(f.waits.some((w) => w.line.includes(`slow-boot: sleeping ${SLOW_S} s`)), JSON.stringify(f.waits.map((w) => w.line)));
});

test("item 2: a console that asks for a login: a one-line error without a login, a wrong password fails, --login works", async (t) => {
  assert.equal(loginPromptIn("Debian GNU/Linux 12 debian ttyS0\n\ndebian login: "), "login");
  assert.equal(loginPromptIn("debian login: root\nPassword: "), "password");
  assert.equal(loginPromptIn("Last login: Mon Dec 7\n# "), null);
  const f = await slowGuest();
  await f.script; // logged in, by the first test's run
  try {
    // Log out (end the shell): the getty stand-in asks again.
    const from = await f.vm.console.logSize();
    await f.vm.console.run("setsid sh -c 'sleep 1; kill -9 $0' $PPID </dev/null >/dev/null 2>&1 &");
    await f.vm.console.waitFor(/cloudlet-test login: *$/, 30_000, { fromOffset: from });
    const t1 = performance.now();
    await assert.rejects(f.vm.console.run("true", { timeoutMs: 60_000 }), (e: unknown) => {
      assert.ok(e instanceof CloudletError && e.code === "GUEST", String(e));
      assert.match(e.message, /^the serial console asks for a login \("cloudlet-test login:"\), so no script can run there: give --login USER\[:PASSWORD-FILE\]/);
      assert.ok(!e.message.includes("\n"), e.message);
      return true;
    });
    const detect = performance.now() - t1;
    t.diagnostic(`login prompt reported in ${Math.round(detect)} ms`);
    assert.ok(detect < 15_000, `took ${detect} ms`);
    await assert.rejects(f.vm.console.run("true", { timeoutMs: 60_000, login: { user: "root", password: "wrong" } }), (e: unknown) => e instanceof CloudletError && e.code === "GUEST" && /logging in as "root" on the serial console failed \(Login incorrect\)/.test(e.message));
    assert.deepEqual(await f.vm.console.run("echo again; id -u", { timeoutMs: 60_000, login: { user: "root", password: PASSWORD } }), { output: "again\n0\n", exitCode: 0 });
    // The password never reached the shell's output (it was typed at the password prompt, without echo).
    assert.ok(!(await fsp.readFile(f.vm.serialLogPath, "latin1")).includes(PASSWORD));
  } finally {
    await f.vm.stop();
    await fsp.rm(f.runDir, { recursive: true, force: true });
  }
});

test("item 3: a failed run's serial log is kept under <home>/logs (bounded) and the error names it; item 12: the boot line names the accelerator", async (t) => {
  const home = join(TEST_HOME, `ready-home-${process.pid}`);
  await fsp.rm(home, { recursive: true, force: true });
  await fsp.mkdir(home, { recursive: true });
  await fsp.symlink(GUEST_CACHE, join(home, "guest"));
  try {
    const r = await cloudlet(["base", "--ready-marker", "NEVER-PRINTED", "--timeout", "3", "--accel", "auto", "--home", home]);
    t.diagnostic(r.stderr.trim());
    assert.equal(r.code, 1, r.stderr);
    const kvm = await kvmUsable();
    assert.match(r.stderr, new RegExp(`booting \\(qemu, ${kvm === null ? "kvm" : "tcg"}, pc-i440fx-7\\.2`));
    if (kvm !== null) assert.match(r.stderr, /--accel auto: using TCG, since /);
    const m = /cloudlet: (\S+-serial\.log): the guest did not print "NEVER-PRINTED" within 3 s/.exec(r.stderr);
    assert.ok(m, r.stderr);
    assert.ok(m[1].startsWith(join(home, "logs") + "/"), m[1]);
    assert.ok((await fsp.stat(m[1])).isFile());
    // Nothing else of the failed base is left.
    assert.deepEqual(await fsp.readdir(join(home, "bases")), []);

    // Only the newest KEPT_LOGS logs stay.
    const run = join(home, "fake-run");
    await fsp.mkdir(run, { recursive: true });
    await fsp.writeFile(join(run, "serial.log"), "boot text\n");
    for (let i = 0; i < KEPT_LOGS + 3; i++) await keepFailedLog(home, run, `t${i}`);
    const kept = await fsp.readdir(join(home, "logs"));
    assert.equal(kept.length, KEPT_LOGS);
    assert.ok(!kept.includes(m[1].split("/").pop()!), "the oldest log was not removed");
  } finally {
    await fsp.rm(home, { recursive: true, force: true });
  }
});

test("item 12: --accel kvm|tcg|auto is checked, and auto falls back to TCG where KVM guests do not run", async (t) => {
  assert.equal(parseAccel(undefined), "tcg");
  assert.equal(parseAccel("auto"), "auto");
  assert.throws(() => parseAccel("xen"), (e: unknown) => e instanceof CloudletError && e.code === "BAD_ARGUMENT");
  const bad = await cloudlet(["base", "--accel", "xen", "--home", join(TEST_HOME, "unused-accel-home")]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--accel must be kvm, tcg or auto, not "xen"/);
  assert.deepEqual(await decideAccel("tcg"), { accel: "tcg" });
  const why = await kvmUsable();
  t.diagnostic(`KVM here: ${why ?? "usable"}`);
  const auto = await decideAccel("auto");
  if (why === null) {
    assert.deepEqual(auto, { accel: "kvm" });
  } else {
    assert.deepEqual(auto, { accel: "tcg", fallback: why });
    await assert.rejects(decideAccel("kvm"), (e: unknown) => e instanceof CloudletError && (e.code === "HOST_TOOL" || e.code === "KVM_PERMISSION"));
  }
});
