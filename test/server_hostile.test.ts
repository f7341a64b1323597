// Hostile clients against a real `cloudlet serve` on loopback (issue 10,
// server items): every error path leaves the process up and serving, the
// session cap holds against slow bodies, a slow --url download is not idle,
// a corrupt segment is reported as such, malformed bodies and headers get
// 400, and silent sockets from several addresses cannot shut others out.
// The base is made of small generated images registered directly, and the
// overlay is a file-mode one (no device state): a session that gets all its
// bytes fails at launch with BAD_INPUT instead of starting QEMU.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import { registeredBase, serve, type RegisteredBase, type Served } from "./_registered_base.ts";

const TOKEN = "hostile-token-0123456789abcdef";
const AUTH = `Bearer ${TOKEN}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let fixture: Promise<RegisteredBase> | null = null;
/** A registered base (generated images) and a 64 KiB-segment overlay on it, built once. */
function setup(): Promise<RegisteredBase> {
  fixture ??= registeredBase({ name: "hostile", seed: 17, token: TOKEN }).then((f) => {
    assert.ok(f.meta.segments.length >= 3, `the overlay has ${f.meta.segments.length} segments`);
    return f;
  });
  return fixture;
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One well-behaved request. */
function request(port: number, method: string, path: string, body?: Uint8Array | string, headers: Record<string, string> = {}, localAddress?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, method, path, localAddress, agent: false, headers: { authorization: AUTH, ...(body !== undefined ? { "content-length": String(typeof body === "string" ? Buffer.byteLength(body) : body.length) } : {}), ...headers } }, (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (d: string) => (text += d));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: text }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.setTimeout(15_000, () => req.destroy(new Error(`${method} ${path}: no answer in 15 s`)));
    req.end(body);
  });
}

/** A raw socket, for requests no well-behaved client would send; `reply()` collects everything until the server closes. */
function raw(port: number, localAddress?: string): Promise<{ sock: net.Socket; reply: () => Promise<string> }> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: "127.0.0.1", port, localAddress }, () => {
      let got = "";
      sock.setEncoding("latin1").on("data", (d: string) => (got += d));
      const closed = new Promise<void>((r) => sock.once("close", () => r()));
      resolve({ sock, reply: async () => (await Promise.race([closed, sleep(10_000)]), got) });
    });
    sock.on("error", () => {});
    sock.once("error", reject);
  });
}

/** Writes a chunked-encoding chunk; false if the server has closed the socket. */
function chunk(sock: net.Socket, b: Uint8Array | string): Promise<boolean> {
  if (sock.destroyed || !sock.writable) return Promise.resolve(false);
  const buf = typeof b === "string" ? Buffer.from(b) : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  return new Promise((r) => sock.write(Buffer.concat([Buffer.from(buf.length.toString(16) + "\r\n"), buf, Buffer.from("\r\n")]), (e) => r(!e)));
}

/** Asserts the server process is alive and answers a good request (GET /v1/info, then a session created and deleted). */
async function assertServing(s: Served, what: string): Promise<void> {
  await sleep(200);
  assert.equal(s.child.exitCode, null, `${what}: the server exited:\n${s.log()}`);
  assert.equal(s.child.signalCode, null, `${what}: the server was killed:\n${s.log()}`);
  const info = await request(s.port, "GET", "/v1/info");
  assert.equal(info.status, 200, `${what}: /v1/info after it: ${info.body}`);
  assert.equal(JSON.parse(info.body).bases[0].name, "gen");
  const c = await request(s.port, "POST", "/v1/sessions");
  assert.equal(c.status, 201, `${what}: a session after it: ${c.body}`);
  const d = await request(s.port, "DELETE", `/v1/sessions/${JSON.parse(c.body).id}`);
  assert.equal(d.status, 200);
  assert.doesNotMatch(s.log(), /TypeError|internal error|\n\s+at /, `${what}: no crash or stack trace in the log`);
}

/** Creates a session and sends its meta; returns the session id. */
async function sessionWithMeta(f: RegisteredBase, port: number): Promise<string> {
  const c = await request(port, "POST", "/v1/sessions");
  assert.equal(c.status, 201, c.body);
  const id = JSON.parse(c.body).id as string;
  const m = await request(port, "PUT", `/v1/sessions/${id}/meta`, f.headAndMeta);
  assert.equal(m.status, 200, m.body);
  return id;
}

/** Session status. */
async function status(port: number, id: string): Promise<{ state: string; error: { code: string; message: string } | null; received: number; expected: number }> {
  const r = await request(port, "GET", `/v1/sessions/${id}`);
  assert.equal(r.status, 200, r.body);
  return JSON.parse(r.body);
}

// --- item 4: errors sent while the request body is still arriving ---

/** A chunked POST /v1/sessions over the 4 KiB body limit. */
async function oversizedCreate(port: number): Promise<string> {
  const { sock, reply } = await raw(port);
  sock.write(`POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH}\r\nTransfer-Encoding: chunked\r\n\r\n`);
  for (let i = 0; i < 16; i++) if (!(await chunk(sock, "x".repeat(1024)))) break;
  return await reply();
}

/** A chunked meta PUT over the 16 MiB meta limit. */
async function oversizedMeta(port: number, id: string): Promise<string> {
  const { sock, reply } = await raw(port);
  sock.write(`PUT /v1/sessions/${id}/meta HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH}\r\nTransfer-Encoding: chunked\r\n\r\n`);
  const mib = new Uint8Array(1 << 20);
  for (let i = 0; i < 18; i++) if (!(await chunk(sock, mib))) break;
  return await reply();
}

/** A PATCH carrying more bytes than the segment table, chunked, the extra bytes sent before the body ends. */
async function overlongPatch(f: RegisteredBase, port: number, id: string): Promise<string> {
  const { sock, reply } = await raw(port);
  sock.write(`PATCH /v1/sessions/${id}/data HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH}\r\nUpload-Offset: 0\r\nTransfer-Encoding: chunked\r\n\r\n`);
  await chunk(sock, f.data);
  for (let i = 0; i < 8; i++) if (!(await chunk(sock, new Uint8Array(64 << 10)))) break;
  return await reply();
}

/** A PATCH left open mid-segment while another connection DELETEs the session. */
async function deleteDuringPatch(f: RegisteredBase, port: number, id: string): Promise<{ patch: string; del: Reply }> {
  const { sock, reply } = await raw(port);
  sock.write(`PATCH /v1/sessions/${id}/data HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH}\r\nUpload-Offset: 0\r\nContent-Length: ${f.data.length}\r\n\r\n`);
  sock.write(f.data.subarray(0, 1000));
  await sleep(300);
  const del = await request(port, "DELETE", `/v1/sessions/${id}`);
  // The client goes on sending into the PATCH of the session it just deleted.
  if (!sock.destroyed) sock.write(f.data.subarray(1000, 2000));
  return { patch: await reply(), del };
}

test("item 4: a chunked POST /v1/sessions over the body limit gets 413 and the server stays up", async () => {
  const f = await setup();
  const s = await serve(f);
  try {
    const reply = await oversizedCreate(s.port);
    assert.match(reply, /^HTTP\/1\.1 413 .*TOO_LARGE/s, `reply: ${JSON.stringify(reply.slice(0, 300))}`);
    await assertServing(s, "oversized chunked create");
  } finally {
    await s.stop();
  }
});

test("item 4: a chunked meta PUT over 16 MiB gets 413 and the server stays up", async () => {
  const f = await setup();
  const s = await serve(f);
  try {
    const id = JSON.parse((await request(s.port, "POST", "/v1/sessions")).body).id;
    assert.match(await oversizedMeta(s.port, id), /^HTTP\/1\.1 413 .*TOO_LARGE/s);
    await assertServing(s, "oversized chunked meta");
  } finally {
    await s.stop();
  }
});

test("item 4: a PATCH with more bytes than the segment table gets 400 and the server stays up", async () => {
  const f = await setup();
  const s = await serve(f);
  try {
    const id = await sessionWithMeta(f, s.port);
    assert.match(await overlongPatch(f, s.port, id), /^HTTP\/1\.1 400 .*longer than the overlay's segments/s);
    await assertServing(s, "overlong PATCH");
  } finally {
    await s.stop();
  }
});

test("item 4: DELETE during an open PATCH closes the session and the server stays up", async () => {
  const f = await setup();
  const s = await serve(f);
  try {
    const id = await sessionWithMeta(f, s.port);
    const { patch, del } = await deleteDuringPatch(f, s.port, id);
    assert.equal(del.status, 200, del.body);
    assert.equal(JSON.parse(del.body).state, "closed");
    // The cut-off PATCH is answered (409: the session ended) or just closed; either way not a crash.
    assert.ok(patch === "" || /^HTTP\/1\.1 409 /.test(patch), `PATCH answer: ${patch.slice(0, 200)}`);
    await assertServing(s, "DELETE during PATCH");
  } finally {
    await s.stop();
  }
});

test("item 4: the server survives a burst of every error case at once", async () => {
  const f = await setup();
  const s = await serve(f, ["--max-sessions", "16"]);
  try {
    const ids = await Promise.all([1, 2, 3, 4, 5, 6].map(() => sessionWithMeta(f, s.port)));
    const empty = await Promise.all([1, 2].map(async () => JSON.parse((await request(s.port, "POST", "/v1/sessions")).body).id as string));
    await Promise.all([
      oversizedCreate(s.port),
      oversizedCreate(s.port),
      oversizedMeta(s.port, empty[0]),
      oversizedMeta(s.port, empty[1]),
      overlongPatch(f, s.port, ids[0]),
      overlongPatch(f, s.port, ids[1]),
      overlongPatch(f, s.port, ids[2]),
      deleteDuringPatch(f, s.port, ids[3]),
      deleteDuringPatch(f, s.port, ids[4]),
      deleteDuringPatch(f, s.port, ids[5]),
    ]);
    await assertServing(s, "the burst");
  } finally {
    await s.stop();
  }
});

// --- item 5: the session cap holds while bodies are slow ---

test("item 5: --max-sessions holds when ten POSTs send their headers first and the body a second later", async () => {
  const f = await setup();
  const s = await serve(f);
  try {
    const socks = await Promise.all(Array.from({ length: 10 }, () => raw(s.port)));
    for (const { sock } of socks) sock.write(`POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n`);
    await sleep(1000);
    for (const { sock } of socks) sock.write("{}");
    const replies = await Promise.all(socks.map((x) => x.reply()));
    const codes = replies.map((r) => Number(/^HTTP\/1\.1 (\d+)/.exec(r)?.[1]));
    assert.equal(codes.filter((c) => c === 201).length, 4, `statuses: ${codes}`);
    assert.equal(codes.filter((c) => c === 503).length, 6, `statuses: ${codes}`);
    const info = JSON.parse((await request(s.port, "GET", "/v1/info")).body);
    assert.deepEqual(info.sessions, { active: 4, max: 4 });
    for (const r of replies) {
      const m = /"id":"([0-9a-f]{32})"/.exec(r);
      if (m) await request(s.port, "DELETE", `/v1/sessions/${m[1]}`);
    }
    await assertServing(s, "slow-body POSTs");
  } finally {
    await s.stop();
  }
});

// --- item 6: a slow --url download renews the idle timer ---

test("item 6: a --url session downloading slowly is not failed as idle", async () => {
  const f = await setup();
  // A Range server that sends 4 KiB every 100 ms (40 KB/s): the segment data takes several idle periods.
  const files = http.createServer((req, res) => {
    const m = /bytes=(\d+)-(\d*)/.exec(req.headers.range ?? "");
    const a = Number(m?.[1] ?? 0);
    const b = m?.[2] ? Number(m[2]) : f.bytes.length - 1;
    res.writeHead(206, { "content-range": `bytes ${a}-${b}/${f.bytes.length}`, "content-length": b - a + 1 });
    let at = a;
    const tick = () => {
      if (res.destroyed) return;
      const end = Math.min(at + 4096, b + 1);
      res.write(f.bytes.subarray(at, end));
      at = end;
      if (at > b) res.end();
      else setTimeout(tick, 100);
    };
    tick();
  });
  await new Promise<void>((r) => files.listen(0, "127.0.0.1", () => r()));
  const url = `http://127.0.0.1:${(files.address() as net.AddressInfo).port}/app.overlay`;
  const seconds = f.data.length / 40960;
  assert.ok(seconds > 3, `the download takes ${seconds.toFixed(1)} s, more than the 1 s idle timeout`);
  const s = await serve(f, ["--idle-timeout", "1"]);
  try {
    const c = await request(s.port, "POST", "/v1/sessions", JSON.stringify({ url }), { "content-type": "application/json" });
    assert.equal(c.status, 201, c.body);
    const id = JSON.parse(c.body).id;
    // The client only listens to its event stream (one request): nothing but the download can renew the idle clock.
    const events = (await request(s.port, "GET", `/v1/sessions/${id}/events`)).body.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l)); // blank lines are keep-alives
    assert.ok(events.some((e) => e.type === "progress"), "progress was reported");
    const st = await status(s.port, id);
    assert.equal(st.state, "failed");
    // Every byte arrived and was synthesized: it fails only at launch (a file-mode overlay has no device state).
    assert.equal(st.error?.code, "BAD_INPUT", JSON.stringify(st.error));
    assert.match(st.error!.message, /no device state/);
    assert.doesNotMatch(s.log(), /idle/);
  } finally {
    await s.stop();
    files.close();
    files.closeAllConnections?.();
  }
});

