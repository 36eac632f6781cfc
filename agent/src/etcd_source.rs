//! The agent's view of etcd: the network config, every node's subnet and
//! every namespace's VNI, kept current by a list + watch with reconnects.
//!
//! The view is published through a `tokio::sync::watch` channel: the agent
//! loop always sees the latest complete view (changes coalesce), and keeps
//! working on the last one while etcd is unreachable. A record that fails
//! validation keeps its last good value (the controller reports the error
//! beside it); it never removes a namespace's VNI or a node's subnet.
//!
//! A namespace's VNI comes from the controller's validated copy of its
//! record (`applied/netnamespaces/<ns>`, which only the controller may
//! write), never from the operator's record itself: a NetID typed by hand,
//! or a record re-created with another tenant's NetID, reaches no switch.
//! Until the controller has marked `applied/` complete (a cluster upgraded
//! from a version without it), a namespace without an applied copy falls
//! back to its record's NetID, as before.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use etcd_schema::connect::EtcdTls;
use etcd_schema::{
    parse_host_subnet, parse_net_namespace, parse_network_config, record_text, KeyKind, Keys, NetworkConfig,
    PluginName,
};
use ipnetwork::Ipv4Network;
use ovs_flows::backoff::Backoff;
use ovs_flows::pipeline::Mode;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::change_log::ChangeLog;
use crate::view_follow::Changed;

/// What the agent needs from etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdView {
    pub config: Option<NetworkConfig>,
    /// Allocated node subnets by host IP.
    pub subnets: BTreeMap<Ipv4Addr, Ipv4Network>,
    /// Namespace -> VNI: what the switch programs (see `effective_vni`).
    pub vnis: BTreeMap<String, u32>,
    /// Namespace -> NetID of the operator-facing record (used only before
    /// `applied_complete`).
    pub record_vnis: BTreeMap<String, u32>,
    /// Namespace -> NetID of the controller's validated copy.
    pub applied_vnis: BTreeMap<String, u32>,
    /// The controller has written every namespace's applied copy. Sticky:
    /// once seen, a deleted marker never brings the records' NetIDs back.
    pub applied_complete: bool,
    /// Whether the view reflects a completed list (false until the first).
    pub synced: bool,
    /// Which namespaces' VNIs, nodes' subnets and config changed, in order
    /// (see `view_follow`).
    pub changes: ChangeLog<Changed>,
}

/// The pipeline's tenancy mode for etcd's `PluginName`.
pub fn mode_of(plugin: PluginName) -> Mode {
    match plugin {
        PluginName::MultiTenant => Mode::MultiTenant,
        PluginName::Subnet => Mode::SingleTenant,
    }
}

