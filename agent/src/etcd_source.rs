//! The agent's view of etcd: the network config, every node's subnet and
//! every namespace's VNI, kept current by a list + watch with reconnects.
//!
//! The view is published through a `tokio::sync::watch` channel: the agent
//! loop always sees the latest complete view (changes coalesce), and keeps
//! working on the last one while etcd is unreachable. A record that fails
//! validation keeps its last good value (the controller reports the error
//! beside it); it never removes a namespace's VNI or a node's subnet.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use etcd_schema::connect::EtcdTls;
use etcd_schema::{
    parse_host_subnet, parse_net_namespace, parse_network_config, KeyKind, Keys, NetworkConfig,
};
use ipnetwork::Ipv4Network;
use tokio::sync::watch;
use tracing::{info, warn};

/// What the agent needs from etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdView {
    pub config: Option<NetworkConfig>,
    /// Allocated node subnets by host IP.
    pub subnets: BTreeMap<Ipv4Addr, Ipv4Network>,
    /// Namespace -> VNI.
    pub vnis: BTreeMap<String, u32>,
    /// Whether the view reflects a completed list (false until the first).
    pub synced: bool,
}

impl EtcdView {
    /// Applies one key's new raw value (`None` = deleted). Invalid values
    /// keep the previous state.
    pub fn apply(&mut self, prefix: &str, key: &str, value: Option<&str>) {
        if key == Keys::config_key(prefix) {
            match value.map(|v| parse_network_config(key, v)) {
                Some(Ok(c)) => self.config = Some(c),
                Some(Err(e)) => {
                    warn!(error = %e, "ignoring invalid network config; keeping the last good one")
                }
                None => warn!(key, "network config deleted; keeping the last good one"),
            }
            return;
        }
        let Some(cfg) = self.config.clone() else { return };
        let keys = Keys::new(prefix, &cfg.name);
        let Some(parsed) = keys.parse(key) else { return };
        match parsed.kind {
            KeyKind::Subnet => {
                let Ok(ip) = parsed.name.parse::<Ipv4Addr>() else { return };
                match value.map(|v| parse_host_subnet(key, &parsed.name, v, &cfg)) {
                    Some(Ok(hs)) => match hs.subnet {
                        Some(s) => {
                            self.subnets.insert(ip, s);
                        }
                        None => {
                            self.subnets.remove(&ip);
                        }
                    },
                    Some(Err(e)) => warn!(error = %e, "ignoring invalid subnet record"),
                    None => {
                        self.subnets.remove(&ip);
                    }
                }
            }
            KeyKind::NetNamespace => match value.map(|v| parse_net_namespace(key, &parsed.name, v)) {
                Some(Ok(ns)) => {
                    self.vnis.insert(parsed.name, ns.net_id);
                }
                Some(Err(e)) => {
                    warn!(error = %e, "ignoring invalid netnamespace record; keeping its last VNI")
                }
                None => {
                    self.vnis.remove(&parsed.name);
                }
            },
            _ => {}
        }
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub tls: Option<EtcdTls>,
}

pub async fn connect(s: &EtcdSettings) -> Result<Client, etcd_client::Error> {
    etcd_schema::connect::connect(&s.endpoints, s.tls.as_ref(), Duration::from_secs(5)).await
}

/// Runs forever: list everything under the prefix, then watch from the next
/// revision; on any error, back off (up to 5 s) and start over. `out`
/// always holds the latest view.
pub async fn run(settings: EtcdSettings, out: watch::Sender<EtcdView>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match list_and_watch(&settings, &out).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "etcd unavailable; working on the last known view");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn list_and_watch(s: &EtcdSettings, out: &watch::Sender<EtcdView>) -> Result<(), etcd_client::Error> {
    let mut client = connect(s).await?;
    let prefix = s.prefix.trim_end_matches('/').to_string();
    let resp = client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    // Config first: the other keys are parsed against it.
    let mut view = EtcdView { synced: true, ..EtcdView::default() };
    let mut kvs: Vec<(String, String)> = resp
        .kvs()
        .iter()
        .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value_str().ok()?.to_string())))
        .collect();
    kvs.sort_by_key(|(k, _)| *k != Keys::config_key(&prefix));
    for (k, v) in &kvs {
        view.apply(&prefix, k, Some(v));
    }
    // Keep values of records that are invalid now (last safe state) from the
    // view we had before the reconnect.
    let prev = out.borrow().clone();
    if view.config.is_none() {
        view.config = prev.config.clone();
    }
    info!(revision, namespaces = view.vnis.len(), subnets = view.subnets.len(), "etcd listed");
    out.send_replace(view);

    let mut stream = client
        .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1)))
        .await?;
    while let Some(resp) = stream.message().await? {
        if resp.canceled() || resp.compact_revision() > 0 {
            warn!(compact_revision = resp.compact_revision(), "etcd watch cancelled; relisting");
            return Ok(());
        }
        out.send_modify(|view| {
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                match ev.event_type() {
                    EventType::Put => view.apply(&prefix, key, kv.value_str().ok()),
                    EventType::Delete => view.apply(&prefix, key, None),
                }
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/k8s.ovs.com/ovs/network";
    const CONFIG: &str = r#"{"Name":"k8ssdn","Network":"172.11.0.0/16","HostSubnetLength":10,"ServiceNetwork":"10.96.0.0/12","PluginName":"k8s-ovs-multitenant"}"#;

    #[test]
    fn view_follows_records_and_keeps_last_good_values() {
        let mut v = EtcdView::default();
        // Records before the config cannot be parsed and are skipped.
        v.apply(
            P,
            &format!("{P}/k8ssdn/netnamespaces/red"),
            Some(r#"{"NetName":"red","NetID":100,"Action":"","Namespace":""}"#),
        );
        assert!(v.vnis.is_empty());
        v.apply(P, &format!("{P}/config"), Some(CONFIG));
        let ns = format!("{P}/k8ssdn/netnamespaces/red");
        v.apply(P, &ns, Some(r#"{"NetName":"red","NetID":100,"Action":"","Namespace":""}"#));
        assert_eq!(v.vnis.get("red"), Some(&100));
        // A bad edit keeps the VNI.
        v.apply(P, &ns, Some(r#"{"NetName":"red","NetID":99999999,"Action":"","Namespace":""}"#));
        v.apply(P, &ns, Some("{not json"));
        assert_eq!(v.vnis.get("red"), Some(&100));
        v.apply(P, &ns, None);
        assert!(v.vnis.is_empty());

        let sk = format!("{P}/k8ssdn/subnets/192.0.2.7");
        v.apply(P, &sk, Some(r#"{"Host":"node1","HostIP":"192.0.2.7","Subnet":"","Assign":true}"#));
        assert!(v.subnets.is_empty(), "not allocated yet");
        v.apply(
            P,
            &sk,
            Some(r#"{"Host":"node1","HostIP":"192.0.2.7","Subnet":"172.11.4.0/22","Assign":true}"#),
        );
        assert_eq!(
            v.subnets.get(&"192.0.2.7".parse().unwrap()).map(|n| n.to_string()).as_deref(),
            Some("172.11.4.0/22")
        );
        // Invalid config keeps the last good one.
        v.apply(P, &format!("{P}/config"), Some(r#"{"Name":"x"}"#));
        assert_eq!(v.config.as_ref().map(|c| c.name.as_str()), Some("k8ssdn"));
    }
}
