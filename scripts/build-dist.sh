#!/usr/bin/env bash
# Builds dist/, what the npm package ships (`npm pack` runs this as prepack):
#
#   dist/ts/**.js + .d.ts     the library, compiled by tsc (ts/mod.ts is the entry)
#   dist/cli/main.js          the `cloudlet` command (package.json "bin"), compiled
#   dist/ts/core/_wasm/       the .wasm and its wasm-bindgen glue (scripts/build-wasm.sh)
#   dist/ts/node/codec_worker.mjs
#   dist/web/dist/            the inspector page (web/build.ts)
#   dist/web/build.js         stands in for web/build.ts: returns dist/web/dist, no esbuild
#   dist/.stamp               SHA-256 of every input: an unchanged tree is not rebuilt
#
# The tree under dist/ mirrors the repository's, so every path the code
# finds relative to its own file (import.meta.url) resolves the same way in
# the package. The repo's own bin/cloudlet keeps running the TypeScript
# sources under tsx, so tests never see a stale dist/.
# Usage: scripts/build-dist.sh [--force]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
die() { echo "build-dist: $*" >&2; exit 1; }

for f in ts/core/_wasm/cloudlet_core_bg.wasm ts/core/_wasm/cloudlet_core.js; do
  [ -f "$f" ] || die "$f missing: the WASM core is not built: run scripts/setup.sh (or scripts/build-wasm.sh)"
done
[ -x node_modules/.bin/tsc ] || die "node_modules/.bin/tsc missing: run scripts/setup.sh (npm packages)"
node --import tsx web/build.ts --if-stale || die "building the inspector page failed: run node --import tsx web/build.ts"

# Everything the output depends on; the component build (ts/component/_gen) is not shipped.
stamp=$( { find ts cli web/dist -path ts/component -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum
           sha256sum scripts/build-dist.sh package.json node_modules/typescript/package.json; } | sha256sum | cut -c1-64)
if [ "${1:-}" != "--force" ] && [ "$(cat dist/.stamp 2>/dev/null)" = "$stamp" ]; then
  echo "build-dist: dist/ is up to date" >&2
  exit 0
fi

tmp="$ROOT/.dist-$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp"
# tsc follows the imports from the two entries; rewriteRelativeImportExtensions
# turns the sources' "./x.ts" into "./x.js". Its type check is the same as
# tsconfig.json's (whose noEmit and allowImportingTsExtensions are for the dev tree).
node_modules/.bin/tsc ts/mod.ts cli/main.ts --outDir "$tmp" --rootDir . --declaration \
  --rewriteRelativeImportExtensions --module NodeNext --moduleResolution NodeNext --target ES2022 \
  --lib ES2023,DOM,DOM.Iterable,WebWorker.ImportScripts --types node --strict --verbatimModuleSyntax \
  --skipLibCheck --noUnusedLocals --noImplicitOverride --removeComments false --newLine lf \
  || die "tsc failed (see above)"

mkdir -p "$tmp/ts/core/_wasm" "$tmp/web"
cp ts/core/_wasm/cloudlet_core.js ts/core/_wasm/cloudlet_core.d.ts ts/core/_wasm/cloudlet_core_bg.wasm "$tmp/ts/core/_wasm/"
cp ts/node/codec_worker.mjs "$tmp/ts/node/"
cp -r web/dist "$tmp/web/dist"
rm -f "$tmp/web/dist/build-stamp.json" "$tmp/web/build.js" "$tmp/web/build.d.ts"

# web/build.ts builds the page with esbuild, a dev dependency; the package
# ships the page built, so this stand-in only says where it is.
cat > "$tmp/web/build.js" <<'EOF'
// The inspector page as shipped in the package (built by scripts/build-dist.sh from web/build.ts).
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { CloudletError } from "../ts/errors.js";

/** The page's directory inside the package. */
export const DIST_DIR = fileURLToPath(new URL("./dist", import.meta.url));

/** Why the shipped page is unusable, or null. */
export async function inspectorStaleness(outDir = DIST_DIR) {
  return existsSync(join(outDir, "index.html")) ? null : "missing from the package";
}

/** The page's directory; the package cannot rebuild it. */
export async function ensureInspectorBuilt(outDir = DIST_DIR) {
  if (await inspectorStaleness(outDir)) throw new CloudletError("NOT_BUILT", "the inspector page is missing from the package: reinstall cloudlet", outDir);
  return outDir;
}
EOF
cat > "$tmp/web/build.d.ts" <<'EOF'
/** The page's directory inside the package. */
export declare const DIST_DIR: string;
/** Why the shipped page is unusable, or null. */
export declare function inspectorStaleness(outDir?: string): Promise<string | null>;
/** The page's directory; the package cannot rebuild it. */
export declare function ensureInspectorBuilt(outDir?: string): Promise<string>;
EOF

# The command: an executable script for package.json "bin".
{ echo '#!/usr/bin/env node'; cat "$tmp/cli/main.js"; } > "$tmp/cli/main.js.new"
mv "$tmp/cli/main.js.new" "$tmp/cli/main.js"
chmod 755 "$tmp/cli/main.js"
echo "$stamp" > "$tmp/.stamp"

# Replace dist/ in one rename, so a concurrent pack or run never sees half a build.
rm -rf "$ROOT/dist.old"
[ ! -e dist ] || mv dist "$ROOT/dist.old"
mv "$tmp" dist
rm -rf "$ROOT/dist.old"
trap - EXIT
echo "build-dist: wrote dist/ ($(find dist -type f | wc -l) files, $(du -sh dist | cut -f1))" >&2
