// The layering of docs/architecture.md, checked from the import statements of
// ts/, cli/ and web/: no import runs up a layer, the services (ts/server,
// ts/home, ts/vm) do not import each other, the runtime-neutral layers import
// no `node:` module, and no files import each other in a cycle.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** Layer of a repository path: [name, rank]; an import must go to a lower rank (or the same folder). */
function layerOf(path: string): [string, number] {
  if (path === "ts/errors.ts" || path === "ts/version.ts" || path === "ts/printable.ts" || path === "ts/deferred.ts" || path.startsWith("ts/core/")) return ["core", 0];
  if (path.startsWith("ts/component/")) return ["component", 1];
  if (path.startsWith("ts/overlay/")) return ["overlay", 2];
  if (path.startsWith("ts/inspect/")) return ["inspect", 3];
  if (path.startsWith("ts/node/")) return ["node", 4];
  for (const s of ["vm", "home", "server"]) if (path.startsWith(`ts/${s}/`)) return [s, 5];
  if (path.startsWith("ts/jobs/")) return ["jobs", 6];
  if (path === "ts/mod.ts") return ["mod", 7];
  if (path.startsWith("cli/")) return ["cli", 9];
  if (path.startsWith("web/")) return ["web", 8];
  return [path, 99];
}

const NEUTRAL = new Set(["core", "component", "overlay", "inspect"]);
const IMPORT = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)["'](\.{1,2}\/[^"']*)["']/g;

function sources(dir: string): string[] {
  return readdirSync(join(ROOT, dir)).flatMap((name) => {
    const p = join(dir, name);
    if (name.startsWith("_gen") || name.startsWith("_wasm") || name === "dist" || name === "node_modules") return [];
    if (statSync(join(ROOT, p)).isDirectory()) return sources(p);
    return /\.(ts|mjs)$/.test(name) ? [p] : [];
  });
}

const files = [...sources("ts"), ...sources("cli"), ...sources("web")];
const imports = new Map<string, string[]>(files.map((f) => {
  const src = readFileSync(join(ROOT, f), "utf8");
  return [f, [...src.matchAll(IMPORT)].map((m) => relative(ROOT, resolve(ROOT, dirname(f), m[1])))];
}));

test("the tree has the layers of docs/architecture.md", () => {
  for (const dir of ["ts/core", "ts/overlay", "ts/inspect", "ts/node", "ts/vm", "ts/home", "ts/server", "ts/jobs", "cli/commands"]) {
    assert.ok(statSync(join(ROOT, dir)).isDirectory(), `${dir} exists`);
  }
  assert.equal(files.filter((f) => f.startsWith("ts/host/")).length, 0, "ts/host is gone");
});

test("no import runs up a layer, and the services do not import each other", () => {
  const up: string[] = [];
  for (const [from, targets] of imports) {
    const [fl, fr] = layerOf(from);
    for (const to of targets) {
      const [tl, tr] = layerOf(to);
      if (fl === tl) continue;
      if (tr >= fr) up.push(`${from} -> ${to} (${fl} -> ${tl})`);
    }
  }
  assert.deepEqual(up, []);
});

test("the runtime-neutral layers import no node: module", () => {
  const bad = files.filter((f) => NEUTRAL.has(layerOf(f)[0]) && /(?:\bfrom\s*|\bimport\s*\(\s*)["']node:/.test(readFileSync(join(ROOT, f), "utf8")));
  assert.deepEqual(bad, []);
});

test("no files import each other in a cycle", () => {
  const state = new Map<string, 1 | 2>();
  const cycles: string[] = [];
  const visit = (f: string, path: string[]): void => {
    if (state.get(f) === 2) return;
    if (state.get(f) === 1) { cycles.push([...path.slice(path.indexOf(f)), f].join(" -> ")); return; }
    state.set(f, 1);
    for (const t of imports.get(f) ?? []) if (imports.has(t)) visit(t, [...path, f]);
    state.set(f, 2);
  };
  for (const f of files) visit(f, []);
  assert.deepEqual(cycles, []);
});
