//! Shared vectors: the fast kernels and the reference implementations must
//! both reproduce `vectors/kernels.json`. Run with CLOUDLET_REGEN_VECTORS=1
//! to rewrite the file from the reference implementations (only when the
//! vector set itself changes; the digests must never change).

use cloudlet_core::chunk::{hash, hash_chunks, Algorithm};
use cloudlet_core::delta::{xor, xor_gain};
use cloudlet_core::index::{pack, IndexBuilder};
use cloudlet_core::reference::{self, MapIndex};
use cloudlet_core::vectors::input;
use cloudlet_core::zero::zero_chunks;
use serde_json::{json, Value};

const CHUNK: usize = 4096;
const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/kernels.json");

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn b3(b: &[u8]) -> String {
    hex(&reference::blake3::blake3(b))
}

fn hash_cases() -> Vec<(&'static str, u32, usize)> {
    let lens = [0usize, 1, 3, 63, 64, 65, 1023, 1024, 1025, 2048, 4095, 4096, 4097, 8192, 12293, 65536 + 17, (3 << 20) + 7, (5 << 20) + 4096];
    let mut cases = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        cases.push(("random", 1 + i as u32, len));
    }
    for &len in &[0usize, 1, 4096, 4097, 1 << 20] {
        cases.push(("zero", 0, len));
    }
    for &len in &[4096 * 10, 4096 * 16 + 100, (2 << 20) + 5] {
        cases.push(("mixed", 99, len));
    }
    cases
}

/// Expected values computed by the reference implementations only.
fn reference_hash_case(pattern: &str, seed: u32, len: usize) -> Value {
    let data = input(pattern, seed, len);
    let b3s: Vec<u8> = data.chunks(CHUNK).flat_map(|c| reference::blake3::blake3(c)).collect();
    let shas: Vec<u8> = data.chunks(CHUNK).flat_map(|c| reference::sha256::sha256(c)).collect();
    let mask = reference::zero_chunks(&data, CHUNK);
    json!({
        "pattern": pattern, "seed": seed, "len": len,
        "blake3": b3(&data),
        "sha256": hex(&reference::sha256::sha256(&data)),
        "chunk_blake3s": b3(&b3s),
        "chunk_sha256s": b3(&shas),
        "zero_mask": b3(&mask),
        "zero_count": mask.iter().filter(|&&m| m == 1).count(),
    })
}

fn xor_cases() -> Vec<(&'static str, u32, &'static str, u32, usize)> {
    vec![
        ("random", 11, "random", 12, 4096),
        ("random", 13, "zero", 0, 4096),
        ("mixed", 14, "mixed", 15, 4096 * 12),
        ("random", 16, "random", 16, 4096),
        ("random", 17, "random", 18, 4099),
        ("random", 19, "mixed", 20, 1 << 20),
    ]
}

fn reference_xor_case(pa: &str, sa: u32, pb: &str, sb: u32, len: usize) -> Value {
    let a = input(pa, sa, len);
    let b = input(pb, sb, len);
    let x = reference::xor(&a, &b);
    let gain = x.iter().filter(|&&v| v == 0).count() as i64 - a.iter().filter(|&&v| v == 0).count() as i64;
    json!({"a": {"pattern": pa, "seed": sa}, "b": {"pattern": pb, "seed": sb}, "len": len, "xor_blake3": b3(&x), "gain": gain})
}

/// The index case: 64-byte pieces of one input are the entries, pieces of
/// a second input (plus the first again) are the queries.
fn index_inputs() -> (Vec<u8>, Vec<u8>) {
    let piece = 64;
    let base = input("mixed", 7, 1 << 18);
    let digests: Vec<u8> = base.chunks(piece).flat_map(|c| reference::blake3::blake3(c)).collect();
    let mut queries = digests.clone();
    let other = input("random", 8, 1 << 16);
    queries.extend(other.chunks(piece).flat_map(|c| reference::blake3::blake3(c)));
    (digests, queries)
}

fn index_value(i: usize) -> u64 {
    pack((i % 2) as u8, i as u64 * 64)
}

fn reference_index_case() -> Value {
    let (digests, queries) = index_inputs();
    let mut map = MapIndex::default();
    for (i, d) in digests.chunks(32).enumerate() {
        map.add(cloudlet_core::index::key_of(d), index_value(i));
    }
    let results: Vec<u8> = queries.chunks(32).flat_map(|q| map.lookup(cloudlet_core::index::key_of(q)).to_le_bytes()).collect();
    let hits = queries.chunks(32).filter(|q| map.lookup(cloudlet_core::index::key_of(q)) != u64::MAX).count();
    json!({
        "entries": {"pattern": "mixed", "seed": 7, "len": 1 << 18, "piece": 64, "value": "pack(i % 2, i * 64)"},
        "queries": "the entry digests, then the 64-byte pieces of random seed 8 len 65536",
        "results_blake3": b3(&results),
        "hits": hits,
    })
}

