// Issue 17, items 5, 6, 9, 13 and 14: the overlay's base found in the
// registry, server sessions listed and stopped, id prefixes, compressed
// exports and list output for scripts. A base made of small generated images
// is registered directly and the overlay is a file-mode one, so nothing here
// boots a VM: the server's session is stopped while it waits for its bytes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import * as http from "node:http";
import { join } from "node:path";
import { cloudlet } from "./_cli.ts";
import { registeredBase, serve, type RegisteredBase } from "./_registered_base.ts";
import { cachedOverlay, homeWithBase, WEBAPP } from "./_vm_fixture.ts";
import { charsToTellApart } from "../ts/core/ids.ts";

const TOKEN = "ids-sessions-token-0123456789abcdef";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let fixture: Promise<RegisteredBase> | null = null;
/** A registered base (generated images, plus a stand-in device state so it can be exported) and a file-mode overlay on it. */
function setup(): Promise<RegisteredBase> {
  fixture ??= registeredBase({ name: "ids", seed: 23, token: TOKEN, deviceState: true });
  return fixture;
}

/** An empty home of its own. */
async function emptyHome(f: RegisteredBase, name: string): Promise<string> {
  const h = join(f.dir, name);
  await fsp.mkdir(h, { recursive: true });
  return h;
}

// ---- item 5 ----

