// The golden v1 overlay (test/golden/v1, both layouts, made by
// test/golden/make_golden.ts from the frozen images of test/golden/_images.ts):
// every later cloudlet must still read it, inspect it exactly as recorded,
// verify it and rebuild the recorded images from it (test/_golden.ts).
// Never regenerate v1: a new format version adds test/golden/vN.
import assert from "node:assert/strict";
import { goldenSuite } from "./_golden.ts";

await goldenSuite(1, "", (meta) => assert.equal(meta.bootSet, undefined, "version 1 has no boot set"));
