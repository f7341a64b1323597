// The phone client (issue 16) in real headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core) with a phone's viewport, touch and user agent, against
// a real `cloudlet serve` on loopback with a real base and a real overlay made with
// examples/webapp.sh: no token shows only the pairing screen; the page has its CSP and
// the API no CORS; pairing through the fragment link stores the token and clears the
// address bar; a wrong-base overlay is refused before any upload; an overlay picked
// through the file input uploads with progress and "Open" gets the app's page from the
// synthesized VM; a dropped connection mid-upload resumes where the server says.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { existsSync, promises as fsp } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Browser, BrowserContext, Page, Request } from "playwright-core";
import { core } from "./_core.ts";
import { cloudlet, CLOUDLET } from "./_cli.ts";
import { scratchDir, writeImageSet } from "./_images.ts";
import { runTool } from "./_tools.ts";
import makeMdns from "multicast-dns";
import { lanAddresses } from "../ts/server/discovery.ts";
import { createOverlayFiles } from "../ts/jobs/file_overlay.ts";
import { openOverlay } from "../ts/node/overlay_files.ts";
import type { OverlayMeta } from "../ts/overlay/format.ts";

const CHROMIUM = "/usr/bin/chromium";
/** As in web_inspector.test.ts: without the background-networking flags Chromium's own connections are refused noisily. */
const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const TEST_HOME = fileURLToPath(new URL("../.build/test-home", import.meta.url));
const WEBAPP = fileURLToPath(new URL("../examples/webapp.sh", import.meta.url));
const ARTIFACTS = fileURLToPath(new URL("../.build/test-artifacts/", import.meta.url));
const DOCS_SCREENSHOT = fileURLToPath(new URL("../docs/phone.png", import.meta.url));
/** A phone: Pixel 7 size and user agent, touch, mobile viewport. */
const PHONE = {
  viewport: { width: 412, height: 915 },
  deviceScaleFactor: 2.625,
  isMobile: true,
  hasTouch: true,
  userAgent: "Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
};

let home: string;
let work: string;
let overlay: string;
let wrongBase: string;
let baseId: string;
let server: { child: ChildProcess; log: () => string; origin: string; link: string; token: string };
let browser: Browser;

async function ok(args: string[]): Promise<string> {
  const r = await cloudlet(args);
  assert.equal(r.code, 0, `cloudlet ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

// One base, one overlay (with an app address) and one server for every test (Deno's node:test has no before()).
await (async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run scripts/setup.sh (it installs Debian's chromium package)`);
  const { chromium } = await import("playwright-core");
  home = join(TEST_HOME, `phone-${process.pid}`);
  await fsp.rm(home, { recursive: true, force: true });
  await fsp.mkdir(join(TEST_HOME, "guest"), { recursive: true });
  await fsp.mkdir(home, { recursive: true });
  await fsp.symlink(join(TEST_HOME, "guest"), join(home, "guest"));
  work = await scratchDir("phone");
  baseId = JSON.parse(await ok(["base", "--home", home, "--name", "tiny", "--json"])).id;
  overlay = join(work, "webapp.overlay");
  await ok(["overlay", "tiny", "--home", home, "--script", WEBAPP, "--app-url", "http://{host}:{port:80}/", "-o", overlay, "--", "-redir", "tcp:8080::80"]);
  // An overlay of another base, in the seed layout (meta + .xz files): made from files, no VM needed.
  const set = await writeImageSet(join(work, "other"), 16, 4 << 20, 2 << 20, 10);
  wrongBase = (await createOverlayFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, disk: set.disk, mem: set.mem, out: join(work, "other.overlay-meta"), home: join(work, "other-home"), segmentBytes: 64 << 10 })).path;
  server = await serve();
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  await fsp.mkdir(ARTIFACTS, { recursive: true });
})();

