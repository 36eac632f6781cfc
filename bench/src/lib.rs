//! Pieces the benchmark binaries share. Pure: no I/O, no clock.

pub mod plot;