test("item 5: synthesis -o and inspect --verify find the overlay's base in the registry; a home without it names the id and list-base", async () => {
  const f = await setup();
  const out = join(f.dir, "rebuilt");
  const r = await cloudlet(["synthesis", "--home", f.home, f.overlay, "-o", out]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(await fsp.readFile(join(out, "memory.raw")), await fsp.readFile(f.images.mem));
  const v = await cloudlet(["inspect", "--home", f.home, "--verify", f.overlay]);
  assert.equal(v.code, 0, v.stderr);
  assert.match(v.stdout, /every rebuilt chunk matches, and the base files hash to its base id/);
  const other = await emptyHome(f, "no-base-home");
  for (const args of [["synthesis", f.overlay, "-o", join(f.dir, "never")], ["synthesis", f.overlay]]) {
    const e = await cloudlet([...args, "--home", other]);
    assert.notEqual(e.code, 0);
    assert.match(e.stderr, new RegExp(`${f.meta.base.id}.*cloudlet list-base`));
    assert.doesNotMatch(e.stderr, /--base-mem is required|\n\s+at /);
  }
  const partial = await cloudlet(["inspect", "--home", other, "--verify", f.overlay]);
  assert.equal(partial.code, 0, partial.stderr);
  assert.match(partial.stdout, new RegExp(`its base ${f.meta.base.id} is not in the registry, see cloudlet list-base`));
});

// ---- item 9 ----

test("item 9: any unique prefix names a base or VM; an ambiguous one says how many characters are needed", async () => {
  const f = await setup();
  const file = join(f.dir, "by-prefix.tar");
  const e = await cloudlet(["export-base", "--home", f.home, f.meta.base.id.slice(0, 3), file]);
  assert.equal(e.code, 0, e.stderr);
  const home = await emptyHome(f, "vm-prefix-home");
  for (const id of ["aaaaaaaa0001", "aaaaaaaa0002"]) await fsp.mkdir(join(home, "vms", id, "vm"), { recursive: true });
  const amb = await cloudlet(["stop", "--home", home, "aaaa"]);
  assert.equal(amb.code, 2, amb.stderr);
  assert.match(amb.stderr, /"aaaa" is the start of 2 VM and session ids; give at least 12 characters \(see cloudlet ps\)/);
  const one = await cloudlet(["stop", "--home", home, "aaaaaaaa0001"]);
  assert.equal(one.code, 0, one.stderr);
  assert.match(one.stdout, /stopped VM aaaaaaaa0001/);
  const pre = await cloudlet(["stop", "--home", home, "aaa"]);
  assert.equal(pre.code, 0, pre.stderr);
  assert.match(pre.stdout, /stopped VM aaaaaaaa0002/);
  assert.deepEqual(await fsp.readdir(join(home, "vms")), []);
  const none = await cloudlet(["stop", "--home", home, "bbbb"]);
  assert.equal(none.code, 2);
  assert.match(none.stderr, /no VM or session "bbbb" in .* \(see cloudlet ps\)/);
  assert.equal(charsToTellApart(["abc1", "abd2", "ffff"]), 3);
});

test("item 9: inspect's text and --json use the same word for the bytes the overlay rebuilds", async () => {
  const f = await setup();
  const j = JSON.parse((await cloudlet(["inspect", "--home", f.home, f.overlay, "--json"])).stdout);
  const text = (await cloudlet(["inspect", "--home", f.home, f.overlay])).stdout;
  assert.ok(Number.isSafeInteger(j.sizes.rebuilt), "sizes.rebuilt in --json");
  assert.match(text, /, rebuilt \d/);
  assert.doesNotMatch(text, /rewrites/);
});

/** A VM record as a synthesized VM leaves it (its QEMU long gone). */
async function fakeVm(home: string, id: string): Promise<void> {
  const runDir = join(home, "vms", id, "vm");
  await fsp.mkdir(runDir, { recursive: true });
  await fsp.writeFile(join(runDir, "vm.json"), JSON.stringify({ id, host: "qemu", runDir, pid: null, owner: { pid: 1, start: null }, detached: true, ownsMemory: false, memoryPath: join(runDir, "memory.raw"), portForwards: [{ proto: "tcp", guestPort: 80, hostPort: 18080 }], hostAddress: "127.0.0.1", createdAt: "2026-01-02T03:04:05.000Z" }));
}

test("items 9 and 14: ps has a header row, host->guest ports, and the same words in text, --json, -q and --format", async () => {
  const f = await setup();
  const home = await emptyHome(f, "ps-home");
  await fakeVm(home, "0123456789ab");
  const text = await cloudlet(["ps", "--home", home]);
  assert.equal(text.code, 0, text.stderr);
  const [header, row] = text.stdout.trimEnd().split("\n");
  assert.match(header, /^ID\s+KIND\s+STATE\s+HOST\s+CREATED\s+PORTS$/);
  assert.match(row, /^0123456789ab\s+vm\s+dead\s+qemu\s+2026-01-02T03:04:05.000Z\s+127\.0\.0\.1:18080->80$/);
  const json = JSON.parse((await cloudlet(["ps", "--home", home, "--json"])).stdout);
  assert.equal(json[0].state, "dead");
  assert.deepEqual(json[0].ports, [{ proto: "tcp", hostPort: 18080, guestPort: 80 }]);
  assert.equal((await cloudlet(["ps", "--home", home, "-q"])).stdout, "0123456789ab\n");
  assert.equal((await cloudlet(["ps", "--home", home, "--format", "{{id}}\\t{{state}}"])).stdout, "0123456789ab\tdead\n");
  assert.equal(JSON.parse((await cloudlet(["ps", "--home", home, "--format", "json-lines"])).stdout).kind, "vm");
  const bad = await cloudlet(["ps", "--home", home, "--format", "{{nope}}"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /no field "nope"/);
});

test("item 14: list-base has a header row, -q prints whole ids, --format json-lines and templates", async () => {
  const f = await setup();
  const text = await cloudlet(["list-base", "--home", f.home]);
  assert.equal(text.code, 0, text.stderr);
  const [header, row] = text.stdout.trimEnd().split("\n");
  assert.match(header, /^ID\s+NAME\s+DISK SIZE\s+MEMORY SIZE\s+HOST\s+CREATED\s+SOURCE$/);
  assert.ok(row.startsWith(`${f.meta.base.id.slice(0, 12)}  gen`), row);
  assert.equal((await cloudlet(["list-base", "--home", f.home, "-q"])).stdout, `${f.meta.base.id}\n`);
  assert.equal((await cloudlet(["list-base", "--home", f.home, "--format", "{{name}} {{machine.machine}}"])).stdout, `gen ${f.meta.base.machine.machine}\n`);
  const lines = (await cloudlet(["list-base", "--home", f.home, "--format", "json-lines"])).stdout.trimEnd().split("\n");
  assert.equal(lines.length, 1);
  assert.equal(JSON.parse(lines[0]).id, f.meta.base.id);
});

// ---- item 13 ----

test("item 13: export-base --zstd/--xz compress, import reads them, and a base already here is known from the manifest alone", async () => {
  const f = await setup();
  const plain = join(f.dir, "base.tar");
  assert.equal((await cloudlet(["export-base", "--home", f.home, "gen", plain])).code, 0);
  for (const [flag, magic] of [["--zstd", "28b52ffd"], ["--xz", "fd377a58"]] as const) {
    const file = join(f.dir, `base.tar.${flag.slice(2)}`);
    const r = await cloudlet(["export-base", "--home", f.home, "gen", file, flag, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).compression, flag.slice(2));
    const bytes = await fsp.readFile(file);
    assert.equal(bytes.subarray(0, 4).toString("hex"), magic);
    assert.ok(bytes.length < (await fsp.stat(plain)).size, `${flag}: ${bytes.length} bytes`);
    const home = await emptyHome(f, `import-${flag.slice(2)}`);
    const i = await cloudlet(["import-base", "--home", home, file, "--json"]);
    assert.equal(i.code, 0, i.stderr);
    assert.equal(JSON.parse(i.stdout).id, f.meta.base.id);
    assert.equal(JSON.parse(i.stdout).existed, false);
  }
  // Everything after the manifest cut off: only a reader that stops at the manifest can tell the base is here.
  const cut = join(f.dir, "cut.tar");
  const whole = await fsp.readFile(plain);
  await fsp.writeFile(cut, whole.subarray(0, 8192));
  const again = await cloudlet(["import-base", "--home", f.home, cut]);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, new RegExp(`base gen ${f.meta.base.id} is already here; nothing imported`));
  const fresh = await cloudlet(["import-base", "--home", await emptyHome(f, "import-cut"), cut]);
  assert.notEqual(fresh.code, 0, "a cut archive is refused where the base is not already present");
  const both = await cloudlet(["export-base", "--home", f.home, "gen", join(f.dir, "x"), "--zstd", "--xz"]);
  assert.equal(both.code, 2);
});

// ---- item 6 ----

function request(port: number, method: string, path: string, body?: Uint8Array): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, method, path, agent: false, headers: { authorization: `Bearer ${TOKEN}`, ...(body ? { "content-length": String(body.length) } : {}) } }, (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (d: string) => (text += d));
      res.on("end", () => resolve({ status: res.statusCode!, body: text }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

test("item 6: GET /v1/sessions lists sessions; ps shows a server session of the home; stop and DELETE take its id prefix", async () => {
  const f = await setup();
  const s = await serve(f);
  try {
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const c = await request(s.port, "POST", "/v1/sessions", new TextEncoder().encode("{}"));
      assert.equal(c.status, 201, c.body);
      const id = JSON.parse(c.body).id as string;
      ids.push(id);
      const m = await request(s.port, "PUT", `/v1/sessions/${id}/meta`, f.headAndMeta);
      assert.equal(m.status, 200, m.body);
    }
    const listed = await request(s.port, "GET", "/v1/sessions");
    assert.equal(listed.status, 200, listed.body);
    assert.deepEqual((JSON.parse(listed.body).sessions as { id: string; state: string }[]).map((x) => [x.id, x.state]).sort(), ids.map((id) => [id, "receiving"]).sort());
    // The session's folder appears once synthesis starts writing into it.
    let ps: string[] = [];
    for (let i = 0; i < 50; i++) {
      ps = (await cloudlet(["ps", "--home", f.home, "-q"])).stdout.split("\n").filter(Boolean);
      if (ids.every((id) => ps.includes(id))) break;
      await sleep(100);
    }
    assert.deepEqual(ps.sort(), [...ids].sort());
    const table = (await cloudlet(["ps", "--home", f.home])).stdout;
    assert.match(table, new RegExp(`^${ids[0].slice(0, 12)}\\s+session\\s+pending`, "m"));
    // `cloudlet stop` with a prefix, through the server's API.
    const prefix = ids[0].slice(0, charsToTellApart(ids));
    const st = await cloudlet(["stop", "--home", f.home, "--server", `127.0.0.1:${s.port}`, "--token-file", f.tokenFile, prefix]);
    assert.equal(st.code, 0, st.stderr);
    assert.match(st.stdout, new RegExp(`stopped session ${ids[0]}`));
    assert.equal(JSON.parse((await request(s.port, "GET", `/v1/sessions/${ids[0]}`)).body).state, "closed");
    // DELETE with a prefix of the id; one shared by two sessions is refused with the characters needed.
    if (ids[0][0] === ids[1][0]) assert.equal((await request(s.port, "DELETE", `/v1/sessions/${ids[0][0]}`)).status, 409);
    const del = await request(s.port, "DELETE", `/v1/sessions/${ids[1].slice(0, 8)}`);
    assert.equal(del.status, 200, del.body);
    assert.equal(JSON.parse(del.body).state, "closed");
    assert.equal((await request(s.port, "DELETE", "/v1/sessions/NOT-HEX")).status, 404);
  } finally {
    await s.stop();
  }
});

test("item 6: stop of a session whose server cannot be reached says to give --server", async () => {
  const f = await setup();
  const home = await emptyHome(f, "unreachable-home");
  const id = "0123456789abcdef0123456789abcdef";
  await fsp.mkdir(join(home, "sessions", id), { recursive: true });
  const r = await cloudlet(["stop", "--home", home, "--server", "127.0.0.1:1", "--token-file", f.tokenFile, "0123"]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`cannot reach the cloudlet at 127\\.0\\.0\\.1:1.*session ${id} is a session of a cloudlet server: give the server's address with --server`));
});

