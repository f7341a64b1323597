// Keeps only the component ABI in the core module that cargo built, so that
// `jco new` can wrap it with no imports beyond the component's own.
//
//   node core-component/keep-component-abi.mjs IN.wasm OUT.wasm
//
// Why: core-rs compiles its wasm-bindgen module (src/wasm.rs) on every
// wasm32 build, and Rust exports every `#[no_mangle]` item of every crate
// from a cdylib. So this module also carries the wasm-bindgen exports, and
// through them imports from `__wbindgen_placeholder__`, which no component
// host provides. Dropping those exports here lets `wasm-opt` remove the dead
// code and its imports afterwards. Once core-rs puts src/wasm.rs behind a
// cargo feature (docs/component.md), this keeps everything and changes nothing.
import { readFileSync, writeFileSync } from "node:fs";
import binaryen from "binaryen";

/** Exports the canonical ABI needs: the WIT functions, their post-returns, realloc, memory. */
function isComponentAbi(name) {
  return name === "memory" || name === "cabi_realloc" || name === "_initialize" || name.startsWith("cloudlet:core/") || name.startsWith("cabi_post_cloudlet:core/");
}

/** Drops custom sections named `drop` from a core module binary. */
function withoutCustomSections(bytes, drop) {
  const out = [bytes.subarray(0, 8)];
  let p = 8;
  const leb = () => {
    let v = 0;
    for (let shift = 0; ; shift += 7) {
      const b = bytes[p++];
      v += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return v;
    }
  };
  while (p < bytes.length) {
    const start = p;
    const id = bytes[p++];
    const size = leb();
    const end = p + size;
    let keep = true;
    if (id === 0) {
      const len = leb();
      keep = !drop.has(new TextDecoder().decode(bytes.subarray(p, p + len)));
    }
    if (keep) out.push(bytes.subarray(start, end));
    p = end;
  }
  return Buffer.concat(out);
}

const [input, output] = process.argv.slice(2);
if (!input || !output) {
  console.error("usage: node keep-component-abi.mjs IN.wasm OUT.wasm");
  process.exit(2);
}
const mod = binaryen.readBinary(readFileSync(input));
// The features cargo's wasm32 target enables (plus simd128), as scripts/build-wasm.sh passes to wasm-opt.
const F = binaryen.Features;
mod.setFeatures(F.SIMD128 | F.BulkMemory | F.NontrappingFPToInt | F.SignExt | F.MutableGlobals | F.ReferenceTypes | F.Multivalue);
const dropped = [];
for (let i = mod.getNumExports() - 1; i >= 0; i--) {
  const name = binaryen.getExportInfo(mod.getExportByIndex(i)).name;
  if (!isComponentAbi(name)) dropped.push(name);
}
for (const name of dropped) mod.removeExport(name);
const bytes = withoutCustomSections(mod.emitBinary(), new Set(["__wasm_bindgen_unstable"]));
mod.dispose();
writeFileSync(output, bytes);
console.error(`keep-component-abi: dropped ${dropped.length} exports that are not the component ABI`);
