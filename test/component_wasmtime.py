"""The core component from Python, through wasmtime's component API.

Shows that a host other than JS runs the same component
(ts/component/_gen/cloudlet_core.component.wasm) with no WASI and no other
imports, and that it passes the shared kernel vectors there too. Inputs stay
small: wasmtime-py converts every list element in Python (~0.3 MB/s).

    /usr/bin/python3 -m venv .build/component-venv
    .build/component-venv/bin/pip install wasmtime==50.0.1
    scripts/build-component.sh
    .build/component-venv/bin/python test/component_wasmtime.py

docs/component.md explains the calling conventions used here.
"""

import hashlib
import json
import shutil
import struct
import subprocess
import unittest
from pathlib import Path

import wasmtime
import wasmtime.component as wc

ROOT = Path(__file__).resolve().parent.parent
COMPONENT = ROOT / "ts/component/_gen/cloudlet_core.component.wasm"
VECTORS = json.loads((ROOT / "core-rs/vectors/kernels.json").read_text())
PKG = "cloudlet:core/{}@0.1.0"
MISS = (1 << 64) - 1


def random_bytes(seed: int, length: int) -> bytes:
    """xorshift32, 4 bytes per step, little-endian: twin of core-rs/src/vectors.rs."""
    x = seed if seed else 0x9E3779B9
    words = []
    for _ in range((length + 3) // 4):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        words.append(x)
    return struct.pack(f"<{len(words)}I", *words)[:length]


def vector_input(pattern: str, seed: int, length: int) -> bytes:
    """Input bytes of a vector; see core-rs/src/vectors.rs for the patterns."""
    if pattern == "zero":
        return bytes(length)
    v = bytearray(random_bytes(seed, length))
    if pattern == "mixed":
        for i in range((length + 4095) // 4096):
            s, e = i * 4096, min((i + 1) * 4096, length)
            if i % 3 == 0:
                v[s:e] = bytes(e - s)
            elif i % 5 == 4 and length >= 8192:
                v[s:e] = v[4096 : 4096 + (e - s)]
    elif pattern != "random":
        raise ValueError(pattern)
    return bytes(v)


class CoreError(Exception):
    """A call the component refused: `code` is the WIT error-code case."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Core:
    """The component's exports as Python calls: `core.call("xz", "compress", data, 6, 0)`."""

    def __init__(self, path: Path):
        self.engine = wasmtime.Engine()
        component = wc.Component.from_file(self.engine, str(path))
        self.imports = component.type.imports(self.engine)
        self.store = wasmtime.Store(self.engine)
        # An empty linker: instantiation fails if the component imports anything.
        self.instance = wc.Linker(self.engine).instantiate(self.store, component)
        self._funcs: dict = {}

    def func(self, interface: str, name: str) -> wc.Func:
        key = (interface, name)
        if key not in self._funcs:
            iface = self.instance.get_export_index(self.store, PKG.format(interface))
            index = self.instance.get_export_index(self.store, name, iface)
            if index is None:
                raise KeyError(f"{interface}#{name}")
            self._funcs[key] = self.instance.get_func(self.store, index)
        return self._funcs[key]

    def call(self, interface: str, name: str, *args):
        """Calls an export; a WIT `result` error (a Record) is raised as CoreError."""
        f = self.func(interface, name)
        out = f(self.store, *args)
        f.post_return(self.store)
        if isinstance(out, wc.Record):
            raise CoreError(out.code, out.message)
        return out


core = Core(COMPONENT)


class ComponentFromPython(unittest.TestCase):
    def test_imports_nothing(self):
        self.assertEqual(core.imports, {})

    def test_known_answers(self):
        k = VECTORS["known"]
        self.assertEqual(core.call("hashing", "hash", "blake3", b"").hex(), k["blake3_empty"])
        self.assertEqual(core.call("hashing", "hash", "blake3", b"abc").hex(), k["blake3_abc"])
        self.assertEqual(core.call("hashing", "hash", "sha256", b"abc").hex(), k["sha256_abc"])

    def test_hash_vectors(self):
        b3 = lambda data: core.call("hashing", "hash", "blake3", data).hex()  # noqa: E731
        ran = 0
        for c in VECTORS["hash"]:
            if c["len"] > 16 << 10:
                continue  # wasmtime-py moves lists byte by byte (docs/component.md); Node and Deno run every vector
            data = vector_input(c["pattern"], c["seed"], c["len"])
            name = f'{c["pattern"]}/{c["seed"]}/{c["len"]}'
            self.assertEqual(b3(data), c["blake3"], name)
            self.assertEqual(core.call("hashing", "hash", "sha256", data).hex(), c["sha256"], name)
            self.assertEqual(b3(core.call("hashing", "hash-chunks", "blake3", data, 4096)), c["chunk_blake3s"], name)
            sha_chunks = core.call("hashing", "hash-chunks", "sha256", data, 4096)
            self.assertEqual(b3(sha_chunks), c["chunk_sha256s"], name)
            want = b"".join(hashlib.sha256(data[o : o + 4096]).digest() for o in range(0, len(data), 4096))
            self.assertEqual(sha_chunks, want, name)
            mask = core.call("zero", "zero-chunks", data, 4096)
            self.assertEqual(b3(mask), c["zero_mask"], name)
            self.assertEqual(sum(mask), c["zero_count"], name)
            ran += 1
        self.assertGreater(ran, 15)

    def test_hasher_resource(self):
        data = random_bytes(5, 100_000)
        h = core.call("hashing", "[constructor]hasher", "sha256")
        for o in range(0, len(data), 4097):
            core.call("hashing", "[method]hasher.update", h, data[o : o + 4097])
        self.assertEqual(core.call("hashing", "[method]hasher.digest", h), hashlib.sha256(data).digest())
        h.drop(core.store)

    def test_xor_vectors(self):
        for c in VECTORS["xor"]:
            if c["len"] > 64 << 10:
                continue  # see test_hash_vectors
            a = vector_input(c["a"]["pattern"], c["a"]["seed"], c["len"])
            b = vector_input(c["b"]["pattern"], c["b"]["seed"], c["len"])
            x = core.call("delta", "xor", a, b)
            self.assertEqual(core.call("hashing", "hash", "blake3", x).hex(), c["xor_blake3"])
            self.assertEqual(core.call("delta", "xor-gains", a, b, c["len"]), [c["gain"]])

    def test_index_vector(self):
        v = VECTORS["index"]
        e = v["entries"]
        digests = core.call("hashing", "hash-chunks", "blake3", vector_input(e["pattern"], e["seed"], e["len"]), e["piece"])
        extra = core.call("hashing", "hash-chunks", "blake3", vector_input("random", 8, 65536), 64)
        n = len(digests) // 32
        b = core.call("index", "[constructor]index-builder", n)
        for i in range(n):  # entry i has value pack(i % 2, i * 64)
            core.call("index", "[method]index-builder.add-run", b, digests[i * 32 : i * 32 + 32], 32, b"", "memory" if i % 2 else "disk", i * 64, 64)
        idx = core.call("index", "[method]index-builder.finish", b)
        values = core.call("index", "[method]base-index.lookup", idx, digests + extra, 32)
        self.assertEqual(sum(1 for x in values if x != MISS), v["hits"])
        packed = struct.pack(f"<{len(values)}Q", *values)
        self.assertEqual(core.call("hashing", "hash", "blake3", packed).hex(), v["results_blake3"])
        saved = core.call("index", "[method]base-index.to-bytes", idx)
        again = core.call("index", "[static]base-index.from-bytes", saved)
        self.assertEqual(core.call("index", "[method]base-index.lookup", again, digests[:3200], 32), values[:100])
        with self.assertRaises(CoreError) as refused:
            core.call("index", "[static]base-index.from-bytes", saved[:-3])
        self.assertEqual(refused.exception.code, "index-bad-length")
        for r in (b, idx, again):
            r.drop(core.store)

    def test_xz_round_trip_and_cli(self):
        data = vector_input("mixed", 9, 256 << 10)
        z = core.call("xz", "compress", data, 6, 0)
        self.assertEqual(core.call("xz", "decompress-exact", z, len(data), 96 << 20), data)
        if shutil.which("xz"):
            self.assertEqual(subprocess.run(["xz", "-d", "-c"], input=z, capture_output=True, check=True).stdout, data)
            theirs = subprocess.run(["xz", "-z", "-c", "-9", "-T1"], input=data, capture_output=True, check=True).stdout
            self.assertEqual(core.call("xz", "decompress-exact", theirs, len(data), 96 << 20), data)
        # Streaming decode in bounded pulls.
        d = core.call("xz", "[static]decoder.create", 96 << 20, False)
        core.call("xz", "[method]decoder.push", d, z)
        core.call("xz", "[method]decoder.finish-input", d)
        parts = []
        while not core.call("xz", "[method]decoder.is-done", d):
            p = core.call("xz", "[method]decoder.pull", d, 50_000)
            self.assertLessEqual(len(p), 50_000)
            parts.append(p)
        d.drop(core.store)
        self.assertEqual(b"".join(parts), data)

    def test_errors_are_values_not_traps(self):
        with self.assertRaises(CoreError) as refused:
            core.call("xz", "decompress-exact", b"not xz at all", 5, 96 << 20)
        self.assertEqual(refused.exception.code, "xz-not-xz")
        with self.assertRaises(CoreError) as refused:
            core.call("hashing", "hash-chunks", "blake3", b"abc", 0)
        self.assertEqual(refused.exception.code, "invalid-argument")
        # The instance is still usable.
        self.assertEqual(core.call("hashing", "hash", "blake3", b"abc").hex(), VECTORS["known"]["blake3_abc"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
