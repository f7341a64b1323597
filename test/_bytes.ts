/**
 * Fast byte-array equality for tests. node:assert's deepEqual walks typed
 * arrays element by element through a generic path, which under Deno takes
 * minutes on multi-MiB buffers; this reports the first differing offset.
 */
import assert from "node:assert/strict";

/** Asserts that `actual` and `expected` hold the same bytes. */
export function assertBytes(actual: Uint8Array, expected: Uint8Array, what = "bytes"): void {
  assert.equal(actual.length, expected.length, `${what}: length ${actual.length}, expected ${expected.length}`);
  const n = actual.length;
  const a32 = actual.byteOffset % 4 === 0 && expected.byteOffset % 4 === 0;
  let i = 0;
  if (a32) {
    const x = new Uint32Array(actual.buffer, actual.byteOffset, n >> 2);
    const y = new Uint32Array(expected.buffer, expected.byteOffset, n >> 2);
    while (i < x.length && x[i] === y[i]) i++;
    i <<= 2;
  }
  while (i < n && actual[i] === expected[i]) i++;
  if (i < n) assert.fail(`${what}: first difference at byte ${i} (${actual[i]} vs ${expected[i]})`);
}
