// The golden v2 overlay (test/golden/v2, both layouts, made by
// `test/golden/make_golden.ts test/golden/v2 --boot-set` from the frozen images of
// test/golden/_images.ts, with a recorded working set, so its meta has a boot set):
// the same checks as v1 (test/_golden.ts), plus its boot set.
// Never regenerate v2: a new format version adds test/golden/vN.
import assert from "node:assert/strict";
import { goldenSuite } from "./_golden.ts";

await goldenSuite(2, ", with its boot set", (meta) => {
  // The boot set: the device state, then the touched memory pages 9 and 2 (with page 3, 2's repeat) and
  // disk chunk 5 (with 6, its repeat), in one leading segment; page 20, the base's, listed.
  assert.deepEqual(meta.bootSet, { segments: 1, reason: "warmup-script golden.sh", pages: 2, chunks: 1, basePages: [[20, 1]] });
  assert.deepEqual(meta.segments[0].ranges, [[0, 5, 2], [1, 2, 2], [1, 9, 1], [2, 0, 1]]);
});