fn load() -> Value {
    serde_json::from_str(&std::fs::read_to_string(PATH).expect("read vectors")).expect("parse vectors")
}

#[test]
fn regenerate_or_check_file() {
    let fresh = json!({
        "about": "cloudlet-core shared test vectors; see core-rs/src/vectors.rs for the input generator",
        "chunk_size": CHUNK,
        "hash": hash_cases().into_iter().map(|(p, s, l)| reference_hash_case(p, s, l)).collect::<Vec<_>>(),
        "xor": xor_cases().into_iter().map(|(pa, sa, pb, sb, l)| reference_xor_case(pa, sa, pb, sb, l)).collect::<Vec<_>>(),
        "index": reference_index_case(),
        "known": {
            "blake3_empty": "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
            "blake3_abc": "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85",
            "sha256_empty": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256_abc": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        }
    });
    if std::env::var("CLOUDLET_REGEN_VECTORS").is_ok() {
        std::fs::write(PATH, serde_json::to_string_pretty(&fresh).unwrap() + "\n").unwrap();
    }
    // The references must reproduce the committed file exactly.
    assert_eq!(load(), fresh, "reference implementations disagree with vectors/kernels.json");
}

#[test]
fn known_answers() {
    let v = load();
    let k = &v["known"];
    assert_eq!(hex(&reference::blake3::blake3(b"")), k["blake3_empty"]);
    assert_eq!(hex(&reference::blake3::blake3(b"abc")), k["blake3_abc"]);
    assert_eq!(hex(&reference::sha256::sha256(b"")), k["sha256_empty"]);
    assert_eq!(hex(&reference::sha256::sha256(b"abc")), k["sha256_abc"]);
}

#[test]
fn fast_hash_and_zero_match_vectors() {
    for case in load()["hash"].as_array().unwrap() {
        let data = input(case["pattern"].as_str().unwrap(), case["seed"].as_u64().unwrap() as u32, case["len"].as_u64().unwrap() as usize);
        let name = format!("{}/{}/{}", case["pattern"], case["seed"], case["len"]);
        assert_eq!(hex(&hash(Algorithm::Blake3, &data)), case["blake3"], "blake3 {name}");
        assert_eq!(hex(&hash(Algorithm::Sha256, &data)), case["sha256"], "sha256 {name}");
        let mut d = Vec::new();
        hash_chunks(Algorithm::Blake3, &data, CHUNK, &mut d);
        assert_eq!(b3(&d), case["chunk_blake3s"], "chunk blake3 {name}");
        let mut d = Vec::new();
        hash_chunks(Algorithm::Sha256, &data, CHUNK, &mut d);
        assert_eq!(b3(&d), case["chunk_sha256s"], "chunk sha256 {name}");
        let mut m = Vec::new();
        zero_chunks(&data, CHUNK, &mut m);
        assert_eq!(b3(&m), case["zero_mask"], "zero mask {name}");
    }
}

#[test]
fn fast_xor_matches_vectors() {
    for case in load()["xor"].as_array().unwrap() {
        let len = case["len"].as_u64().unwrap() as usize;
        let a = input(case["a"]["pattern"].as_str().unwrap(), case["a"]["seed"].as_u64().unwrap() as u32, len);
        let b = input(case["b"]["pattern"].as_str().unwrap(), case["b"]["seed"].as_u64().unwrap() as u32, len);
        let mut x = vec![0u8; len];
        xor(&a, &b, &mut x);
        assert_eq!(b3(&x), case["xor_blake3"]);
        assert_eq!(xor_gain(&a, &b), case["gain"].as_i64().unwrap());
        // Applying the delta to the base gives the new chunk back.
        let mut back = x.clone();
        cloudlet_core::delta::xor_in_place(&mut back, &b);
        assert_eq!(back, a);
    }
}

#[test]
fn fast_index_matches_vectors() {
    let v = load();
    let (digests, queries) = index_inputs();
    let mut builder = IndexBuilder::default();
    for (i, d) in digests.chunks(32).enumerate() {
        builder.add(cloudlet_core::index::key_of(d), index_value(i));
    }
    let index = builder.finish();
    let mut out = Vec::new();
    index.lookup_batch(&queries, 32, &mut out);
    let bytes: Vec<u8> = out.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(b3(&bytes), v["index"]["results_blake3"]);
    assert_eq!(out.iter().filter(|&&x| x != u64::MAX).count() as u64, v["index"]["hits"].as_u64().unwrap());
    // And the serialised form round-trips to the same answers.
    let again = cloudlet_core::index::BaseIndex::from_bytes(&index.to_bytes()).unwrap();
    let mut out2 = Vec::new();
    again.lookup_batch(&queries, 32, &mut out2);
    assert_eq!(out, out2);
}
