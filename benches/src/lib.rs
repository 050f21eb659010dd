//! Criterion micro benchmarks of virtio-pmd's fast path live in `benches/fast_path.rs`; run
//! them with `cargo bench -p virtio-pmd-benches`.
