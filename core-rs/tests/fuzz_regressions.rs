//! Every input the fuzz targets (`fuzz/`, docs/fuzzing.md) found to break a
//! property, as a test, minimised to what matters.

use cloudlet_core::index::{key_of, IndexBuilder, IndexError, MAX_OFFSET, MISS};

/// fuzz target index_runs, 2026-12-02 (crash-8c15f42b…, 419 bytes, found
/// in its first 5 s): `try_add_run` took source 0xff; with offset 2^56 - 1
/// the value packs to u64::MAX, which is MISS, so the stored chunk read as
/// a miss. Unknown sources are now refused.
#[test]
fn index_runs_source_ff_at_the_largest_offset_is_refused_not_lost() {
    let digest = [0x42u8; 32];
    let mut b = IndexBuilder::with_capacity(1);
    assert_eq!(b.try_add_run(&digest, 32, &[], 0xff, MAX_OFFSET, 4096), Err(IndexError::BadSource));
    for source in 2..=255u8 {
        assert_eq!(b.try_add_run(&digest, 32, &[], source, 0, 4096), Err(IndexError::BadSource), "source {source}");
    }
    // The two real sources still take that offset, and it reads back.
    b.try_add_run(&digest, 32, &[], 1, MAX_OFFSET, 4096).unwrap();
    let idx = b.finish();
    assert_ne!(idx.lookup(key_of(&digest)), MISS);
    assert_eq!(idx.lookup(key_of(&digest)), (1u64 << 56) | MAX_OFFSET);
}