/** `cloudlet serve` on a free loopback port; resolves with its origin and the pairing link it printed. */
async function serve(): Promise<typeof server> {
  const child = spawn(CLOUDLET, ["serve", "--home", home, "--listen", "127.0.0.1:0", "--json", "--pair", "--idle-timeout", "20"], { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  let out = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (log += d));
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
  for (let i = 0; i < 300 && !/open (http\S+)/.test(log); i++) await new Promise((r) => setTimeout(r, 100));
  const link = /open (http\S+)/.exec(log)?.[1];
  assert.ok(link, `no pairing link printed: ${log}`);
  assert.match(log, /\n[█▀▄ ]{20,}\n/, "a QR code is drawn");
  const { port } = JSON.parse(out.split("\n")[0]);
  const token = decodeURIComponent(/#token=(.+)$/.exec(link)![1]);
  assert.equal(token, (await fsp.readFile(join(home, "server", "token"), "utf8")).trim(), "the link carries the server's token");
  return { child, log: () => log, origin: `http://127.0.0.1:${port}`, link, token };
}

/** A fresh phone (its own storage); fails the test on any page error. */
async function phone(): Promise<{ context: BrowserContext; page: Page; errors: string[]; requests: Request[] }> {
  const context = await browser.newContext(PHONE);
  const page = await context.newPage();
  page.setDefaultTimeout(120_000);
  const errors: string[] = [];
  const requests: Request[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && !/favicon|Failed to load resource/.test(m.text()) && errors.push(`console: ${m.text()}`));
  page.on("request", (r) => requests.push(r));
  return { context, page, errors, requests };
}

/** A paired phone with the page open. */
async function pairedPhone(): Promise<Awaited<ReturnType<typeof phone>>> {
  const p = await phone();
  await p.page.goto(server.link);
  await p.page.waitForSelector("body[data-screen=app]");
  return p;
}

/** An overlay file's meta. */
async function metaOf(path: string): Promise<OverlayMeta> {
  const o = await openOverlay(core, path);
  try {
    return o.meta;
  } finally {
    await o.close();
  }
}

async function qemuCount(): Promise<number> {
  const r = await runTool("pgrep", ["-f", `qemu-system-x86_64.*${home}/sessions`]).catch(() => new Uint8Array(0));
  return new TextDecoder().decode(r).split("\n").filter(Boolean).length;
}

test("no token: the pairing screen only, no API request; the page has its CSP; the API answers no other origin", async () => {
  const { context, page, errors, requests } = await phone();
  try {
    const res = await page.goto(server.origin + "/");
    const h = res!.headers();
    assert.match(h["content-security-policy"], /default-src 'none'/);
    assert.match(h["content-security-policy"], /script-src 'self' 'wasm-unsafe-eval'(;|$)/, "no inline script, no eval but WASM");
    assert.match(h["content-security-policy"], /connect-src 'self'/);
    assert.match(h["content-security-policy"], /frame-ancestors 'none'/);
    assert.equal(h["x-content-type-options"], "nosniff");
    assert.equal(h["referrer-policy"], "no-referrer");
    await page.waitForSelector("body[data-screen=pair]");
    assert.equal(await page.isVisible("#pair"), true);
    assert.equal(await page.isVisible("#app"), false, "nothing but the pairing screen");
    assert.match((await page.textContent("#pair"))!, /not paired[\s\S]*QR code/);
    assert.deepEqual(requests.filter((r) => new URL(r.url()).pathname.startsWith("/v1")).map((r) => r.url()), [], "no API request without a token");
    for (const path of ["/worker.js", "/phone.js", "/cloudlet_core_bg.wasm"]) {
      const r = await fetch(server.origin + path);
      assert.equal(r.status, 200, path);
      assert.equal(r.headers.get("x-content-type-options"), "nosniff", path);
      assert.match(r.headers.get("content-security-policy") ?? "", /default-src 'none'/, `${path}: the worker gets the policy from its own response`);
    }
    // The API sends no CORS headers, so a page of another origin cannot read it, even with the token.
    const api = await fetch(server.origin + "/v1/info", { headers: { authorization: `Bearer ${server.token}`, origin: "http://evil.example" } });
    assert.equal(api.status, 200);
    assert.equal(api.headers.get("access-control-allow-origin"), null);
    const readFrom = (p: Page) =>
      p.evaluate(async ([url, token]) => {
        try {
          await fetch(url, { headers: { authorization: `Bearer ${token}` } });
          return "read";
        } catch (e) {
          return `refused: ${(e as Error).name}`;
        }
      }, [server.origin + "/v1/info", server.token]);
    const foreign = createServer((_req, res) => res.end("<!doctype html><title>another site</title>"));
    await new Promise<void>((r) => foreign.listen(0, "127.0.0.1", r));
    try {
      await page.goto(`http://localhost:${(foreign.address() as AddressInfo).port}/`);
      assert.equal(await readFrom(page), "refused: TypeError", "CORS: no other origin reads the API");
    } finally {
      foreign.close();
    }
    // And the page itself may connect only to its own origin (localhost is not 127.0.0.1).
    await page.goto(server.origin.replace("127.0.0.1", "localhost") + "/");
    await page.waitForSelector("body[data-screen=pair]");
    const before = errors.length;
    assert.equal(await readFrom(page), "refused: TypeError");
    assert.match(errors.slice(before).join("\n"), /violates the following Content Security Policy directive: "connect-src 'self'"/);
    errors.length = before;
    assert.deepEqual(errors.filter((e) => !/CORS|Access-Control|other.test/.test(e)), []);
  } finally {
    await context.close();
  }
});

test("pairing through the fragment link: the token is stored for the origin, leaves the address bar and never reaches the server", async () => {
  const { context, page, errors, requests } = await phone();
  try {
    await page.goto(server.link);
    await page.waitForSelector("body[data-screen=app]");
    assert.equal(page.url(), server.origin + "/", "the fragment is gone from the address bar");
    assert.equal(await page.evaluate(() => localStorage.getItem("cloudlet.token")), server.token);
    // The bases, by name and id.
    const base = await page.waitForSelector(`#base-list [data-base="${baseId}"]`);
    assert.match((await base.textContent())!, new RegExp(`tiny.*${baseId}`));
    assert.ok(!requests.some((r) => r.url().includes(server.token)), "no request URL carries the token");
    // Paired for good: a plain visit of the origin opens the app.
    await page.goto(server.origin + "/");
    await page.waitForSelector("body[data-screen=app]");
    // A wrong token: refused, forgotten, and the pairing screen explains.
    await page.goto(server.origin + "/#token=not-the-token-0123456789");
    await page.waitForSelector("body[data-screen=pair]");
    assert.match((await page.textContent("#pair-why"))!, /did not accept/);
    assert.equal(await page.evaluate(() => localStorage.getItem("cloudlet.token")), null);
    assert.deepEqual(errors, []);
    // The server's log never shows the token (the pairing line is printed once, before the log starts).
    const afterPairing = server.log().slice(server.log().indexOf("(the link holds the token"));
    assert.ok(!afterPairing.slice(afterPairing.indexOf("\n")).includes(server.token), "the token is not in the server log");
  } finally {
    await context.close();
  }
});

test("a wrong-base overlay (meta + .xz files) is refused before any upload, naming the base", async () => {
  const { context, page, errors, requests } = await pairedPhone();
  try {
    const stem = wrongBase.replace(/\.overlay-meta$/, "");
    const files = [wrongBase, ...(await fsp.readdir(work)).filter((f) => f.startsWith("other-") && f.endsWith(".xz")).map((f) => join(work, f))];
    assert.ok(files.length > 2, `segment files of ${stem}`);
    const theirBase = (await metaOf(wrongBase)).base.id;
    await page.setInputFiles("#file-input", files);
    await page.waitForSelector("#picked[data-state=refused]");
    const text = (await page.textContent("#picked"))!;
    assert.match(text, new RegExp(`needs base ${theirBase}`));
    assert.match(text, /not on this cloudlet, which has tiny/);
    assert.equal(await page.isVisible("#upload-button"), false);
    assert.deepEqual(requests.filter((r) => /\/v1\/sessions/.test(r.url())).map((r) => `${r.method()} ${r.url()}`), [], "no session was even created");
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});

test("pick the overlay, upload with progress, press Open: the app's page from the synthesized VM; Stop ends it", async () => {
  const { context, page, errors } = await pairedPhone();
  try {
    // A phone's uplink: about 1 Mbit/s, so the progress has something to show.
    const cdp = await context.newCDPSession(page);
    await cdp.send("Network.enable");
    await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 30, downloadThroughput: 4 << 20, uploadThroughput: 128 << 10 });
    await page.setInputFiles("#file-input", overlay);
    await page.waitForSelector("#picked[data-state=ready]");
    assert.match((await page.textContent("#picked"))!, /webapp\.overlay[\s\S]*tiny ✓/);
    const t0 = Date.now();
    await page.tap("#upload-button");
    // Watch the progress: bytes, rate and time left while sending.
    const seen = new Set<string>();
    while (!(await page.isVisible("#open-panel")) && Date.now() - t0 < 300_000) {
      const st = await page.getAttribute("#progress", "data-state");
      assert.notEqual(st, "failed", (await page.textContent("#error"))!);
      const text = (await page.textContent("#upload-text"))!;
      if (text) seen.add(text);
      await new Promise((r) => setTimeout(r, 100));
    }
    const midway = [...seen].filter((t) => /KiB of [\d.]+ KiB · [\d.]+ KiB\/s · \d+ s left/.test(t));
    assert.ok(midway.length >= 2, `progress with rate and time left was shown: ${[...seen].join(" | ")}`);
    await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    const href = (await page.getAttribute("#open-link", "href"))!;
    assert.match(href, /^http:\/\/127\.0\.0\.1:\d+\/$/, "the app address with the forwarded port filled in");
    assert.notEqual(href, "http://127.0.0.1:8080/", "the port the cloudlet picked, not the overlay's");
    await page.screenshot({ path: join(ARTIFACTS, "phone-running.png"), fullPage: true });
    await page.screenshot({ path: DOCS_SCREENSHOT });
    const [app] = await Promise.all([context.waitForEvent("page"), page.tap("#open-link")]);
    await app.waitForLoadState();
    const body = await app.textContent("body");
    const t1 = Date.now();
    assert.match(body!, /Hello from a synthesized cloudlet VM/);
    process.stderr.write(`phone client: Upload pressed -> app page shown in ${((t1 - t0) / 1000).toFixed(1)} s (uplink throttled to 128 KiB/s)\n`);
    await app.close();
    // The VM is listed as this phone's, detached (it outlives this page), and Stop ends it.
    const id = (await page.getAttribute("body", "data-session"))!;
    await page.waitForSelector(`#vm-list [data-vm="${id}"]`);
    await page.reload();
    await page.waitForSelector(`#vm-list [data-vm="${id}"]`);
    assert.equal(await qemuCount(), 1);
    await page.tap(`#vm-list [data-vm="${id}"] button.stop`);
    await page.waitForSelector(`#vm-list [data-vm="${id}"]`, { state: "detached" });
    assert.equal(await qemuCount(), 0, "Stop ended the VM");
    assert.equal(await fetch(href).then(() => "answered", () => "gone"), "gone");
    // The same file again (a second run of the app): the choice registers and Upload is offered.
    assert.equal(await page.isVisible("#upload-button"), false);
    await page.setInputFiles("#file-input", overlay);
    await page.waitForSelector("#picked[data-state=ready]");
    assert.equal(await page.isVisible("#upload-button"), true);
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});

test("a connection dropped mid-upload resumes from the last complete segment when the link returns", async () => {
  const { context, page, errors } = await pairedPhone();
  try {
    const patches: Array<{ offset: number; outcome: string }> = [];
    await page.route("**/v1/sessions/*/data", async (route) => {
      const r = route.request();
      if (r.method() !== "PATCH") return route.continue();
      const offset = Number(r.headers()["upload-offset"]);
      // The second segment's request dies on the way, as when a phone changes networks.
      if (patches.length === 1) {
        patches.push({ offset, outcome: "dropped" });
        return route.abort("connectionreset");
      }
      patches.push({ offset, outcome: "sent" });
      return route.continue();
    });
    await page.setInputFiles("#file-input", overlay);
    await page.waitForSelector("#picked[data-state=ready]");
    await page.tap("#upload-button");
    await page.waitForSelector("#progress[data-state=resuming]");
    await page.waitForSelector("#open-panel:not([hidden])", { timeout: 300_000 });
    const segments = (await metaOf(overlay)).segments.map((s) => s.compressedSize);
    assert.ok(segments.length >= 3, `the demo overlay has ${segments.length} segments`);
    assert.equal(await page.getAttribute("body", "data-cuts"), "1");
    assert.deepEqual(patches[1], { offset: segments[0], outcome: "dropped" }, "the cut came after the first segment");
    assert.deepEqual(patches[2], { offset: segments[0], outcome: "sent" }, "resumed at the end of the last complete segment, not from 0");
    assert.equal(patches.filter((p) => p.outcome === "sent").length, segments.length, "every segment sent once");
    assert.match((await page.textContent("#state-text"))!, /VM \S+ is running/);
    const href = (await page.getAttribute("#open-link", "href"))!;
    assert.match(await (await fetch(href)).text(), /Hello from a synthesized cloudlet VM/);
    const id = (await page.getAttribute("body", "data-session"))!;
    await page.tap(`#vm-list [data-vm="${id}"] button.stop`);
    await page.waitForSelector(`#vm-list [data-vm="${id}"]`, { state: "detached" });
    assert.equal(await page.getAttribute("#progress", "data-state"), "stopped");
    assert.equal(await page.isVisible("#open-panel"), false, "no Open button for a stopped VM");
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});

test("the phone goes offline mid-upload and comes back: the upload goes on from the server's offset", async () => {
  const { context, page, errors, requests } = await pairedPhone();
  try {
    const cdp = await context.newCDPSession(page);
    await cdp.send("Network.enable");
    const slow = { latency: 30, downloadThroughput: 4 << 20, uploadThroughput: 64 << 10 };
    await cdp.send("Network.emulateNetworkConditions", { offline: false, ...slow });
    await page.setInputFiles("#file-input", overlay);
    await page.waitForSelector("#picked[data-state=ready]");
    await page.tap("#upload-button");
    const segments = (await metaOf(overlay)).segments.map((s) => s.compressedSize);
    // Offline once the first segment is in, for 3 s: requests fail, the page waits for the link.
    await page.waitForFunction((n) => Number(document.querySelector<HTMLElement>("#upload-text")?.dataset.sent) > n, segments[0] + 1000);
    await cdp.send("Network.emulateNetworkConditions", { offline: true, ...slow });
    await page.waitForSelector("#progress[data-state=resuming]");
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(await page.getAttribute("#progress", "data-state"), "resuming", "still waiting for the link");
    await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    await page.waitForSelector("#open-panel:not([hidden])", { timeout: 300_000 });
    const offsets = requests.filter((r) => r.method() === "PATCH").map((r) => Number(r.headers()["upload-offset"]));
    const boundaries = segments.map((_, i) => segments.slice(0, i).reduce((a, b) => a + b, 0));
    assert.ok(offsets.every((o) => boundaries.includes(o)), `every request starts at a segment boundary: ${offsets} in ${boundaries}`);
    assert.ok(offsets.length > segments.length, `a segment was sent again after the cut: ${offsets}`);
    assert.ok(!offsets.slice(1).includes(0), "never restarted from 0");
    const href = (await page.getAttribute("#open-link", "href"))!;
    assert.match(await (await fetch(href)).text(), /Hello from a synthesized cloudlet VM/);
    const id = (await page.getAttribute("body", "data-session"))!;
    await page.tap(`#vm-list [data-vm="${id}"] button.stop`);
    await page.waitForSelector(`#vm-list [data-vm="${id}"]`, { state: "detached" });
    assert.deepEqual(errors.filter((e) => !/ERR_INTERNET_DISCONNECTED/.test(e)), []);
  } finally {
    await context.close();
  }
});

test("a corrupt segment: the cloudlet fails the session and the page says so; no VM", async () => {
  const { context, page, errors } = await pairedPhone();
  try {
    const bad = join(work, "corrupt", "webapp.overlay");
    await fsp.mkdir(join(work, "corrupt"), { recursive: true });
    const bytes = await fsp.readFile(overlay);
    bytes[bytes.length - 100] ^= 0x40; // inside the last segment
    await fsp.writeFile(bad, bytes);
    await page.setInputFiles("#file-input", bad);
    await page.waitForSelector("#picked[data-state=ready]");
    await page.tap("#upload-button");
    await page.waitForSelector("#progress[data-state=failed]");
    assert.match((await page.textContent("#error"))!, /Synthesis failed: .*segment \d+ is corrupt/);
    assert.equal(await page.isVisible("#open-panel"), false);
    assert.equal(await qemuCount(), 0);
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});

test("overlay --app-url is checked against the port forwards", async () => {
  const set = await writeImageSet(join(work, "appurl"), 17, 1 << 20, 1 << 20, 4);
  const args = ["overlay", "--home", join(work, "appurl-home"), "--base-disk", set.baseDisk, "--base-mem", set.baseMem, "--disk", set.disk, "--mem", set.mem, "-o", join(work, "appurl.overlay"), "--forward", "tcp:8080::80"];
  const bad = await cloudlet([...args, "--app-url", "http://{host}:{port:81}/"]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /no TCP port forward goes to guest port 81/);
  await ok([...args, "--app-url", "http://{host}:{port:80}/x"]);
  assert.equal((await metaOf(join(work, "appurl.overlay"))).launch.appUrl, "http://{host}:{port:80}/x");
});

test("serve answers mDNS for NAME.local (A and AAAA) and prints no token when not asked and not on a terminal", async () => {
  const name = `Phone Test ${process.pid}`;
  const host = `phone-test-${process.pid}.local`;
  const sHome = join(work, "mdns-home");
  const child = spawn(CLOUDLET, ["serve", "--home", sHome, "--listen", "0.0.0.0:0", "--name", name, "--json"], { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (log += d));
  const mdns = makeMdns();
  try {
    for (let i = 0; i < 300 && !/also reach it as/.test(log); i++) await new Promise((r) => setTimeout(r, 100));
    assert.match(log, new RegExp(`reach it as http://${host.replace(/\./g, "\\.")}:\\d+/`));
    assert.ok(!log.includes("#token="), `no pairing link without --pair off a terminal: ${log}`);
    assert.match(log, /phone page at http:\/\/[\d.]+:\d+\/; its pairing link/);
    // Past the start-up announcements: only answers to these queries count.
    await new Promise((r) => setTimeout(r, 1500));
    const answers: Array<{ type: string; data: string }> = [];
    mdns.on("response", (res) => {
      for (const a of res.answers) if (a.name === host) answers.push({ type: a.type, data: String((a as { data?: unknown }).data) });
    });
    mdns.query({ questions: [{ name: host.toUpperCase(), type: "A" }] });
    await new Promise((r) => setTimeout(r, 1000));
    const want = lanAddresses();
    assert.ok(want.length > 0, "this machine has a network address");
    assert.deepEqual(answers.map((a) => a.type).filter((t) => t !== "A"), [], "only A records for an A query");
    assert.deepEqual(new Set(answers.map((a) => a.data)), new Set(want.filter((a) => !a.includes(":"))));
    answers.length = 0;
    mdns.query({ questions: [{ name: `not-${host}`, type: "A" }] });
    await new Promise((r) => setTimeout(r, 700));
    assert.equal(answers.length, 0, "no answer for another name");
    if (want.some((a) => a.includes(":"))) {
      mdns.query({ questions: [{ name: host, type: "AAAA" }] });
      await new Promise((r) => setTimeout(r, 700));
      assert.ok(answers.length > 0 && answers.every((a) => a.type === "AAAA"));
    }
  } finally {
    mdns.destroy();
    child.kill("SIGINT");
    await new Promise((r) => child.once("close", r));
  }
});

test("--tls-cert: the page and the API over HTTPS, pairing included", async () => {
  const certDir = join(work, "tls");
  await fsp.mkdir(certDir, { recursive: true });
  // A CA and a leaf it signs, as in net_server.test.ts (rustls, under Deno, refuses a CA certificate as the server's).
  const ssl = (...a: string[]) => runTool("openssl", a);
  await ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=cloudlet-test-ca", "-keyout", join(certDir, "ca.key"), "-out", join(certDir, "ca.pem"));
  await ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=cloudlet-test", "-keyout", join(certDir, "key.pem"), "-out", join(certDir, "server.csr"));
  await fsp.writeFile(join(certDir, "ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n");
  await ssl("x509", "-req", "-in", join(certDir, "server.csr"), "-CA", join(certDir, "ca.pem"), "-CAkey", join(certDir, "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", join(certDir, "ext.cnf"), "-out", join(certDir, "cert.pem"));
  const sHome = join(work, "tls-home");
  const child = spawn(CLOUDLET, ["serve", "--home", sHome, "--listen", "127.0.0.1:0", "--pair", "--tls-cert", join(certDir, "cert.pem"), "--tls-key", join(certDir, "key.pem")], { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (log += d));
  const context = await browser.newContext({ ...PHONE, ignoreHTTPSErrors: true });
  try {
    for (let i = 0; i < 300 && !/open (https\S+)/.test(log); i++) await new Promise((r) => setTimeout(r, 100));
    const link = /open (https:\/\/127\.0\.0\.1:\d+\/#token=\S+)/.exec(log)?.[1];
    assert.ok(link, `an https pairing link: ${log}`);
    const page = await context.newPage();
    const res = await page.goto(link);
    assert.match(res!.headers()["content-security-policy"], /default-src 'none'/);
    await page.waitForSelector("body[data-screen=app]");
    assert.equal(await page.evaluate(() => location.protocol), "https:");
    assert.match((await page.textContent("#base-list"))!, /No bases yet/);
  } finally {
    await context.close();
    child.kill("SIGINT");
    await new Promise((r) => child.once("close", r));
  }
});

test("--no-page: the API only; other paths need the token", async () => {
  const child = spawn(CLOUDLET, ["serve", "--home", join(work, "nopage-home"), "--listen", "127.0.0.1:0", "--json", "--no-page", "--pair"], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let log = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (log += d));
  try {
    for (let i = 0; i < 300 && !out.includes("\n"); i++) await new Promise((r) => setTimeout(r, 100));
    const { port } = JSON.parse(out);
    assert.equal((await fetch(`http://127.0.0.1:${port}/`)).status, 401);
    assert.equal((await fetch(`http://127.0.0.1:${port}/phone.js`)).status, 401);
    assert.ok(!log.includes("#token="), "no pairing link without the page");
  } finally {
    child.kill("SIGINT");
    await new Promise((r) => child.once("close", r));
  }
});

test("teardown: the server stops cleanly", async () => {
  await browser.close();
  server.child.kill("SIGINT");
  await new Promise((r) => server.child.once("close", r));
  assert.equal(await qemuCount(), 0);
  await fsp.rm(home, { recursive: true, force: true });
});
