//! Building etcd keys from a configurable prefix, and parsing them back.

/// K8S-OVS's prefix; every key lives below it.
pub const DEFAULT_PREFIX: &str = "/k8s.ovs.com/ovs/network";
/// K8S-OVS's network name (`Name` in the config record).
pub const DEFAULT_NETWORK_NAME: &str = "k8ssdn";

/// The key builder of one network: `<prefix>/config` and `<prefix>/<Name>/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    name: String,
}

/// What a key under the prefix holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Config,
    Subnet,
    NetNamespace,
    /// The error of the last rejected edit of a net namespace record.
    NetNamespaceError,
    /// The error of the last rejected edit of a subnet record.
    SubnetError,
    /// The controllers' leader election key.
    Leader,
    /// The net namespace record as the controller last validated and wrote
    /// it: the only NetID agents program (written by the controller only).
    AppliedNetNamespace,
    /// Written by the controller once every namespace has its applied
    /// record: from then on agents take VNIs from `applied/` alone.
    AppliedComplete,
    /// The last request of a namespace's NetNamespace object (the
    /// Kubernetes API's way to ask for an action) the controller took,
    /// written by the controller only, in the transaction that took it.
    KubeRequest,
}

/// A parsed key: its kind and the name it is about (namespace or host IP;
/// empty for `Config` and `Leader`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub kind: KeyKind,
    pub name: String,
}

impl Keys {
    /// `prefix` with or without a trailing slash; `name` is the config's `Name`.
    pub fn new(prefix: &str, name: &str) -> Keys {
        Keys { prefix: prefix.trim_end_matches('/').to_string(), name: name.to_string() }
    }

