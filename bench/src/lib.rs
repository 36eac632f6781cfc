//! Pieces the benchmark binaries share: `plot` and `stats` are pure (no
//! I/O, no clock); `etcd` drives the benchmarks' etcd; [`loadavg`] is the
//! machine's load beside a run's figures.

pub mod etcd;
pub mod plot;
pub mod stats;

/// `/proc/loadavg`'s first three fields (1, 5, 15 minutes): the machine is
/// shared, and a figure means little without the load it was taken under.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
