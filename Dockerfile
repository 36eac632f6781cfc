# k8s-ovs image: the node agent, the controller, the operator CLI and the CNI
# plugin (which the agent's init container copies to the host).
#   docker build -t k8s-ovs:0.1.0 .
# Manifests: deploy/ (docs/operations.md); Open vSwitch image: deploy/images/ovs.

FROM rust:1-bookworm AS builder
# protoc and the well-known .proto files: etcd-client generates its gRPC code at build time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins -p k8s-ovs-cni -p k8s-ovs-agent -p k8s-ovs-controller

FROM debian:bookworm-slim
# iptables: the agent's masquerade rule. ca-certificates: https etcd and API server.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /src/target/release/k8s-ovs /src/target/release/k8s-ovs-agent /src/target/release/k8s-ovs-controller /src/target/release/k8s-ovs-ctl /usr/local/bin/
CMD ["/usr/local/bin/k8s-ovs-agent", "--help"]