impl EtcdView {
    /// Applies one key's new raw value (`None` = deleted). Invalid values,
    /// a value that is not UTF-8 included, keep the previous state.
    pub fn apply(&mut self, prefix: &str, key: &str, value: Option<&[u8]>) {
        let value = value.map(|v| record_text(key, v));
        if key == Keys::config_key(prefix) {
            match value.map(|v| v.and_then(|v| parse_network_config(key, v))) {
                Some(Ok(c)) => {
                    if self.config.as_ref() != Some(&c) {
                        self.config = Some(c);
                        self.changes.push(Changed::Config);
                    }
                }
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
                match value.map(|v| v.and_then(|v| parse_host_subnet(key, &parsed.name, v, &cfg))) {
                    Some(Ok(hs)) => {
                        let old = match hs.subnet {
                            Some(s) => self.subnets.insert(ip, s),
                            None => self.subnets.remove(&ip),
                        };
                        if old != hs.subnet {
                            self.changes.push(Changed::Node(ip));
                        }
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "ignoring invalid subnet record; keeping its last subnet")
                    }
                    None => {
                        if self.subnets.remove(&ip).is_some() {
                            self.changes.push(Changed::Node(ip));
                        }
                    }
                }
            }
            KeyKind::NetNamespace | KeyKind::AppliedNetNamespace => {
                let map = if parsed.kind == KeyKind::NetNamespace {
                    &mut self.record_vnis
                } else {
                    &mut self.applied_vnis
                };
                match value.map(|v| v.and_then(|v| parse_net_namespace(key, &parsed.name, v))) {
                    Some(Ok(ns)) => {
                        map.insert(parsed.name.clone(), ns.net_id);
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "ignoring invalid netnamespace record; keeping its last VNI")
                    }
                    None => {
                        map.remove(&parsed.name);
                    }
                }
                self.refresh_vni(&parsed.name);
            }
            KeyKind::AppliedComplete => match value {
                Some(_) if !self.applied_complete => {
                    info!("the controller's applied records are complete; VNIs come from them alone");
                    self.applied_complete = true;
                    self.vnis = self.applied_vnis.clone();
                    self.changes.reset();
                }
                Some(_) => {}
                None => warn!(key, "applied/complete deleted; still taking VNIs from applied records only"),
            },
            _ => {}
        }
    }

    /// The VNI the switch programs for `name`: the controller's applied
    /// copy; before `applied/` is complete (an upgrade), the record's NetID
    /// for a namespace the controller has not copied yet.
    fn effective_vni(&self, name: &str) -> Option<u32> {
        let applied = self.applied_vnis.get(name).copied();
        if self.applied_complete {
            applied
        } else {
            applied.or_else(|| self.record_vnis.get(name).copied())
        }
    }

    fn refresh_vni(&mut self, name: &str) {
        let vni = self.effective_vni(name);
        if self.vnis.get(name).copied() == vni {
            return;
        }
        match vni {
            Some(id) => self.vnis.insert(name.to_string(), id),
            None => self.vnis.remove(name),
        };
        self.changes.push(Changed::Namespace(name.to_string()));
    }

    /// The view after a full list (`listed`: every key under the prefix and
    /// its raw value), given the view before it. A record absent from the
    /// list is gone; a record present but invalid right now keeps its value
    /// from `prev`, exactly as on the watch, and so does the config: a
    /// relist must not cost a namespace its VNI or a node its subnet just
    /// because someone wrote garbage while the watch was down.
    pub fn relisted(prev: &EtcdView, prefix: &str, listed: &[(String, Vec<u8>)]) -> EtcdView {
        let config_key = Keys::config_key(prefix);
        let mut view = EtcdView {
            config: prev.config.clone(),
            applied_complete: prev.applied_complete,
            synced: true,
            // The numbering goes on, so a reader can tell it has not seen this.
            changes: prev.changes.clone(),
            ..EtcdView::default()
        };
        // Config first: the other keys are parsed against it.
        match listed.iter().find(|(k, _)| *k == config_key) {
            Some((k, v)) => view.apply(prefix, k, Some(v)),
            None if view.config.is_some() => warn!("no network config at relist; keeping the last good one"),
            None => {}
        }
        // Seed every record still present with its last value; the valid
        // ones are overwritten below, the invalid ones keep it.
        if let Some(cfg) = &view.config {
            let keys = Keys::new(prefix, &cfg.name);
            for (k, _) in listed {
                let Some(parsed) = keys.parse(k) else { continue };
                match parsed.kind {
                    KeyKind::Subnet => {
                        let Ok(ip) = parsed.name.parse::<Ipv4Addr>() else { continue };
                        if let Some(s) = prev.subnets.get(&ip) {
                            view.subnets.insert(ip, *s);
                        }
                    }
                    KeyKind::NetNamespace => {
                        if let Some(id) = prev.record_vnis.get(&parsed.name) {
                            view.record_vnis.insert(parsed.name, *id);
                        }
                    }
                    KeyKind::AppliedNetNamespace => {
                        if let Some(id) = prev.applied_vnis.get(&parsed.name) {
                            view.applied_vnis.insert(parsed.name, *id);
                        }
                    }
                    _ => {}
                }
            }
            let names: Vec<String> =
                view.record_vnis.keys().chain(view.applied_vnis.keys()).cloned().collect();
            names.iter().for_each(|n| view.refresh_vni(n));
        }
        for (k, v) in listed.iter().filter(|(k, _)| *k != config_key) {
            view.apply(prefix, k, Some(v));
        }
        view.changes.reset();
        view
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
/// revision; on any error, back off (jittered, 100 ms up to 5 s) and start
/// over. `out` always holds the latest view.
pub async fn run(settings: EtcdSettings, out: watch::Sender<EtcdView>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match list_and_watch(&settings, &out).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                let pause = backoff.next_delay();
                warn!(error = %e, retry_in = ?pause, "etcd unavailable; working on the last known view");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

async fn list_and_watch(s: &EtcdSettings, out: &watch::Sender<EtcdView>) -> Result<(), etcd_client::Error> {
    let mut client = connect(s).await?;
    let prefix = s.prefix.trim_end_matches('/').to_string();
    let resp = client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    // Keys of this schema are UTF-8: another key is not ours. Values are
    // judged by `apply` (a non-UTF-8 value is a bad record, not an absent one).
    let listed: Vec<(String, Vec<u8>)> = resp
        .kvs()
        .iter()
        .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value().to_vec())))
        .collect();
    let view = EtcdView::relisted(&out.borrow(), &prefix, &listed);
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
        // Only a change of what the agent acts on (a VNI, a subnet, the
        // config) wakes it: an operator's write of an Action, or the
        // controller's clearing it, leaves every VNI as it was.
        out.send_if_modified(|view| {
            let before = view.changes.last();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                match ev.event_type() {
                    EventType::Put => view.apply(&prefix, key, Some(kv.value())),
                    EventType::Delete => view.apply(&prefix, key, None),
                }
            }
            view.changes.last() != before
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const P: &str = "/k8s.ovs.com/ovs/network";
    pub(crate) const CONFIG: &str = r#"{"Name":"k8ssdn","Network":"172.11.0.0/16","HostSubnetLength":10,"ServiceNetwork":"10.96.0.0/12","PluginName":"k8s-ovs-multitenant"}"#;

    #[test]
    fn view_follows_records_and_keeps_last_good_values() {
        let mut v = EtcdView::default();
        // Records before the config cannot be parsed and are skipped.
        v.apply(
            P,
            &format!("{P}/k8ssdn/netnamespaces/red"),
            Some(br#"{"NetName":"red","NetID":100,"Action":"","Namespace":""}"#),
        );
        assert!(v.vnis.is_empty());
        v.apply(P, &format!("{P}/config"), Some(CONFIG.as_bytes()));
        let ns = format!("{P}/k8ssdn/netnamespaces/red");
        v.apply(P, &ns, Some(br#"{"NetName":"red","NetID":100,"Action":"","Namespace":""}"#));
        assert_eq!(v.vnis.get("red"), Some(&100));
        // A bad edit keeps the VNI.
        v.apply(P, &ns, Some(br#"{"NetName":"red","NetID":99999999,"Action":"","Namespace":""}"#));
        v.apply(P, &ns, Some(b"{not json"));
        assert_eq!(v.vnis.get("red"), Some(&100));
        v.apply(P, &ns, None);
        assert!(v.vnis.is_empty());

        let sk = format!("{P}/k8ssdn/subnets/192.0.2.7");
        v.apply(P, &sk, Some(br#"{"Host":"node1","HostIP":"192.0.2.7","Subnet":"","Assign":true}"#));
        assert!(v.subnets.is_empty(), "not allocated yet");
        v.apply(
            P,
            &sk,
            Some(br#"{"Host":"node1","HostIP":"192.0.2.7","Subnet":"172.11.4.0/22","Assign":true}"#),
        );
        assert_eq!(
            v.subnets.get(&"192.0.2.7".parse().unwrap()).map(|n| n.to_string()).as_deref(),
            Some("172.11.4.0/22")
        );
        // Invalid config keeps the last good one.
        v.apply(P, &format!("{P}/config"), Some(br#"{"Name":"x"}"#));
        assert_eq!(v.config.as_ref().map(|c| c.name.as_str()), Some("k8ssdn"));
    }

    pub(crate) fn netns(name: &str, id: u32) -> (String, Vec<u8>) {
        let v = format!(r#"{{"NetName":"{name}","NetID":{id},"Action":"","Namespace":""}}"#);
        (format!("{P}/k8ssdn/netnamespaces/{name}"), v.into_bytes())
    }

    pub(crate) fn subnet(ip: &str, s: &str) -> (String, Vec<u8>) {
        let v = format!(r#"{{"Host":"n","HostIP":"{ip}","Subnet":"{s}","Assign":false}}"#);
        (format!("{P}/k8ssdn/subnets/{ip}"), v.into_bytes())
    }

    pub(crate) fn config() -> (String, Vec<u8>) {
        (format!("{P}/config"), CONFIG.as_bytes().to_vec())
    }

    /// The operator's write of an Action (and the controller's clearing it)
    /// changes no VNI: it logs no change, so it wakes no agent.
    #[test]
    fn only_what_the_pipeline_reads_is_logged_as_changed() {
        let mut v = EtcdView::default();
        put(&mut v, config());
        put(&mut v, netns("red", 100));
        put(&mut v, subnet("192.0.2.7", "172.11.4.0/22"));
        let last = v.changes.last();
        let (key, _) = netns("red", 100);
        v.apply(P, &key, Some(br#"{"NetName":"red","NetID":100,"Action":"join","Namespace":"blue"}"#));
        put(&mut v, netns("red", 100));
        put(&mut v, subnet("192.0.2.7", "172.11.4.0/22"));
        put(&mut v, config());
        assert_eq!(v.changes.last(), last, "nothing the pipeline reads changed");
        put(&mut v, netns("red", 200));
        assert_eq!(v.changes.last(), last + 1);
    }

    #[test]
    fn a_value_that_is_not_utf8_on_the_watch_keeps_the_vni() {
        let mut v = EtcdView::default();
        v.apply(P, &config().0, Some(&config().1));
        let (key, value) = netns("red", 100);
        v.apply(P, &key, Some(&value));
        v.apply(P, &key, Some(b"{\"NetName\":\"red\xff\",\"NetID\":200}"));
        assert_eq!(v.vnis.get("red"), Some(&100), "a non-UTF-8 value is a bad record, not a delete");
    }

    #[test]
    fn a_relist_keeps_the_last_good_value_of_every_record_invalid_now() {
        let good = vec![
            config(),
            netns("red", 100),
            netns("blue", 200),
            netns("green", 300),
            netns("gone", 400),
            subnet("192.0.2.7", "172.11.4.0/22"),
            subnet("192.0.2.8", "172.11.8.0/22"),
        ];
        let first = EtcdView::relisted(&EtcdView::default(), P, &good);
        assert!(first.synced);
        assert_eq!(first.vnis.len(), 4);
        assert_eq!(first.subnets.len(), 2);

        // While the watch was down: red became invalid JSON, blue not UTF-8,
        // green changed for real, gone was deleted, a subnet record was
        // mangled, the config too.
        let mut bad = vec![
            (format!("{P}/config"), br#"{"Name":"k8ssdn"}"#.to_vec()),
            (netns("red", 0).0, b"{not json".to_vec()),
            (netns("blue", 0).0, b"{\"NetName\":\"blue\xff\",\"NetID\":5}".to_vec()),
            netns("green", 301),
            (subnet("192.0.2.7", "").0, b"\xff\xfe".to_vec()),
            subnet("192.0.2.8", "172.11.8.0/22"),
        ];
        let second = EtcdView::relisted(&first, P, &bad);
        assert_eq!(second.config, first.config, "an invalid config keeps the last good one");
        let want: BTreeMap<String, u32> =
            [("red", 100), ("blue", 200), ("green", 301)].map(|(n, id)| (n.to_string(), id)).into();
        assert_eq!(second.vnis, want, "invalid records keep their VNI, valid ones change, deleted ones go");
        assert_eq!(second.subnets, first.subnets, "an invalid subnet record keeps its subnet");

        // With no config at all in the list the last one stays too, and the
        // records are still read against it.
        bad.remove(0);
        assert_eq!(EtcdView::relisted(&first, P, &bad), second);

        // A record invalid at the first list ever has no last value: it is
        // simply not there (and the agent waits for the controller's fix).
        let fresh =
            EtcdView::relisted(&EtcdView::default(), P, &[config(), (netns("red", 0).0, b"{".to_vec())]);
        assert!(fresh.vnis.is_empty());
    }

    pub(crate) fn applied(name: &str, id: u32) -> (String, Vec<u8>) {
        let (key, value) = netns(name, id);
        (key.replace("/k8ssdn/netnamespaces/", "/k8ssdn/applied/netnamespaces/"), value)
    }

    pub(crate) fn complete() -> (String, Vec<u8>) {
        (format!("{P}/k8ssdn/applied/complete"), b"{}".to_vec())
    }

    fn put(v: &mut EtcdView, (key, value): (String, Vec<u8>)) {
        v.apply(P, &key, Some(&value));
    }

    #[test]
    fn a_hand_written_net_id_never_reaches_the_view() {
        let mut v = EtcdView::relisted(
            &EtcdView::default(),
            P,
            &[config(), complete(), netns("red", 100), applied("red", 100)],
        );
        assert_eq!(v.vnis.get("red"), Some(&100));
        // The operator types blue's NetID into red's record, Action empty.
        put(&mut v, netns("red", 200));
        assert_eq!(v.vnis.get("red"), Some(&100), "only the controller's applied copy gives a VNI");
        // Deleted and re-created with another tenant's NetID: same.
        v.apply(P, &netns("red", 0).0, None);
        assert_eq!(v.vnis.get("red"), Some(&100), "a deleted record does not take the VNI away");
        put(&mut v, netns("red", 200));
        assert_eq!(v.vnis.get("red"), Some(&100));
        // A record with no applied copy at all gives nothing.
        put(&mut v, netns("mallory", 200));
        assert_eq!(v.vnis.get("mallory"), None);
        // The controller's write is what changes it, and its delete removes it.
        put(&mut v, applied("red", 200));
        assert_eq!(v.vnis.get("red"), Some(&200));
        v.apply(P, &applied("red", 0).0, None);
        assert_eq!(v.vnis.get("red"), None);
        // The same at a relist.
        let again =
            EtcdView::relisted(&v, P, &[config(), complete(), netns("red", 300), applied("blue", 200)]);
        assert_eq!(again.vnis, [("blue".to_string(), 200)].into());
    }

    #[test]
    fn before_applied_is_complete_records_give_vnis_and_after_only_applied_copies() {
        // An upgraded cluster whose controller has not written applied/ yet.
        let mut v =
            EtcdView::relisted(&EtcdView::default(), P, &[config(), netns("red", 100), netns("blue", 200)]);
        assert_eq!(v.vnis.len(), 2, "before the controller's copies exist the records' NetIDs stand");
        // The controller copies one namespace: its copy wins over the record.
        put(&mut v, applied("red", 100));
        put(&mut v, netns("red", 200));
        assert_eq!(v.vnis.get("red"), Some(&100));
        // Marked complete: a namespace without a copy has no VNI any more,
        // and a deleted marker does not bring the records back.
        put(&mut v, complete());
        assert_eq!(v.vnis, [("red".to_string(), 100)].into());
        v.apply(P, &complete().0, None);
        put(&mut v, netns("blue", 300));
        assert_eq!(v.vnis, [("red".to_string(), 100)].into());
        let relisted = EtcdView::relisted(
            &v,
            P,
            &[config(), netns("red", 200), netns("blue", 300), applied("red", 100)],
        );
        assert_eq!(relisted.vnis, [("red".to_string(), 100)].into(), "sticky across a relist too");
        // An invalid applied copy at a relist keeps its last good value.
        let bad = (applied("red", 0).0, b"{".to_vec());
        assert_eq!(EtcdView::relisted(&relisted, P, &[config(), bad]).vnis.get("red"), Some(&100));
    }
}
