//! The three K8S-OVS records and the k8s-ovs error record: wire JSON with
//! K8S-OVS's exact field names, parsed field by field so an error names the
//! key, the field and the offending value.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::vni::validate_vni;

/// Why a record cannot be used. Every variant names the key it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("{key}: malformed JSON: {message}")]
    Json { key: String, message: String },
    /// etcd values are bytes; a record that is not UTF-8 is a bad record
    /// (its last good value stays), never mistaken for a deleted one.
    #[error("{key}: the value is not UTF-8")]
    NotUtf8 { key: String },
    #[error("{key}: the value is not a JSON object")]
    NotObject { key: String },
    #[error("{key}: field {field} is missing")]
    Missing { key: String, field: &'static str },
    #[error("{key}: field {field} = {value}: {reason}")]
    Field { key: String, field: &'static str, value: String, reason: String },
}

/// `PluginName` of the config: multi-tenant (a VNI per namespace) or one flat network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginName {
    MultiTenant,
    Subnet,
}

impl PluginName {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginName::MultiTenant => "k8s-ovs-multitenant",
            PluginName::Subnet => "k8s-ovs-subnet",
        }
    }

    pub fn parse(s: &str) -> Option<PluginName> {
        match s {
            "k8s-ovs-multitenant" => Some(PluginName::MultiTenant),
            "k8s-ovs-subnet" => Some(PluginName::Subnet),
            _ => None,
        }
    }
}

/// `<prefix>/config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The network name: the second path element of every other key.
    pub name: String,
    /// The pod network all node subnets are cut from.
    pub network: Ipv4Network,
    /// Host bits of each node subnet (10 gives a /22 per node).
    pub host_subnet_length: u8,
    pub service_network: Ipv4Network,
    pub plugin: PluginName,
}

impl NetworkConfig {
    /// Prefix length of each node subnet (`32 - HostSubnetLength`).
    pub fn host_subnet_prefix(&self) -> u8 {
        32 - self.host_subnet_length
    }

    /// How many node subnets the network holds.
    pub fn subnet_count(&self) -> u64 {
        1u64 << (self.host_subnet_prefix() - self.network.prefix())
    }
}

/// `<prefix>/<Name>/subnets/<hostIP>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSubnet {
    /// Node name (or any label for a manually assigned host).
    pub host: String,
    pub host_ip: Ipv4Addr,
    /// `None` (wire: `""`) until allocated.
    pub subnet: Option<Ipv4Network>,
    /// Written `true` by an operator to ask for a subnet for a host that is
    /// not a Kubernetes node; such a record stays until the operator deletes it.
    pub assign: bool,
}

/// A pending operator action on a net namespace record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Take the NetID of the named namespace.
    Join(String),
    /// Get a NetID of its own (nothing to do when nobody shares it).
    Isolate,
    /// NetID 0.
    Global,
}

/// `<prefix>/<Name>/netnamespaces/<namespace>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNamespace {
    /// The namespace name (equals the key's last element).
    pub net_name: String,
    pub net_id: u32,
    /// Wire: `"Action"` + `"Namespace"` (the join target), both `""` when none.
    pub action: Option<Action>,
}

impl NetNamespace {
    /// A record with no pending action.
    pub fn new(net_name: &str, net_id: u32) -> NetNamespace {
        NetNamespace { net_name: net_name.to_string(), net_id, action: None }
    }
}

/// The k8s-ovs error record written beside a record whose last edit was
/// rejected (`<prefix>/<Name>/errors/...`): the record itself is kept in its
/// last safe state, the operator reads here why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordError {
    /// What is wrong, in one sentence naming key, field and value.
    #[serde(rename = "Error")]
    pub error: String,
    /// The rejected value exactly as it was written.
    #[serde(rename = "Edit")]
    pub edit: String,
    /// etcd mod_revision of the rejected edit (so a waiting CLI knows the
    /// error is about its own write).
    #[serde(rename = "EditRevision")]
    pub edit_revision: i64,
}

