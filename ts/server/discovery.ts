/**
 * Discovery over mDNS / DNS-SD: `cloudlet serve` announces
 * `_cloudlet._tcp.local` with its port and, in TXT records, its version,
 * whether it speaks TLS and its bases; `cloudlet discover` asks the local
 * network and lists the answers. (The seed used UPnP.) It also answers
 * A/AAAA queries for `NAME.local` (its --name), the SRV target: a phone's
 * browser cannot browse DNS-SD, but its resolver looks up `.local` names,
 * so `http://NAME.local:8021/` reaches the phone page.
 */
import { clearTimeout, setTimeout } from "node:timers";
import { networkInterfaces } from "node:os";
import makeMdns from "multicast-dns";
import { mdnsOptions } from "../node/mdns_socket.ts";

/** The DNS-SD service type. */
export const SERVICE = "_cloudlet._tcp.local";

/** What a cloudlet announces. */
export interface Announcement {
  /** Instance name (unique on the link). */
  name: string;
  /** Port of the HTTP(S) API. */
  port: number;
  /** Speaks HTTPS. */
  tls: boolean;
  /** Software version. */
  version: string;
  /** Bases: "name=idprefix". */
  bases: string[];
  /** Addresses to advertise (default: {@link lanAddresses}). */
  addresses?: string[];
}

/** A cloudlet found by {@link discover}. */
export interface FoundCloudlet {
  name: string;
  host: string;
  addresses: string[];
  port: number;
  tls: boolean;
  version: string;
  bases: string[];
}

function ipv4s(): string[] {
  return Object.values(networkInterfaces())
    .flat()
    .filter((a) => a && a.family === "IPv4" && !a.internal)
    .map((a) => a!.address);
}

/** Every address another host on the network can use: non-internal IPv4, then global or unique-local IPv6 (link-local ones need a zone, which a URL cannot carry well). */
export function lanAddresses(): string[] {
  const v6 = Object.values(networkInterfaces())
    .flat()
    .filter((a) => a && a.family === "IPv6" && !a.internal && !/^fe80:/i.test(a.address))
    .map((a) => a!.address);
  return [...ipv4s(), ...v6];
}

/** `NAME.local` for an instance name: one DNS label of letters, digits and hyphens (others become hyphens). */
export function mdnsHostName(name: string): string {
  const label = name.toLowerCase().replace(/\.local\.?$/, "").replace(/[^a-z0-9-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 63);
  return `${label || "cloudlet"}.local`;
}

function txt(a: Announcement): Buffer[] {
  // One string per base keeps each under the 255-byte TXT limit.
  return [`txtvers=1`, `version=${a.version}`, `tls=${a.tls ? 1 : 0}`, ...a.bases.slice(0, 20).map((b) => `base=${b}`)].map((s) => Buffer.from(s.slice(0, 255)));
}

/** Announces a cloudlet until stopped; answers queries for the service. */
export function announce(a: Announcement): { stop: () => Promise<void> } {
  const mdns = makeMdns(mdnsOptions());
  const instance = `${a.name}.${SERVICE}`;
  const target = mdnsHostName(a.name);
  const addressRecords = () =>
    (a.addresses ?? lanAddresses()).map((ip) => (ip.includes(":") ? { name: target, type: "AAAA" as const, ttl: 120, data: ip } : { name: target, type: "A" as const, ttl: 120, data: ip }));
  const records = () => [
    { name: SERVICE, type: "PTR" as const, ttl: 120, data: instance },
    { name: instance, type: "SRV" as const, ttl: 120, data: { port: a.port, target, priority: 0, weight: 0 } },
    { name: instance, type: "TXT" as const, ttl: 120, data: txt(a) },
    ...addressRecords(),
  ];
  mdns.on("query", (q) => {
    if (q.questions.some((x) => x.name === SERVICE || x.name === instance)) return mdns.respond({ answers: records() });
    // NAME.local: only the record types asked for (names compare case-insensitively).
    const asked = q.questions.filter((x) => x.name.toLowerCase() === target).map((x) => String(x.type));
    const answers = addressRecords().filter((r) => asked.includes("ANY") || asked.includes(r.type));
    if (answers.length) mdns.respond({ answers });
  });
  mdns.on("error", () => {});
  // Unsolicited announcements, as RFC 6762 recommends at start.
  mdns.respond({ answers: records() });
  const again = setTimeout(() => mdns.respond({ answers: records() }), 1000);
  again.unref();
  return {
    stop: () =>
      new Promise((resolve) => {
        clearTimeout(again);
        // Goodbye: TTL 0 tells listeners the service is gone.
        mdns.respond({ answers: records().map((r) => ({ ...r, ttl: 0 })) }, () => mdns.destroy(() => resolve()));
      }),
  };
}

/** Asks the network for cloudlets for `ms` milliseconds. */
export function discover(ms = 2000): Promise<FoundCloudlet[]> {
  return new Promise((resolve) => {
    const mdns = makeMdns(mdnsOptions());
    const found = new Map<string, FoundCloudlet>();
    const hostAddrs = new Map<string, Set<string>>();
    mdns.on("response", (res) => {
      const all = [...res.answers, ...(res.additionals ?? [])];
      for (const r of all) if (r.type === "A" || r.type === "AAAA") (hostAddrs.get(r.name) ?? hostAddrs.set(r.name, new Set()).get(r.name)!).add(String(r.data));
      for (const r of all) {
        if (r.type === "PTR" && r.name === SERVICE) {
          const inst = String(r.data);
          if (!found.has(inst)) found.set(inst, { name: inst.replace(`.${SERVICE}`, ""), host: "", addresses: [], port: 0, tls: false, version: "", bases: [] });
        }
      }
      for (const r of all) {
        const f = found.get(r.name);
        if (!f) continue;
        if (r.type === "SRV") {
          const d = r.data as { port: number; target: string };
          f.port = d.port;
          f.host = d.target;
        } else if (r.type === "TXT") {
          const items = (Array.isArray(r.data) ? r.data : [r.data]).map((b) => String(b));
          f.bases = [];
          for (const it of items) {
            const [k, v] = it.split(/=(.*)/s);
            if (k === "version") f.version = v;
            if (k === "tls") f.tls = v === "1";
            if (k === "base") f.bases.push(v);
          }
        }
      }
    });
    mdns.on("error", () => {});
    const ask = () => mdns.query({ questions: [{ name: SERVICE, type: "PTR" }] });
    ask();
    const t1 = setTimeout(ask, ms / 2);
    setTimeout(() => {
      clearTimeout(t1);
      mdns.destroy();
      for (const f of found.values()) f.addresses = [...(hostAddrs.get(f.host) ?? [])];
      resolve([...found.values()].filter((f) => f.port > 0));
    }, ms);
  });
}