// ---- item 6, with one real VM (the built-in guest, cached) ----

test("items 5 and 6: synthesis --no-run without BASE; client --detach prints the session id; ps shows the running session with the server log's ports; stop ends it through the server", async () => {
  const home = await homeWithBase("ids");
  const ok = async (args: string[]) => {
    const r = await cloudlet([args[0], "--home", home, ...args.slice(1)]);
    assert.equal(r.code, 0, r.stderr);
    return r;
  };
  // The base and overlay come from the fixture cache (test/vm_flow.test.ts makes its own through the CLI).
  const overlay = join(home, "webapp.overlay");
  await cachedOverlay(await fsp.readFile(WEBAPP, "utf8"), ["--", "-redir", "tcp:0::80"], overlay);
  // Item 5 in VM mode: no BASE, the overlay's base id finds "tiny" in the registry.
  const verified = JSON.parse((await ok(["synthesis", overlay, "--no-run", "--json"])).stdout);
  assert.equal(verified.verified, true);
  const tokenFile = join(home, "token");
  await fsp.writeFile(tokenFile, TOKEN + "\n", { mode: 0o600 });
  const s = await serve({ home, tokenFile });
  try {
    const c = await cloudlet(["client", "--home", home, "-s", `127.0.0.1:${s.port}`, "--token-file", tokenFile, "-o", overlay, "--detach"]);
    assert.equal(c.code, 0, c.stderr);
    const id = /\(session ([0-9a-f]{32})\)/.exec(c.stdout)?.[1];
    assert.ok(id, `the session id is printed: ${c.stdout}`);
    assert.match(c.stdout, new RegExp(`cloudlet stop ${id}`));
    const ps = JSON.parse((await cloudlet(["ps", "--home", home, "--json"])).stdout) as { id: string; kind: string; state: string; hostAddress: string; ports: { hostPort: number; guestPort: number }[] }[];
    assert.deepEqual(ps.map((r) => [r.id, r.kind, r.state]), [[id, "session", "running"]]);
    // One way round everywhere: the server log and ps both say address:host->guest.
    const fwd = `${ps[0].hostAddress}:${ps[0].ports[0].hostPort}->${ps[0].ports[0].guestPort}`;
    assert.equal(ps[0].ports[0].guestPort, 80);
    assert.ok(s.log().includes(fwd), `the server log shows ${fwd}:\n${s.log()}`);
    assert.ok((await cloudlet(["ps", "--home", home])).stdout.includes(fwd));
    const listed = JSON.parse((await request(s.port, "GET", "/v1/sessions")).body).sessions as { id: string; detached: boolean }[];
    assert.deepEqual(listed.map((x) => [x.id, x.detached]), [[id, true]]);
    const st = await cloudlet(["stop", "--home", home, "--server", `127.0.0.1:${s.port}`, "--token-file", tokenFile, id!.slice(0, 6)]);
    assert.equal(st.code, 0, st.stderr);
    assert.match(st.stdout, new RegExp(`stopped session ${id}`));
    assert.equal((await cloudlet(["ps", "--home", home, "-q"])).stdout, "", "the session and its folder are gone");
  } finally {
    await s.stop();
    await fsp.rm(home, { recursive: true, force: true });
  }
});
