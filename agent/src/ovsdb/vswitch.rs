//! The agent's operations on the `Open_vSwitch` database: bridges, ports,
//! their interfaces, and the bridge's `external_ids`.
//!
//! Each change is one transaction that also bumps `next_cfg`, so a wait can
//! tell when ovs-vswitchd applied it (see the module doc of `ovsdb`).
//! Reads and writes are separate transactions: the agent is the only writer
//! of its bridge, so nothing changes in between.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{json, Value};

use super::datum::{self, as_map, as_opt_int, as_opt_str, as_str_set, as_uuid, uuids};
use super::{Client, OvsdbError};

/// The bridge's datapath: the Bridge table's `datapath_type` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatapathType {
    /// The kernel datapath (production).
    System,
    /// The userspace datapath (labs and machines without the OVS kernel module).
    Netdev,
}

impl DatapathType {
    pub fn as_str(self) -> &'static str {
        match self {
            DatapathType::System => "system",
            DatapathType::Netdev => "netdev",
        }
    }
}

/// An Interface's `type` column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    /// An existing network device, such as a pod's veth (`""`, which OVS
    /// also calls `system`).
    System,
    /// A port ovs-vswitchd creates as a device of its own (`tun0`).
    Internal,
    /// A VXLAN tunnel port.
    Vxlan,
    /// Any other type, as read back from a bridge the agent shares.
    Other(String),
}

impl PortKind {
    /// The column's value.
    pub fn as_str(&self) -> &str {
        match self {
            PortKind::System => "",
            PortKind::Internal => "internal",
            PortKind::Vxlan => "vxlan",
            PortKind::Other(s) => s,
        }
    }

    /// The column's value read back.
    pub fn parse(column: &str) -> PortKind {
        match column {
            "" | "system" => PortKind::System,
            "internal" => PortKind::Internal,
            "vxlan" => PortKind::Vxlan,
            other => PortKind::Other(other.to_string()),
        }
    }
}

/// A bridge as the agent wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    pub datapath_type: DatapathType,
    /// `secure`: no flows means no forwarding (never a learning switch).
    pub fail_mode: String,
    pub protocols: Vec<String>,
}

impl BridgeSpec {
    /// fail_mode secure, OpenFlow13 + OpenFlow15.
    pub fn new(name: &str, datapath_type: DatapathType) -> BridgeSpec {
        BridgeSpec {
            name: name.to_string(),
            datapath_type,
            fail_mode: "secure".to_string(),
            protocols: vec!["OpenFlow13".to_string(), "OpenFlow15".to_string()],
        }
    }
}

/// A port with one interface of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    pub kind: PortKind,
    /// Interface `options` (e.g. vxlan `remote_ip=flow`, `key=flow`, `dst_port`).
    pub options: BTreeMap<String, String>,
    pub ofport_request: Option<u16>,
    /// Interface `mtu_request`. Without it OVS sets an internal port's MTU
    /// to the smallest MTU among the bridge's other ports.
    pub mtu_request: Option<u32>,
    /// Interface `external_ids` (pod, namespace, container, IP).
    pub external_ids: BTreeMap<String, String>,
}

impl PortSpec {
    pub fn new(name: &str, kind: PortKind) -> PortSpec {
        PortSpec {
            name: name.to_string(),
            kind,
            options: BTreeMap::new(),
            ofport_request: None,
            mtu_request: None,
            external_ids: BTreeMap::new(),
        }
    }

    pub fn option(mut self, key: &str, value: &str) -> PortSpec {
        self.options.insert(key.to_string(), value.to_string());
        self
    }

    pub fn ofport_request(mut self, ofport: u16) -> PortSpec {
        self.ofport_request = Some(ofport);
        self
    }

    pub fn mtu_request(mut self, mtu: u32) -> PortSpec {
        self.mtu_request = Some(mtu);
        self
    }

    pub fn external_id(mut self, key: &str, value: &str) -> PortSpec {
        self.external_ids.insert(key.to_string(), value.to_string());
        self
    }

    /// The Interface columns this spec sets (`name` aside: it is immutable,
    /// so an update must not mention it).
    fn interface_settings(&self) -> Value {
        json!({
            "type": self.kind.as_str(),
            "options": datum::map(&self.options),
            "ofport_request": datum::opt_int(self.ofport_request.map(i64::from)),
            "mtu_request": datum::opt_int(self.mtu_request.map(i64::from)),
            "external_ids": datum::map(&self.external_ids),
        })
    }
}

