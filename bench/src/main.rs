//! Index of the k8s-ovs benchmarks; each is its own binary under `src/bin/`
//! (see `bench/README.md` for what each measures and the latest figures).

fn main() {
    println!("k8s-ovs benchmarks (figures + a baseline from the same run; JSON in bench/results/):");
    println!("  cargo run --release -p bench --bin flows   # flow programming: client vs ovs-ofctl");
    println!("  cargo build --workspace --bins && cargo run -p bench --bin cni   # CNI ADD/DEL vs bridge+host-local");
    println!("  cargo run -p bench --bin actions           # etcd edit -> action applied by the controller");
    println!("  cargo build --workspace --bins && cargo run -p bench --bin converge   # etcd edit -> new VNI on the last node (lab, N simulated agents)");
    println!("  cargo run -p bench --bin plot              # latency CDFs (SVG) from cni + actions JSON");
}