    /// The config key, needed before the network name is known.
    pub fn config_key(prefix: &str) -> String {
        format!("{}/config", prefix.trim_end_matches('/'))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> String {
        Keys::config_key(&self.prefix)
    }

    /// `<prefix>/<Name>/`: every record of the network (watch this range).
    pub fn network_dir(&self) -> String {
        format!("{}/{}/", self.prefix, self.name)
    }

    pub fn subnets_dir(&self) -> String {
        format!("{}subnets/", self.network_dir())
    }

    pub fn subnet(&self, host_ip: &str) -> String {
        format!("{}{host_ip}", self.subnets_dir())
    }

    pub fn netnamespaces_dir(&self) -> String {
        format!("{}netnamespaces/", self.network_dir())
    }

    pub fn netnamespace(&self, namespace: &str) -> String {
        format!("{}{namespace}", self.netnamespaces_dir())
    }

    pub fn errors_dir(&self) -> String {
        format!("{}errors/", self.network_dir())
    }

    pub fn netnamespace_error(&self, namespace: &str) -> String {
        format!("{}netnamespaces/{namespace}", self.errors_dir())
    }

    pub fn subnet_error(&self, host_ip: &str) -> String {
        format!("{}subnets/{host_ip}", self.errors_dir())
    }

    /// `<prefix>/<Name>/applied/`: the controller's validated copies.
    pub fn applied_dir(&self) -> String {
        format!("{}applied/", self.network_dir())
    }

    pub fn applied_netnamespace(&self, namespace: &str) -> String {
        format!("{}netnamespaces/{namespace}", self.applied_dir())
    }

    pub fn applied_complete(&self) -> String {
        format!("{}complete", self.applied_dir())
    }

    /// `<prefix>/<Name>/kube/`: what the controller took from the Kubernetes API.
    pub fn kube_dir(&self) -> String {
        format!("{}kube/", self.network_dir())
    }

    pub fn kube_request(&self, namespace: &str) -> String {
        format!("{}netnamespaces/{namespace}", self.kube_dir())
    }

    pub fn leader(&self) -> String {
        format!("{}leader", self.network_dir())
    }

    /// Parses a key of this network back into (kind, name). `None` for keys
    /// outside the network, directories, and names containing a `/`.
    pub fn parse(&self, key: &str) -> Option<Key> {
        if key == self.config() {
            return Some(Key { kind: KeyKind::Config, name: String::new() });
        }
        let rest = key.strip_prefix(&self.network_dir())?;
        if rest == "leader" {
            return Some(Key { kind: KeyKind::Leader, name: String::new() });
        }
        if rest == "applied/complete" {
            return Some(Key { kind: KeyKind::AppliedComplete, name: String::new() });
        }
        let (kind, name) = if let Some(n) = rest.strip_prefix("subnets/") {
            (KeyKind::Subnet, n)
        } else if let Some(n) = rest.strip_prefix("netnamespaces/") {
            (KeyKind::NetNamespace, n)
        } else if let Some(n) = rest.strip_prefix("errors/netnamespaces/") {
            (KeyKind::NetNamespaceError, n)
        } else if let Some(n) = rest.strip_prefix("errors/subnets/") {
            (KeyKind::SubnetError, n)
        } else if let Some(n) = rest.strip_prefix("applied/netnamespaces/") {
            (KeyKind::AppliedNetNamespace, n)
        } else if let Some(n) = rest.strip_prefix("kube/netnamespaces/") {
            (KeyKind::KubeRequest, n)
        } else {
            return None;
        };
        if name.is_empty() || name.contains('/') {
            return None;
        }
        Some(Key { kind, name: name.to_string() })
    }
}

impl Default for Keys {
    fn default() -> Keys {
        Keys::new(DEFAULT_PREFIX, DEFAULT_NETWORK_NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_k8s_ovs_layout() {
        let k = Keys::default();
        assert_eq!(k.config(), "/k8s.ovs.com/ovs/network/config");
        assert_eq!(k.subnet("192.0.2.7"), "/k8s.ovs.com/ovs/network/k8ssdn/subnets/192.0.2.7");
        assert_eq!(
            k.netnamespace("helloworld1"),
            "/k8s.ovs.com/ovs/network/k8ssdn/netnamespaces/helloworld1"
        );
        assert_eq!(k.netnamespace_error("a"), "/k8s.ovs.com/ovs/network/k8ssdn/errors/netnamespaces/a");
        assert_eq!(k.subnet_error("192.0.2.7"), "/k8s.ovs.com/ovs/network/k8ssdn/errors/subnets/192.0.2.7");
        assert_eq!(Keys::new("/p/", "n").netnamespace("x"), "/p/n/netnamespaces/x");
        assert_eq!(k.applied_netnamespace("a"), "/k8s.ovs.com/ovs/network/k8ssdn/applied/netnamespaces/a");
        assert_eq!(k.applied_complete(), "/k8s.ovs.com/ovs/network/k8ssdn/applied/complete");
        assert_eq!(k.kube_request("a"), "/k8s.ovs.com/ovs/network/k8ssdn/kube/netnamespaces/a");
    }

    #[test]
    fn parse_inverts_every_builder() {
        let k = Keys::new("/t", "net");
        let cases = [
            (k.config(), KeyKind::Config, ""),
            (k.leader(), KeyKind::Leader, ""),
            (k.subnet("10.0.0.1"), KeyKind::Subnet, "10.0.0.1"),
            (k.netnamespace("ns1"), KeyKind::NetNamespace, "ns1"),
            (k.netnamespace_error("ns1"), KeyKind::NetNamespaceError, "ns1"),
            (k.subnet_error("10.0.0.1"), KeyKind::SubnetError, "10.0.0.1"),
            (k.applied_netnamespace("ns1"), KeyKind::AppliedNetNamespace, "ns1"),
            (k.applied_complete(), KeyKind::AppliedComplete, ""),
            (k.kube_request("ns1"), KeyKind::KubeRequest, "ns1"),
        ];
        for (key, kind, name) in cases {
            assert_eq!(k.parse(&key), Some(Key { kind, name: name.to_string() }), "{key}");
        }
    }

    #[test]
    fn parse_rejects_foreign_and_nested_keys() {
        let k = Keys::new("/t", "net");
        assert_eq!(k.parse("/t/other/netnamespaces/a"), None);
        assert_eq!(k.parse("/t/net/netnamespaces/"), None);
        assert_eq!(k.parse("/t/net/netnamespaces/a/b"), None);
        assert_eq!(k.parse("/t/net/unknown/a"), None);
        assert_eq!(k.parse("/tx/net/netnamespaces/a"), None);
    }
}
