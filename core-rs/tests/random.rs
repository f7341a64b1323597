//! Random inputs: fast kernels against the reference implementations.

use cloudlet_core::chunk::{hash_chunks, Algorithm};
use cloudlet_core::index::{IndexBuilder, IndexError, BaseIndex, MAX_OFFSET, MISS};
use cloudlet_core::reference::{self, MapIndex};
use cloudlet_core::vectors::random_bytes;

#[test]
fn hashes_match_reference_on_random_lengths() {
    for seed in 1..200u32 {
        let len = (random_bytes(seed, 4).iter().map(|&b| b as usize).sum::<usize>() * 37) % 20000;
        let data = random_bytes(seed ^ 0xABCD, len);
        let mut d = Vec::new();
        hash_chunks(Algorithm::Blake3, &data, 1000, &mut d);
        let r: Vec<u8> = data.chunks(1000).flat_map(|c| reference::blake3::blake3(c)).collect();
        assert_eq!(d, r, "blake3 len {len}");
        let mut d = Vec::new();
        hash_chunks(Algorithm::Sha256, &data, 1000, &mut d);
        let r: Vec<u8> = data.chunks(1000).flat_map(|c| reference::sha256::sha256(c)).collect();
        assert_eq!(d, r, "sha256 len {len}");
    }
}

#[test]
fn zero_detection_finds_single_nonzero_byte_anywhere() {
    for pos in 0..4096 {
        let mut page = vec![0u8; 4096];
        assert!(cloudlet_core::zero::is_zero(&page));
        page[pos] = 1;
        assert!(!cloudlet_core::zero::is_zero(&page), "missed byte at {pos}");
    }
    for len in 0..200 {
        let mut v = vec![0u8; len];
        assert_eq!(cloudlet_core::zero::is_zero(&v), true);
        if len > 0 {
            v[len - 1] = 9;
            assert_eq!(cloudlet_core::zero::is_zero(&v), false);
        }
    }
}

#[test]
fn index_matches_hashmap_with_duplicates() {
    let n = 200_000;
    let mut builder = IndexBuilder::with_capacity(n);
    let mut map = MapIndex::default();
    let keys = random_bytes(5, n * 8);
    for i in 0..n {
        // Every 7th key repeats an earlier one: the first insertion must win.
        let j = if i % 7 == 6 { i / 2 } else { i };
        let k = u64::from_le_bytes(keys[j * 8..j * 8 + 8].try_into().unwrap());
        builder.add(k, i as u64);
        map.add(k, i as u64);
    }
    let index = builder.finish();
    let probes = random_bytes(6, 50_000 * 8);
    for i in 0..n {
        let k = u64::from_le_bytes(keys[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!(index.lookup(k), map.lookup(k));
    }
    for p in probes.chunks(8) {
        let k = u64::from_le_bytes(p.try_into().unwrap());
        assert_eq!(index.lookup(k), map.lookup(k));
    }
    assert_eq!(index.lookup(0), map.lookup(0));
    assert_eq!(index.lookup(u64::MAX), map.lookup(u64::MAX));
}

#[test]
fn tiny_and_empty_indexes() {
    let index = IndexBuilder::default().finish();
    assert_eq!(index.lookup(42), MISS);
    let mut b = IndexBuilder::default();
    b.add(u64::MAX, 1);
    b.add(0, 2);
    let index = b.finish();
    assert_eq!(index.lookup(u64::MAX), 1);
    assert_eq!(index.lookup(0), 2);
    assert_eq!(index.lookup(5), MISS);
}

#[test]
fn corrupt_index_bytes_are_rejected() {
    let mut b = IndexBuilder::default();
    for i in 0..100u64 {
        b.add(i * 1000, i);
    }
    let bytes = b.finish().to_bytes();
    assert_eq!(BaseIndex::from_bytes(&bytes[..bytes.len() - 1]).err(), Some(IndexError::BadLength));
    assert_eq!(BaseIndex::from_bytes(b"nonsense-nonsense").err(), Some(IndexError::BadMagic));
    let mut swapped = bytes.clone();
    swapped[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(BaseIndex::from_bytes(&swapped).err(), Some(IndexError::Unsorted));
}

#[test]
fn untrusted_runs_are_errors_not_panics() {
    let mut b = IndexBuilder::default();
    let digests = [7u8; 32 * 3];
    assert_eq!(b.try_add_run(&digests[..33], 32, &[], 0, 0, 4096), Err(IndexError::BadRun));
    assert_eq!(b.try_add_run(&digests, 4, &[], 0, 0, 4096), Err(IndexError::BadRun));
    assert_eq!(b.try_add_run(&digests, 32, &[1, 1], 0, 0, 4096), Err(IndexError::BadRun));
    // The last chunk's offset, not the first, must fit in 56 bits.
    assert_eq!(b.try_add_run(&digests, 32, &[], 0, MAX_OFFSET - 4096, 4096), Err(IndexError::OffsetTooLarge));
    assert_eq!(b.try_add_run(&digests, 32, &[], 0, 0, u64::MAX), Err(IndexError::OffsetTooLarge));
    assert!(b.is_empty(), "a refused run adds nothing");
    assert_eq!(b.try_add_run(&digests, 32, &[], 0, MAX_OFFSET - 2 * 4096, 4096), Ok(()));
    assert_eq!(b.len(), 3);
}
