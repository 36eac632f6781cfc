//! The k8s-ovs CNI plugin: CNI spec types, the environment, and the protocol
//! to the node agent. The binary (`k8s-ovs`) is a thin shell over this; the
//! agent uses the same protocol types on its side of the socket.

pub mod client;
pub mod env;
pub mod protocol;
pub mod spec;

/// Where the agent listens unless the network configuration says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/k8s-ovs/cni-server.sock";