/// `<prefix>/<Name>/kube/netnamespaces/<namespace>` (k8s-ovs, controller
/// only): the last request of the namespace's `NetNamespace` object
/// (k8s-ovs.io/v1) the controller took, written in the same fenced
/// transaction that applied or refused it. A request is one generation of
/// one object (its uid): it is taken once, across controller restarts and
/// leader changes too, and the object's status is derived from this record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeRequest {
    /// `metadata.uid` of the object: a re-created object is a new request.
    #[serde(rename = "UID")]
    pub uid: String,
    /// `metadata.generation` taken (the apiserver bumps it on spec changes only).
    #[serde(rename = "Generation")]
    pub generation: i64,
    #[serde(rename = "Outcome")]
    pub outcome: RequestOutcome,
    /// What happened, in one sentence (the object's `Applied` condition).
    #[serde(rename = "Message")]
    pub message: String,
}

/// How the controller answered a `KubeRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOutcome {
    /// The action was applied (or was already true).
    Applied,
    /// Refused: invalid, an admin namespace, a join to a namespace without a
    /// record; the namespace's network did not change.
    Rejected,
    /// An etcd edit of the same record was pending at the same time and won
    /// (docs/etcd-schema.md: "Both paths at once").
    Superseded,
}

impl KubeRequest {
    pub fn to_json(&self) -> String {
        // Plain strings and integers: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Parses `<prefix>/<Name>/kube/netnamespaces/<namespace>`.
pub fn parse_kube_request(key: &str, raw: &str) -> Result<KubeRequest, SchemaError> {
    serde_json::from_str(raw).map_err(|e| SchemaError::Json { key: key.to_string(), message: e.to_string() })
}

/// The wire shapes, in K8S-OVS's field order so a round trip is byte-identical.
#[derive(Serialize)]
struct ConfigWire<'a> {
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "Network")]
    network: String,
    #[serde(rename = "HostSubnetLength")]
    host_subnet_length: u8,
    #[serde(rename = "ServiceNetwork")]
    service_network: String,
    #[serde(rename = "PluginName")]
    plugin_name: &'static str,
}

#[derive(Serialize)]
struct HostSubnetWire<'a> {
    #[serde(rename = "Host")]
    host: &'a str,
    #[serde(rename = "HostIP")]
    host_ip: String,
    #[serde(rename = "Subnet")]
    subnet: String,
    #[serde(rename = "Assign")]
    assign: bool,
}

#[derive(Serialize)]
struct NetNamespaceWire<'a> {
    #[serde(rename = "NetName")]
    net_name: &'a str,
    #[serde(rename = "NetID")]
    net_id: u32,
    #[serde(rename = "Action")]
    action: &'static str,
    #[serde(rename = "Namespace")]
    namespace: &'a str,
}

impl NetworkConfig {
    fn wire(&self) -> ConfigWire<'_> {
        ConfigWire {
            name: &self.name,
            network: self.network.to_string(),
            host_subnet_length: self.host_subnet_length,
            service_network: self.service_network.to_string(),
            plugin_name: self.plugin.as_str(),
        }
    }
}

impl HostSubnet {
    fn wire(&self) -> HostSubnetWire<'_> {
        HostSubnetWire {
            host: &self.host,
            host_ip: self.host_ip.to_string(),
            subnet: self.subnet.map(|s| s.to_string()).unwrap_or_default(),
            assign: self.assign,
        }
    }
}

impl NetNamespace {
    fn wire(&self) -> NetNamespaceWire<'_> {
        let (action, namespace) = match &self.action {
            None => ("", ""),
            Some(Action::Join(to)) => ("join", to.as_str()),
            Some(Action::Isolate) => ("isolate", ""),
            Some(Action::Global) => ("global", ""),
        };
        NetNamespaceWire { net_name: &self.net_name, net_id: self.net_id, action, namespace }
    }
}

macro_rules! serialize_via_wire {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.wire().serialize(s)
            }
        }

        impl $t {
            /// The record as K8S-OVS stores it.
            pub fn to_json(&self) -> String {
                // Serialising plain strings and integers cannot fail.
                serde_json::to_string(&self.wire()).unwrap_or_default()
            }
        }
    };
}

serialize_via_wire!(NetworkConfig);
serialize_via_wire!(HostSubnet);
serialize_via_wire!(NetNamespace);

