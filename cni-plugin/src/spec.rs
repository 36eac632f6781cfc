//! CNI specification types (1.1.0, with the older result forms the runtimes
//! still ask for): network configuration, results and errors.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Versions this plugin accepts in a network configuration.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version of our own results and errors when the config names none.
pub const CURRENT_VERSION: &str = "1.1.0";

/// The spec's well-known error codes (CNI spec, "Error" section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    IoFailure = 5,
    DecodeFailure = 6,
    InvalidNetworkConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot serve ADDs now.
    PluginNotAvailable = 50,
    /// STATUS: limited connectivity.
    LimitedConnectivity = 51,
    /// Codes from 100 on are the plugin's own: the agent failed the request.
    AgentFailure = 100,
    /// Bad pod annotations or runtime config (e.g. a bandwidth value).
    InvalidPodConfig = 101,
}

/// A CNI error as printed on stdout (exit code 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> CniError {
        CniError { cni_version: String::new(), code: code as u32, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Set for interfaces inside the container: the netns path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// CIDR notation, e.g. `172.11.0.5/22`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// An ADD result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// The result as the given config version expects it: before 1.0.0 every
    /// IP carries `"version": "4"` (the field was removed in 1.0.0).
    pub fn to_json(&self, version: &str) -> Value {
        let mut r = self.clone();
        r.cni_version = version.to_string();
        let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
        if version.starts_with("0.") {
            if let Some(ips) = v.get_mut("ips").and_then(Value::as_array_mut) {
                for ip in ips {
                    if let Some(o) = ip.as_object_mut() {
                        o.insert("version".into(), Value::String("4".into()));
                    }
                }
            }
        }
        v
    }
}

/// `cni.dev/valid-attachments` entry of a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The plugin's entry of a network configuration (after the runtime merged
/// in `cniVersion`, `name`, `prevResult` and `runtimeConfig`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The agent's unix socket (default [`crate::DEFAULT_AGENT_SOCKET`]).
    #[serde(default)]
    pub agent_socket: Option<String>,
    /// How long to wait for the agent (default 30 s; kubelet's own deadline
    /// is longer, so a slow agent gives our message, not a runtime timeout).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Passed through to the result unchanged.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// Only the capabilities the conflist declares (e.g. `bandwidth`).
    #[serde(default)]
    pub runtime_config: Option<Value>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// Parses and checks a configuration from stdin.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(ErrorCode::DecodeFailure, "cannot decode the network configuration")
                .with_details(e.to_string())
        })?;
        if conf.cni_version.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                "network configuration has no cniVersion",
            ));
        }
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("cniVersion {} is not supported", conf.cni_version),
            )
            .with_details(format!("supported: {}", SUPPORTED_VERSIONS.join(", "))));
        }
        if conf.name.is_empty() {
            return Err(CniError::new(ErrorCode::InvalidNetworkConfig, "network configuration has no name"));
        }
        Ok(conf)
    }
}

/// The VERSION reply.
pub fn version_json(conf_version: Option<&str>) -> Value {
    serde_json::json!({
        "cniVersion": conf_version.filter(|v| SUPPORTED_VERSIONS.contains(v)).unwrap_or(CURRENT_VERSION),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_versions_get_ip_version_field() {
        let r = CniResult {
            ips: vec![IpConfig { interface: Some(1), address: "10.0.0.2/24".into(), gateway: None }],
            ..Default::default()
        };
        assert_eq!(r.to_json("0.4.0")["ips"][0]["version"], "4");
        assert_eq!(r.to_json("0.4.0")["cniVersion"], "0.4.0");
        assert!(r.to_json("1.0.0")["ips"][0].get("version").is_none());
    }

    #[test]
    fn conf_errors_use_spec_codes() {
        let bad_json = NetConf::parse(b"{not json").unwrap_err();
        assert_eq!(bad_json.code, ErrorCode::DecodeFailure as u32);
        let old = NetConf::parse(br#"{"cniVersion":"0.2.0","name":"n","type":"k8s-ovs"}"#).unwrap_err();
        assert_eq!(old.code, ErrorCode::IncompatibleVersion as u32);
        let no_name = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"","type":"k8s-ovs"}"#).unwrap_err();
        assert_eq!(no_name.code, ErrorCode::InvalidNetworkConfig as u32);
        let ok = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"k8s-ovs","type":"k8s-ovs","runtimeConfig":{"bandwidth":{"ingressRate":1}},"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#)
            .expect("valid");
        assert_eq!(ok.valid_attachments.as_deref().map(<[_]>::len), Some(1));
        assert!(ok.runtime_config.is_some());
    }

    #[test]
    fn version_reply_lists_supported_versions() {
        let v = version_json(Some("0.4.0"));
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().map(Vec::len), Some(SUPPORTED_VERSIONS.len()));
        assert_eq!(version_json(None)["cniVersion"], CURRENT_VERSION);
    }
}
