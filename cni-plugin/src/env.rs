//! The CNI environment variables, read into one checked value.

use std::collections::BTreeMap;

use crate::protocol::Command;
use crate::spec::{CniError, ErrorCode};

/// What the runtime put in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: EnvCommand,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvCommand {
    Version,
    Agent(Command),
}

fn invalid(msg: String) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, msg)
}

/// Parses `CNI_ARGS` (`IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p`).
pub fn parse_args(s: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut m = BTreeMap::new();
    for pair in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(invalid(format!("CNI_ARGS: `{pair}` is not KEY=VALUE")));
        };
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

impl CniEnv {
    /// Reads the variables through `var` (the process environment in the
    /// binary, a map in tests) and checks what the command requires.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let get = |k: &str| var(k).unwrap_or_default();
        let command = match get("CNI_COMMAND").as_str() {
            "ADD" => EnvCommand::Agent(Command::Add),
            "DEL" => EnvCommand::Agent(Command::Del),
            "CHECK" => EnvCommand::Agent(Command::Check),
            "GC" => EnvCommand::Agent(Command::Gc),
            "STATUS" => EnvCommand::Agent(Command::Status),
            "VERSION" => EnvCommand::Version,
            "" => return Err(invalid("CNI_COMMAND is not set".into())),
            other => return Err(invalid(format!("CNI_COMMAND `{other}` is unknown"))),
        };
        let env = CniEnv {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: parse_args(&get("CNI_ARGS"))?,
        };
        // ADD, CHECK and DEL name an attachment; DEL may come after the
        // namespace is gone, so it does not need CNI_NETNS.
        let needs: &[(&str, &String)] = match command {
            EnvCommand::Agent(Command::Add | Command::Check) => &[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_NETNS", &env.netns),
                ("CNI_IFNAME", &env.ifname),
            ],
            EnvCommand::Agent(Command::Del) => {
                &[("CNI_CONTAINERID", &env.container_id), ("CNI_IFNAME", &env.ifname)]
            }
            _ => &[],
        };
        for (name, value) in needs {
            if value.is_empty() {
                return Err(invalid(format!("{name} is required for {}", get("CNI_COMMAND"))));
            }
        }
        Ok(env)
    }

    pub fn pod_namespace(&self) -> Option<String> {
        self.args.get("K8S_POD_NAMESPACE").cloned()
    }

    pub fn pod_name(&self) -> Option<String> {
        self.args.get("K8S_POD_NAME").cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        CniEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment as u32);
        assert!(e.msg.contains("CNI_NETNS"), "{}", e.msg);
        let ok = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=red;K8S_POD_NAME=web-0"),
        ])
        .expect("valid");
        assert_eq!(ok.pod_namespace().as_deref(), Some("red"));
        assert_eq!(ok.pod_name().as_deref(), Some("web-0"));
    }

    #[test]
    fn del_without_netns_is_fine_and_version_needs_nothing() {
        assert!(env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")]).is_ok());
        assert_eq!(env(&[("CNI_COMMAND", "VERSION")]).map(|e| e.command), Ok(EnvCommand::Version));
    }

    #[test]
    fn bad_command_and_args_are_errors() {
        assert!(env(&[]).is_err());
        assert!(env(&[("CNI_COMMAND", "FROB")]).is_err());
        assert!(parse_args("A=1;junk").is_err());
        assert_eq!(parse_args("").map(|m| m.len()), Ok(0));
    }
}