/// Field-by-field access to a JSON object, with errors naming key and field.
struct Fields<'a> {
    key: &'a str,
    map: Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn parse(key: &'a str, raw: &str) -> Result<Fields<'a>, SchemaError> {
        let v: Value = serde_json::from_str(raw)
            .map_err(|e| SchemaError::Json { key: key.to_string(), message: e.to_string() })?;
        match v {
            Value::Object(map) => Ok(Fields { key, map }),
            _ => Err(SchemaError::NotObject { key: key.to_string() }),
        }
    }

    fn bad(&self, field: &'static str, value: &Value, reason: impl Into<String>) -> SchemaError {
        SchemaError::Field {
            key: self.key.to_string(),
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    fn get(&self, field: &'static str) -> Result<&Value, SchemaError> {
        self.map.get(field).ok_or(SchemaError::Missing { key: self.key.to_string(), field })
    }

    fn string(&self, field: &'static str) -> Result<String, SchemaError> {
        let v = self.get(field)?;
        v.as_str().map(str::to_string).ok_or_else(|| self.bad(field, v, "expected a string"))
    }

    /// A string field that K8S-OVS sometimes omitted: missing reads as "".
    fn optional_string(&self, field: &'static str) -> Result<String, SchemaError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(v) => v.as_str().map(str::to_string).ok_or_else(|| self.bad(field, v, "expected a string")),
        }
    }

    fn u64(&self, field: &'static str) -> Result<u64, SchemaError> {
        let v = self.get(field)?;
        v.as_u64().ok_or_else(|| self.bad(field, v, "expected a non-negative integer"))
    }

    fn bool_or_false(&self, field: &'static str) -> Result<bool, SchemaError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(false),
            Some(v) => v.as_bool().ok_or_else(|| self.bad(field, v, "expected true or false")),
        }
    }

    fn cidr(&self, field: &'static str) -> Result<Ipv4Network, SchemaError> {
        let s = self.string(field)?;
        let net: Ipv4Network = s
            .parse()
            .map_err(|e| self.bad(field, &Value::from(s.as_str()), format!("not an IPv4 CIDR ({e})")))?;
        if net.network() != net.ip() {
            return Err(self.bad(
                field,
                &Value::from(s.as_str()),
                "host bits set; write the network address",
            ));
        }
        Ok(net)
    }
}

/// The text of a record's raw etcd value, or `NotUtf8`.
pub fn record_text<'a>(key: &str, value: &'a [u8]) -> Result<&'a str, SchemaError> {
    std::str::from_utf8(value).map_err(|_| SchemaError::NotUtf8 { key: key.to_string() })
}

/// Parses and validates `<prefix>/config`.
pub fn parse_network_config(key: &str, raw: &str) -> Result<NetworkConfig, SchemaError> {
    let f = Fields::parse(key, raw)?;
    let name = f.string("Name")?;
    if name.is_empty() || name.contains('/') {
        return Err(f.bad("Name", &Value::from(name.as_str()), "must be a non-empty path element"));
    }
    let network = f.cidr("Network")?;
    let hsl_raw = f.u64("HostSubnetLength")?;
    let max_host_bits = 32 - u64::from(network.prefix());
    if !(2..=max_host_bits).contains(&hsl_raw) {
        return Err(f.bad(
            "HostSubnetLength",
            f.get("HostSubnetLength")?,
            format!("host bits must be 2..={max_host_bits} for Network {network}"),
        ));
    }
    let service_network = f.cidr("ServiceNetwork")?;
    if service_network.overlaps(network) {
        return Err(f.bad(
            "ServiceNetwork",
            &Value::from(service_network.to_string()),
            format!("overlaps Network {network}"),
        ));
    }
    let plugin_s = f.string("PluginName")?;
    let plugin = PluginName::parse(&plugin_s).ok_or_else(|| {
        f.bad("PluginName", &Value::from(plugin_s.as_str()), "expected k8s-ovs-multitenant or k8s-ovs-subnet")
    })?;
    Ok(NetworkConfig { name, network, host_subnet_length: hsl_raw as u8, service_network, plugin })
}

