/**
 * Port-forward specs, in the seed's `-redir` syntax and QEMU's `hostfwd=`
 * syntax, parsed into the overlay's launch config.
 *
 *   -redir tcp:2222::22            [tcp|udp]:HOSTPORT:[GUESTADDR]:GUESTPORT
 *   hostfwd=tcp:127.0.0.1:2222-:22 [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT
 *   tcp:8080:80                    shorthand: [tcp|udp]:HOSTPORT:GUESTPORT (HOSTPORT 0 = pick one)
 */
import { CloudletError } from "../errors.ts";
import type { PortForward } from "./format.ts";

function port(s: string, spec: string, allowZero: boolean): number {
  const n = Number(s);
  if (!/^\d+$/.test(s) || n > 65535 || (!allowZero && n === 0)) throw new CloudletError("BAD_ARGUMENT", `bad port "${s}" in port forward "${spec}"`);
  return n;
}

/** Parses one port-forward spec in any accepted syntax. */
export function parsePortForward(spec: string): PortForward {
  let s = spec.trim();
  if (s.startsWith("hostfwd=")) s = s.slice(8);
  let proto: "tcp" | "udp" = "tcp";
  const m = /^(tcp|udp):(.*)$/.exec(s);
  if (m) {
    proto = m[1] as "tcp" | "udp";
    s = m[2];
  }
  if (s.includes("-")) {
    // hostfwd: [hostaddr]:hostport-[guestaddr]:guestport
    const [host, guest] = s.split("-");
    const hp = host.split(":").pop() ?? "";
    const gp = guest.split(":").pop() ?? "";
    return { proto, hostPort: port(hp, spec, true), guestPort: port(gp, spec, false) };
  }
  const parts = s.split(":");
  if (parts.length === 3) return { proto, hostPort: port(parts[0], spec, true), guestPort: port(parts[2], spec, false) };
  if (parts.length === 2) return { proto, hostPort: port(parts[0], spec, true), guestPort: port(parts[1], spec, false) };
  throw new CloudletError("BAD_ARGUMENT", `cannot parse port forward "${spec}" (use tcp:2222::22 or hostfwd=tcp::2222-:22)`);
}

/** Collects port forwards from `--forward` values and trailing `-redir SPEC` / `-netdev ...hostfwd=` args. */
export function collectPortForwards(forwards: string[], trailing: string[]): PortForward[] {
  const out = forwards.map(parsePortForward);
  for (let i = 0; i < trailing.length; i++) {
    const a = trailing[i];
    if (a === "-redir" || a === "--redir") {
      const v = trailing[++i];
      if (!v) throw new CloudletError("BAD_ARGUMENT", "-redir needs a spec such as tcp:2222::22");
      out.push(parsePortForward(v));
    } else if (a.includes("hostfwd=")) {
      for (const part of a.split(",")) if (part.startsWith("hostfwd=")) out.push(parsePortForward(part));
    } else if (a === "-netdev" || a === "-nic") {
      continue;
    } else {
      throw new CloudletError("BAD_ARGUMENT", `unknown extra argument "${a}" (after -- only -redir SPEC and hostfwd=SPEC are accepted)`);
    }
  }
  return out;
}

/**
 * App address templates (`overlay --app-url`): where the synthesized VM's
 * app answers, for the phone page's "Open" button. `{host}` is the
 * cloudlet's address as the client reached it, `{port:N}` the host port
 * forwarded to guest TCP port N (chosen at launch, so unknown when the
 * overlay is made). Nothing else may be in braces.
 */
const APP_URL_PART = /\{([^{}]*)\}/g;

/** Checks an app address template against the overlay's port forwards; returns it. */
export function checkAppUrl(template: string, forwards: PortForward[]): string {
  if (template.length > 1024 || !/^https?:\/\/\S+$/.test(template)) throw new CloudletError("BAD_ARGUMENT", `--app-url must be an http(s) address such as 'http://{host}:{port:80}/', not "${template}"`);
  if (/[{}]/.test(template.replace(APP_URL_PART, ""))) throw new CloudletError("BAD_ARGUMENT", `--app-url "${template}" has an unmatched brace`);
  for (const [, part] of template.matchAll(APP_URL_PART)) {
    if (part === "host") continue;
    const m = /^port:(\d{1,5})$/.exec(part);
    if (!m) throw new CloudletError("BAD_ARGUMENT", `--app-url: unknown placeholder {${part}} (use {host} and {port:GUESTPORT})`);
    if (!forwards.some((f) => f.proto === "tcp" && f.guestPort === Number(m[1]))) throw new CloudletError("BAD_ARGUMENT", `--app-url uses {port:${m[1]}}, but no TCP port forward goes to guest port ${m[1]} (add one, e.g. -- -redir tcp:8080::${m[1]})`);
  }
  return template;
}

/** Fills in an app address template: null when a port it names is not forwarded. */
export function expandAppUrl(template: string, host: string, ports: PortForward[]): string | null {
  let missing = false;
  const url = template.replace(APP_URL_PART, (_, part: string) => {
    if (part === "host") return host.includes(":") ? `[${host}]` : host;
    const guest = Number(/^port:(\d+)$/.exec(part)?.[1]);
    const f = ports.find((p) => p.proto === "tcp" && p.guestPort === guest);
    if (!f) missing = true;
    return f ? String(f.hostPort) : "";
  });
  return missing ? null : url;
}
