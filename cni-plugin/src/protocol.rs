//! What the plugin and the node agent say to each other over the agent's
//! unix socket: one JSON request per connection, then one JSON response.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::{Attachment, CniError, CniResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
}

/// A CNI call as the agent needs it: the environment and the parts of the
/// network configuration that concern the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub command: Command,
    #[serde(default)]
    pub container_id: String,
    /// `CNI_NETNS`: a path such as `/run/netns/x` or `/proc/<pid>/ns/net`.
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub ifname: String,
    /// From `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`).
    #[serde(default)]
    pub pod_namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
    /// `runtimeConfig` of the configuration (e.g. `bandwidth`).
    #[serde(default)]
    pub runtime_config: Option<Value>,
    /// CHECK: the result of the ADD being checked.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: every attachment the runtime still knows; the rest is garbage.
    #[serde(default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl Request {
    pub fn new(command: Command) -> Request {
        Request {
            command,
            container_id: String::new(),
            netns: String::new(),
            ifname: String::new(),
            pod_namespace: None,
            pod_name: None,
            runtime_config: None,
            prev_result: None,
            valid_attachments: None,
        }
    }
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum Response {
    /// Success; ADD carries its result (in the 1.1.0 form).
    Ok {
        #[serde(default)]
        result: Option<CniResult>,
    },
    Error(CniError),
}
