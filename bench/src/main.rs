//! Index of the k8s-ovs benchmarks; each is its own binary under `src/bin/`.

fn main() {
    println!("k8s-ovs benchmarks (run in release mode):");
    println!("  cargo run --release -p bench --bin flows   # flow programming: client vs ovs-ofctl");
}