/// Parses and validates `<prefix>/<Name>/subnets/<hostIP>`; `key_host_ip` is
/// the key's last element, `config` the network it must fit in.
pub fn parse_host_subnet(
    key: &str,
    key_host_ip: &str,
    raw: &str,
    config: &NetworkConfig,
) -> Result<HostSubnet, SchemaError> {
    let f = Fields::parse(key, raw)?;
    let host = f.string("Host")?;
    if host.is_empty() {
        return Err(f.bad("Host", &Value::from(""), "must name the host"));
    }
    let ip_s = f.string("HostIP")?;
    let host_ip: Ipv4Addr =
        ip_s.parse().map_err(|_| f.bad("HostIP", &Value::from(ip_s.as_str()), "not an IPv4 address"))?;
    if ip_s != key_host_ip {
        return Err(f.bad(
            "HostIP",
            &Value::from(ip_s.as_str()),
            format!("differs from the key's host IP {key_host_ip}"),
        ));
    }
    let assign = f.bool_or_false("Assign")?;
    let subnet = if f.optional_string("Subnet")?.is_empty() {
        if !assign {
            return Err(f.bad(
                "Subnet",
                &Value::from(""),
                "empty; write \"Assign\":true to have one allocated",
            ));
        }
        None
    } else {
        let net = f.cidr("Subnet")?;
        if net.prefix() != config.host_subnet_prefix() || !config.network.contains(net.network()) {
            return Err(f.bad(
                "Subnet",
                &Value::from(net.to_string()),
                format!("not a /{} inside Network {}", config.host_subnet_prefix(), config.network),
            ));
        }
        Some(net)
    };
    Ok(HostSubnet { host, host_ip, subnet, assign })
}

