//! The etcd records of k8s-ovs, typed and validated, shared by the controller
//! and the node agent.
//!
//! The layout and JSON field names are K8S-OVS's, so operators' `etcdctl`
//! habits carry over (see `docs/etcd-schema.md`):
//!
//! ```text
//! <prefix>/config                                  NetworkConfig
//! <prefix>/<Name>/subnets/<hostIP>                 HostSubnet
//! <prefix>/<Name>/netnamespaces/<namespace>        NetNamespace
//! <prefix>/<Name>/errors/netnamespaces/<namespace> RecordError (k8s-ovs addition)
//! <prefix>/<Name>/errors/subnets/<hostIP>          RecordError (k8s-ovs addition)
//! <prefix>/<Name>/kube/netnamespaces/<namespace>  KubeRequest (k8s-ovs addition, controller only)
//! <prefix>/<Name>/leader                           controller leader election (k8s-ovs addition)
//! ```
//!
//! Everything here is pure: parse, validate, build keys. The one exception,
//! `connect` (feature `client`), is how every binary dials etcd.

#[cfg(feature = "client")]
pub mod connect;

mod keys;
mod records;
mod vni;

pub use keys::{Key, KeyKind, Keys, DEFAULT_NETWORK_NAME, DEFAULT_PREFIX};
pub use records::{
    parse_host_subnet, parse_kube_request, parse_net_namespace, parse_network_config, record_text, Action,
    HostSubnet, KubeRequest, NetNamespace, NetworkConfig, PluginName, RecordError, RequestOutcome,
    SchemaError,
};
pub use vni::{is_allocatable_vni, validate_vni, GLOBAL_VNI, MAX_VNI, MIN_VNI, RESERVED_VNIS};
