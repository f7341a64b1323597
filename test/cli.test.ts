// The cloudlet command itself: help, JSON output, progress bars on a terminal, usage errors.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { cloudlet, CLOUDLET } from "./_cli.ts";
import { runTool } from "./_tools.ts";
import { scratchDir, writeImageSet } from "./_images.ts";

test("--help lists the commands; unknown commands and options are usage errors", async () => {
  const h = await cloudlet(["--help"]);
  assert.equal(h.code, 0);
  for (const c of ["overlay", "synthesis", "inspect"]) assert.match(h.stdout, new RegExp(`\\b${c}\\b`));
  const o = await cloudlet(["overlay", "--help"]);
  assert.match(o.stdout, /--base-disk/);
  const bad = await cloudlet(["frobnicate"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /unknown command "frobnicate"/);
  const missing = await cloudlet(["overlay", "--disk", "x"]);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /--base-disk is required|--base-mem is required/);
});

test("progress bars with bytes and rate on a terminal, none without one; --json for machines", async () => {
  const dir = await scratchDir("cli");
  // Large enough that scanning takes well over the 50 ms under which a phase shows no rate.
  const set = await writeImageSet(dir, 51, 96 << 20, 32 << 20, 50);
  const home = join(dir, "home");
  const args = ["overlay", "--home", home, "--base-disk", set.baseDisk, "--base-mem", set.baseMem, "--disk", set.disk, "--mem", set.mem, "-o", join(dir, "tty.overlay")];
  // `script` gives the command a pseudo-terminal, as a user's shell would.
  const quoted = [CLOUDLET, ...args].map((a) => `'${a}'`).join(" ");
  const tty = new TextDecoder().decode(await runTool("script", ["-q", "-e", "-c", quoted, "/dev/null"]));
  assert.match(tty, /index base +\[[#-]+\] +\d+% [\d.]+ (KiB|MiB) \/ [\d.]+ MiB/, "base indexing bar");
  // A phase that takes long enough shows its rate (one of ~0 s shows sizes only: test/cli_conventions.test.ts).
  assert.match(tty, /(index base|scan) +\[[#-]+\] +\d+% [\d.]+ (KiB|MiB) \/ [\d.]+ MiB +[\d.]+ (B|KiB|MiB|GiB)\/s/, "a bar with its rate");
  assert.match(tty, /compress +\[[#-]+\] +\d+%/, "compression bar");
  assert.match(tty, /wrote .*tty\.overlay/);
  const plain = await cloudlet([...args.slice(0, -1), join(dir, "plain.overlay")]);
  assert.equal(plain.code, 0, plain.stderr);
  assert.equal(plain.stderr, "", "no progress when stderr is not a terminal");
  const json = await cloudlet([...args.slice(0, -1), join(dir, "j.overlay"), "--json"]);
  const r = JSON.parse(json.stdout);
  assert.equal(r.layout, "packed");
  assert.equal(typeof r.baseId, "string");
  const ins = JSON.parse((await cloudlet(["inspect", "--json", "--verify", join(dir, "j.overlay")])).stdout);
  assert.equal(ins.verified, true);
  // No base given: the segments that rebuild from the base are counted as skipped, not as checked.
  assert.equal(ins.verification.segments, ins.segments.length);
  assert.equal(ins.verification.rebuilt + ins.verification.rebuiltSkipped, ins.segments.length);
  assert.equal(ins.base.id, r.baseId);
  assert.equal(ins.segments.length, r.segments);
  const text = await cloudlet(["inspect", join(dir, "j.overlay")]);
  assert.match(text.stdout, /base id +[0-9a-f]{64}/);
  assert.match(text.stdout, /xor +\d+ \//);
  const err = JSON.parse((await cloudlet(["inspect", "--json", join(dir, "nope.overlay")])).stdout);
  assert.equal(err.error.code, "MISSING_INPUT");
});