// --- item 7: a corrupt first segment is reported when the client stops after segment 2 ---

test("item 7: a corrupt first segment fails the session with CORRUPT_SEGMENT even if the client then goes quiet", async () => {
  const f = await setup();
  const s = await serve(f, ["--idle-timeout", "3"]);
  try {
    const id = await sessionWithMeta(f, s.port);
    const two = f.meta.segments[0].compressedSize + f.meta.segments[1].compressedSize;
    const body = f.data.slice(0, two);
    body[10] ^= 0x40;
    const r = await request(s.port, "PATCH", `/v1/sessions/${id}/data`, body, { "upload-offset": "0" });
    assert.equal(r.status, 422, r.body);
    assert.equal(JSON.parse(r.body).error.code, "CORRUPT_SEGMENT");
    // The client sends nothing more; the cause must survive the idle timeout.
    await sleep(4500);
    const st = await status(s.port, id);
    assert.equal(st.state, "failed");
    assert.equal(st.error?.code, "CORRUPT_SEGMENT");
    assert.match(st.error!.message, /segment 1 is corrupt/);
    await assertServing(s, "corrupt segment");
  } finally {
    await s.stop();
  }
});

// --- item 8: malformed JSON bodies ---

test("item 8: a session request that is not a JSON object gets 400 and creates nothing", async () => {
  const f = await setup();
  const s = await serve(f);
  try {
    for (const body of ["null", "[]", '"str"', "123", "true", "{", '{"url": 5}']) {
      const r = await request(s.port, "POST", "/v1/sessions", body, { "content-type": "application/json" });
      assert.equal(r.status, 400, `${body}: ${r.status} ${r.body}`);
      assert.equal(JSON.parse(r.body).error.code, "BAD_REQUEST", body);
    }
    const info = JSON.parse((await request(s.port, "GET", "/v1/info")).body);
    assert.equal(info.sessions.active, 0, "no session was created");
    assert.equal((await request(s.port, "POST", "/v1/sessions", "{}", { "content-type": "application/json" })).status, 201, "{} is a good request");
    await assertServing(s, "malformed JSON");
  } finally {
    await s.stop();
  }
});

