//! Pieces the benchmark binaries share: `plot` and `stats` are pure (no
//! I/O, no clock); `etcd` drives the benchmarks' etcd.

pub mod etcd;
pub mod plot;
pub mod stats;
