/** `cloudlet serve`: run a synthesis server: accept overlays over HTTP and resume them as VMs. */
import type { CAC } from "cac";
import { CloudletError } from "../../ts/errors.ts";
import { printable } from "../../ts/printable.ts";
import { loadCoreFromDisk } from "../../ts/node/core_file.ts";
import { CLOUDLET_VERSION } from "../../ts/version.ts";
import { cloudletHome, homePaths } from "../../ts/home/paths.ts";
import { HomeBackend } from "../../ts/jobs/server_backend.ts";
import { loadOrCreateToken, SynthesisServer } from "../../ts/server/server.ts";
import { DEFAULT_PORT } from "../../ts/server/protocol.ts";
import { announce, lanAddresses, mdnsHostName } from "../../ts/server/discovery.ts";
import { clientPage, pageHost, pairingQr, pairingUrl } from "../../ts/server/client_page.ts";
import { hostname } from "node:os";
import { type Common, parseSize, num, untilInterrupted, hostChoice, ACCEL_HELP, parseListen, readFileArg } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("serve", "Run a synthesis server: accept overlays over HTTP and resume them as VMs")
    .alias("synthesis_server")
    .option("--listen <addr>", "HOST:PORT to listen on", { default: `127.0.0.1:${DEFAULT_PORT}` })
    .option("--token-file <file>", "Bearer token clients must present (default: <home>/server/token, created on first start)")
    .option("--tls-cert <file>", "TLS certificate (PEM): serve HTTPS")
    .option("--tls-key <file>", "TLS private key (PEM)")
    .option("--max-sessions <n>", "Sessions at once", { default: 4 })
    .option("--max-meta <size>", "Largest meta accepted", { default: "16M" })
    .option("--max-overlay <size>", "Largest overlay accepted", { default: "64G" })
    .option("--idle-timeout <s>", "Fail a session whose client is silent this long (no bytes; no keep-alive once running: the VM is stopped), seconds", { default: 60 })
    .option("--session-timeout <s>", "Fail a session not running within this long, seconds", { default: 1800 })
    .option("--detached-timeout <s>", "Stop a detached client's VM this long after it detached, seconds (0: never)", { default: 86400 })
    .option("--name <name>", "Name announced on the network", { default: hostname() })
    .option("--no-announce", "Do not announce over mDNS (default: announce)")
    .option("--no-url", "Refuse sessions that ask the server to fetch the overlay from a URL, so clients must upload it (default: accept URLs)")
    .option("--no-early-start", "Never start a VM early (resumed on the boot set, filled while it runs), even for clients that ask or overlays with a boot set; every session runs full pipelined synthesis (default: early start when the client asks, or leaves it to the server and the overlay has a boot set)")
    .option("--no-page", "Do not serve the phone page at /, only the API (default: serve it)")
    .option("--pair", "Print the pairing link and QR code even when stderr is not a terminal (they carry the token)")
    .option("--host <host>", "qemu (default) or virsh")
    .option("--connect <uri>", "Local libvirt URI for --host virsh (default qemu:///system)")
    .option("--accel <accel>", ACCEL_HELP)
    .action(async (o: Common & Record<string, unknown>) => {
      const core = await loadCoreFromDisk();
      const home = cloudletHome(o.home as string | undefined);
      const { host, port } = parseListen(o.listen as string);
      const tokenFile = (o.tokenFile as string | undefined) ?? homePaths(home).serverToken;
      const { token, created } = await loadOrCreateToken(tokenFile);
      if (Boolean(o.tlsCert) !== Boolean(o.tlsKey)) throw new CloudletError("BAD_ARGUMENT", "--tls-cert and --tls-key go together");
      const tls = o.tlsCert ? { cert: await readFileArg(o.tlsCert as string, "TLS certificate"), key: await readFileArg(o.tlsKey as string, "TLS key") } : undefined;
      const hc = hostChoice(o);
      // Without the page (no build tools here, say) the API still serves cloudlet client.
      const pageHandler = o.page === false ? undefined : await pageRoot().then((dir) => clientPage(dir)).catch((e: Error) => void process.stderr.write(`cloudlet serve: not serving the phone page: ${e.message}\n`));
      const server = new SynthesisServer({
        core,
        backend: new HomeBackend(core, home, hc),
        host,
        port,
        token,
        tls,
        maxSessions: num(o.maxSessions, "--max-sessions", 1, 1024),
        maxMetaBytes: parseSize(o.maxMeta as string, "--max-meta"),
        maxOverlayBytes: parseSize(o.maxOverlay as string, "--max-overlay"),
        allowUrl: o.url !== false,
        earlyStart: o.earlyStart === false ? "off" : "auto",
        idleMs: num(o.idleTimeout, "--idle-timeout", 1, 86400, false) * 1000,
        sessionMs: num(o.sessionTimeout, "--session-timeout", 1, 7 * 86400, false) * 1000,
        detachedMs: num(o.detachedTimeout, "--detached-timeout", 0, 365 * 86400, false) * 1000,
        name: o.name as string,
        version: CLOUDLET_VERSION,
        log: (l) => process.stderr.write(`${new Date().toISOString()} ${printable(l)}\n`),
        page: pageHandler,
      });
      await server.start();
      const addr = server.address();
      const bases = await new HomeBackend(core, home, hc).bases();
      process.stderr.write(`cloudlet serve: listening on ${tls ? "https" : "http"}://${host}:${addr.port} with ${bases.length} base(s); token ${created ? "created at" : "from"} ${tokenFile}\n`);
      if (o.json) process.stdout.write(JSON.stringify({ host, port: addr.port, tls: Boolean(tls), tokenFile }) + "\n");
      // Announce only addresses clients can reach: the one listened on, or every address for a wildcard.
      const wildcard = host === "0.0.0.0" || host === "::";
      const loopback = /^127\.|^::1$|^localhost$/.test(host);
      if (o.announce !== false && loopback) process.stderr.write("cloudlet serve: not announcing over mDNS: listening on loopback only (--listen 0.0.0.0:PORT serves the network)\n");
      const page = pageHandler !== undefined;
      if (page && (o.pair === true || process.stderr.isTTY)) {
        const link = pairingUrl(tls ? "https" : "http", pageHost(host, lanAddresses()), addr.port, token);
        const others = wildcard ? lanAddresses().slice(1) : [];
        process.stderr.write(`cloudlet serve: pair a phone: scan this code, or open ${link}\n  (the link holds the token: share it only with devices you trust)${others.length ? `\n  (this host also has ${others.join(", ")}: put the one the phone reaches in the link)` : ""}\n${await pairingQr(link)}\n`);
      } else if (page) {
        process.stderr.write(`cloudlet serve: phone page at ${tls ? "https" : "http"}://${pageHost(host, lanAddresses())}:${addr.port}/; its pairing link (it holds the token) is printed on a terminal, or with --pair\n`);
      }
      if (page && !loopback && o.announce !== false) process.stderr.write(`cloudlet serve: phones on this network also reach it as ${tls ? "https" : "http"}://${mdnsHostName(o.name as string)}:${addr.port}/ (mDNS; pair that address too: tokens are kept per address)\n`);
      const ann = o.announce === false || loopback ? null : announce({ name: o.name as string, port: addr.port, tls: Boolean(tls), version: CLOUDLET_VERSION, bases: bases.map((b) => `${b.name}=${b.id.slice(0, 16)}`), addresses: wildcard ? undefined : [host] });
      await untilInterrupted();
      process.stderr.write("cloudlet serve: stopping (ending sessions)\n");
      await ann?.stop();
      await server.stop();
    });
}

/** The built pages (web/dist; in the package, the shipped copy): found here, so the server needs no build tools. */
async function pageRoot(): Promise<string> {
  const { ensureInspectorBuilt } = await import("../../web/build.ts");
  return await ensureInspectorBuilt();
}