// --- item 9: the Upload-Offset header ---

test("item 9: an empty or malformed Upload-Offset header gets 400", async () => {
  const f = await setup();
  const s = await serve(f);
  try {
    const id = await sessionWithMeta(f, s.port);
    const seg0 = f.data.subarray(0, f.meta.segments[0].compressedSize);
    for (const v of ["", " ", "0x0", "1e3", "-0", "+0", "0.0"]) {
      const r = await request(s.port, "PATCH", `/v1/sessions/${id}/data`, seg0, { "upload-offset": v });
      assert.equal(r.status, 400, `Upload-Offset ${JSON.stringify(v)}: ${r.status} ${r.body}`);
    }
    assert.equal((await status(s.port, id)).received, 0, "nothing was taken");
    const ok = await request(s.port, "PATCH", `/v1/sessions/${id}/data`, seg0, { "upload-offset": "0" });
    assert.equal(ok.status, 204, `${ok.status} ${ok.body}`);
    assert.equal(ok.headers["upload-offset"], String(seg0.length));
    await assertServing(s, "bad Upload-Offset");
  } finally {
    await s.stop();
  }
});

// --- issue 13: early start's request field and out-of-order segments ---

test("early start: a bad earlyStart is refused; one that cannot run falls back with its reason; out-of-order segments are checked and skipped by the in-order upload", async () => {
  const f = await setup();
  const s = await serve(f);
  try {
    const bad = await request(s.port, "POST", "/v1/sessions", JSON.stringify({ earlyStart: "yes" }), { "content-type": "application/json" });
    assert.equal(bad.status, 400);
    assert.match(bad.body, /earlyStart must be true, false or \\"auto\\"/);
    // Asked for, but this file-mode overlay has no device state: full pipelined synthesis, and why.
    const c = await request(s.port, "POST", "/v1/sessions", JSON.stringify({ earlyStart: true }), { "content-type": "application/json" });
    assert.equal(c.status, 201, c.body);
    const id = JSON.parse(c.body).id as string;
    const m = JSON.parse((await request(s.port, "PUT", `/v1/sessions/${id}/meta`, f.headAndMeta)).body);
    assert.equal(m.earlyStart, false);
    assert.match(m.earlyStartFallback, /no device state/);
    assert.match(s.log(), /early start cannot run \(the overlay carries no device state\); full pipelined synthesis/);
    // Not early: the wants stream ends at once.
    assert.deepEqual([(await request(s.port, "GET", `/v1/sessions/${id}/wants`)).status, (await request(s.port, "GET", `/v1/sessions/${id}/wants`)).body], [200, ""]);
    const sizes = f.meta.segments.map((x) => x.compressedSize);
    const start = (i: number) => sizes.slice(0, i).reduce((a, b) => a + b, 0);
    const seg = (i: number) => f.data.subarray(start(i), start(i) + sizes[i]);
    assert.equal((await request(s.port, "PUT", `/v1/sessions/${id}/segments/x1`, seg(1))).status, 400);
    const none = await request(s.port, "PUT", `/v1/sessions/${id}/segments/${sizes.length}`, seg(1));
    assert.deepEqual([none.status, /no segment index \d+: the overlay has \d+ segments/.test(none.body)], [404, true]);
    const short = await request(s.port, "PUT", `/v1/sessions/${id}/segments/1`, seg(1).subarray(1));
    assert.equal(short.status, 400);
    assert.match(short.body, /BAD_UPLOAD.*segment 2 \(index 1\) is \d+ bytes; Content-Length says \d+/);
    // Segment 1 out of order: taken; the offset moves only once segment 0 is in, and then past segment 1.
    const put = await request(s.port, "PUT", `/v1/sessions/${id}/segments/1`, seg(1));
    assert.equal(put.status, 204, put.body);
    assert.equal(put.headers["upload-offset"], "0");
    assert.equal((await request(s.port, "PUT", `/v1/sessions/${id}/segments/1`, seg(1))).status, 200, "a held segment is read and dropped");
    const p0 = await request(s.port, "PATCH", `/v1/sessions/${id}/data`, seg(0), { "upload-offset": "0" });
    assert.equal(p0.headers["upload-offset"], String(start(2)), "the in-order upload resumes past the segment sent out of order");
    // A corrupt segment sent out of order fails the session with its cause.
    const corrupt = seg(2).slice();
    corrupt[7] ^= 1;
    const cr = await request(s.port, "PUT", `/v1/sessions/${id}/segments/2`, corrupt);
    assert.equal(cr.status, 422);
    assert.match(cr.body, /CORRUPT_SEGMENT.*segment 3 is corrupt/);
    const st = await status(s.port, id);
    assert.equal(st.state, "failed");
    await assertServing(s, "early start requests");
  } finally {
    await s.stop();
  }
});