/// What an `ensure_*` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

/// How long the server-side wait of [`Client::add_port`] waits before the
/// ordinary wait takes over (ovs-vswitchd takes a port in milliseconds).
const SERVER_WAIT: Duration = Duration::from_secs(2);

/// What the one-round-trip insert of [`Client::add_port`] found.
enum Inserted {
    Ofport(u32),
    /// Inserted; the ofport not seen yet.
    NotYet,
    /// A port of that name exists.
    Exists,
}

/// A port of a bridge with its (first) interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub name: String,
    pub kind: PortKind,
    /// `None` while ovs-vswitchd has not assigned one, or when it failed.
    pub ofport: Option<u32>,
    pub external_ids: BTreeMap<String, String>,
    /// The interface's `error` column.
    pub error: Option<String>,
}

fn eq(column: &str, value: Value) -> Value {
    json!([column, "==", value])
}

fn select(table: &str, conditions: Vec<Value>, columns: &[&str]) -> Value {
    json!({"op": "select", "table": table, "where": conditions, "columns": columns})
}

/// Makes ovs-vswitchd's progress observable: it copies next_cfg to cur_cfg
/// once the transaction's configuration is applied.
fn bump_next_cfg() -> Value {
    json!({"op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["next_cfg", "+=", 1]]})
}

/// Rows of a `select` result.
fn rows(result: &Value) -> &[Value] {
    result.get("rows").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn column<'a>(row: &'a Value, name: &str) -> Result<&'a Value, OvsdbError> {
    row.get(name).ok_or_else(|| OvsdbError::Protocol(format!("row without column {name}: {row}")))
}

fn row_uuid(row: &Value) -> Result<String, OvsdbError> {
    as_uuid(column(row, "_uuid")?)
        .map(str::to_string)
        .ok_or_else(|| OvsdbError::Protocol(format!("bad _uuid in {row}")))
}

/// The interface columns a port comparison needs.
const IFACE_COLUMNS: &[&str] =
    &["_uuid", "name", "type", "options", "ofport_request", "mtu_request", "external_ids"];

fn interface_matches(spec: &PortSpec, row: &Value) -> Result<bool, OvsdbError> {
    Ok(PortKind::parse(as_opt_str(column(row, "type")?).unwrap_or_default()) == spec.kind
        && as_map(column(row, "options")?)? == spec.options
        && as_opt_int(column(row, "ofport_request")?) == spec.ofport_request.map(i64::from)
        && as_opt_int(column(row, "mtu_request")?) == spec.mtu_request.map(i64::from)
        && as_map(column(row, "external_ids")?)? == spec.external_ids)
}

impl Client {
    /// Creates the bridge (with its local internal port) or fixes its
    /// datapath type, fail mode and protocols; then waits until
    /// ovs-vswitchd has it up. Fails with the reason when the datapath does
    /// not open.
    pub async fn ensure_bridge(&self, spec: &BridgeSpec, timeout: Duration) -> Result<Change, OvsdbError> {
        let found = self
            .transact(vec![select(
                "Bridge",
                vec![eq("name", json!(spec.name))],
                &["_uuid", "datapath_type", "fail_mode", "protocols"],
            )])
            .await?;
        let protocols = datum::set(spec.protocols.iter().map(|p| json!(p)));
        let columns = json!({
            "datapath_type": spec.datapath_type.as_str(),
            "fail_mode": spec.fail_mode,
            "protocols": protocols,
        });
        let change = match rows(&found[0]).first() {
            None => {
                let mut bridge = columns;
                bridge["name"] = json!(spec.name);
                bridge["ports"] = datum::named_uuid("port");
                self.transact(vec![
                    json!({"op": "insert", "table": "Interface", "uuid-name": "iface",
                           "row": {"name": spec.name, "type": "internal"}}),
                    json!({"op": "insert", "table": "Port", "uuid-name": "port",
                           "row": {"name": spec.name, "interfaces": datum::named_uuid("iface")}}),
                    json!({"op": "insert", "table": "Bridge", "uuid-name": "bridge", "row": bridge}),
                    json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                           "mutations": [["bridges", "insert", datum::set([datum::named_uuid("bridge")])]]}),
                    bump_next_cfg(),
                ])
                .await?;
                Change::Created
            }
            Some(row) => {
                let mut have_protocols = as_str_set(column(row, "protocols")?);
                have_protocols.sort();
                let mut want_protocols = spec.protocols.clone();
                want_protocols.sort();
                let same = as_opt_str(column(row, "datapath_type")?).unwrap_or_default()
                    == spec.datapath_type.as_str()
                    && as_opt_str(column(row, "fail_mode")?).unwrap_or_default() == spec.fail_mode
                    && have_protocols == want_protocols;
                if same {
                    Change::Unchanged
                } else {
                    self.transact(vec![
                        json!({"op": "update", "table": "Bridge", "where": [eq("_uuid", datum::uuid(&row_uuid(row)?))],
                               "row": columns}),
                        bump_next_cfg(),
                    ])
                    .await?;
                    Change::Updated
                }
            }
        };
        self.wait_ofport(&spec.name, timeout).await.map_err(|e| match e {
            OvsdbError::Interface { name, error } if error.is_empty() => OvsdbError::Interface {
                error: format!(
                    "bridge {name} has no datapath after ovs-vswitchd applied it (datapath_type {:?} \
                     failed to open; see ovs-vswitchd.log)",
                    spec.datapath_type
                ),
                name,
            },
            e => e,
        })?;
        Ok(change)
    }

    /// Makes the port exist on `bridge` with exactly `spec`'s settings; an
    /// existing port with the right settings is left untouched. Does not wait
    /// for ovs-vswitchd (see [`Client::wait_ofport`]).
    pub async fn ensure_port(&self, bridge: &str, spec: &PortSpec) -> Result<Change, OvsdbError> {
        let changes = self.ensure_ports(bridge, std::slice::from_ref(spec)).await?;
        Ok(changes.first().copied().unwrap_or(Change::Unchanged))
    }

    /// [`Client::ensure_port`] for many ports in one read and one write
    /// transaction (the agent's restart path, and 100 ports at once).
    pub async fn ensure_ports(&self, bridge: &str, specs: &[PortSpec]) -> Result<Vec<Change>, OvsdbError> {
        let mut reads = vec![select("Bridge", vec![eq("name", json!(bridge))], &["_uuid", "ports"])];
        for s in specs {
            reads.push(select("Port", vec![eq("name", json!(s.name))], &["_uuid", "interfaces"]));
            reads.push(select("Interface", vec![eq("name", json!(s.name))], IFACE_COLUMNS));
        }
        let found = self.transact(reads).await?;
        let bridge_row =
            rows(&found[0]).first().ok_or_else(|| OvsdbError::NoSuchBridge(bridge.to_string()))?;
        let bridge_uuid = row_uuid(bridge_row)?;
        let bridge_ports = uuids(column(bridge_row, "ports")?);

        let mut writes = Vec::new();
        let mut new_ports = Vec::new();
        let mut changes = Vec::with_capacity(specs.len());
        for (k, spec) in specs.iter().enumerate() {
            let port = rows(&found[1 + 2 * k]).first();
            let iface = rows(&found[2 + 2 * k]).first();
            match (port, iface) {
                (Some(port), Some(iface)) => {
                    if !bridge_ports.contains(&row_uuid(port)?.as_str()) {
                        return Err(OvsdbError::PortOnOtherBridge {
                            port: spec.name.clone(),
                            bridge: bridge.into(),
                        });
                    }
                    if interface_matches(spec, iface)? {
                        changes.push(Change::Unchanged);
                    } else {
                        writes.push(json!({"op": "update", "table": "Interface",
                                           "where": [eq("_uuid", datum::uuid(&row_uuid(iface)?))],
                                           "row": spec.interface_settings()}));
                        changes.push(Change::Updated);
                    }
                }
                (Some(_), None) => {
                    return Err(OvsdbError::Protocol(format!(
                        "port {} exists without an interface of the same name",
                        spec.name
                    )))
                }
                // An interface row without port is garbage OVSDB collects.
                (None, _) => {
                    let (iface, port) = (format!("iface{k}"), format!("port{k}"));
                    let mut row = spec.interface_settings();
                    row["name"] = json!(spec.name);
                    writes
                        .push(json!({"op": "insert", "table": "Interface", "uuid-name": iface, "row": row}));
                    writes.push(json!({"op": "insert", "table": "Port", "uuid-name": port,
                                       "row": {"name": spec.name, "interfaces": datum::named_uuid(&iface)}}));
                    new_ports.push(datum::named_uuid(&port));
                    changes.push(Change::Created);
                }
            }
        }
        if !new_ports.is_empty() {
            writes.push(
                json!({"op": "mutate", "table": "Bridge", "where": [eq("_uuid", datum::uuid(&bridge_uuid))],
                               "mutations": [["ports", "insert", datum::set(new_ports)]]}),
            );
        }
        if !writes.is_empty() {
            writes.push(bump_next_cfg());
            self.transact(writes).await?;
        }
        Ok(changes)
    }

    /// Ensures the port, then waits for its ofport (which it returns).
    ///
    /// A new port (the usual case: a pod's) takes one round trip: the
    /// insert and a transaction that waits on the server (RFC 7047 `wait`)
    /// until ovs-vswitchd wrote the interface's ofport go out together, and
    /// the answer is the ofport. A port that exists already (an earlier ADD
    /// cut short) makes the insert fail on the name index: then the port is
    /// ensured and waited for as [`Client::ensure_port`] and
    /// [`Client::wait_ofport`] do, as is an insert whose ofport the server
    /// side wait did not see within [`SERVER_WAIT`] (so an interface that
    /// gets no ofport at all is still reported as soon as ovs-vswitchd has
    /// applied the change, by `wait_ofport`).
    pub async fn add_port(
        &self,
        bridge: &str,
        spec: &PortSpec,
        timeout: Duration,
    ) -> Result<u32, OvsdbError> {
        match self.insert_port_waiting(bridge, spec, SERVER_WAIT.min(timeout)).await? {
            Inserted::Ofport(ofport) => Ok(ofport),
            Inserted::NotYet => self.wait_ofport(&spec.name, timeout).await,
            Inserted::Exists => {
                self.ensure_port(bridge, spec).await?;
                self.wait_ofport(&spec.name, timeout).await
            }
        }
    }

    /// The insert and the server-side wait of [`Client::add_port`].
    async fn insert_port_waiting(
        &self,
        bridge: &str,
        spec: &PortSpec,
        wait: Duration,
    ) -> Result<Inserted, OvsdbError> {
        let mut iface = spec.interface_settings();
        iface["name"] = json!(spec.name);
        let insert = vec![
            json!({"op": "insert", "table": "Interface", "uuid-name": "iface", "row": iface}),
            json!({"op": "insert", "table": "Port", "uuid-name": "port",
                   "row": {"name": spec.name, "interfaces": datum::named_uuid("iface")}}),
            json!({"op": "mutate", "table": "Bridge", "where": [eq("name", json!(bridge))],
                   "mutations": [["ports", "insert", datum::set([datum::named_uuid("port")])]]}),
            bump_next_cfg(),
        ];
        let named = || vec![eq("name", json!(spec.name))];
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let ofport = vec![
            // Until the interface's ofport is no longer empty: a number, or
            // -1 when ovs-vswitchd could not open it (with `error` set).
            json!({"op": "wait", "timeout": wait_ms, "table": "Interface", "where": named(),
                   "columns": ["ofport"], "until": "!=", "rows": [{"ofport": datum::set([])}]}),
            select("Interface", named(), &["ofport", "error"]),
        ];
        // One writer sends both in this order, and the server runs a
        // connection's transactions in order: the wait sees the insert.
        let (inserted, waited) = tokio::join!(self.transact(insert), self.transact(ofport));
        match inserted {
            Err(OvsdbError::Transaction { error, .. }) if error == "constraint violation" => {
                return Ok(Inserted::Exists)
            }
            Err(e) => return Err(e),
            Ok(r) if r[2].get("count").and_then(Value::as_u64) == Some(0) => {
                // Nothing referenced the new rows: OVSDB dropped them.
                return Err(OvsdbError::NoSuchBridge(bridge.to_string()));
            }
            Ok(_) => {}
        }
        let Ok(waited) = waited else { return Ok(Inserted::NotYet) };
        let row = rows(&waited[1]).first();
        match row.map(|r| column(r, "ofport")).transpose()?.and_then(as_opt_int) {
            Some(p) if p > 0 => u32::try_from(p)
                .map(Inserted::Ofport)
                .map_err(|_| OvsdbError::Protocol(format!("ofport {p} out of range"))),
            Some(_) => {
                let error = row.map(|r| column(r, "error")).transpose()?.and_then(as_opt_str);
                Err(OvsdbError::Interface {
                    name: spec.name.clone(),
                    error: error.unwrap_or_default().to_string(),
                })
            }
            None => Ok(Inserted::NotYet),
        }
    }

    /// Removes the port from the bridge (OVSDB then drops its rows). A port
    /// or bridge that does not exist is success: returns whether it removed
    /// something. Does not wait for ovs-vswitchd.
    pub async fn del_port(&self, bridge: &str, name: &str) -> Result<bool, OvsdbError> {
        let found = self
            .transact(vec![
                select("Bridge", vec![eq("name", json!(bridge))], &["_uuid", "ports"]),
                select("Port", vec![eq("name", json!(name))], &["_uuid"]),
            ])
            .await?;
        let (Some(bridge_row), Some(port_row)) = (rows(&found[0]).first(), rows(&found[1]).first()) else {
            return Ok(false);
        };
        let port_uuid = row_uuid(port_row)?;
        if !uuids(column(bridge_row, "ports")?).contains(&port_uuid.as_str()) {
            return Ok(false);
        }
        self.transact(vec![
            json!({"op": "mutate", "table": "Bridge", "where": [eq("_uuid", datum::uuid(&row_uuid(bridge_row)?))],
                   "mutations": [["ports", "delete", datum::set([datum::uuid(&port_uuid)])]]}),
            bump_next_cfg(),
        ])
        .await?;
        Ok(true)
    }

    /// Every port of the bridge (its own local port included), by name.
    pub async fn list_ports(&self, bridge: &str) -> Result<Vec<PortInfo>, OvsdbError> {
        let found = self
            .transact(vec![
                select("Bridge", vec![eq("name", json!(bridge))], &["ports"]),
                select("Port", vec![], &["_uuid", "name", "interfaces"]),
                select("Interface", vec![], &["_uuid", "name", "type", "ofport", "external_ids", "error"]),
            ])
            .await?;
        let bridge_row =
            rows(&found[0]).first().ok_or_else(|| OvsdbError::NoSuchBridge(bridge.to_string()))?;
        let ports = uuids(column(bridge_row, "ports")?);
        let ifaces: HashMap<String, &Value> =
            rows(&found[2]).iter().map(|r| Ok((row_uuid(r)?, r))).collect::<Result<_, OvsdbError>>()?;
        let mut out = Vec::new();
        for port in rows(&found[1]) {
            if !ports.contains(&row_uuid(port)?.as_str()) {
                continue;
            }
            let name = as_opt_str(column(port, "name")?).unwrap_or_default().to_string();
            let iface = uuids(column(port, "interfaces")?).first().and_then(|u| ifaces.get(*u).copied());
            let info = match iface {
                Some(i) => PortInfo {
                    name,
                    kind: PortKind::parse(as_opt_str(column(i, "type")?).unwrap_or_default()),
                    ofport: as_opt_int(column(i, "ofport")?)
                        .and_then(|p| u32::try_from(p).ok())
                        .filter(|p| *p > 0),
                    external_ids: as_map(column(i, "external_ids")?)?,
                    error: as_opt_str(column(i, "error")?).map(str::to_string),
                },
                None => PortInfo {
                    name,
                    kind: PortKind::System,
                    ofport: None,
                    external_ids: BTreeMap::new(),
                    error: None,
                },
            };
            out.push(info);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One key of the bridge's `external_ids`.
    pub async fn bridge_external_id(&self, bridge: &str, key: &str) -> Result<Option<String>, OvsdbError> {
        let found =
            self.transact(vec![select("Bridge", vec![eq("name", json!(bridge))], &["external_ids"])]).await?;
        let row = rows(&found[0]).first().ok_or_else(|| OvsdbError::NoSuchBridge(bridge.to_string()))?;
        Ok(as_map(column(row, "external_ids")?)?.remove(key))
    }

    /// Sets one key of the bridge's `external_ids` (other keys untouched).
    pub async fn set_bridge_external_id(
        &self,
        bridge: &str,
        key: &str,
        value: &str,
    ) -> Result<(), OvsdbError> {
        let entry: BTreeMap<String, String> = [(key.to_string(), value.to_string())].into();
        let result = self
            .transact(vec![json!({"op": "mutate", "table": "Bridge", "where": [eq("name", json!(bridge))],
            "mutations": [
                // "insert" never overwrites an existing key: drop it first.
                ["external_ids", "delete", datum::set([json!(key)])],
                ["external_ids", "insert", datum::map(&entry)],
            ]})])
            .await?;
        match result[0].get("count").and_then(Value::as_u64) {
            Some(0) => Err(OvsdbError::NoSuchBridge(bridge.to_string())),
            _ => Ok(()),
        }
    }

    /// Waits until the interface has an ofport, and returns it. Fails as soon
    /// as ovs-vswitchd has applied the current configuration
    /// (`cur_cfg >= next_cfg`) and the interface still has none, with its
    /// `error` column (empty for a bridge whose datapath did not open).
    pub async fn wait_ofport(&self, name: &str, timeout: Duration) -> Result<u32, OvsdbError> {
        let requests = json!({
            "Open_vSwitch": {"columns": ["cur_cfg", "next_cfg"]},
            "Interface": {"columns": ["name", "ofport", "error"]},
        });
        let mut state = CfgWatch::default();
        let mut iface: HashMap<String, (Option<i64>, Option<String>)> = HashMap::new();
        let wait = self.watch(&requests, |updates, fresh| {
            if fresh {
                (state, iface) = Default::default();
            }
            state.apply(updates);
            for (uuid, new) in table_rows(updates, "Interface") {
                match new {
                    Some(row) if row.get("name").and_then(Value::as_str) == Some(name) => {
                        let ofport = row.get("ofport").and_then(as_opt_int);
                        let error = row.get("error").and_then(as_opt_str).map(str::to_string);
                        iface.insert(uuid, (ofport, error));
                    }
                    _ => {
                        iface.remove(&uuid);
                    }
                }
            }
            if let Some(p) = iface.values().find_map(|(p, _)| p.filter(|p| *p > 0)) {
                return Some(
                    u32::try_from(p).map_err(|_| OvsdbError::Protocol(format!("ofport {p} out of range"))),
                );
            }
            state.applied().then(|| {
                let error = match iface.values().next() {
                    Some((_, e)) => e.clone().unwrap_or_default(),
                    None => "no such interface".to_string(),
                };
                Err(OvsdbError::Interface { name: name.to_string(), error })
            })
        });
        tokio::time::timeout(timeout, wait).await.unwrap_or_else(|_| {
            Err(OvsdbError::Timeout { what: format!("interface {name} to get an ofport"), after: timeout })
        })
    }

    /// Waits until ovs-vswitchd has applied every change committed so far.
    pub async fn wait_applied(&self, timeout: Duration) -> Result<(), OvsdbError> {
        let requests = json!({"Open_vSwitch": {"columns": ["cur_cfg", "next_cfg"]}});
        let mut state = CfgWatch::default();
        let wait = self.watch(&requests, |updates, fresh| {
            if fresh {
                state = CfgWatch::default();
            }
            state.apply(updates);
            state.applied().then_some(Ok(()))
        });
        tokio::time::timeout(timeout, wait).await.unwrap_or_else(|_| {
            Err(OvsdbError::Timeout {
                what: "ovs-vswitchd to apply the configuration".into(),
                after: timeout,
            })
        })
    }

    /// Feeds every table-updates object of a monitor on `requests` to `step`
    /// until it returns a result. If the connection is lost, the monitor is
    /// made again on a new one and `step` sees `fresh` (the first update of
    /// a monitor holds the whole contents: state built so far is to be
    /// dropped). No timeout of its own: callers wrap it, and dropping it
    /// cancels the monitor.
    async fn watch<T>(
        &self,
        requests: &Value,
        mut step: impl FnMut(&Value, bool) -> Option<Result<T, OvsdbError>>,
    ) -> Result<T, OvsdbError> {
        loop {
            let mut monitor = self.monitor(requests).await?;
            let mut fresh = true;
            let outcome = loop {
                match monitor.next().await {
                    Ok(updates) => {
                        if let Some(done) = step(&updates, fresh) {
                            break Some(done);
                        }
                        fresh = false;
                    }
                    Err(OvsdbError::Disconnected) => break None,
                    Err(e) => break Some(Err(e)),
                }
            };
            let Some(outcome) = outcome else {
                tracing::warn!("OVSDB connection lost during a wait; watching again on a new one");
                continue;
            };
            monitor.cancel().await;
            return outcome;
        }
    }
}

/// `cur_cfg`/`next_cfg` as a monitor reports them. The target is the
/// `next_cfg` seen first: what was committed when the wait started.
#[derive(Debug, Default)]
struct CfgWatch {
    target: Option<i64>,
    cur: Option<i64>,
}

impl CfgWatch {
    fn apply(&mut self, updates: &Value) {
        for (_, new) in table_rows(updates, "Open_vSwitch") {
            let Some(row) = new else { continue };
            if self.target.is_none() {
                self.target = row.get("next_cfg").and_then(Value::as_i64);
            }
            if let Some(c) = row.get("cur_cfg").and_then(Value::as_i64) {
                self.cur = Some(c);
            }
        }
    }

    fn applied(&self) -> bool {
        matches!((self.cur, self.target), (Some(c), Some(t)) if c >= t)
    }
}

/// `(uuid, new row or None when deleted)` for one table of a table-updates
/// object (monitor v1: "new" holds every monitored column).
fn table_rows<'a>(updates: &'a Value, table: &str) -> Vec<(String, Option<&'a Value>)> {
    updates
        .get(table)
        .and_then(Value::as_object)
        .map(|rows| rows.iter().map(|(uuid, change)| (uuid.clone(), change.get("new"))).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_spec_builds_the_interface_row() {
        let spec = PortSpec::new("vxlan0", PortKind::Vxlan)
            .option("key", "flow")
            .ofport_request(1)
            .external_id("a", "b");
        assert_eq!(
            spec.interface_settings(),
            json!({"type": "vxlan", "options": ["map", [["key", "flow"]]],
                   "ofport_request": 1, "mtu_request": ["set", []], "external_ids": ["map", [["a", "b"]]]})
        );
        assert_eq!(PortKind::parse("system"), PortKind::System);
        assert_eq!(PortKind::parse(""), PortKind::System);
        assert_eq!(PortKind::parse("geneve"), PortKind::Other("geneve".into()));
        for k in [PortKind::System, PortKind::Internal, PortKind::Vxlan] {
            assert_eq!(PortKind::parse(k.as_str()), k);
        }
        assert_eq!(
            PortSpec::new("v", PortKind::System).interface_settings()["ofport_request"],
            json!(["set", []])
        );
    }

    #[test]
    fn interface_comparison_covers_every_setting() {
        let spec = PortSpec::new("p", PortKind::System).external_id("pod", "a");
        let row = |ext: Value, req: Value| {
            json!({"_uuid": ["uuid", "u"], "name": "p", "type": "", "options": ["map", []],
                   "ofport_request": req, "mtu_request": ["set", []], "external_ids": ext})
        };
        assert!(
            interface_matches(&spec, &row(json!(["map", [["pod", "a"]]]), json!(["set", []]))).expect("row")
        );
        assert!(
            !interface_matches(&spec, &row(json!(["map", [["pod", "b"]]]), json!(["set", []]))).expect("row")
        );
        assert!(!interface_matches(&spec, &row(json!(["map", [["pod", "a"]]]), json!(5))).expect("row"));
    }

    #[test]
    fn cfg_watch_waits_for_the_first_seen_next_cfg() {
        let mut w = CfgWatch::default();
        w.apply(&json!({"Open_vSwitch": {"u": {"new": {"cur_cfg": 3, "next_cfg": 5}}}}));
        assert!(!w.applied());
        // A later bump by someone else does not move the target.
        w.apply(&json!({"Open_vSwitch": {"u": {"new": {"cur_cfg": 5, "next_cfg": 6}}}}));
        assert!(w.applied());
    }
}
