// Port-forward specs: the seed's -redir syntax, QEMU's hostfwd= syntax and the shorthand.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { core } from "./_core.ts";
import { decodeMeta, encodeMeta, HEADER_BYTES, validateMeta } from "../ts/overlay/format.ts";
import { checkAppUrl, collectPortForwards, expandAppUrl, parsePortForward } from "../ts/overlay/launch.ts";

test("port forwards parse in the seed's -redir syntax, QEMU's hostfwd= syntax and the shorthand", () => {
  assert.deepEqual(parsePortForward("tcp:2222::22"), { proto: "tcp", hostPort: 2222, guestPort: 22 });
  assert.deepEqual(parsePortForward("udp:5353:10.0.2.15:53"), { proto: "udp", hostPort: 5353, guestPort: 53 });
  assert.deepEqual(parsePortForward("hostfwd=tcp::8080-:80"), { proto: "tcp", hostPort: 8080, guestPort: 80 });
  assert.deepEqual(parsePortForward("hostfwd=tcp:127.0.0.1:8080-10.0.2.15:80"), { proto: "tcp", hostPort: 8080, guestPort: 80 });
  assert.deepEqual(parsePortForward("tcp:0:80"), { proto: "tcp", hostPort: 0, guestPort: 80 }, "host port 0 picks a free one");
  assert.deepEqual(parsePortForward("8080:80"), { proto: "tcp", hostPort: 8080, guestPort: 80 });
  // The trailing arguments after --, as the seed passed them to QEMU.
  assert.deepEqual(
    collectPortForwards(["tcp:9000::9000"], ["-redir", "tcp:2222::22", "-netdev", "user,id=n0,hostfwd=tcp::8080-:80,hostfwd=udp::6000-:60"]),
    [
      { proto: "tcp", hostPort: 9000, guestPort: 9000 },
      { proto: "tcp", hostPort: 2222, guestPort: 22 },
      { proto: "tcp", hostPort: 8080, guestPort: 80 },
      { proto: "udp", hostPort: 6000, guestPort: 60 },
    ],
  );
});

test("bad port-forward specs are usage errors that quote the spec", () => {
  for (const [spec, what] of [
    ["tcp:2222::0", /bad port "0" in port forward "tcp:2222::0"/],
    ["tcp:70000::22", /bad port "70000"/],
    ["tcp:a::22", /bad port "a"/],
    ["tcp:1:2:3:4", /cannot parse port forward "tcp:1:2:3:4"/],
  ] as const) {
    assert.throws(() => parsePortForward(spec), (e: unknown) => (e as { code?: string }).code === "BAD_ARGUMENT" && what.test((e as Error).message), spec);
  }
  assert.throws(() => collectPortForwards([], ["-redir"]), /-redir needs a spec/);
  assert.throws(() => collectPortForwards([], ["-hda", "x.img"]), /unknown extra argument "-hda"/);
});

test("app address templates: checked against the forwards, filled in with the launched ports", () => {
  const forwards = [{ proto: "tcp" as const, hostPort: 8080, guestPort: 80 }, { proto: "udp" as const, hostPort: 0, guestPort: 53 }];
  assert.equal(checkAppUrl("http://{host}:{port:80}/app?x=1", forwards), "http://{host}:{port:80}/app?x=1");
  for (const [t, what] of [
    ["ftp://{host}/", /must be an http\(s\) address/],
    ["http://{host}:{port:81}/", /no TCP port forward goes to guest port 81/],
    ["http://{host}:{port:53}/", /no TCP port forward goes to guest port 53/],
    ["http://{hostname}/", /unknown placeholder \{hostname\}/],
    ["http://{host}:{port:80/", /unmatched brace/],
  ] as const) {
    assert.throws(() => checkAppUrl(t, forwards), (e: unknown) => (e as { code?: string }).code === "BAD_ARGUMENT" && what.test((e as Error).message), t);
  }
  const launched = [{ proto: "tcp" as const, hostPort: 40123, guestPort: 80 }];
  assert.equal(expandAppUrl("http://{host}:{port:80}/", "cloudlet.local", launched), "http://cloudlet.local:40123/");
  assert.equal(expandAppUrl("http://{host}:{port:80}/", "fe80::1", launched), "http://[fe80::1]:40123/");
  assert.equal(expandAppUrl("http://{host}:{port:22}/", "h", launched), null, "a port that was not forwarded");
});

test("launch.app_url in the meta: absent unless set (v1 bytes unchanged), round-trips when set, refused when not an http(s) address", () => {
  const golden = new Uint8Array(readFileSync(new URL("./golden/v1/golden.overlay-meta", import.meta.url)));
  const meta = decodeMeta(core, golden, "golden");
  assert.equal("appUrl" in meta.launch, false);
  assert.deepEqual(encodeMeta(core, meta), golden, "a meta without an app address encodes to the same bytes");
  const withApp = { ...meta, launch: { ...meta.launch, appUrl: "http://{host}:{port:80}/" } };
  const bytes = encodeMeta(core, withApp);
  assert.match(new TextDecoder().decode(bytes), /"app_url":"http:\/\/\{host\}:\{port:80\}\/"/);
  assert.deepEqual(decodeMeta(core, bytes, "app").launch, withApp.launch);
  for (const bad of ["javascript:alert(1)", "http://a b/", 42]) {
    const json = JSON.parse(new TextDecoder().decode(encodeMeta(core, meta).subarray(HEADER_BYTES)));
    json.launch.app_url = bad;
    assert.throws(() => validateMeta(json, "bad.overlay"), (e: unknown) => (e as { code?: string }).code === "BAD_META" && /launch\.app_url/.test((e as Error).message), String(bad));
  }
});