// --- item 10: silent connections from several addresses ---

test("item 10: silent sockets from three addresses neither shut out other clients nor outlive the 10 s header bound", async (t) => {
  if ("Deno" in globalThis) {
    // As for the slowloris test in net_server.test.ts: Deno's node:http server emits no
    // "connection" event and ignores headersTimeout (docs/deno.md).
    return t.skip("connection bounds are enforced by Node's HTTP server only");
  }
  const f = await setup();
  const s = await serve(f);
  try {
    const t0 = Date.now();
    const silent: Array<{ sock: net.Socket; closedAt: number }> = [];
    for (const addr of ["127.0.0.1", "127.0.0.2", "127.0.0.3"]) {
      for (let i = 0; i < 12; i++) {
        const x = await raw(s.port, addr).catch(() => null);
        if (!x) continue;
        const rec = { sock: x.sock, closedAt: 0 };
        x.sock.once("close", () => (rec.closedAt = Date.now() - t0));
        silent.push(rec);
      }
    }
    await sleep(500);
    // Another client, from a fourth address, is served at once.
    const t1 = Date.now();
    const info = await request(s.port, "GET", "/v1/info", undefined, {}, "127.0.0.4");
    assert.equal(info.status, 200);
    assert.ok(Date.now() - t1 < 3000, `served after ${Date.now() - t1} ms`);
    // Every silent socket is closed by the documented 10 s (plus the 1 s check interval).
    for (let i = 0; i < 130 && silent.some((x) => !x.closedAt); i++) await sleep(100);
    const late = silent.filter((x) => !x.closedAt || x.closedAt > 12_000);
    assert.equal(late.length, 0, `silent sockets still open after 12 s: ${late.length} of ${silent.length}`);
    // The newest ones (not evicted by later arrivals) were closed by the timer, not before 10 s.
    const timed = silent.filter((x) => x.closedAt >= 9_500);
    assert.ok(timed.length >= 8, `closed by the 10 s timer: ${timed.length} of ${silent.length}`);
    await assertServing(s, "silent sockets");
  } finally {
    await s.stop();
  }
});

test("cleanup: the scratch folder is removed", async () => {
  const f = await setup();
  await fsp.rm(f.dir, { recursive: true, force: true });
  await assert.rejects(fsp.access(f.dir));
});