/// Parses and validates `<prefix>/<Name>/netnamespaces/<namespace>`;
/// `key_namespace` is the key's last element.
pub fn parse_net_namespace(key: &str, key_namespace: &str, raw: &str) -> Result<NetNamespace, SchemaError> {
    let f = Fields::parse(key, raw)?;
    let net_name = f.string("NetName")?;
    if net_name != key_namespace {
        return Err(f.bad(
            "NetName",
            &Value::from(net_name.as_str()),
            format!("differs from the key's namespace {key_namespace}"),
        ));
    }
    let id_v = f.get("NetID")?;
    let id = f.u64("NetID")?;
    if let Some(reason) = validate_vni(id) {
        return Err(f.bad("NetID", id_v, reason));
    }
    let action_s = f.optional_string("Action")?;
    let target = f.optional_string("Namespace")?;
    let action = match action_s.as_str() {
        "" => None,
        "join" if target.is_empty() => {
            return Err(f.bad(
                "Namespace",
                &Value::from(""),
                "join needs the namespace to join in \"Namespace\"",
            ));
        }
        "join" if target == key_namespace => {
            return Err(f.bad("Namespace", &Value::from(target.as_str()), "a namespace cannot join itself"));
        }
        "join" => Some(Action::Join(target)),
        "isolate" => Some(Action::Isolate),
        "global" => Some(Action::Global),
        _ => {
            return Err(f.bad(
                "Action",
                &Value::from(action_s.as_str()),
                "unknown action; expected join, isolate, global or \"\"",
            ))
        }
    };
    Ok(NetNamespace { net_name, net_id: id as u32, action })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"Name":"k8ssdn","Network":"172.11.0.0/16","HostSubnetLength":10,"ServiceNetwork":"10.96.0.0/12","PluginName":"k8s-ovs-multitenant"}"#;
    const SUBNET: &str = r#"{"Host":"node1","HostIP":"192.0.2.7","Subnet":"172.11.0.0/22","Assign":false}"#;
    const NETNS: &str = r#"{"NetName":"helloworld1","NetID":300924,"Action":"","Namespace":""}"#;

    fn config() -> NetworkConfig {
        parse_network_config("/p/config", CONFIG).expect("config example parses")
    }

    fn json_eq(a: &str, b: &str) {
        let a: Value = serde_json::from_str(a).expect("json a");
        let b: Value = serde_json::from_str(b).expect("json b");
        assert_eq!(a, b);
    }

    #[test]
    fn a_value_that_is_not_utf8_is_a_named_error() {
        assert_eq!(record_text("/p/k", NETNS.as_bytes()), Ok(NETNS));
        let e = record_text("/p/k", b"{\"NetName\":\"a\xff\"}").expect_err("not UTF-8");
        assert_eq!(e, SchemaError::NotUtf8 { key: "/p/k".into() });
        assert_eq!(e.to_string(), "/p/k: the value is not UTF-8");
    }

    #[test]
    fn k8s_ovs_examples_round_trip() {
        let c = config();
        assert_eq!(c.name, "k8ssdn");
        assert_eq!(c.host_subnet_prefix(), 22);
        assert_eq!(c.subnet_count(), 64);
        assert_eq!(c.plugin, PluginName::MultiTenant);
        json_eq(&c.to_json(), CONFIG);

        let s = parse_host_subnet("/p/k8ssdn/subnets/192.0.2.7", "192.0.2.7", SUBNET, &c)
            .expect("subnet example");
        assert_eq!(s.subnet, Some("172.11.0.0/22".parse().expect("cidr")));
        json_eq(&s.to_json(), SUBNET);

        let n =
            parse_net_namespace("/p/k8ssdn/netnamespaces/helloworld1", "helloworld1", NETNS).expect("netns");
        assert_eq!(n, NetNamespace::new("helloworld1", 300924));
        assert_eq!(n.to_json(), NETNS, "byte-identical round trip");
        assert_eq!(serde_json::to_string(&n).expect("serde"), NETNS);
    }

    #[test]
    fn actions_parse_as_operators_type_them() {
        let join = r#"{"NetName":"helloworld1","NetID":300924,"Action":"join","Namespace":"helloworld2"}"#;
        let n = parse_net_namespace("k", "helloworld1", join).expect("join");
        assert_eq!(n.action, Some(Action::Join("helloworld2".into())));
        assert_eq!(n.to_json(), join);
        for (a, want) in [("isolate", Action::Isolate), ("global", Action::Global)] {
            let raw = format!(r#"{{"NetName":"x","NetID":10,"Action":"{a}","Namespace":""}}"#);
            assert_eq!(parse_net_namespace("k", "x", &raw).expect(a).action, Some(want));
        }
        // K8S-OVS tolerated a missing Namespace field on non-join actions.
        let n =
            parse_net_namespace("k", "x", r#"{"NetName":"x","NetID":0,"Action":"global"}"#).expect("short");
        assert_eq!(n.action, Some(Action::Global));
    }

    fn field_err(raw: &str) -> (&'static str, String) {
        match parse_net_namespace("/p/k8ssdn/netnamespaces/a", "a", raw) {
            Err(SchemaError::Field { field, reason, .. }) => (field, reason),
            other => panic!("expected a field error for {raw}, got {other:?}"),
        }
    }

    #[test]
    fn bad_edits_name_key_field_and_value() {
        let (f, _) = field_err(r#"{"NetName":"a","NetID":10,"Action":"merge","Namespace":""}"#);
        assert_eq!(f, "Action");
        let (f, _) = field_err(r#"{"NetName":"a","NetID":10,"Action":"join","Namespace":"a"}"#);
        assert_eq!(f, "Namespace");
        let (f, _) = field_err(r#"{"NetName":"a","NetID":10,"Action":"join","Namespace":""}"#);
        assert_eq!(f, "Namespace");
        let (f, r) = field_err(r#"{"NetName":"a","NetID":16777216,"Action":"","Namespace":""}"#);
        assert_eq!(f, "NetID");
        assert!(r.contains("out of range"), "{r}");
        let (f, r) = field_err(r#"{"NetName":"a","NetID":5,"Action":"","Namespace":""}"#);
        assert_eq!((f, r.contains("reserved")), ("NetID", true));
        let (f, _) = field_err(r#"{"NetName":"a","NetID":-1,"Action":"","Namespace":""}"#);
        assert_eq!(f, "NetID");
        let (f, _) = field_err(r#"{"NetName":"b","NetID":10,"Action":"","Namespace":""}"#);
        assert_eq!(f, "NetName");

        let e = parse_net_namespace("/p/k8ssdn/netnamespaces/a", "a", r#"{"NetName":"a","NetID":10,"#)
            .expect_err("malformed");
        assert!(matches!(e, SchemaError::Json { .. }));
        let msg = e.to_string();
        assert!(msg.starts_with("/p/k8ssdn/netnamespaces/a: malformed JSON"), "{msg}");
        let e = parse_net_namespace("k", "a", r#"{"NetName":"a"}"#).expect_err("missing");
        assert_eq!(e, SchemaError::Missing { key: "k".into(), field: "NetID" });
        assert_eq!(e.to_string(), "k: field NetID is missing");
        assert!(matches!(parse_net_namespace("k", "a", "[1]"), Err(SchemaError::NotObject { .. })));
        let e = field_err(r#"{"NetName":"a","NetID":99999999,"Action":"","Namespace":""}"#);
        assert_eq!(e.0, "NetID");
        let shown = parse_net_namespace("k", "a", r#"{"NetName":"a","NetID":99999999}"#)
            .expect_err("range")
            .to_string();
        assert!(shown.starts_with("k: field NetID = 99999999: out of range"), "{shown}");
    }

    #[test]
    fn subnet_records_must_fit_the_network() {
        let c = config();
        let p = |ip: &str, raw: &str| parse_host_subnet("k", ip, raw, &c);
        let assign = r#"{"Host":"lb1","HostIP":"192.0.2.9","Subnet":"","Assign":true}"#;
        let s = p("192.0.2.9", assign).expect("assign request");
        assert_eq!((s.subnet, s.assign), (None, true));
        json_eq(&s.to_json(), assign);
        let bad = [
            (r#"{"Host":"n","HostIP":"192.0.2.9","Subnet":"","Assign":false}"#, "Subnet"),
            (r#"{"Host":"n","HostIP":"192.0.2.9","Subnet":"172.12.0.0/22","Assign":false}"#, "Subnet"),
            (r#"{"Host":"n","HostIP":"192.0.2.9","Subnet":"172.11.0.0/24","Assign":false}"#, "Subnet"),
            (r#"{"Host":"n","HostIP":"192.0.2.9","Subnet":"172.11.0.1/22","Assign":false}"#, "Subnet"),
            (r#"{"Host":"n","HostIP":"192.0.2.8","Subnet":"172.11.0.0/22","Assign":false}"#, "HostIP"),
            (r#"{"Host":"n","HostIP":"node","Subnet":"172.11.0.0/22","Assign":false}"#, "HostIP"),
            (r#"{"Host":"","HostIP":"192.0.2.9","Subnet":"172.11.0.0/22","Assign":false}"#, "Host"),
            (r#"{"Host":"n","HostIP":"192.0.2.9","Subnet":"172.11.0.0/22","Assign":"yes"}"#, "Assign"),
        ];
        for (raw, want) in bad {
            match p("192.0.2.9", raw) {
                Err(SchemaError::Field { field, .. }) => assert_eq!(field, want, "{raw}"),
                other => panic!("{raw}: {other:?}"),
            }
        }
    }

    #[test]
    fn config_is_validated() {
        let bad = [
            (CONFIG.replace("172.11.0.0/16", "172.11.0.0/33"), "Network"),
            (CONFIG.replace("\"HostSubnetLength\":10", "\"HostSubnetLength\":17"), "HostSubnetLength"),
            (CONFIG.replace("10.96.0.0/12", "172.11.128.0/17"), "ServiceNetwork"),
            (CONFIG.replace("k8s-ovs-multitenant", "flannel"), "PluginName"),
            (CONFIG.replace("k8ssdn", "a/b"), "Name"),
        ];
        for (raw, want) in bad {
            match parse_network_config("k", &raw) {
                Err(SchemaError::Field { field, .. }) => assert_eq!(field, want, "{raw}"),
                other => panic!("{raw}: {other:?}"),
            }
        }
        let single = parse_network_config("k", &CONFIG.replace("k8s-ovs-multitenant", "k8s-ovs-subnet"))
            .expect("single-tenant config");
        assert_eq!(single.plugin, PluginName::Subnet);
    }

    #[test]
    fn kube_requests_round_trip_and_reject_garbage() {
        let r = KubeRequest {
            uid: "u-1".into(),
            generation: 3,
            outcome: RequestOutcome::Superseded,
            message: "m".into(),
        };
        let raw = r.to_json();
        assert_eq!(raw, r#"{"UID":"u-1","Generation":3,"Outcome":"Superseded","Message":"m"}"#);
        assert_eq!(parse_kube_request("k", &raw), Ok(r));
        let bad = raw.replace("Superseded", "Maybe");
        assert!(matches!(parse_kube_request("k", &bad), Err(SchemaError::Json { .. })));
    }

    #[test]
    fn record_error_uses_capitalised_fields() {
        let e = RecordError { error: "x".into(), edit: "{".into(), edit_revision: 7 };
        assert_eq!(serde_json::to_string(&e).expect("ser"), r#"{"Error":"x","Edit":"{","EditRevision":7}"#);
    }
}
